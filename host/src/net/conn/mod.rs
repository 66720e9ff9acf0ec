//! One accepted connection (the host half of hio's Remoter): a socket, a
//! transport over it (plain, or TLS in `tls`), what was received and not
//! consumed and what is queued and not sent (`buffers`), where each
//! direction stands, and the looks at whether the peer takes its output
//! (`output`). How much it may hold is `crate::net::backpressure`'s.
//!
//! The host holds every byte in flight. Received bytes stay until the guest
//! consumes them (a replacement guest is lent them again); queued bytes stay
//! until the socket takes them.

mod buffers;
mod guest;
mod output;
mod takeover;
mod tls;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mio::Interest;
use mio::net::TcpStream;
use rustls::server::danger::ClientCertVerifier;

use self::buffers::{RxBuf, TxQueue};
pub use self::guest::Refused;
use self::output::OutputWatch;
pub use self::output::{OutputCheck, Stall, StallLimits};
pub use self::takeover::SavedConn;
use self::tls::Tls;
pub use self::tls::{TlsFailure, TlsState};
use crate::net::backpressure::{self, Budget, Share};
use crate::net::proxy::{self, Header};
use crate::net::wirelog::WireLog;

/// What a read pass found worth telling the guest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    pub bytes: usize,
    pub new_cutoff: bool,
    /// A TLS handshake finished or was aborted.
    pub tls_changed: bool,
    /// Its PROXY header was read (`Ok`) or refused (`Err`, with why).
    pub proxy: Option<Result<(), String>>,
}

/// Where receiving stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadSide {
    Open,
    /// Stopped at a mark or at the server-wide bound; resumed as it drains.
    Paused,
    /// hio's shutdownReceive: the guest wants no more.
    Shut,
    /// The peer closed or reset (hio's cutoff): nothing more will come.
    Ended,
}

/// Where sending stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteSide {
    Open,
    /// Send FIN once the queue is empty.
    FinWanted,
    FinSent,
    /// Writing failed: queued bytes can never be delivered.
    Broken,
}

/// How bytes reach the socket.
enum Transport {
    Plain,
    Tls(Box<Tls>),
}

pub struct Conn {
    pub sock: TcpStream,
    /// The local address the peer connected to (hio's ha).
    pub local: SocketAddr,
    /// The peer's address (hio's ca).
    pub peer: SocketAddr,
    rx: RxBuf,
    tx: TxQueue,
    read: ReadSide,
    write: WriteSide,
    /// The guest closed it: finish sending, then release.
    pub closing: bool,
    /// A guest holds a handle to it (it left the axes), or is owed one by
    /// a lazy hand-over (`owed`).
    pub adopted: bool,
    /// Adopted, but not yet handed to the guest now running (WIT
    /// `handover`): its news waits until it is.
    pub owed: bool,
    transport: Transport,
    /// This connection's part of the server-wide bound.
    share: Share,
    output: OutputWatch,
    pub interest: Interest,
    /// Already listed in the host's ready / dirty lists.
    pub in_ready: bool,
    pub in_dirty: bool,
    /// Listed in the host's starved queue (reading waits for the
    /// server-wide bound to drain).
    pub starved: bool,
    /// Moved here by a takeover not yet committed: the predecessor may
    /// still take it back, so nothing touches the socket.
    held: bool,
    /// Its PROXY protocol header is still to come (`--proxy-protocol`).
    pub awaiting_proxy: bool,
    /// The balancer's address, when a PROXY header named the client (`peer`).
    pub proxied_by: Option<SocketAddr>,
    /// Room set aside for the guest's answers in the current batch cycle
    /// (WIT `batch.news.room`), bytes; 0 outside one.
    pub(crate) promised: usize,
}

/// Errors that hio maps to "cutoff" instead of raising.
pub fn is_cutoff_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionRefused
            | ErrorKind::BrokenPipe
            | ErrorKind::TimedOut
            | ErrorKind::NetworkUnreachable
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkDown
            | ErrorKind::NotConnected
            | ErrorKind::UnexpectedEof
    ) || matches!(e.raw_os_error(), Some(libc::ENETRESET | libc::EHOSTDOWN))
}

