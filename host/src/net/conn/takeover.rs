//! A connection moving to a successor process (`hio-host run --takeover`):
//! what it holds besides its socket, which travels as a descriptor. Only a
//! plain connection that is not closing moves: a TLS session cannot leave
//! this process (no kernel TLS here), and a closing one only finishes.

use std::net::SocketAddr;

use mio::net::TcpStream;
use serde::{Deserialize, Serialize};

use super::{Conn, ReadSide, Transport, WriteSide};
use crate::net::backpressure::Budget;

/// Where a moving connection's directions stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Open,
    /// Receiving: the guest shut it (hio's shutdownReceive). Sending: FIN
    /// once the queue is empty.
    Shutting,
    /// Receiving: the peer ended (cutoff). Sending: FIN sent.
    Done,
}

/// Everything of a connection but its socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedConn {
    pub id: u64,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Received and not consumed (lent or not: the next guest is lent it all).
    pub rx: Vec<u8>,
    /// Queued and not yet taken by the socket.
    pub tx: Vec<u8>,
    pub read: Side,
    pub write: Side,
    /// A guest holds it (else it waits in the axes).
    pub adopted: bool,
    /// The balancer a PROXY header came through (`peer` is the client).
    pub proxied_by: Option<SocketAddr>,
}

impl Conn {
    /// What a successor needs to carry this connection on, if it can move.
    pub fn save(&self, id: u64) -> Option<SavedConn> {
        // One still to say whose it is stays, to be served here.
        if self.closing || self.awaiting_proxy || !matches!(self.transport, Transport::Plain) {
            return None;
        }
        let read = match self.read {
            ReadSide::Open | ReadSide::Paused => Side::Open,
            ReadSide::Shut => Side::Shutting,
            ReadSide::Ended => Side::Done,
        };
        let write = match self.write {
            WriteSide::Open => Side::Open,
            WriteSide::FinWanted => Side::Shutting,
            WriteSide::FinSent => Side::Done,
            // Its queue can never be delivered: it ends here, reset.
            WriteSide::Broken => return None,
        };
        Some(SavedConn {
            id,
            local: self.local,
            peer: self.peer,
            rx: self.rx.bytes().to_vec(),
            tx: self.tx.pending().to_vec(),
            read,
            write,
            adopted: self.adopted,
            proxied_by: self.proxied_by,
        })
    }

    /// Queued bytes or a FIN wait to go out.
    pub fn has_output(&self) -> bool {
        !self.tx.is_empty() || self.write == WriteSide::FinWanted
    }

    /// A connection a predecessor process saved, on its socket.
    pub fn restore(sock: TcpStream, saved: SavedConn, budget: Budget) -> Conn {
        let mut c = Conn::new(sock, saved.local, saved.peer, budget);
        c.rx.extend(&saved.rx);
        c.tx.push(saved.tx);
        c.read = match saved.read {
            Side::Open => ReadSide::Open,
            Side::Shutting => ReadSide::Shut,
            Side::Done => ReadSide::Ended,
        };
        c.write = match saved.write {
            Side::Open => WriteSide::Open,
            Side::Shutting => WriteSide::FinWanted,
            Side::Done => WriteSide::FinSent,
        };
        c.adopted = saved.adopted;
        c.proxied_by = saved.proxied_by;
        c.held = true;
        c.account();
        c
    }

    /// Moved here by a takeover not yet committed.
    pub fn held(&self) -> bool {
        self.held
    }

    /// The takeover is committed: the socket is this process's alone.
    pub fn release_hold(&mut self) {
        self.held = false;
        if self.read == ReadSide::Shut {
            let _ = self.sock.shutdown(std::net::Shutdown::Read);
        }
    }
}
