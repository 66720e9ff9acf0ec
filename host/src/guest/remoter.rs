//! `hio:tcp/remoter`: a guest's operations on one connection. Every call
//! checks the handle against the host's live connections; a closed one
//! answers `error::closed`, never a trap or a panic. The work is the
//! connection's (`net::conn`); each method here only finds it and converts.

use wasmtime::component::Resource;

use super::hio::tcp::remoter::{Host, HostRemoter, PeerCertificate, Receipt, TlsInfo, TlsState};
use super::hio::tcp::types::{Address, Error, ShutdownHow};
use super::{ConnRef, StoreData, address};
use crate::net::conn::{Conn, Refused, TlsState as ConnTls};
use crate::net::wirelog::WireLog;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e.to_string())
    }
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Error {
        match r {
            Refused::Closed => Error::Closed,
            Refused::Full => Error::Full,
            Refused::Io(e) => e.into(),
        }
    }
}

impl StoreData {
    /// Run `op` on the live connection behind a handle, unless the guest
    /// closed it, and mark the connection for the loop (whatever `op`
    /// changed, the loop sends, resumes or releases in `settle`).
    fn on_conn<T>(
        &mut self,
        handle: &Resource<ConnRef>,
        op: impl FnOnce(&mut Conn, Option<&mut WireLog>) -> T,
    ) -> Result<T, Error> {
        let id = self.conn_ref(handle)?.id;
        self.on_open(id, op)
    }

    /// Run `op` on connection `id` if the guest holds it open (it took it
    /// and has not closed it), and mark it for the loop: a host call on a
    /// handle, or an answer in a batch cycle's result.
    pub(super) fn on_open<T>(
        &mut self,
        id: u64,
        op: impl FnOnce(&mut Conn, Option<&mut WireLog>) -> T,
    ) -> Result<T, Error> {
        let (c, wl) = self.host_mut().conn_mut(id).filter(|(c, _)| c.held_by_guest()).ok_or(Error::Closed)?;
        let out = op(c, wl);
        self.host_mut().mark_dirty(id);
        Ok(out)
    }

    /// The id of the live connection behind a handle, unless the guest closed it.
    fn open_id(&self, handle: &Resource<ConnRef>) -> Result<u64, Error> {
        let id = self.conn_ref(handle)?.id;
        self.host_ref().conn(id).filter(|c| !c.closing).map(|_| id).ok_or(Error::Closed)
    }
}

/// Where a connection's TLS stands, as the guest sees it.
pub(super) fn tls_state(c: &Conn) -> TlsState {
    match c.tls_state() {
        None => TlsState::Plain,
        Some(ConnTls::Handshaking) => TlsState::Handshaking,
        Some(ConnTls::Aborted(_, why)) => TlsState::Aborted(why.clone()),
        Some(ConnTls::Connected(info)) => TlsState::Connected(TlsInfo {
            version: info.version.clone(),
            cipher_suite: info.cipher_suite.clone(),
            alpn: info.alpn.clone(),
            peer_certificate: info.certificate.as_ref().map(|p| PeerCertificate {
                subject: p.subject.clone(),
                sans: p.sans.clone(),
                sha256: p.sha256.clone(),
            }),
        }),
    }
}

impl HostRemoter for StoreData {
    fn tls(&mut self, h: Resource<ConnRef>) -> TlsState {
        let conn = self.conn_ref(&h).ok().and_then(|r| self.host_ref().conn(r.id));
        conn.map_or_else(|| TlsState::Aborted("connection closed".into()), tls_state)
    }

    fn id(&mut self, h: Resource<ConnRef>) -> u64 {
        self.conn_ref(&h).map(|r| r.id).unwrap_or(0)
    }

    fn ha(&mut self, h: Resource<ConnRef>) -> Address {
        self.conn_ref(&h).map(|r| address(r.ha)).unwrap_or(Address { host: String::new(), port: 0 })
    }

    fn ca(&mut self, h: Resource<ConnRef>) -> Address {
        self.conn_ref(&h).map(|r| address(r.ca)).unwrap_or(Address { host: String::new(), port: 0 })
    }

    fn proxied_by(&mut self, h: Resource<ConnRef>) -> Result<Option<Address>, Error> {
        self.on_conn(&h, |c, _| c.proxied_by.map(address))
    }

    /// Lent like a cycle's arrivals: within the call's bound, and recorded,
    /// so a crash after it is blamed on the right peer.
    fn receive(&mut self, h: Resource<ConnRef>, max: u32) -> Result<Receipt, Error> {
        let id = self.open_id(&h)?;
        let (data, cutoff) = self.host_mut().lend(id, max as usize).unwrap_or_default();
        Ok(Receipt { data, cutoff })
    }

    fn consume(&mut self, h: Resource<ConnRef>, count: u64) -> Result<u64, Error> {
        self.on_conn(&h, |c, _| c.consume(count))
    }

    fn pending(&mut self, h: Resource<ConnRef>) -> Result<u64, Error> {
        self.on_conn(&h, |c, _| c.pending())
    }

    fn send(&mut self, h: Resource<ConnRef>, data: Vec<u8>) -> Result<u32, Error> {
        let sent = self.on_conn(&h, |c, wl| c.guest_send(&data, wl))??;
        self.host_ref().stats().bytes_sent.add(sent as u64);
        Ok(sent as u32)
    }

    fn tx(&mut self, h: Resource<ConnRef>, data: Vec<u8>) -> Result<(), Error> {
        Ok(self.on_conn(&h, |c, _| c.guest_tx(data, 0))??)
    }

    fn tx_consume(&mut self, h: Resource<ConnRef>, data: Vec<u8>, count: u64) -> Result<(), Error> {
        Ok(self.on_conn(&h, |c, _| c.guest_tx(data, count))??)
    }

    fn flush(&mut self, h: Resource<ConnRef>) -> Result<u64, Error> {
        Ok(self.on_conn(&h, |c, wl| c.flush(wl))??)
    }

    fn queued(&mut self, h: Resource<ConnRef>) -> Result<u64, Error> {
        self.on_conn(&h, |c, _| c.unsent())
    }

    fn shutdown(&mut self, h: Resource<ConnRef>, how: ShutdownHow) -> Result<(), Error> {
        let (read, write) = match how {
            ShutdownHow::Receive => (true, false),
            ShutdownHow::Send => (false, true),
            ShutdownHow::Both => (true, true),
        };
        self.on_conn(&h, |c, _| c.shutdown(read, write))
    }

    fn shutdown_receive(&mut self, h: Resource<ConnRef>) -> Result<(), Error> {
        self.shutdown(h, ShutdownHow::Receive)
    }

    fn shutdown_send(&mut self, h: Resource<ConnRef>) -> Result<(), Error> {
        self.shutdown(h, ShutdownHow::Send)
    }

    fn close(&mut self, h: Resource<ConnRef>) -> Result<(), Error> {
        self.on_conn(&h, |c, _| c.close())
    }

    /// A guest that lets go of a connection without closing it can never
    /// reach it again, so the host closes it (after sending what is queued).
    fn drop(&mut self, h: Resource<ConnRef>) -> wasmtime::Result<()> {
        let _ = self.on_conn(&h, |c, _| c.close());
        self.table.delete(h)?;
        Ok(())
    }
}

impl Host for StoreData {}