impl Conn {
    pub fn new(sock: TcpStream, local: SocketAddr, peer: SocketAddr, budget: Budget) -> Conn {
        Conn {
            sock,
            local,
            peer,
            rx: RxBuf::default(),
            tx: TxQueue::default(),
            read: ReadSide::Open,
            write: WriteSide::Open,
            closing: false,
            adopted: false,
            owed: false,
            transport: Transport::Plain,
            share: Share::new(budget),
            output: OutputWatch::default(),
            interest: Interest::READABLE,
            in_ready: false,
            in_dirty: false,
            starved: false,
            held: false,
            awaiting_proxy: false,
            proxied_by: None,
            promised: 0,
        }
    }

    /// A connection whose bytes go through a TLS session.
    pub fn new_tls(
        sock: TcpStream,
        local: SocketAddr,
        peer: SocketAddr,
        budget: Budget,
        session: rustls::ServerConnection,
        verifier: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Conn {
        let mut c = Conn::new(sock, local, peer, budget);
        c.transport = Transport::Tls(Box::new(Tls::new(session, verifier)));
        c
    }

    /// The peer closed or reset: nothing more will be received (hio's cutoff).
    pub fn cutoff(&self) -> bool {
        self.read == ReadSide::Ended
    }

    fn end_read(&mut self) {
        self.read = ReadSide::Ended;
    }

    /// A read stopped at a mark (or the bound).
    fn paused(&mut self, out: ReadOutcome) -> ReadOutcome {
        if self.read == ReadSide::Open {
            self.read = ReadSide::Paused;
        }
        out
    }

    /// A read found the end.
    fn ended(&mut self, mut out: ReadOutcome) -> ReadOutcome {
        self.end_read();
        out.new_cutoff = true;
        out
    }

    /// The server-wide bound now counts what its buffers hold.
    fn account(&mut self) {
        self.share.set(self.rx.capacity() + self.tx.capacity());
    }

    /// Read until the socket would block, the peer closes, or the guest has
    /// too much unconsumed. `scratch` is the loop's shared read buffer: bytes
    /// are copied into rx only as far as they arrived. Once the guest
    /// closed it, what arrives is read and dropped.
    ///
    /// `short_read_drains`: the call answers an edge-triggered readiness
    /// event that reported no pending end or error, so a read shorter than
    /// asked for emptied the socket's receive queue (anything arriving later
    /// raises a new event) and the read that would only say EAGAIN is
    /// skipped, as nginx's `ngx_unix_recv` does. Otherwise it reads until
    /// EAGAIN (an end already pending is seen at once).
    pub fn read(&mut self, scratch: &mut [u8], wl: Option<&mut WireLog>, short_read_drains: bool) -> ReadOutcome {
        if matches!(self.read, ReadSide::Ended | ReadSide::Shut) {
            return ReadOutcome::default();
        }
        if self.closing {
            self.discard_input(scratch);
            return ReadOutcome { new_cutoff: self.cutoff(), ..ReadOutcome::default() };
        }
        let proxy = if self.awaiting_proxy {
            match self.read_proxy_header() {
                None => return ReadOutcome::default(),
                Some(Err(why)) => return ReadOutcome { proxy: Some(Err(why)), ..ReadOutcome::default() },
                Some(Ok(())) => Some(Ok(())),
            }
        } else {
            None
        };
        let mut out = match self.transport {
            Transport::Plain => self.read_plain(scratch, wl, short_read_drains),
            Transport::Tls(_) => self.read_tls(scratch, wl),
        };
        out.proxy = proxy;
        self.account();
        out
    }

    /// The PROXY header, once whole: the peer becomes the client it names,
    /// the balancer is kept as `proxied_by`. `None` while it is incomplete.
    fn read_proxy_header(&mut self) -> Option<Result<(), String>> {
        match proxy::take(&mut self.sock) {
            Header::Waiting => None,
            Header::Read(source) => {
                self.awaiting_proxy = false;
                if let Some(client) = source {
                    self.proxied_by = Some(std::mem::replace(&mut self.peer, client));
                }
                Some(Ok(()))
            }
            Header::Bad(why) => Some(Err(why)),
            Header::Closed => Some(Err("closed before its PROXY header was whole".into())),
        }
    }

    fn read_plain(&mut self, scratch: &mut [u8], mut wl: Option<&mut WireLog>, short_read_drains: bool) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        loop {
            // Never past the mark, so rx never outgrows it.
            let room = self.read_room();
            if room == 0 {
                return self.paused(out);
            }
            let got = self.rx.recv_from(&self.sock, room, scratch);
            match got {
                Ok((0, _)) => return self.ended(out),
                Ok((n, asked)) => {
                    if let Some(wl) = wl.as_deref_mut() {
                        wl.rx(self.peer, self.rx.tail(n));
                    }
                    out.bytes += n;
                    if short_read_drains && n < asked {
                        return out;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if is_cutoff_error(&e) {
                        tracing::debug!(ca = %self.peer, "peer cut off: {e}");
                    } else {
                        tracing::warn!(ca = %self.peer, "receive failed: {e}");
                    }
                    return self.ended(out);
                }
            }
        }
    }

    /// How many more bytes may be read now (see `backpressure::read_room`).
    fn read_room(&self) -> usize {
        backpressure::read_room(self.rx.len(), self.tx.len(), self.share.budget().full())
    }

    /// Reading is paused only because the server-wide bound is reached.
    pub fn waits_for_budget(&self) -> bool {
        let own_marks_allow = backpressure::read_room(self.rx.len(), self.tx.len(), false) > 0;
        self.read == ReadSide::Paused && own_marks_allow && self.read_room() == 0
    }

    /// Something for the socket that only a flush will send (TLS records).
    pub fn needs_flush(&self) -> bool {
        self.tls_wants_write() || self.closing
    }

    /// Reading stopped at a mark that has since been drained.
    pub fn wants_read_resume(&self) -> bool {
        self.read == ReadSide::Paused && self.read_room() > 0
    }

    pub fn clear_read_pause(&mut self) {
        if self.read == ReadSide::Paused {
            self.read = ReadSide::Open;
        }
    }

    /// hio's `send`: write now unless queued bytes must go first.
    pub fn send_now(&mut self, data: &[u8], wl: Option<&mut WireLog>) -> io::Result<usize> {
        if !self.tx.is_empty() || self.write == WriteSide::Broken || self.held {
            return Ok(0);
        }
        if let Transport::Tls(_) = self.transport {
            return self.send_tls(data, wl);
        }
        let n = match write_some(&mut self.sock, data) {
            Ok(n) => n,
            Err(e) => return self.broken(e).map(|_| 0),
        };
        self.output.wrote(n);
        if let Some(wl) = wl {
            wl.tx(self.peer, &data[..n]);
        }
        Ok(n)
    }

    /// Send queued bytes until done or the socket would block; then send a
    /// FIN if one is wanted. Returns bytes sent.
    pub fn flush(&mut self, wl: Option<&mut WireLog>) -> io::Result<u64> {
        if self.held {
            return Ok(0);
        }
        let sent = match self.transport {
            Transport::Plain => self.flush_plain(wl),
            Transport::Tls(_) => self.flush_tls(wl),
        };
        self.account();
        sent
    }

    fn flush_plain(&mut self, mut wl: Option<&mut WireLog>) -> io::Result<u64> {
        let mut sent = 0u64;
        while !self.tx.is_empty() {
            let pending = self.tx.pending();
            let n = match write_some(&mut self.sock, pending) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return self.broken(e).map(|_| sent),
            };
            if let Some(wl) = wl.as_deref_mut() {
                wl.tx(self.peer, &pending[..n]);
            }
            self.tx.advance(n);
            self.output.wrote(n);
            sent += n as u64;
        }
        if self.tx.is_empty() && self.write == WriteSide::FinWanted {
            self.send_fin();
        }
        Ok(sent)
    }

