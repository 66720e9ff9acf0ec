//! hio's Remoter: one accepted connection as the guest sees it.
//!
//! `rxbs` holds the bytes handed over and not yet consumed; the host keeps
//! its own copy of them until `clear_rxbs` (or `consume_rxbs`) says the
//! policy is done, so a guest that is replaced or crashes loses nothing.

use crate::bindings::hio::tcp::remoter::{Connection, Remoter as Handle, TlsInfo};
use crate::bindings::hio::tcp::types::ShutdownHow;
use crate::{Ca, Error, Tymer, Tymth};

/// Largest rxbs allocation kept once emptied.
const KEEP: usize = 4 << 10;

/// What one read from the host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// No bytes now; more may come.
    Nothing,
    /// These bytes (never empty).
    Bytes(Vec<u8>),
    /// The peer closed or reset: nothing more will arrive (hio's cutoff).
    Ended,
}

/// hio's Remoter: one connection, as the policy sees it (`ix`). Its
/// bytes live in the host; `rxbs` is what was handed over and not yet consumed.
pub struct Remoter {
    handle: Handle,
    /// The host's key for this connection.
    pub id: u64,
    /// Local address the peer connected to.
    pub ha: Ca,
    /// Peer address.
    pub ca: Ca,
    /// Read size for `receive` (hio's bs).
    pub bs: u32,
    /// Received, handed over, not yet consumed.
    pub rxbs: Vec<u8>,
    /// The peer closed or reset: nothing more will arrive.
    pub cutoff: bool,
    /// Refresh the tymer on every successful receive or send.
    pub refreshable: bool,
    /// Idle tymer (duration = the server's tymeout).
    pub tymer: Tymer,
    /// For TLS: who is on the other end (version, cipher, ALPN, client certificate).
    pub tls: Option<TlsInfo>,
    pub(crate) txed: bool,
    closed: bool,
    /// Bytes of answers that may still be kept for this batch cycle's
    /// result (the host's `room`); 0 outside a batch cycle.
    pub(crate) room: u32,
    /// Answers are kept for this cycle's result (see `answers`).
    pub(crate) kept: bool,
}

impl Remoter {
    /// A connection as the host handed it over, its first bytes in rxbs.
    pub(crate) fn new(conn: Connection, bs: u32, tymth: Tymth, tymeout: f64) -> Remoter {
        Remoter {
            id: conn.id,
            ha: conn.ha.into(),
            ca: conn.ca.into(),
            handle: conn.remoter,
            bs,
            rxbs: conn.data,
            cutoff: conn.cutoff,
            refreshable: true,
            tymer: Tymer::new(tymth, tymeout, None),
            tls: None,
            txed: false,
            closed: false,
            room: 0,
            kept: false,
        }
    }

    /// The balancer's address when the host reads the PROXY protocol and
    /// the balancer named the client (then `ca` is the client); asks the
    /// host each time.
    pub fn proxied_by(&self) -> Option<Ca> {
        self.handle.proxied_by().ok().flatten().map(Ca::from)
    }

    /// Restart the idle tymer from now. (hio's `refresh` uses the lossless
    /// `restart`, which after a long idle can leave a busy connection
    /// expired; idle detection wants "since the last activity".)
    pub fn refresh(&mut self) {
        self.tymer.start(None, None);
    }

