//! What the host holds across guest generations ([`HostState`]): the
//! listener, the connections with their bytes, and the lists that tell the
//! event loop and the guest what changed. It owns their invariants: which
//! lists a connection is on is decided here only (`after_io`, `mark_*`),
//! and the guest reaches connections only through its methods. How
//! connections end is in `ending`, what the guest is lent in `lending`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustc_hash::FxHashMap;

mod ending;
pub mod handing;
pub mod handover;
mod lending;
mod takeover;

use self::ending::Stalls;
use self::handing::Handing;
use crate::net::acceptor::Acceptor;
use crate::net::backpressure::Budget;
use crate::net::conn::{Conn, StallLimits, TlsFailure, TlsState};
use crate::net::proxy;
use crate::net::tls::{TlsAcceptor, TlsConfig};
use crate::net::wirelog::WireLog;
use crate::stats::Stats;
use crate::tyme::Clock;

/// A connection with a deadline to meet: a TLS handshake, or a PROXY header.
fn session_or_header(c: &Conn, proxy_headers: bool) -> bool {
    c.handshaking() || proxy_headers
}

/// The poller's fixed tokens; connection ids are tokens too, from
/// `FIRST_CONN_TOKEN` on.
pub const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
pub const SIGNALS: Token = Token(2);
pub const FIRST_CONN_TOKEN: u64 = 16;

/// One connection's readiness in a pass.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    pub id: u64,
    pub readable: bool,
    /// Readable, and the event says no end or error is pending: a read
    /// shorter than asked for drained the socket (see `Conn::read`).
    pub short_read_drains: bool,
    pub writable: bool,
}

/// A handshake's deadline.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    id: u64,
}

pub struct HostState {
    pub(crate) acceptor: Acceptor,
    /// Keyed by the host's own ids (never a peer's input), so a fast
    /// unkeyed hash is safe.
    pub(crate) conns: FxHashMap<u64, Conn>,
    /// Accepted by the host, not yet taken by the guest (hio's axes).
    axes: VecDeque<u64>,
    /// Connections with news for the guest's next cycle.
    pub(crate) ready: Vec<u64>,
    /// A lazy hand-over under way: the connections the running guest is
    /// still owed, in id order (`handover`).
    owed: Option<VecDeque<u64>>,
    /// Connections whose queue, shutdown or close the loop must act on.
    dirty: Vec<u64>,
    /// Connections whose reading waits only for the budget to drain,
    /// longest waiting first (served round-robin as room appears). A
    /// connection is listed here exactly when its `starved` mark is set.
    starved: VecDeque<u64>,
    /// Connections the guest held that the host reset: each is named, with
    /// a cutoff, in the guest's next cycle.
    pub(crate) gone: Vec<u64>,
    clock: Clock,
    pub(crate) wirelog: Option<WireLog>,
    next_id: u64,
    /// Where a TLS server's sessions come from.
    tls: Option<TlsAcceptor>,
    /// Handshake deadlines in accept order, which is deadline order.
    handshakes: VecDeque<Deadline>,
    /// The bound on bytes held across connections.
    budget: Budget,
    /// What the current guest call may be lent, and the suspects.
    pub(crate) handing: Handing,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stalls: Stalls,
    /// The clock reading of the current pass.
    pub(crate) now: Instant,
    /// The server is draining: the listener is closed and the guest was told.
    draining: bool,
    /// Connections start with a PROXY protocol header (`--proxy-protocol`).
    proxy_headers: bool,
    /// Connections joined the axes since the guest's last call (their
    /// PROXY header came in), so the guest is called.
    new_axes: bool,
}