    /// FIN after the last byte. A socket its peer has already reset takes
    /// no FIN (ENOTCONN): nothing more can reach that peer, so the
    /// connection is done at once instead of lingering for bytes that
    /// cannot go (what TLS still held, say).
    fn send_fin(&mut self) {
        self.write = WriteSide::FinSent;
        if let Err(e) = self.sock.shutdown(Shutdown::Write)
            && e.kind() == ErrorKind::NotConnected
        {
            self.write = WriteSide::Broken;
        }
    }

    /// Writing failed: the peer is gone (hio's cutoff) and what is queued can
    /// never be delivered. Only errors hio would raise are returned.
    fn broken(&mut self, e: io::Error) -> io::Result<()> {
        tracing::debug!(ca = %self.peer, "send failed: {e}");
        self.write = WriteSide::Broken;
        self.end_read();
        self.tx.clear();
        self.account();
        if is_cutoff_error(&e) { Ok(()) } else { Err(e) }
    }

    /// hio's shutdown(how). Errors are ignored, as in hio.
    pub fn shutdown(&mut self, read: bool, write: bool) {
        if read {
            if self.read != ReadSide::Ended {
                self.read = ReadSide::Shut;
            }
            if !self.held {
                let _ = self.sock.shutdown(Shutdown::Read);
            }
        }
        if write && self.write == WriteSide::Open {
            self.write = WriteSide::FinWanted;
        }
    }

