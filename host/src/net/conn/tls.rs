//! The TLS record layer of a connection (hio's RemoterTls): ciphertext
//! from the socket into rustls and plaintext into rx; queued plaintext into
//! rustls and records to the socket; the handshake and its outcome. What a
//! session starts from (context, verifier) and who the peer is live in
//! `crate::net::tls`.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::server::danger::ClientCertVerifier;

use super::{Conn, ReadOutcome, Transport, WriteSide};
use crate::net::tls::{PeerInfo, check_resumed, peer_info};
use crate::net::wirelog::WireLog;

/// Where a TLS connection stands (hio's cxes -> ixes promotion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsState {
    Handshaking,
    Connected(PeerInfo),
    Aborted(TlsFailure, String),
}

/// Why TLS gave up on a connection, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The handshake did not finish within `--handshake-timeout`.
    Timeout,
    /// The peer closed the connection during the handshake.
    PeerClosed,
    /// A certificate was refused: the client's by us (missing, untrusted,
    /// revoked, expired, also on resumption), or ours by the client (its alert).
    Certificate,
    /// Anything else the peer broke in the protocol.
    Protocol,
}

impl TlsFailure {
    fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::{AlertDescription as A, Error as E};
        match e {
            E::InvalidCertificate(_) | E::NoCertificatesPresented | E::InvalidCertRevocationList(_) => {
                TlsFailure::Certificate
            }
            E::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA,
            ) => TlsFailure::Certificate,
            _ => TlsFailure::Protocol,
        }
    }
}

/// The TLS half of a connection.
pub struct Tls {
    session: rustls::ServerConnection,
    state: TlsState,
    close_notify_sent: bool,
    /// Checks the client certificate of a resumed session again.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// When the handshake began (the connection was accepted).
    began: Instant,
}

impl Tls {
    pub fn new(session: rustls::ServerConnection, verifier: Option<Arc<dyn ClientCertVerifier>>) -> Tls {
        Tls { session, state: TlsState::Handshaking, close_notify_sent: false, verifier, began: Instant::now() }
    }
}

/// What taking plaintext out of rustls ended with.
enum Plaintext {
    /// Nothing more decrypted for now.
    Drained,
    /// rx is at its mark; the rest waits in rustls.
    Full,
    /// The peer's close_notify.
    Closed,
}

impl Conn {
    fn tls_mut(&mut self) -> Option<&mut Tls> {
        match &mut self.transport {
            Transport::Tls(tls) => Some(tls),
            Transport::Plain => None,
        }
    }

    /// Where its TLS stands; `None` for plain TCP.
    pub fn tls_state(&self) -> Option<&TlsState> {
        match &self.transport {
            Transport::Tls(tls) => Some(&tls.state),
            Transport::Plain => None,
        }
    }

    pub fn handshaking(&self) -> bool {
        self.tls_state() == Some(&TlsState::Handshaking)
    }

    /// When a TLS connection's handshake began.
    pub fn handshake_began(&self) -> Option<Instant> {
        match &self.transport {
            Transport::Tls(tls) => Some(tls.began),
            Transport::Plain => None,
        }
    }

    pub(super) fn tls_wants_write(&self) -> bool {
        matches!(&self.transport, Transport::Tls(tls) if tls.session.wants_write())
    }

    /// TLS gave up on this connection: say why once, send the alert rustls
    /// queued, then close. Nothing queued for it can be delivered.
    pub fn abort(&mut self, failure: TlsFailure, reason: String) {
        let peer = self.peer;
        let Some(tls) = self.tls_mut() else { return };
        match tls.state {
            TlsState::Aborted(..) => return,
            TlsState::Handshaking => tracing::warn!(ca = %peer, "TLS handshake failed: {reason}"),
            TlsState::Connected(_) => tracing::warn!(ca = %peer, "TLS connection failed: {reason}"),
        }
        tls.state = TlsState::Aborted(failure, reason);
        tls.close_notify_sent = true;
        self.end_read();
        self.tx.clear();
        self.account();
        self.close();
    }