impl HostState {
    pub fn new(
        acceptor: Acceptor,
        clock: Clock,
        wirelog: Option<WireLog>,
        budget: Budget,
        stall_limits: StallLimits,
        tls: Option<TlsAcceptor>,
    ) -> HostState {
        let stats = Arc::new(Stats::default());
        stats.buffered_limit.set(budget.limit() as u64);
        HostState {
            acceptor,
            conns: FxHashMap::default(),
            axes: VecDeque::new(),
            ready: Vec::new(),
            owed: None,
            dirty: Vec::new(),
            starved: VecDeque::new(),
            gone: Vec::new(),
            clock,
            wirelog,
            next_id: FIRST_CONN_TOKEN,
            tls,
            handshakes: VecDeque::new(),
            budget,
            handing: Handing::default(),
            stats,
            stalls: Stalls::new(stall_limits),
            now: Instant::now(),
            draining: false,
            proxy_headers: false,
            new_axes: false,
        }
    }

    /// A new pass begins at `now` (one clock read serves it).
    pub fn begin_pass(&mut self, now: Instant) {
        self.now = now;
    }

    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    pub fn acceptor_mut(&mut self) -> &mut Acceptor {
        &mut self.acceptor
    }

    /// Every connection starts with a PROXY protocol header: read it before
    /// the guest is given the connection, with the client as its `ca`.
    pub fn expect_proxy_headers(&mut self) {
        self.proxy_headers = true;
    }