    /// Activity: the idle tymer starts again if this connection is refreshable.
    fn touch(&mut self) {
        if self.refreshable {
            self.refresh();
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed { Err(Error::Closed) } else { Ok(()) }
    }

    /// Bytes the host handed with a cycle: they join rxbs.
    pub(crate) fn arrived(&mut self, data: Vec<u8>, cutoff: bool) {
        self.cutoff |= cutoff;
        if data.is_empty() {
            return;
        }
        self.touch();
        if self.rxbs.is_empty() {
            self.rxbs = data;
        } else {
            self.rxbs.extend_from_slice(&data);
        }
    }

    /// Bytes a batch cycle handed (a slice of its one buffer): they join rxbs.
    pub(crate) fn arrived_from(&mut self, data: &[u8], cutoff: bool) {
        self.cutoff |= cutoff;
        if !data.is_empty() {
            self.touch();
            self.rxbs.extend_from_slice(data);
        }
    }

    /// The batch cycle is over: what it did not keep goes by host calls.
    pub(crate) fn cycle_over(&mut self) {
        self.room = 0;
        self.kept = false;
    }

    /// Send the answers kept for this cycle's result now, by host calls,
    /// in order: anything done through [`Remoter::handle`] then comes after
    /// them. (Every operation of this type does so itself when it must.)
    pub fn send_kept(&mut self) -> Result<(), Error> {
        if !self.kept {
            return Ok(());
        }
        self.kept = false;
        self.room = 0;
        let handle = &self.handle;
        crate::answers::take(self.id, |data, consume| handle.tx_consume(data, consume))?;
        Ok(())
    }

    /// hio's `receive`: one read of up to bs bytes. `None` is nothing now,
    /// `Some(empty)` is cutoff, otherwise the bytes (not added to rxbs).
    /// [`Remoter::receive_next`] says the same without the empty-means-end
    /// convention.
    pub fn receive(&mut self) -> Result<Option<Vec<u8>>, Error> {
        Ok(match self.receive_next()? {
            Received::Nothing => None,
            Received::Bytes(data) => Some(data),
            Received::Ended => Some(Vec::new()),
        })
    }

    /// One read of up to bs bytes (not added to rxbs).
    pub fn receive_next(&mut self) -> Result<Received, Error> {
        self.receive_up_to(self.bs)
    }

    fn receive_up_to(&mut self, max: u32) -> Result<Received, Error> {
        self.check_open()?;
        let receipt = self.handle.receive(max)?;
        self.cutoff |= receipt.cutoff;
        if !receipt.data.is_empty() {
            self.touch();
            return Ok(Received::Bytes(receipt.data));
        }
        Ok(if self.cutoff { Received::Ended } else { Received::Nothing })
    }

    /// hio's `serviceReceives`: take everything available into rxbs in one
    /// crossing. Returns the number of bytes added. (A cycle already hands
    /// each ready connection its bytes; this asks for any the host held
    /// back.)
    pub fn service_receives(&mut self) -> Result<usize, Error> {
        match self.receive_up_to(u32::MAX)? {
            Received::Bytes(data) => {
                let n = data.len();
                self.arrived(data, false);
                Ok(n)
            }
            Received::Nothing | Received::Ended => Ok(0),
        }
    }

    /// hio's `serviceReceiveOnce`: one receive of up to bs into rxbs.
    pub fn service_receive_once(&mut self) -> Result<usize, Error> {
        match self.receive_next()? {
            Received::Bytes(data) => {
                self.rxbs.extend_from_slice(&data);
                Ok(data.len())
            }
            Received::Nothing | Received::Ended => Ok(0),
        }
    }

    /// hio's `clearRxbs`: the policy is done with every byte in rxbs.
    pub fn clear_rxbs(&mut self) -> Result<(), Error> {
        self.consume_rxbs(self.rxbs.len())
    }

    /// The policy is done with the first `count` bytes of rxbs (a line
    /// protocol keeps a partial line).
    pub fn consume_rxbs(&mut self, count: usize) -> Result<(), Error> {
        let count = count.min(self.rxbs.len());
        if count == 0 {
            return Ok(());
        }
        if !self.closed {
            self.answer(&[], count)?;
            return Ok(());
        }
        self.drop_rxbs(count);
        Ok(())
    }

    fn drop_rxbs(&mut self, count: usize) {
        if count == self.rxbs.len() && self.rxbs.capacity() > KEEP {
            // Give a burst's buffer back instead of holding it per connection.
            self.rxbs = Vec::new();
        } else {
            self.rxbs.drain(..count);
        }
    }

    /// hio's `send`: write now; returns bytes the socket took (0 when it
    /// would block, or while queued bytes wait to go first).
    pub fn send(&mut self, data: &[u8]) -> Result<usize, Error> {
        self.check_open()?;
        self.send_kept()?;
        let n = self.handle.send(data)? as usize;
        if n > 0 {
            self.touch();
        }
        Ok(n)
    }

    /// hio's `tx`: queue bytes; the host sends them as the socket allows.
    pub fn tx(&mut self, data: &[u8]) -> Result<(), Error> {
        self.check_open()?;
        if data.is_empty() {
            return Ok(());
        }
        self.answer(data, 0)
    }

    /// `tx(data)` and `consume_rxbs(count)` as one step, in one crossing:
    /// the answer to some received bytes. A guest that crashes after it
    /// neither loses nor repeats the answer; when refused, nothing changed.
    pub fn tx_consume(&mut self, data: &[u8], count: usize) -> Result<(), Error> {
        self.check_open()?;
        self.answer(data, count.min(self.rxbs.len()))
    }

    /// hio's EchoServer step: queue rxbs back to the peer and consume it.
    pub fn echo_rxbs(&mut self) -> Result<(), Error> {
        if self.rxbs.is_empty() {
            return Ok(());
        }
        self.check_open()?;
        // Out of self while passed on, then back: its memory is kept.
        let rxbs = std::mem::take(&mut self.rxbs);
        let count = rxbs.len();
        let passed = self.pass(&rxbs, count);
        self.rxbs = rxbs;
        passed?;
        self.answered(true, count);
        Ok(())
    }

    /// Queue `data` and consume the first `count` bytes of rxbs: kept for
    /// the batch cycle's result when it fits the room the host set aside,
    /// else one host call (after the answers kept, to keep their order).
    fn answer(&mut self, data: &[u8], count: usize) -> Result<(), Error> {
        self.pass(data, count)?;
        self.answered(!data.is_empty(), count);
        Ok(())
    }

    /// `answer`, leaving rxbs alone.
    fn pass(&mut self, data: &[u8], count: usize) -> Result<(), Error> {
        let room = data.len() <= self.room as usize && (self.room > 0 || self.kept);
        if room && crate::answers::fits(data.len()) {
            crate::answers::keep(self.id, data, count as u64);
            self.room -= data.len() as u32;
            self.kept = true;
        } else {
            self.send_kept()?;
            if data.is_empty() {
                self.handle.consume(count as u64)?;
            } else {
                self.handle.tx_consume(data, count as u64)?;
                // The host took it from the room first, as it does.
                self.room = self.room.saturating_sub(u32::try_from(data.len()).unwrap_or(u32::MAX));
            }
        }
        Ok(())
    }

    fn answered(&mut self, txed: bool, consumed: usize) {
        if txed {
            self.txed = true;
            self.touch();
        }
        self.drop_rxbs(consumed);
    }

    /// hio's `serviceSends`: try to send what is queued now. The host also
    /// sends after every cycle and whenever the socket becomes writable.
    pub fn service_sends(&mut self) -> Result<u64, Error> {
        self.check_open()?;
        self.send_kept()?;
        self.txed = false;
        Ok(self.handle.flush()?)
    }

    /// Bytes the peer has not yet taken: queued in the host, and in the
    /// kernel's send buffer (hio's txbs, and what the socket holds).
    pub fn queued(&mut self) -> Result<u64, Error> {
        self.check_open()?;
        self.send_kept()?;
        Ok(self.handle.queued()?)
    }

    /// Shut down one or both directions of the socket (hio's `shutdown`).
    pub fn shutdown(&mut self, how: ShutdownHow) -> Result<(), Error> {
        self.check_open()?;
        self.send_kept()?;
        Ok(self.handle.shutdown(how)?)
    }

    /// No more sending: the host sends what is queued, then FIN.
    pub fn shutdown_send(&mut self) -> Result<(), Error> {
        self.shutdown(ShutdownHow::Send)
    }

    /// No more receiving.
    pub fn shutdown_receive(&mut self) -> Result<(), Error> {
        self.shutdown(ShutdownHow::Receive)
    }

    /// Close: the host still sends what is queued, then FIN. Idempotent.
    pub fn close(&mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        let kept = self.send_kept();
        self.closed = true;
        kept.and(Ok(self.handle.close()?))
    }

    /// Whether this connection was closed.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The raw host handle, for operations the SDK does not wrap. What is
    /// done through it happens at once, before answers kept for this
    /// cycle's result: call [`Remoter::send_kept`] first where order matters.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Remoter {
    /// Answers kept for the cycle's result go before the handle closes the
    /// connection.
    fn drop(&mut self) {
        if let Err(e) = self.send_kept() {
            crate::log::warn(&format!("{}: answers could not be sent before it left: {e}", self.ca));
        }
    }
}
