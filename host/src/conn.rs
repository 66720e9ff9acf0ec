//! One accepted connection (the host half of hio's Remoter).
//!
//! The host holds every byte in flight. `rx` keeps received bytes until the
//! guest consumes them; `handed` marks how many of those the current guest has
//! already been given, so a replacement guest is simply handed them again.
//! `tx` keeps queued bytes until the socket takes them.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;
use mio::net::TcpStream;
use rustls::server::danger::ClientCertVerifier;

use crate::budget::Budget;
use crate::tls::{PeerInfo, check_resumed, peer_info};
use crate::wirelog::WireLog;

/// Stop reading from a peer once this many received bytes wait for the
/// guest; reading resumes as the guest consumes them. (Four times the
/// in-flight window of the bandwidth benchmark; the kernel's socket buffers
/// hold more behind it.)
pub const RX_HIGH_WATER: usize = 256 << 10;
/// Stop reading from a peer once this many bytes queued for it are unsent
/// (it does not read its replies); resume as the queue drains. With the rx
/// mark this bounds what one connection holds, and TCP pushes back on the peer.
pub const TX_HIGH_WATER: usize = 256 << 10;

/// Most bytes a guest may have queued on one connection: a policy that
/// writes faster than its peer reads is told `full`, not given memory.
pub const TX_CAP: usize = 8 << 20;

/// What every connection may hold (received and not consumed, queued and
/// not sent) however full the server-wide bound is: a peer that reads its
/// replies holds next to nothing between exchanges, so peers that do not
/// read theirs, however many, cannot stall it (its exchanges go through in
/// steps of this size). Beyond the bound, each connection holds at most
/// about this much more: small, as 10,000 connections may each take it.
pub const FLOOR: usize = 4 << 10;

/// First and longest wait between looks at a lingering connection's kernel
/// send queue (there is no readiness event for "the peer acknowledged it all").
const LINGER_FIRST_LOOK: Duration = Duration::from_millis(10);
const LINGER_MAX_LOOK: Duration = Duration::from_secs(1);

/// Spare room in rx worth reading into directly rather than through the
/// loop's scratch buffer (a kept, emptied rx buffer has this much).
const DIRECT_READ: usize = 4 << 10;

/// What a read pass found worth telling the guest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    pub bytes: usize,
    pub new_cutoff: bool,
    /// A TLS handshake finished or was aborted.
    pub tls_changed: bool,
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

/// Where a TLS connection stands (hio's cxes -> ixes promotion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsState {
    Handshaking,
    Connected(PeerInfo),
    Aborted(String),
}

/// The TLS half of a connection (hio's RemoterTls).
pub struct Tls {
    session: rustls::ServerConnection,
    pub state: TlsState,
    close_notify_sent: bool,
    /// Checks the client certificate of a resumed session again.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

pub struct Conn {
    pub sock: TcpStream,
    pub ha: SocketAddr,
    pub ca: SocketAddr,
    rx: Vec<u8>,
    handed: usize,
    tx: Vec<u8>,
    tx_off: usize,
    /// The peer closed or reset: nothing more will be received.
    pub cutoff: bool,
    /// hio's shutdownReceive: stop reading.
    read_shut: bool,
    /// Reading stopped at the high-water mark; resume when consumed.
    read_paused: bool,
    /// Send FIN once tx is empty.
    fin_wanted: bool,
    fin_sent: bool,
    /// The guest closed it: finish sending, then release.
    pub closing: bool,
    /// Writing failed: queued bytes can never be delivered.
    write_broken: bool,
    pub interest: Interest,
    /// Already listed in the host's ready / dirty lists.
    pub in_ready: bool,
    pub in_dirty: bool,
    /// A guest holds a handle to it (it left the axes).
    pub adopted: bool,
    pub tls: Option<Box<Tls>>,
    /// The server-wide bound, and this connection's share of it.
    budget: Budget,
    held: usize,
    /// Listed in the core's starved queue (reading waits for the
    /// server-wide bound to drain).
    pub starved: bool,
    /// Since when output has waited for the peer without it taking a byte
    /// (queued in the host, or, once closed, in the kernel); `None` when
    /// nothing waits.
    stalled_since: Option<Instant>,
    /// When the core's stall deadlines will look at it next, and in which
    /// phase it was listed: a connection that has since begun closing, or
    /// lingering, needs an earlier look.
    listed: Option<(Instant, Phase)>,
    /// Bytes written to the socket, ever.
    written: u64,
    /// Bytes the peer's TCP had acknowledged at the last look: more now is
    /// progress.
    last_delivered: u64,
    /// Wrote to the socket since the last look.
    wrote: bool,
    /// Wait before the next look, while lingering.
    linger_look: Duration,
}

/// What [`Conn::check_output`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputCheck {
    /// Nothing waits for the peer.
    Nothing,
    /// Look again then.
    Wait(Instant),
    /// Closed, and everything it sent has reached the peer: release it.
    Release,
    /// The peer took nothing for too long: give up on it.
    Stalled(Stall),
}

