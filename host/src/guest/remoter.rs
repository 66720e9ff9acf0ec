//! `hio:tcp/remoter`: a guest's operations on one connection. Every call
//! checks the handle against the host's live connections; a closed one
//! answers `error::closed`, never a trap or a panic.

use wasmtime::component::Resource;

use super::hio::tcp::remoter::{Host, HostRemoter, PeerCertificate, Receipt, TlsInfo, TlsState};
use super::hio::tcp::types::{Address, Error, ShutdownHow};
use super::{ConnRef, State, address};
use crate::net::conn::{Conn, TlsState as ConnTls};
use crate::net::wirelog::WireLog;

impl State {
    /// The live connection behind a handle, unless the guest closed it.
    fn open_conn(&mut self, handle: &Resource<ConnRef>) -> Result<(&mut Conn, Option<&mut WireLog>, u64), Error> {
        let id = self.conn_ref(handle)?.id;
        match self.core.conns.get_mut(&id) {
            Some(c) if !c.closing => Ok((c, self.core.wirelog.as_mut(), id)),
            _ => Err(Error::Closed),
        }
    }
}

fn io_error(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

/// Where a connection's TLS stands, as the guest sees it.
pub(super) fn tls_state(c: &Conn) -> TlsState {
    match c.tls_state() {
        None => TlsState::Plain,
        Some(ConnTls::Handshaking) => TlsState::Handshaking,
        Some(ConnTls::Aborted(why)) => TlsState::Aborted(why.clone()),
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

impl HostRemoter for State {
    fn tls(&mut self, h: Resource<ConnRef>) -> TlsState {
        let Ok(r) = self.conn_ref(&h) else { return TlsState::Aborted("connection closed".into()) };
        match self.core.conns.get(&r.id) {
            Some(c) => tls_state(c),
            None => TlsState::Aborted("connection closed".into()),
        }
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

    fn receive(&mut self, h: Resource<ConnRef>, max: u32) -> Result<Receipt, Error> {
        let id = self.open_conn(&h)?.2;
        // Lent like a cycle's arrivals: within the call's bound, and
        // recorded, so a crash after it is blamed on the right peer.
        let (data, cutoff) = self.core.hand(id, max as usize).unwrap_or_default();
        Ok(Receipt { data, cutoff })
    }

    fn consume(&mut self, h: Resource<ConnRef>, count: u64) -> Result<u64, Error> {
        let (c, _, id) = self.open_conn(&h)?;
        let n = c.consume(count);
        if c.wants_read_resume() {
            self.core.mark_dirty(id);
        }
        Ok(n)
    }

    fn pending(&mut self, h: Resource<ConnRef>) -> Result<u64, Error> {
        Ok(self.open_conn(&h)?.0.pending())
    }

    fn send(&mut self, h: Resource<ConnRef>, data: Vec<u8>) -> Result<u32, Error> {
        let (c, wl, id) = self.open_conn(&h)?;
        if !c.accepts_tx() {
            return Err(Error::Closed);
        }
        let res = c.send_now(&data, wl);
        if c.cutoff() {
            self.core.mark_ready(id);
        }
        res.map(|n| n as u32).map_err(io_error)
    }

    fn tx(&mut self, h: Resource<ConnRef>, data: Vec<u8>) -> Result<(), Error> {
        let (c, _, id) = self.open_conn(&h)?;
        if !c.accepts_tx() {
            return Err(Error::Closed);
        }
        if !c.has_room(data.len()) {
            return Err(Error::Full);
        }
        c.queue(data);
        self.core.mark_dirty(id);
        Ok(())
    }

    fn tx_consume(&mut self, h: Resource<ConnRef>, data: Vec<u8>, count: u64) -> Result<(), Error> {
        let (c, _, id) = self.open_conn(&h)?;
        if !c.accepts_tx() {
            return Err(Error::Closed);
        }
        if !c.has_room(data.len()) {
            return Err(Error::Full);
        }
        c.queue(data);
        c.consume(count);
        // Queued bytes to send, and maybe reading to resume below the mark.
        self.core.mark_dirty(id);
        Ok(())
    }

    fn flush(&mut self, h: Resource<ConnRef>) -> Result<u64, Error> {
        let (c, wl, id) = self.open_conn(&h)?;
        let res = c.flush(wl);
        // The loop fixes interest (more to send) or reports a cutoff.
        self.core.mark_dirty(id);
        res.map_err(io_error)
    }

    fn queued(&mut self, h: Resource<ConnRef>) -> Result<u64, Error> {
        Ok(self.open_conn(&h)?.0.undelivered())
    }

    fn shutdown(&mut self, h: Resource<ConnRef>, how: ShutdownHow) -> Result<(), Error> {
        let (read, write) = match how {
            ShutdownHow::Receive => (true, false),
            ShutdownHow::Send => (false, true),
            ShutdownHow::Both => (true, true),
        };
        let (c, _, id) = self.open_conn(&h)?;
        c.shutdown(read, write);
        self.core.mark_dirty(id);
        Ok(())
    }

    fn shutdown_receive(&mut self, h: Resource<ConnRef>) -> Result<(), Error> {
        self.shutdown(h, ShutdownHow::Receive)
    }

    fn shutdown_send(&mut self, h: Resource<ConnRef>) -> Result<(), Error> {
        self.shutdown(h, ShutdownHow::Send)
    }

    fn close(&mut self, h: Resource<ConnRef>) -> Result<(), Error> {
        let (c, _, id) = self.open_conn(&h)?;
        c.close();
        self.core.mark_dirty(id);
        Ok(())
    }

    /// A guest that lets go of a connection without closing it can never
    /// reach it again, so the host closes it (after sending what is queued).
    fn drop(&mut self, h: Resource<ConnRef>) -> wasmtime::Result<()> {
        let r = self.table.delete(h)?;
        if let Some(c) = self.core.conns.get_mut(&r.id)
            && !c.closing
        {
            c.close();
            self.core.mark_dirty(r.id);
        }
        Ok(())
    }
}

impl Host for State {}
