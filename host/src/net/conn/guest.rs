//! What a guest does with a connection: the bytes it is lent and consumes,
//! and what it queues or sends, with the reasons a call is refused.

use std::io;

use super::{Conn, WriteSide};
use crate::net::backpressure;
use crate::net::wirelog::WireLog;

/// Why a guest's operation on a connection was refused.
#[derive(Debug)]
pub enum Refused {
    /// It no longer takes output (closed, or its FIN asked for).
    Closed,
    /// Its queue is at its cap, or the server's buffers at their ceiling.
    Full,
    /// The socket failed.
    Io(io::Error),
}

impl Conn {
    /// Lend up to `max` bytes the guest has not been given yet.
    /// Returns them and whether the stream has ended after them.
    #[cfg(test)]
    pub fn hand(&mut self, max: usize) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let cutoff = self.hand_into(max, &mut data);
        (data, cutoff)
    }

    /// `hand`, appending to `data`.
    pub fn hand_into(&mut self, max: usize, data: &mut Vec<u8>) -> bool {
        self.rx.lend_into(max, data);
        self.cutoff() && self.rx.unhanded() == 0
    }

    /// Drop up to `count` lent bytes; only bytes a guest has seen can be consumed.
    pub fn consume(&mut self, count: u64) -> u64 {
        let n = self.rx.consume(count);
        self.account();
        n
    }

    /// The guest now running holds it open: it was handed to it (not only
    /// owed by a lazy hand-over) and not closed by it.
    pub fn held_by_guest(&self) -> bool {
        self.for_a_new_guest() && !self.owed
    }

    /// A guest took it and has not closed it: a guest starting now is owed
    /// it (a swap, a restart, a successor process).
    pub fn for_a_new_guest(&self) -> bool {
        self.adopted && !self.closing
    }

    /// A new guest takes over: everything unconsumed will be lent again.
    pub fn rewind(&mut self) {
        self.rx.rewind();
    }

    pub fn pending(&self) -> u64 {
        self.rx.len() as u64
    }

    /// Holds bytes (or an end) the guest was lent and has not finished
    /// with: if the guest fails now, this connection is a suspect.
    pub fn owes_guest(&self) -> bool {
        !self.closing && (self.rx.handed() > 0 || (self.cutoff() && self.rx.is_empty()))
    }

    /// Has received bytes not yet lent.
    pub fn unhanded(&self) -> bool {
        self.rx.unhanded() > 0
    }

    pub fn unhanded_len(&self) -> usize {
        self.rx.unhanded()
    }

    /// Has received bytes not yet lent, or an end not yet seen by the guest.
    pub fn has_news(&self) -> bool {
        self.unhanded() || self.cutoff()
    }

    /// Bytes queued in the host and not yet taken by the socket.
    pub fn queued(&self) -> u64 {
        self.tx.len() as u64
    }

    /// Whether queuing is still allowed.
    pub fn accepts_tx(&self) -> bool {
        !self.closing && matches!(self.write, WriteSide::Open | WriteSide::Broken)
    }

    /// Whether `more` bytes may be queued (see `backpressure::may_queue`).
    pub fn has_room(&self, more: usize) -> bool {
        backpressure::may_queue(self.tx.len(), more, self.share.budget())
    }

    pub fn queue(&mut self, data: Vec<u8>) {
        if self.write == WriteSide::Broken {
            return;
        }
        self.tx.push(data);
        self.account();
    }

    fn queue_slice(&mut self, data: &[u8]) {
        if self.write == WriteSide::Broken || data.is_empty() {
            return;
        }
        self.tx.push_slice(data);
        self.account();
    }

    /// A guest queues `data` (an answer, maybe) and consumes the first
    /// `consumed` bytes it was lent, as one step: refused as a whole if the
    /// connection no longer takes output or its queue is at its cap.
    pub fn guest_tx(&mut self, data: Vec<u8>, consumed: u64) -> Result<(), Refused> {
        self.take_room(data.len())?;
        self.queue(data);
        if consumed > 0 {
            self.consume(consumed);
        }
        Ok(())
    }

    /// A batch cycle's answer (WIT `batch.answer`): `guest_tx` from the
    /// guest's result, written at once where the socket (or, for TLS, the
    /// session) takes it, with no copy into the queue; the rest is queued.
    /// Returns the plaintext bytes written.
    pub fn guest_answer(&mut self, data: &[u8], consumed: u64, wl: Option<&mut WireLog>) -> Result<u64, Refused> {
        self.take_room(data.len())?;
        let mut written = 0;
        // A failed write has marked the connection broken: nothing can reach
        // the peer, and `queue_slice` drops what is left, as a flush would.
        if !data.is_empty() {
            let sent = self.send_now(data, wl).unwrap_or(0);
            self.queue_slice(&data[sent..]);
            written = sent as u64;
        }
        if consumed > 0 {
            self.consume(consumed);
        }
        Ok(written)
    }

    /// Whether the guest may queue `len` more bytes: the room set aside for
    /// this batch cycle's answers first (taken from), else the queue's cap
    /// and the server's bound.
    fn take_room(&mut self, len: usize) -> Result<(), Refused> {
        if !self.accepts_tx() {
            return Err(Refused::Closed);
        }
        if len > self.promised && !self.has_room(len) {
            return Err(Refused::Full);
        }
        self.promised = self.promised.saturating_sub(len);
        Ok(())
    }

    /// hio's `send` for a guest: refused once the connection takes no output.
    pub fn guest_send(&mut self, data: &[u8], wl: Option<&mut WireLog>) -> Result<usize, Refused> {
        if !self.accepts_tx() {
            return Err(Refused::Closed);
        }
        self.send_now(data, wl).map_err(Refused::Io)
    }
}