/// Why the host gives up on a connection whose peer does not take its output.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Stall {
    /// Open: nothing taken for the send timeout.
    SendTimeout,
    /// Closed by the guest: nothing taken for the linger time.
    Linger,
}

/// Where a connection's output stands, as the stall deadlines see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Open: bounded by the send timeout.
    Open,
    /// Closed by the guest, its queue still going out: bounded by linger.
    Closing,
    /// Its FIN sent: looked at often, to be let go once the peer has it all.
    Lingering,
}

/// How long a peer may leave its output untaken.
#[derive(Debug, Clone, Copy)]
pub struct StallLimits {
    /// Open connections; `None`: no limit.
    pub send_timeout: Option<Duration>,
    /// Closing connections.
    pub linger: Duration,
}

impl StallLimits {
    /// How late a look may come: at most 250 ms, and an eighth of the
    /// shortest limit.
    pub fn slack(&self) -> Duration {
        let shortest = self.send_timeout.map_or(self.linger, |t| t.min(self.linger));
        (shortest / 8).min(Duration::from_millis(250))
    }
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
    ) || matches!(e.raw_os_error(), Some(libc_errno::ENETRESET | libc_errno::EHOSTDOWN))
}

/// errno values std has no ErrorKind for.
mod libc_errno {
    pub const ENETRESET: i32 = 102;
    pub const EHOSTDOWN: i32 = 112;
}

impl Conn {
    pub fn new(sock: TcpStream, ha: SocketAddr, ca: SocketAddr, budget: Budget) -> Conn {
        Conn {
            sock,
            ha,
            ca,
            rx: Vec::new(),
            handed: 0,
            tx: Vec::new(),
            tx_off: 0,
            cutoff: false,
            read_shut: false,
            read_paused: false,
            fin_wanted: false,
            fin_sent: false,
            closing: false,
            write_broken: false,
            interest: Interest::READABLE,
            in_ready: false,
            in_dirty: false,
            adopted: false,
            tls: None,
            budget,
            held: 0,
            starved: false,
            stalled_since: None,
            listed: None,
            written: 0,
            last_delivered: 0,
            wrote: false,
            linger_look: LINGER_FIRST_LOOK,
        }
    }