    /// The guest is done with this connection: what is queued is still
    /// sent, then FIN. What it did not consume is dropped, and what the
    /// peer sends from now on is read and dropped.
    pub fn close(&mut self) {
        self.closing = true;
        if self.write == WriteSide::Open {
            self.write = WriteSide::FinWanted;
        }
        self.rx.clear();
        self.clear_read_pause();
        self.account();
        self.output.closed();
    }

    /// A closing connection is done once everything queued went out (or never can).
    pub fn finished(&self) -> bool {
        self.closing && (self.write == WriteSide::Broken || (self.tx.is_empty() && !self.tls_wants_write()))
    }

    /// The readiness this connection needs now.
    pub fn wanted_interest(&self) -> Interest {
        if self.output_waits() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE }
    }

    /// Read and drop what the peer sends: the guest closed the connection.
    /// Kept unread, it would make the kernel reset the connection when the
    /// socket is closed, destroying replies the peer has not yet received
    /// (RFC 1122 4.2.2.13; nginx's lingering close does the same). Returns
    /// how many bytes were dropped; the peer's end or reset is a cutoff.
    pub fn discard_input(&mut self, scratch: &mut [u8]) -> u64 {
        let mut dropped = 0;
        loop {
            match self.sock.read(scratch) {
                Ok(0) => break,
                Ok(n) => dropped += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return dropped,
                Err(_) => break,
            }
        }
        self.end_read();
        dropped
    }

    /// Give up on the connection: an abortive close (RST), so the peer
    /// learns its stream did not end complete.
    pub fn reset(self) {
        if let Err(e) = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(ca = %self.peer, "cannot arm the reset: {e}");
        }
    }
}

