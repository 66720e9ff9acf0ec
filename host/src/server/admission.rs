//! Who gets in: every connection the listener has pending is accepted into
//! the host, except beyond `--max-conns` (closed at once, so the peer is
//! not left hanging in the backlog) and when the process is out of file
//! descriptors (refused with a reserve descriptor); after an accept error
//! the loop looks again soon, as the listener is edge-triggered.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use mio::Registry;

use crate::net::acceptor::{self, Shed};
use crate::net::conn::is_cutoff_error;
use crate::state::HostState;

/// How soon to accept again after an accept error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct Admission {
    max_conns: usize,
    /// Accept again then, after an accept error.
    retry_at: Option<Instant>,
}

impl Admission {
    pub fn new(max_conns: usize) -> Admission {
        Admission { max_conns, retry_at: None }
    }

    /// When the loop must look at the listener again without an event.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Accept every pending connection into the host (if the listener was
    /// ready, or a retry is due); returns how many joined.
    pub fn accept_all(&mut self, host: &mut HostState, registry: &Registry, ready: bool, now: Instant) -> usize {
        let retry = self.retry_at.is_some_and(|t| t <= now);
        if !(ready || retry) {
            return 0;
        }
        self.retry_at = None;
        let mut accepted = 0;
        loop {
            match host.acceptor().accept() {
                Ok((sock, peer)) => {
                    if host.connection_count() >= self.max_conns {
                        self.refuse(host, sock, peer);
                        continue;
                    }
                    match host.admit(sock, peer, registry) {
                        Ok(_) => {
                            host.stats().accepted.add(1);
                            accepted += 1;
                        }
                        Err(e) => tracing::warn!(ca = %peer, "cannot take the connection, dropping it: {e:#}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A peer that reset before we got to it: nothing to serve.
                Err(e) if is_cutoff_error(&e) => continue,
                Err(e) if acceptor::out_of_descriptors(&e) => {
                    if !self.shed_one(host, &e, now) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!("accept failed: {e}");
                    self.retry_at = Some(now + ACCEPT_RETRY);
                    break;
                }
            }
        }
        accepted
    }

    /// Full: a clean close now, so the peer is not left hanging in the backlog.
    fn refuse(&mut self, host: &HostState, sock: mio::net::TcpStream, peer: std::net::SocketAddr) {
        let refused = host.stats().refused_cap.add(1);
        if refused.is_power_of_two() {
            tracing::warn!(ca = %peer, max_conns = self.max_conns, refused, "at --max-conns: closing new connection");
        }
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }

    /// Out of descriptors: refuse one pending peer with the reserve.
    /// Returns whether to go on accepting.
    fn shed_one(&mut self, host: &mut HostState, e: &std::io::Error, now: Instant) -> bool {
        let shed = host.stats().refused_descriptors.add(1);
        if shed.is_power_of_two() {
            tracing::warn!(shed, "out of file descriptors ({e}): refusing new connections");
        }
        match host.acceptor_mut().shed() {
            Shed::Refused => true,
            Shed::Empty => false,
            Shed::Stuck => {
                self.retry_at = Some(now + ACCEPT_RETRY);
                false
            }
        }
    }
}