    /// A connection whose bytes go through a TLS session.
    pub fn new_tls(
        sock: TcpStream,
        ha: SocketAddr,
        ca: SocketAddr,
        budget: Budget,
        session: rustls::ServerConnection,
        verifier: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Conn {
        let mut c = Conn::new(sock, ha, ca, budget);
        c.tls = Some(Box::new(Tls { session, state: TlsState::Handshaking, close_notify_sent: false, verifier }));
        c
    }

    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.state == TlsState::Handshaking)
    }

    /// TLS gave up on this connection: say why once, send the alert rustls
    /// queued, then close. Nothing queued for it can be delivered.
    pub fn abort(&mut self, reason: String) {
        let Some(tls) = &mut self.tls else { return };
        if matches!(tls.state, TlsState::Aborted(_)) {
            return;
        }
        if tls.state == TlsState::Handshaking {
            tracing::warn!(ca = %self.ca, "TLS handshake failed: {reason}");
        } else {
            tracing::warn!(ca = %self.ca, "TLS connection failed: {reason}");
        }
        tls.state = TlsState::Aborted(reason);
        tls.close_notify_sent = true;
        self.cutoff = true;
        self.tx = Vec::new();
        self.tx_off = 0;
        self.account();
        self.close();
    }

    /// Bring this connection's share of the server-wide budget up to date
    /// after its buffers changed. What counts is memory (capacity), not
    /// just the bytes in it.
    fn account(&mut self) {
        let now = self.rx.capacity() + self.tx.capacity();
        if now != self.held {
            self.budget.shift(self.held, now);
            self.held = now;
        }
    }

    /// Read until the socket would block, the peer closes, or the guest has
    /// too much unconsumed. `scratch` is the loop's shared read buffer: bytes
    /// are copied into `rx` only as far as they arrived.
    pub fn read(&mut self, scratch: &mut [u8], wl: Option<&mut WireLog>) -> ReadOutcome {
        if self.cutoff || self.read_shut {
            return ReadOutcome::default();
        }
        if self.closing {
            let was = self.cutoff;
            self.discard_input(scratch);
            return ReadOutcome { new_cutoff: self.cutoff && !was, ..ReadOutcome::default() };
        }
        let out = if self.tls.is_some() { self.read_tls(scratch, wl) } else { self.read_plain(scratch, wl) };
        self.account();
        out
    }

    fn read_plain(&mut self, scratch: &mut [u8], mut wl: Option<&mut WireLog>) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        loop {
            // Never past the mark, so rx never outgrows it.
            let room = self.read_room();
            if room == 0 {
                self.read_paused = true;
                break;
            }
            let spare = self.rx.capacity() - self.rx.len();
            let got = if spare >= DIRECT_READ {
                // Straight into rx's spare capacity: one copy fewer.
                recv_into(&self.sock, &mut self.rx, room)
            } else {
                let room = room.min(scratch.len());
                self.sock.read(&mut scratch[..room]).inspect(|&n| self.rx.extend_from_slice(&scratch[..n]))
            };
            match got {
                Ok(0) => {
                    self.cutoff = true;
                    out.new_cutoff = true;
                    break;
                }
                Ok(n) => {
                    if let Some(wl) = wl.as_deref_mut() {
                        wl.rx(self.ca, &self.rx[self.rx.len() - n..]);
                    }
                    out.bytes += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !is_cutoff_error(&e) {
                        tracing::warn!(ca = %self.ca, "receive failed: {e}");
                    } else {
                        tracing::debug!(ca = %self.ca, "peer cut off: {e}");
                    }
                    self.cutoff = true;
                    out.new_cutoff = true;
                    break;
                }
            }
        }
        out
    }

    /// How many more bytes may be read now: up to the connection's own
    /// mark, and while the server-wide bound is reached, only up to `FLOOR`.
    fn read_room(&self) -> usize {
        if self.over_own_marks() {
            return 0;
        }
        let room = RX_HIGH_WATER - self.rx.len();
        if !self.budget.full() {
            return room;
        }
        room.min(FLOOR.saturating_sub(self.holding()))
    }

    /// Bytes this connection holds: received and not consumed, queued and not sent.
    fn holding(&self) -> usize {
        self.rx.len() + self.queued() as usize
    }

    fn over_own_marks(&self) -> bool {
        self.rx.len() >= RX_HIGH_WATER || self.queued() >= TX_HIGH_WATER as u64
    }

    /// Reading is paused only because the server-wide bound is reached.
    pub fn waits_for_budget(&self) -> bool {
        self.read_paused && !self.over_own_marks() && self.read_room() == 0
    }

    /// Whether to list this connection in the core's starved queue now:
    /// its reading waits only for the bound, and it is not listed yet.
    /// Asked wherever its reading or its own marks change: a paused
    /// connection left off the queue would never read again, as its peer,
    /// pushed back by TCP, sends nothing to wake it.
    pub fn list_starved(&mut self) -> bool {
        let list = !self.starved && self.waits_for_budget();
        self.starved |= list;
        list
    }

    /// TLS read: ciphertext from the socket into rustls, plaintext into rx.
    fn read_tls(&mut self, scratch: &mut [u8], mut wl: Option<&mut WireLog>) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        loop {
            // Plaintext rustls already holds goes first: it may have been
            // left there when rx reached its mark.
            match self.take_plaintext(scratch, wl.as_deref_mut(), &mut out) {
                Plaintext::Drained => {}
                Plaintext::Full => {
                    self.read_paused = true;
                    return out;
                }
                Plaintext::Closed => {
                    self.cutoff = true;
                    out.new_cutoff = true;
                    return out;
                }
            }
            if self.read_room() == 0 {
                self.read_paused = true;
                return out;
            }
            let tls = self.tls.as_mut().expect("a TLS connection");
            let eof = match tls.session.read_tls(&mut self.sock) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(ca = %self.ca, "peer cut off: {e}");
                    true
                }
            };
            if let Err(e) = tls.session.process_new_packets() {
                self.abort(e.to_string());
                out.tls_changed = true;
                out.new_cutoff = true;
                return out;
            }
            if tls.state == TlsState::Handshaking && !tls.session.is_handshaking() {
                let resumed = match &tls.verifier {
                    Some(v) => check_resumed(&tls.session, v.as_ref()),
                    None => Ok(()),
                };
                out.tls_changed = true;
                if let Err(why) = resumed {
                    self.abort(why);
                    out.new_cutoff = true;
                    return out;
                }
                tls.state = TlsState::Connected(peer_info(&tls.session));
            }
            if eof {
                // What arrived before the end is still delivered.
                if let Plaintext::Full = self.take_plaintext(scratch, wl.as_deref_mut(), &mut out) {
                    self.read_paused = true;
                    return out;
                }
                if self.handshaking() {
                    self.abort("peer closed the connection during the handshake".into());
                    out.tls_changed = true;
                }
                self.cutoff = true;
                out.new_cutoff = true;
                return out;
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
            let tls = self.tls.as_mut().expect("a TLS connection");
            match tls.session.reader().read(&mut scratch[..room]) {
                // close_notify: a clean end.
                Ok(0) => return Plaintext::Closed,
                Ok(n) => out.bytes += keep(&mut self.rx, self.ca, wl.as_deref_mut(), &scratch[..n]),
                Err(_) => return Plaintext::Drained,
            }
        }
    }

    /// Something for the socket that only a flush will send (TLS records).
    pub fn needs_flush(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.session.wants_write()) || self.closing
    }

    /// Reading stopped at a high-water mark that has since been drained.
    pub fn wants_read_resume(&self) -> bool {
        self.read_paused && self.read_room() > 0
    }

    pub fn clear_read_pause(&mut self) {
        self.read_paused = false;
    }

    /// Hand over up to `max` bytes the guest has not been given yet.
    /// Returns them and whether the stream has ended after them.
    #[cfg(test)]
    pub fn hand(&mut self, max: usize) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let cutoff = self.hand_into(max, &mut data);
        (data, cutoff)
    }

    /// `hand`, appending to `data`.
    pub fn hand_into(&mut self, max: usize, data: &mut Vec<u8>) -> bool {
        let end = self.rx.len().min(self.handed.saturating_add(max));
        data.extend_from_slice(&self.rx[self.handed..end]);
        self.handed = end;
        self.cutoff && self.handed == self.rx.len()
    }

    /// Drop up to `count` handed bytes; only bytes a guest has seen can be consumed.
    pub fn consume(&mut self, count: u64) -> u64 {
        let n = self.handed.min(usize::try_from(count).unwrap_or(usize::MAX));
        self.rx.drain(..n);
        self.handed -= n;
        if self.rx.is_empty() {
            release(&mut self.rx);
        }
        self.account();
        n as u64
    }

    /// A new guest takes over: everything unconsumed will be handed again.
    pub fn rewind(&mut self) {
        self.handed = 0;
    }

    pub fn pending(&self) -> u64 {
        self.rx.len() as u64
    }

    /// Holds bytes (or an end) the guest was handed and has not finished
    /// with: if the guest fails now, this connection is a suspect.
    pub fn owes_guest(&self) -> bool {
        !self.closing && (self.handed > 0 || (self.cutoff && self.rx.is_empty()))
    }

    /// Has received bytes not yet handed.
    pub fn unhanded(&self) -> bool {
        self.handed < self.rx.len()
    }

    pub fn unhanded_len(&self) -> usize {
        self.rx.len() - self.handed
    }

    /// Has received bytes not yet handed, or an end not yet seen by the guest.
    pub fn has_news(&self) -> bool {
        self.handed < self.rx.len() || self.cutoff
    }

    pub fn queued(&self) -> u64 {
        (self.tx.len() - self.tx_off) as u64
    }

    /// Whether queuing is still allowed.
    pub fn accepts_tx(&self) -> bool {
        !self.closing && !self.fin_wanted
    }

    /// Whether `more` bytes fit under the queue's cap and the server's
    /// ceiling (a queue under `FLOOR` always fits, as reading does).
    pub fn has_room(&self, more: usize) -> bool {
        let after = (self.queued() as usize).saturating_add(more);
        after <= TX_CAP && (self.budget.fits(more) || after <= FLOOR)
    }

    pub fn queue(&mut self, data: Vec<u8>) {
        if data.is_empty() || self.write_broken {
            return;
        }
        if self.tx_off == self.tx.len() {
            // Empty queue: keep the guest's buffer as is, no copy.
            self.tx = data;
            self.tx_off = 0;
        } else {
            if self.tx_off > self.tx.len() / 2 {
                self.tx.drain(..self.tx_off);
                self.tx_off = 0;
            }
            self.tx.extend_from_slice(&data);
        }
        self.account();
    }

    /// hio's `send`: write now unless queued bytes must go first.
    pub fn send_now(&mut self, data: &[u8], wl: Option<&mut WireLog>) -> io::Result<usize> {
        if self.queued() > 0 || self.write_broken {
            return Ok(0);
        }
        if let Some(tls) = &mut self.tls {
            if !matches!(tls.state, TlsState::Connected(_)) {
                return Ok(0);
            }
            let n = tls.session.writer().write(data)?;
            if let Some(wl) = wl {
                wl.tx(self.ca, &data[..n]);
            }
            self.flush(None)?;
            return Ok(n);
        }
        let n = match write_some(&mut self.sock, data) {
            Ok(n) => n,
            Err(e) => return self.broken(e).map(|_| 0),
        };
        self.wrote(n);
        if let Some(wl) = wl {
            wl.tx(self.ca, &data[..n]);
        }
        Ok(n)
    }

    /// `n` bytes went into the socket.
    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        self.wrote |= n > 0;
    }

    /// Send queued bytes until done or the socket would block; then send a
    /// FIN if one is wanted. Returns bytes sent.
    pub fn flush(&mut self, wl: Option<&mut WireLog>) -> io::Result<u64> {
        let sent = if self.tls.is_some() { self.flush_tls(wl) } else { self.flush_plain(wl) };
        self.account();
        sent
    }

    /// Whether to look at this connection's output in a while (see
    /// [`Conn::check_output`]): something waits for the peer, or it wrote
    /// since the last look (what it wrote may sit in the kernel, unread);
    /// and no look is due soon enough already.
    pub fn output_to_watch(&mut self) -> bool {
        if self.listed.is_some_and(|(_, phase)| phase >= self.phase()) {
            return false;
        }
        std::mem::take(&mut self.wrote) || self.output_waits() || self.lingering()
    }

    fn phase(&self) -> Phase {
        match (self.closing, self.lingering()) {
            (_, true) => Phase::Lingering,
            (true, false) => Phase::Closing,
            (false, false) => Phase::Open,
        }
    }

    /// A look is due at `at`.
    pub fn list(&mut self, at: Instant) {
        self.listed = Some((at, self.phase()));
    }

    /// Whether a look due at `at` is the one it waits for (an earlier look
    /// replaced a later one when it began closing).
    pub fn take_look(&mut self, at: Instant) -> bool {
        let current = self.listed.is_some_and(|(when, _)| when == at);
        if current {
            self.listed = None;
        }
        current
    }

    /// Bytes queued in the host (or TLS records) wait for the socket.
    pub fn output_waits(&self) -> bool {
        !self.write_broken && (self.queued() > 0 || self.tls_wants_write())
    }

    /// Closed and its FIN sent: the peer may not have taken all the kernel
    /// holds for it yet. Until it has, the host keeps the socket: closing it
    /// would let a late byte from the peer reset the connection and destroy
    /// what the peer has not yet received, and would leave what it holds to
    /// the kernel, outside the host's bounds (a half-closed peer that never
    /// reads could park megabytes there, connection after connection).
    pub fn lingering(&self) -> bool {
        self.closing && self.fin_sent && !self.write_broken
    }

    /// Whether the peer is late taking its output (see [`OutputCheck`]):
    /// output waits for it in the host's queue or in the kernel's (which a
    /// peer that never reads can fill with megabytes before the host's
    /// queue grows at all). Progress is any byte its TCP acknowledged since
    /// the last look. A closed connection lingers until the kernel has
    /// handed the peer everything, its FIN included.
    pub fn check_output(&mut self, now: Instant, limits: &StallLimits) -> OutputCheck {
        self.wrote = false;
        let lingering = self.lingering();
        let unsent = u64::from(kernel_unsent(&self.sock));
        if lingering && unsent == 0 {
            return OutputCheck::Release;
        }
        if !lingering && !self.output_waits() && unsent == 0 {
            self.stalled_since = None;
            return OutputCheck::Nothing;
        }
        let delivered = self.written.saturating_sub(unsent);
        if delivered > self.last_delivered || self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
        self.last_delivered = delivered;
        let (limit, stall) = match (self.closing, limits.send_timeout) {
            (true, _) => (limits.linger, Stall::Linger),
            (false, Some(t)) => (t, Stall::SendTimeout),
            (false, None) => return OutputCheck::Nothing,
        };
        let deadline = self.stalled_since.unwrap_or(now) + limit;
        if now >= deadline {
            return OutputCheck::Stalled(stall);
        }
        // Looks often enough to see progress in time; a lingering one
        // sooner, to let go of it as soon as the kernel is done.
        let look = if lingering {
            let look = self.linger_look;
            self.linger_look = (look * 2).min(LINGER_MAX_LOOK);
            look
        } else {
            Self::look_every(limit)
        };
        OutputCheck::Wait((now + look).min(deadline))
    }

    /// The first look at a connection that only wrote: in a while, without
    /// asking the kernel now (most writes are taken at once). Its clock
    /// starts now, with nothing of what it wrote taken yet.
    pub fn first_look(&mut self, now: Instant, limits: &StallLimits) -> OutputCheck {
        self.stalled_since = Some(now);
        self.last_delivered = self.written;
        match (self.closing, limits.send_timeout) {
            (true, _) => OutputCheck::Wait(now + LINGER_FIRST_LOOK),
            (false, Some(t)) => OutputCheck::Wait(now + Self::look_every(t)),
            (false, None) => OutputCheck::Nothing,
        }
    }

    fn look_every(limit: Duration) -> Duration {
        (limit / 4).max(LINGER_FIRST_LOOK)
    }

    /// Bytes the peer has not taken: queued in the host, and in the kernel
    /// (sent and not yet acknowledged, or not yet sent).
    pub fn undelivered(&self) -> u64 {
        self.queued() + u64::from(kernel_unsent(&self.sock))
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
                Ok(0) => {
                    self.cutoff = true;
                    return dropped;
                }
                Ok(n) => dropped += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return dropped,
                Err(_) => {
                    self.cutoff = true;
                    return dropped;
                }
            }
        }
    }

    /// Give up on the connection: an abortive close (RST), so the peer
    /// learns its stream did not end complete.
    pub fn reset(self) {
        if let Err(e) = socket2::SockRef::from(&self.sock).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(ca = %self.ca, "cannot arm the reset: {e}");
        }
    }

    fn flush_plain(&mut self, mut wl: Option<&mut WireLog>) -> io::Result<u64> {
        let mut sent = 0u64;
        while self.tx_off < self.tx.len() {
            let pending = &self.tx[self.tx_off..];
            let n = match write_some(&mut self.sock, pending) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return self.broken(e).map(|_| sent),
            };
            if let Some(wl) = wl.as_deref_mut() {
                wl.tx(self.ca, &pending[..n]);
            }
            self.tx_off += n;
            sent += n as u64;
            self.wrote(n);
        }
        if self.tx_off == self.tx.len() {
            self.tx = Vec::new();
            self.tx_off = 0;
            if self.fin_wanted && !self.fin_sent {
                self.fin_sent = true;
                // A peer that is already gone makes this fail; nothing is lost.
                let _ = self.sock.shutdown(Shutdown::Write);
            }
        }
        Ok(sent)
    }

    /// TLS flush: queued plaintext into rustls (once connected), then
    /// records to the socket; close_notify goes before the FIN.
    ///
    /// Goes around until the socket would block or nothing is left: with
    /// edge-triggered readiness, stopping while the socket still has room
    /// would leave queued bytes waiting for an event that never comes.
    fn flush_tls(&mut self, mut wl: Option<&mut WireLog>) -> io::Result<u64> {
        let (mut sent, mut records) = (0u64, 0usize);
        let tls = self.tls.as_mut().expect("a TLS connection");
        let connected = matches!(tls.state, TlsState::Connected(_));
        loop {
            let mut moved = 0;
            while connected && self.tx_off < self.tx.len() {
                let pending = &self.tx[self.tx_off..];
                let n = tls.session.writer().write(pending)?;
                if n == 0 {
                    break;
                }
                if let Some(wl) = wl.as_deref_mut() {
                    wl.tx(self.ca, &pending[..n]);
                }
                self.tx_off += n;
                moved += n;
            }
            sent += moved as u64;
            if connected && self.tx_off == self.tx.len() {
                self.tx = Vec::new();
                self.tx_off = 0;
                if self.fin_wanted && !tls.close_notify_sent {
                    tls.close_notify_sent = true;
                    tls.session.send_close_notify();
                }
            }
            let mut blocked = false;
            while tls.session.wants_write() {
                match tls.session.write_tls(&mut self.sock) {
                    Ok(n) => records += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return self.broken(e).map(|_| sent),
                }
            }
            if blocked || moved == 0 || self.tx_off == self.tx.len() {
                break;
            }
        }
        let done = !tls.session.wants_write() && self.tx_off == self.tx.len();
        let fin_due = tls.close_notify_sent || !connected;
        if done && self.fin_wanted && fin_due && !self.fin_sent {
            self.fin_sent = true;
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        self.wrote(records);
        Ok(sent)
    }

    /// Writing failed: the peer is gone (hio's cutoff) and what is queued can
    /// never be delivered. Only errors hio would raise are returned.
    fn broken(&mut self, e: io::Error) -> io::Result<()> {
        tracing::debug!(ca = %self.ca, "send failed: {e}");
        self.write_broken = true;
        self.cutoff = true;
        self.tx = Vec::new();
        self.tx_off = 0;
        self.account();
        if is_cutoff_error(&e) { Ok(()) } else { Err(e) }
    }

    /// hio's shutdown(how). Errors are ignored, as in hio.
    pub fn shutdown(&mut self, read: bool, write: bool) {
        if read {
            self.read_shut = true;
            let _ = self.sock.shutdown(Shutdown::Read);
        }
        if write {
            self.fin_wanted = true;
        }
    }

    /// The guest is done with this connection: what is queued is still
    /// sent, then FIN. What it did not consume is dropped, and what the
    /// peer sends from now on is read and dropped.
    pub fn close(&mut self) {
        self.closing = true;
        self.fin_wanted = true;
        self.rx = Vec::new();
        self.handed = 0;
        self.read_paused = false;
        self.account();
        // Its linger time counts from now, however long it waited before.
        self.stalled_since = None;
    }

    /// A closing connection is done once everything queued went out (or never can).
    pub fn finished(&self) -> bool {
        self.closing && (self.write_broken || (self.queued() == 0 && !self.tls_wants_write()))
    }

    fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.session.wants_write())
    }

    /// The readiness this connection needs now.
    pub fn wanted_interest(&self) -> Interest {
        if (self.queued() > 0 || self.tls_wants_write()) && !self.write_broken {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.budget.shift(self.held, 0);
    }
}