/// One write: WouldBlock is 0 bytes.
fn write_some(sock: &mut TcpStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match sock.write(data) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::backpressure::{FLOOR, RX_HIGH_WATER, TX_HIGH_WATER};
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::{Duration, Instant};

    /// A host-side Conn and the peer's blocking socket, over real loopback TCP.
    pub(super) fn pair() -> (Conn, StdStream) {
        pair_in(Budget::new(256 << 20))
    }

    fn pair_in(budget: Budget) -> (Conn, StdStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (s, ca) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let ha = s.local_addr().unwrap();
        (Conn::new(TcpStream::from_std(s), ha, ca, budget), peer)
    }

    /// Read until `want` bytes arrived or the deadline passes.
    fn read_until(c: &mut Conn, scratch: &mut [u8], want: u64) -> ReadOutcome {
        let start = Instant::now();
        let mut total = ReadOutcome::default();
        while c.pending() < want && !c.cutoff() {
            let o = c.read(scratch, None, false);
            total.bytes += o.bytes;
            total.new_cutoff |= o.new_cutoff;
            assert!(start.elapsed() < Duration::from_secs(5), "bytes never arrived");
        }
        total
    }

    #[test]
    fn handed_bytes_stay_until_consumed_and_rewind_hands_them_again() {
        let (mut c, mut peer) = pair();
        let mut scratch = vec![0; 4096];
        peer.write_all(b"hello world").unwrap();
        read_until(&mut c, &mut scratch, 11);
        assert_eq!(c.hand(5), (b"hello".to_vec(), false));
        assert_eq!(c.hand(100), (b" world".to_vec(), false));
        assert_eq!(c.hand(100), (Vec::new(), false), "nothing new to hand");
        // Only handed bytes can be consumed.
        assert_eq!(c.consume(6), 6);
        assert_eq!(c.pending(), 5);
        c.rewind();
        assert!(c.has_news());
        assert_eq!(c.hand(100), (b"world".to_vec(), false), "a new guest sees the unconsumed rest");
        assert_eq!(c.consume(u64::MAX), 5);
        assert_eq!(c.pending(), 0);
        assert!(!c.has_news());
    }

    #[test]
    fn eof_is_a_cutoff_reported_after_the_last_byte() {
        let (mut c, mut peer) = pair();
        let mut scratch = vec![0; 4096];
        peer.write_all(b"last").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let got = read_until(&mut c, &mut scratch, u64::MAX);
        assert!(got.new_cutoff && c.cutoff());
        assert_eq!(c.hand(2), (b"la".to_vec(), false), "not ended while bytes remain");
        assert_eq!(c.hand(2), (b"st".to_vec(), true));
    }

    #[test]
    fn reset_is_a_cutoff_not_an_error() {
        let (mut c, peer) = pair();
        let mut scratch = vec![0; 4096];
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        read_until(&mut c, &mut scratch, u64::MAX);
        assert!(c.cutoff());
        // Writing to the reset peer breaks the connection quietly and drops the queue.
        c.queue(b"lost".to_vec());
        assert!(c.flush(None).is_ok());
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn queue_flush_then_fin_on_close() {
        let (mut c, mut peer) = pair();
        c.queue(b"one ".to_vec());
        c.queue(b"two".to_vec());
        assert_eq!(c.queued(), 7);
        c.close();
        assert!(!c.accepts_tx());
        assert_eq!(c.flush(None).unwrap(), 7);
        assert!(c.finished());
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"one two", "every queued byte, then a clean FIN");
    }

    #[test]
    fn reading_pauses_while_the_peer_does_not_read_its_replies() {
        let (mut c, mut peer) = pair();
        let mut scratch = vec![0; 4096];
        c.queue(vec![1u8; TX_HIGH_WATER]);
        peer.write_all(b"more").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.read(&mut scratch, None, false).bytes, 0, "no reading while replies pile up");
        assert!(!c.wants_read_resume());
        let mut sink = vec![0u8; TX_HIGH_WATER];
        let reader = std::thread::spawn(move || {
            peer.read_exact(&mut sink).unwrap();
            peer
        });
        let start = Instant::now();
        while c.queued() > 0 {
            c.flush(None).unwrap();
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        let _peer = reader.join().unwrap();
        assert!(c.wants_read_resume());
        c.clear_read_pause();
        read_until(&mut c, &mut scratch, 4);
        assert_eq!(c.hand(10).0, b"more");
    }

    #[test]
    fn send_now_waits_behind_queued_bytes() {
        let (mut c, mut peer) = pair();
        c.queue(b"first".to_vec());
        assert_eq!(c.send_now(b"second", None).unwrap(), 0, "must not overtake the queue");
        c.flush(None).unwrap();
        assert_eq!(c.send_now(b"second", None).unwrap(), 6);
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"firstsecond");
    }

    #[test]
    fn reading_pauses_at_high_water_and_resumes_when_consumed() {
        let (mut c, peer) = pair();
        let mut scratch = vec![0; 64 * 1024];
        let total = RX_HIGH_WATER * 2;
        let mut writer = peer.try_clone().unwrap();
        let t = std::thread::spawn(move || writer.write_all(&vec![9u8; total]).unwrap());
        read_until(&mut c, &mut scratch, RX_HIGH_WATER as u64);
        // More is waiting in the kernel, but the host holds at most the mark (plus one read).
        assert!(c.pending() < (RX_HIGH_WATER + scratch.len()) as u64);
        assert!(c.read(&mut scratch, None, false).bytes == 0 && !c.wants_read_resume());
        let (data, _) = c.hand(usize::MAX);
        c.consume(data.len() as u64);
        assert!(c.wants_read_resume());
        c.clear_read_pause();
        let mut seen = data.len();
        let start = Instant::now();
        while seen < total {
            c.read(&mut scratch, None, false);
            let (d, _) = c.hand(usize::MAX);
            seen += d.len();
            c.consume(d.len() as u64);
            c.clear_read_pause();
            assert!(start.elapsed() < Duration::from_secs(10), "stalled at {seen} of {total}");
        }
        assert_eq!(seen, total);
        t.join().unwrap();
        drop(peer);
    }

    #[test]
    fn connections_share_one_bound_on_what_they_hold() {
        let budget = Budget::new(100_000);
        let (mut a, mut peer_a) = pair_in(budget.clone());
        let (mut b, mut peer_b) = pair_in(budget.clone());
        let mut scratch = vec![0; 64 * 1024];
        peer_a.write_all(&[1u8; 150_000]).unwrap();
        read_until(&mut a, &mut scratch, 100_000);
        assert!(budget.full(), "one connection filled the server's budget");
        // Under the floor, a connection still reads at the bound, up to the floor.
        let more = vec![2u8; 2 * FLOOR];
        peer_b.write_all(&more).unwrap();
        read_until(&mut b, &mut scratch, FLOOR as u64);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            b.read(&mut scratch, None, false).bytes,
            0,
            "no reading past the floor while the server is at its bound"
        );
        assert_eq!(b.pending(), FLOOR as u64);
        assert!(b.waits_for_budget() && !b.wants_read_resume());
        assert!(!b.has_room(150_000), "queuing past twice the bound is refused");
        assert!(b.has_room(FLOOR), "a queue under the floor always fits");
        let (data, _) = a.hand(usize::MAX);
        a.consume(data.len() as u64);
        assert!(!budget.full() && b.wants_read_resume());
        b.clear_read_pause();
        read_until(&mut b, &mut scratch, more.len() as u64);
        assert_eq!(b.hand(usize::MAX).0, more);
        drop(a);
        b.queue(vec![0; 10]);
        assert_eq!(budget.held(), b.rx.capacity() + b.tx.capacity(), "a dropped connection gives its share back");
    }

    #[test]
    fn a_closed_connection_drops_unconsumed_input_and_discards_what_comes_after() {
        let (mut c, mut peer) = pair();
        let mut scratch = vec![0; 4096];
        peer.write_all(b"unconsumed").unwrap();
        read_until(&mut c, &mut scratch, 10);
        c.close();
        assert_eq!(c.pending(), 0);
        assert!(!c.owes_guest(), "a closed connection is nobody's suspect");
        peer.write_all(b"late").unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let start = Instant::now();
        while !c.cutoff() {
            assert_eq!(c.read(&mut scratch, None, false).bytes, 0, "nothing joins rx once closed");
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(c.pending(), 0);
    }
}