    /// Stop taking new connections and let the guest know (`host.draining`)
    /// while those held are served to their end.
    pub fn begin_drain(&mut self, registry: &Registry) {
        self.acceptor.close(registry);
        self.draining = true;
        self.stats.draining.set(1);
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn tyme(&self) -> f64 {
        self.clock.tyme()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// A live connection.
    pub fn conn(&self, id: u64) -> Option<&Conn> {
        self.conns.get(&id)
    }

    /// A live connection and the wire log, for a guest's call on it.
    pub fn conn_mut(&mut self, id: u64) -> Option<(&mut Conn, Option<&mut WireLog>)> {
        let wl = self.wirelog.as_mut();
        self.conns.get_mut(&id).map(|c| (c, wl))
    }

    /// Nothing waits for the guest's next cycle.
    pub fn quiet(&self) -> bool {
        self.ready.is_empty() && self.gone.is_empty() && !self.new_axes
    }

    /// Accepted connections wait for the guest.
    pub fn accepts_waiting(&self) -> bool {
        !self.axes.is_empty()
    }

    /// The next accepted connection the guest has not taken.
    pub fn take_axe(&mut self) -> Option<u64> {
        while let Some(id) = self.axes.pop_front() {
            if self.conns.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    pub fn axes_len(&self) -> usize {
        self.axes.len()
    }

    /// The connections a new guest takes over, in id order.
    pub fn adopted_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.conns.iter().filter(|(_, c)| c.for_a_new_guest()).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Connections a guest holds a handle to.
    pub fn adopted_count(&self) -> usize {
        self.conns.values().filter(|c| c.adopted).count()
    }

    /// When the earliest TLS handshake deadline comes, if any.
    pub fn next_handshake_deadline(&self) -> Option<Instant> {
        self.handshakes.front().map(|d| d.at)
    }

    pub fn mark_ready(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.in_ready
        {
            c.in_ready = true;
            self.ready.push(id);
        }
    }

    pub fn mark_dirty(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.in_dirty
        {
            c.in_dirty = true;
            self.dirty.push(id);
        }
    }

    /// After any I/O on a connection: list it where it belongs now. A
    /// connection whose reading waits only for the server-wide bound goes
    /// to the starved queue (left off it, it would never read again: its
    /// peer, pushed back by TCP, sends nothing to wake it); one with news
    /// (`news`) is ready for the guest if the guest holds it; one with
    /// something to send (`flush`) is dirty, for `settle`.
    fn after_io(&mut self, id: u64, news: bool, flush: bool) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !c.starved && c.waits_for_budget() {
            c.starved = true;
            self.starved.push_back(id);
        }
        if news && c.adopted {
            self.mark_ready(id);
        }
        if flush {
            self.mark_dirty(id);
        }
    }

    /// A connection the listener accepted joins the host: registered with
    /// the poller under its id, given a TLS session on a TLS server, and
    /// waiting in the axes for the guest. The kernel reports bytes that
    /// arrived before registration, so reading starts at once.
    pub fn admit(&mut self, mut sock: TcpStream, peer: SocketAddr, registry: &Registry) -> io::Result<u64> {
        let id = self.next_id;
        // Bound to one address, that is every connection's local address;
        // bound to all, ask which one this peer dialled.
        let bound = self.acceptor.ha;
        let local = if bound.ip().is_unspecified() { sock.local_addr().unwrap_or(bound) } else { bound };
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(ca = %peer, "cannot set TCP_NODELAY: {e}");
        }
        let session = self.tls.as_ref().map(|t| Ok::<_, anyhow::Error>((t.session()?, t.verifier())));
        let session = session.transpose().map_err(io::Error::other)?;
        registry.register(&mut sock, Token(id as usize), Interest::READABLE)?;
        self.next_id += 1;
        let handshake = self.tls.as_ref().map_or(proxy::HEADER_TIMEOUT, |t| t.handshake_timeout);
        let mut conn = match session {
            None => Conn::new(sock, local, peer, self.budget.clone()),
            Some((session, verifier)) => Conn::new_tls(sock, local, peer, self.budget.clone(), session, verifier),
        };
        if session_or_header(&conn, self.proxy_headers) {
            self.handshakes.push_back(Deadline { at: self.now + handshake, id });
        }
        tracing::debug!(ca = %peer, id, "accepted");
        // The guest meets it once its PROXY header says whose it is.
        conn.awaiting_proxy = self.proxy_headers;
        if !self.proxy_headers {
            self.axes.push_back(id);
        }
        self.conns.insert(id, conn);
        Ok(id)
    }

    /// Abort TLS handshakes past their time limit, so stalled clients cannot
    /// pin connections. Deadlines are in accept order: only due ones are seen.
    pub fn expire_handshakes(&mut self) {
        while let Some(&Deadline { at, id }) = self.handshakes.front() {
            if at > self.now {
                break;
            }
            self.handshakes.pop_front();
            let Some(c) = self.conns.get_mut(&id) else { continue };
            if c.awaiting_proxy {
                self.refuse_proxy(id, "no whole PROXY header in time");
            } else if c.handshaking() {
                c.abort(TlsFailure::Timeout, "handshake not finished in time".into());
                count_handshake(&self.stats, c, self.now);
                self.after_io(id, true, true);
            }
        }
    }

    /// Readiness on connections: read into their host buffers, send what is queued.
    pub fn serve_io(&mut self, touched: &[Readiness], scratch: &mut [u8]) {
        for &Readiness { id, readable, short_read_drains, writable } in touched {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            let was_cutoff = c.cutoff();
            let (mut news, mut proxy) = (false, None);
            if writable && (c.queued() > 0 || c.needs_flush()) {
                match c.flush(self.wirelog.as_mut()) {
                    Ok(sent) => self.stats.bytes_sent.add(sent),
                    Err(e) => {
                        tracing::warn!(ca = %c.peer, "send failed: {e}");
                        0
                    }
                };
            }
            if readable {
                let was_handshaking = c.handshaking();
                let got = c.read(scratch, self.wirelog.as_mut(), short_read_drains);
                self.stats.bytes_received.add(got.bytes as u64);
                if got.tls_changed && was_handshaking {
                    count_handshake(&self.stats, c, self.now);
                }
                news = got.bytes > 0 || got.new_cutoff || got.tls_changed;
                proxy = got.proxy;
            }
            news |= c.cutoff() != was_cutoff;
            // settle sends what is left, fixes interest, releases closed ones.
            let flush = writable || c.needs_flush();
            match proxy {
                Some(Ok(())) => self.proxy_header_read(id),
                Some(Err(why)) => {
                    self.refuse_proxy(id, &why);
                    continue;
                }
                None => {}
            }
            self.after_io(id, news, flush);
        }
    }

    /// A connection said whose it is: the guest may take it now.
    fn proxy_header_read(&mut self, id: u64) {
        if let Some(c) = self.conns.get(&id) {
            tracing::debug!(ca = %c.peer, proxied_by = ?c.proxied_by, id, "PROXY header read");
        }
        self.axes.push_back(id);
        self.new_axes = true;
    }

    /// Read the TLS files again (SIGHUP): new handshakes use them, so a
    /// certificate can be rotated and a client revoked without a restart.
    /// Files that do not load leave the old ones in use.
    pub fn reload_tls(&mut self, config: &TlsConfig) {
        let Some(old) = &mut self.tls else { return };
        match old.reloaded(config) {
            Ok(new) => {
                *old = new;
                tracing::info!(cert = %config.cert.display(), "TLS certificate, key, CAs and CRLs reloaded");
            }
            Err(e) => tracing::error!("TLS files not reloaded, the old ones stay in use: {e:#}"),
        }
    }

    /// Act on what the guest (or a write) changed: send queues and FINs,
    /// resume paused reads, release finished connections, fix interest.
    pub fn settle(&mut self, registry: &Registry, scratch: &mut [u8]) {
        self.settle_dirty(registry, scratch);
        self.resume_starved(scratch);
        // A resumed TLS session may have records to send.
        self.settle_dirty(registry, scratch);
        if let Some(wl) = &mut self.wirelog {
            wl.flush();
        }
    }

    /// Room under the server-wide bound again: resume waiting peers one at a
    /// time, longest waiting first, until it is used up. One that fills it
    /// again goes to the back, so every peer gets its turn.
    fn resume_starved(&mut self, scratch: &mut [u8]) {
        let mut turns = self.starved.len();
        while turns > 0 && !self.budget.full() {
            turns -= 1;
            let Some(id) = self.starved.pop_front() else { break };
            let Some(c) = self.conns.get_mut(&id) else { continue };
            c.starved = false;
            // Paused by its own marks now: draining them marks it dirty,
            // and settle_dirty resumes or lists it again then.
            if !c.wants_read_resume() {
                continue;
            }
            c.clear_read_pause();
            let got = c.read(scratch, self.wirelog.as_mut(), false);
            self.stats.bytes_received.add(got.bytes as u64);
            let (news, flush) = (c.has_news(), c.needs_flush());
            self.after_io(id, news, flush);
        }
    }

    fn settle_dirty(&mut self, registry: &Registry, scratch: &mut [u8]) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            c.in_dirty = false;
            let was_cutoff = c.cutoff();
            match c.flush(self.wirelog.as_mut()) {
                Ok(sent) => self.stats.bytes_sent.add(sent),
                Err(e) => {
                    tracing::warn!(ca = %c.peer, "send failed: {e}");
                    0
                }
            };
            let mut news = false;
            if c.wants_read_resume() {
                c.clear_read_pause();
                let got = c.read(scratch, self.wirelog.as_mut(), false);
                self.stats.bytes_received.add(got.bytes as u64);
                news = c.has_news();
            }
            news |= c.cutoff() && !was_cutoff;
            if c.finished() && !c.lingering() {
                self.release(id);
                continue;
            }
            let want = c.wanted_interest();
            if want != c.interest {
                match registry.reregister(&mut c.sock, Token(id as usize), want) {
                    Ok(()) => c.interest = want,
                    Err(e) => tracing::warn!(ca = %c.peer, "cannot change interest: {e}"),
                }
            }
            // Its own marks may have drained while the bound is reached.
            self.after_io(id, news, false);
            self.watch_output(id);
        }
        // Keep the list's allocation for the next pass.
        if self.dirty.is_empty() {
            dirty.clear();
            self.dirty = dirty;
        }
    }
}