/// An emptied rx buffer keeps an allocation this small for the next message
/// (saves an allocation per read) and gives a larger one back, so a
/// connection that once moved a burst does not hold its peak for the rest of
/// its life. 10,000 idle connections keep at most 160 MiB this way, which
/// the server-wide budget counts. (An emptied tx is always given back: the
/// next queue takes the guest's buffer as it is.)
const KEEP: usize = 16 << 10;

fn release(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

/// Keep bytes that arrived for the guest, and wire-log them; returns how many.
fn keep(rx: &mut Vec<u8>, ca: SocketAddr, wl: Option<&mut WireLog>, bytes: &[u8]) -> usize {
    rx.extend_from_slice(bytes);
    if let Some(wl) = wl {
        wl.rx(ca, bytes);
    }
    bytes.len()
}

/// One read appended to `rx`, into the capacity it already has (at most
/// `max` bytes).
fn recv_into(sock: &TcpStream, rx: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let len = rx.len();
    let spare = rx.spare_capacity_mut();
    let take = spare.len().min(max);
    let n = socket2::SockRef::from(sock).recv(&mut spare[..take])?;
    // SAFETY: recv initialised the first n bytes of the spare capacity.
    unsafe { rx.set_len(len + n) };
    Ok(n)
}

/// Bytes in the kernel's send queue not yet acknowledged by the peer
/// (SIOCOUTQ); 0 if it cannot tell.
fn kernel_unsent(sock: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int through the pointer, which lives for the call.
    let ok = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) } == 0;
    if ok { u32::try_from(unsent).unwrap_or(0) } else { 0 }
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
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::{Duration, Instant};

    /// A host-side Conn and the peer's blocking socket, over real loopback TCP.
    fn pair() -> (Conn, StdStream) {
        pair_in(Budget::new(crate::config::DEFAULT_MAX_BUFFERED))
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
        while c.pending() < want && !c.cutoff {
            let o = c.read(scratch, None);
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
        assert!(got.new_cutoff && c.cutoff);
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
        assert!(c.cutoff);
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
        assert_eq!(c.read(&mut scratch, None).bytes, 0, "no reading while replies pile up");
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
        assert!(c.read(&mut scratch, None).bytes == 0 && !c.wants_read_resume());
        let (data, _) = c.hand(usize::MAX);
        c.consume(data.len() as u64);
        assert!(c.wants_read_resume());
        c.clear_read_pause();
        let mut seen = data.len();
        let start = Instant::now();
        while seen < total {
            c.read(&mut scratch, None);
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
        assert_eq!(b.read(&mut scratch, None).bytes, 0, "no reading past the floor while the server is at its bound");
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

    /// A connection whose peer reads nothing, with `queued` bytes waiting
    /// in the host after the kernel's buffers filled.
    fn stalled_pair(queued: usize) -> (Conn, StdStream) {
        let (mut c, peer) = pair();
        c.queue(vec![7u8; queued]);
        c.flush(None).unwrap();
        assert!(c.queued() > 0, "the kernel took it all");
        (c, peer)
    }

    const LIMITS: StallLimits =
        StallLimits { send_timeout: Some(Duration::from_secs(30)), linger: Duration::from_secs(5) };

    #[test]
    fn a_peer_that_takes_nothing_is_given_up_on_after_the_send_timeout() {
        let (mut c, _peer) = stalled_pair(16 << 20);
        let t0 = Instant::now();
        let OutputCheck::Wait(look) = c.check_output(t0, &LIMITS) else { panic!("not watched") };
        let since = c.stalled_since.unwrap();
        assert!(look > t0 && look <= since + Duration::from_secs(30), "looks again within the timeout");
        let late = since + Duration::from_secs(30);
        assert!(matches!(c.check_output(late - Duration::from_secs(1), &LIMITS), OutputCheck::Wait(_)));
        assert_eq!(c.check_output(late, &LIMITS), OutputCheck::Stalled(Stall::SendTimeout));
        assert_eq!(c.check_output(late, &StallLimits { send_timeout: None, ..LIMITS }), OutputCheck::Nothing);
        // Closed by the guest (late), it gets the linger time from then.
        c.close();
        c.flush(None).unwrap();
        assert!(matches!(c.check_output(late, &LIMITS), OutputCheck::Wait(at) if at <= late + LIMITS.linger));
        assert_eq!(c.stalled_since, Some(late));
        assert_eq!(c.check_output(late + LIMITS.linger, &LIMITS), OutputCheck::Stalled(Stall::Linger));
    }

    #[test]
    fn the_clock_starts_when_the_connection_wrote_not_at_its_first_look() {
        let (mut c, _peer) = stalled_pair(16 << 20);
        let wrote = Instant::now();
        assert!(c.output_to_watch());
        assert!(matches!(c.first_look(wrote, &LIMITS), OutputCheck::Wait(_)));
        let first_look = wrote + Duration::from_secs(7);
        assert!(matches!(c.check_output(first_look, &LIMITS), OutputCheck::Wait(_)));
        let timeout = LIMITS.send_timeout.unwrap();
        assert_eq!(c.check_output(wrote + timeout, &LIMITS), OutputCheck::Stalled(Stall::SendTimeout));
    }

    #[test]
    fn progress_restarts_the_clock_and_a_closed_connection_lingers_until_its_peer_has_everything() {
        let (mut c, mut peer) = stalled_pair(16 << 20);
        let mut now = Instant::now();
        c.close();
        assert!(matches!(c.check_output(now, &LIMITS), OutputCheck::Wait(_)));
        // The peer reads everything: every look sees bytes acknowledged, so
        // the linger clock keeps starting again.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got.len()
        });
        let mut progress = 0;
        while !c.finished() {
            c.flush(None).unwrap();
            now += Duration::from_millis(10);
            let before = c.stalled_since;
            match c.check_output(now, &LIMITS) {
                OutputCheck::Wait(_) => progress += usize::from(c.stalled_since != before),
                other => panic!("{other:?} while the peer reads"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(progress > 0, "no progress seen");
        // FIN sent: until the kernel has handed the peer everything, the
        // connection lingers; then it is released, never reset.
        let mut looks = 0;
        loop {
            match c.check_output(now, &LIMITS) {
                OutputCheck::Release => break,
                OutputCheck::Wait(_) => looks += 1,
                other => panic!("{other:?} after {looks} looks"),
            }
            std::thread::sleep(Duration::from_millis(5));
            assert!(looks < 1000);
        }
        assert_eq!(reader.join().unwrap(), 16 << 20, "every byte, then a clean FIN");
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
        while !c.cutoff {
            assert_eq!(c.read(&mut scratch, None).bytes, 0, "nothing joins rx once closed");
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        assert_eq!(c.pending(), 0);
    }
}