    /// TLS read: ciphertext from the socket into rustls, plaintext into rx.
    pub(super) fn read_tls(&mut self, scratch: &mut [u8], mut wl: Option<&mut WireLog>) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        loop {
            // Plaintext rustls already holds goes first: it may have been
            // left there when rx reached its mark.
            match self.take_plaintext(scratch, wl.as_deref_mut(), &mut out) {
                Plaintext::Drained => {}
                Plaintext::Full => return self.paused(out),
                Plaintext::Closed => return self.ended(out),
            }
            if self.read_room() == 0 {
                return self.paused(out);
            }
            let peer = self.peer;
            let Transport::Tls(tls) = &mut self.transport else { return out };
            let eof = match tls.session.read_tls(&mut self.sock) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(ca = %peer, "peer cut off: {e}");
                    true
                }
            };
            if let Err((failure, why)) = tls.progress() {
                out.tls_changed = true;
                self.abort(failure, why);
                return self.ended(out);
            }
            out.tls_changed |= tls.connected_now();
            if eof {
                // What arrived before the end is still delivered.
                if let Plaintext::Full = self.take_plaintext(scratch, wl.as_deref_mut(), &mut out) {
                    return self.paused(out);
                }
                if self.handshaking() {
                    self.abort(TlsFailure::PeerClosed, "peer closed the connection during the handshake".into());
                    out.tls_changed = true;
                }
                return self.ended(out);
            }
        }
    }

    /// Move decrypted bytes from rustls into rx, up to the mark.
    fn take_plaintext(&mut self, scratch: &mut [u8], mut wl: Option<&mut WireLog>, out: &mut ReadOutcome) -> Plaintext {
        loop {
            let room = self.read_room().min(scratch.len());
            if room == 0 {
                return Plaintext::Full;
            }
            let Transport::Tls(tls) = &mut self.transport else { return Plaintext::Drained };
            match tls.session.reader().read(&mut scratch[..room]) {
                // close_notify: a clean end.
                Ok(0) => return Plaintext::Closed,
                Ok(n) => {
                    self.rx.extend(&scratch[..n]);
                    if let Some(wl) = wl.as_deref_mut() {
                        wl.rx(self.peer, &scratch[..n]);
                    }
                    out.bytes += n;
                }
                Err(_) => return Plaintext::Drained,
            }
        }
    }

    /// hio's `send` over TLS: straight into rustls once connected, then out.
    pub(super) fn send_tls(&mut self, data: &[u8], wl: Option<&mut WireLog>) -> io::Result<usize> {
        let Transport::Tls(tls) = &mut self.transport else { return Ok(0) };
        if !matches!(tls.state, TlsState::Connected(_)) {
            return Ok(0);
        }
        let n = tls.session.writer().write(data)?;
        if let Some(wl) = wl {
            wl.tx(self.peer, &data[..n]);
        }
        self.flush(None)?;
        Ok(n)
    }

    /// TLS flush: queued plaintext into rustls (once connected), then
    /// records to the socket; close_notify goes before the FIN.
    ///
    /// Goes around until the socket would block or nothing is left: with
    /// edge-triggered readiness, stopping while the socket still has room
    /// would leave queued bytes waiting for an event that never comes.
    pub(super) fn flush_tls(&mut self, mut wl: Option<&mut WireLog>) -> io::Result<u64> {
        let (mut sent, mut records) = (0u64, 0usize);
        let fin_wanted = self.write == WriteSide::FinWanted;
        let Transport::Tls(tls) = &mut self.transport else { return Ok(0) };
        let connected = matches!(tls.state, TlsState::Connected(_));
        let failed = loop {
            let mut moved = 0;
            while connected && !self.tx.is_empty() {
                let pending = self.tx.pending();
                let n = tls.session.writer().write(pending)?;
                if n == 0 {
                    break;
                }
                if let Some(wl) = wl.as_deref_mut() {
                    wl.tx(self.peer, &pending[..n]);
                }
                self.tx.advance(n);
                moved += n;
            }
            sent += moved as u64;
            if connected && self.tx.is_empty() && fin_wanted && !tls.close_notify_sent {
                tls.close_notify_sent = true;
                tls.session.send_close_notify();
            }
            match tls.write_records(&mut self.sock, &mut records) {
                Err(e) => break Some(e),
                Ok(blocked) if blocked || moved == 0 || self.tx.is_empty() => break None,
                Ok(_) => {}
            }
        };
        let fin_due = !tls.session.wants_write() && (tls.close_notify_sent || !connected);
        self.output.wrote(records);
        if let Some(e) = failed {
            return self.broken(e).map(|_| sent);
        }
        if fin_due && fin_wanted && self.tx.is_empty() {
            self.send_fin();
        }
        Ok(sent)
    }
}

impl Tls {
    /// Decrypt what arrived; `Err` with why if the peer broke the protocol
    /// or, resuming a session, presented a certificate no longer good.
    fn progress(&mut self) -> Result<(), (TlsFailure, String)> {
        self.session.process_new_packets().map_err(|e| (TlsFailure::of(&e), e.to_string()))?;
        if self.state == TlsState::Handshaking
            && !self.session.is_handshaking()
            && let Some(v) = &self.verifier
        {
            check_resumed(&self.session, v.as_ref()).map_err(|why| (TlsFailure::Certificate, why))?;
        }
        Ok(())
    }

    /// The handshake just finished: it is connected now.
    fn connected_now(&mut self) -> bool {
        let done = self.state == TlsState::Handshaking && !self.session.is_handshaking();
        if done {
            self.state = TlsState::Connected(peer_info(&self.session));
        }
        done
    }

    /// Send the records rustls holds until the socket would block; returns
    /// whether it did.
    fn write_records(&mut self, sock: &mut mio::net::TcpStream, written: &mut usize) -> io::Result<bool> {
        while self.session.wants_write() {
            match self.session.write_tls(sock) {
                Ok(n) => *written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}