/// A handshake just ended: count how, and how long it took.
fn count_handshake(s: &Stats, c: &Conn, now: Instant) {
    match c.tls_state() {
        Some(TlsState::Connected(_)) => {
            s.tls_handshakes.add(1);
            if let Some(began) = c.handshake_began() {
                s.tls_handshake.observe(now.saturating_duration_since(began).as_secs_f64());
            }
        }
        Some(TlsState::Aborted(failure, _)) => {
            match failure {
                TlsFailure::Timeout => &s.tls_failed_timeout,
                TlsFailure::PeerClosed => &s.tls_failed_peer_closed,
                TlsFailure::Certificate => &s.tls_failed_certificate,
                TlsFailure::Protocol => &s.tls_failed_protocol,
            }
            .add(1);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::time::Duration;

    use mio::Poll;
    use mio::net::TcpStream;

    use super::*;
    use crate::net::backpressure::{FLOOR, RX_HIGH_WATER};

    pub(super) fn core_with(limit: usize) -> HostState {
        let acceptor = Acceptor::open("127.0.0.1:0".parse().unwrap(), 0, 16, false).unwrap();
        let limits = StallLimits { send_timeout: None, linger: Duration::from_secs(10) };
        HostState::new(acceptor, Clock::real(), None, Budget::new(limit), limits, None)
    }

    /// A connection registered under `id`, and its peer.
    pub(super) fn connect(core: &mut HostState, poll: &Poll, id: u64) -> StdStream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = StdStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, ca) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut sock = TcpStream::from_std(s);
        poll.registry().register(&mut sock, Token(id as usize), mio::Interest::READABLE).unwrap();
        let ha = sock.local_addr().unwrap();
        core.conns.insert(id, Conn::new(sock, ha, ca, core.budget.clone()));
        peer
    }

    /// Settle until connection `id` holds `want` bytes or five seconds pass.
    fn settle_until(core: &mut HostState, poll: &Poll, id: u64, want: u64) -> u64 {
        let mut scratch = vec![0; 64 << 10];
        let start = Instant::now();
        loop {
            core.settle(poll.registry(), &mut scratch);
            let have = core.conns[&id].pending();
            if have >= want || start.elapsed() > Duration::from_secs(5) {
                return have;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_connection_paused_by_its_own_mark_resumes_after_the_bound_drains() {
        // The stall this guards against: a reader paused at its own mark
        // whose mark drains while the server-wide bound is reached was on
        // no list, and its peer (pushed back by TCP) sent nothing to wake it.
        let poll = Poll::new().unwrap();
        let mut core = core_with(1 << 20);
        let (a, b) = (10, 11);
        let mut peer_a = connect(&mut core, &poll, a);
        let _peer_b = connect(&mut core, &poll, b);
        let sent = RX_HIGH_WATER + 40_000;
        peer_a.write_all(&vec![7u8; sent]).unwrap();
        // The loop reads what arrived: A stops at its own mark, the bound not reached.
        core.mark_dirty(a);
        core.conns.get_mut(&a).unwrap().clear_read_pause();
        let mut scratch = vec![0; 64 << 10];
        let start = Instant::now();
        while core.conns[&a].pending() < RX_HIGH_WATER as u64 && start.elapsed() < Duration::from_secs(5) {
            core.conns.get_mut(&a).unwrap().read(&mut scratch, None, false);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(core.conns[&a].pending(), RX_HIGH_WATER as u64);
        assert!(!core.budget.full());
        // Another connection's queue fills the bound; then A's guest consumes.
        core.conns.get_mut(&b).unwrap().queue(vec![0; 1 << 20]);
        assert!(core.budget.full());
        let c = core.conns.get_mut(&a).unwrap();
        let (handed, _) = c.hand(usize::MAX);
        c.consume(handed.len() as u64);
        core.mark_dirty(a);
        core.settle(poll.registry(), &mut scratch);
        assert_eq!(core.conns[&a].pending(), FLOOR as u64, "no reading past the floor while the bound is reached");
        assert!(core.conns[&a].starved, "A waits in the starved queue");
        // B's bytes go: A reads the rest without any new event of its own.
        core.conns.remove(&b);
        let left = (sent - RX_HIGH_WATER) as u64;
        assert_eq!(settle_until(&mut core, &poll, a, left), left, "A resumed and read the rest");
        assert!(!core.conns[&a].starved && core.starved.is_empty());
    }
}
