//! Everything the host holds across guest generations: the listener, the
//! connections with their bytes, and the lists that tell the event loop and
//! the guest what changed. Guest calls mutate it; only the event loop does
//! readiness bookkeeping with the poller.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use mio::{Registry, Token};
use rustc_hash::FxHashMap;

use crate::guest::handing::Handing;
use crate::net::acceptor::Acceptor;
use crate::net::backpressure::Budget;
use crate::net::conn::{Conn, OutputCheck, Stall, StallLimits};
use crate::net::tls::TlsAcceptor;
use crate::net::wirelog::WireLog;
use crate::stats::Stats;
use crate::tyme::Clock;

pub struct Core {
    pub acceptor: Acceptor,
    /// Keyed by the host's own ids (never a peer's input), so a fast
    /// unkeyed hash is safe.
    pub conns: FxHashMap<u64, Conn>,
    /// Accepted by the host, not yet taken by the guest (hio's axes).
    pub axes: VecDeque<u64>,
    /// Connections with news for the guest's next cycle.
    pub ready: Vec<u64>,
    /// Connections whose queue, shutdown or close the loop must act on.
    pub dirty: Vec<u64>,
    pub clock: Clock,
    pub wirelog: Option<WireLog>,
    pub next_id: u64,
    /// Where a TLS server's sessions come from.
    pub tls: Option<TlsAcceptor>,
    /// Handshake deadlines in accept order, which is deadline order.
    pub handshakes: VecDeque<(Instant, u64)>,
    /// The bound on bytes held across connections.
    pub budget: Budget,
    /// Connections whose reading waits only for the budget to drain,
    /// longest waiting first (served round-robin as room appears). A
    /// connection is listed here exactly when its `starved` flag is set.
    pub starved: VecDeque<u64>,
    /// What the current guest call may be handed, and the suspects.
    pub handing: Handing,
    pub stats: Arc<Stats>,
    /// When to look again at connections whose output waits for their
    /// peer, earliest first (a connection listed again sooner, as it began
    /// closing, leaves its later entry behind, to be skipped).
    stalls: BinaryHeap<Reverse<(Instant, u64)>>,
    stall_limits: StallLimits,
    /// Connections the guest held that the host reset: each is named, with
    /// a cutoff, in the guest's next cycle.
    pub gone: Vec<u64>,
    /// The clock reading of the current pass.
    pub now: Instant,
}

/// Why the host gives up on a connection (and resets it).
#[derive(Debug, Clone, Copy)]
pub enum GiveUp {
    /// Its peer took none of its output for too long.
    Stalled(Stall),
    /// Its bytes crashed the guest twice.
    Poison,
}

impl Core {
    pub fn new(
        acceptor: Acceptor,
        clock: Clock,
        wirelog: Option<WireLog>,
        budget: Budget,
        stall_limits: StallLimits,
    ) -> Core {
        Core {
            acceptor,
            conns: FxHashMap::default(),
            axes: VecDeque::new(),
            ready: Vec::new(),
            dirty: Vec::new(),
            clock,
            wirelog,
            // Ids are mio tokens too; 0 is the listener's.
            next_id: crate::server::FIRST_CONN_TOKEN,
            tls: None,
            handshakes: VecDeque::new(),
            budget,
            starved: VecDeque::new(),
            handing: Handing::default(),
            stats: Arc::default(),
            stalls: BinaryHeap::new(),
            stall_limits,
            gone: Vec::new(),
            now: Instant::now(),
        }
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

    /// A guest call begins: set what it may be handed. A suspect whose turn
    /// it is goes into the ready list, so its bytes are handed this call.
    pub fn begin_guest_call(&mut self) {
        let conns = &self.conns;
        let turn =
            self.handing.begin_call(|id| conns.get(&id).is_some_and(|c| c.adopted && !c.closing && c.has_news()));
        if let Some(id) = turn {
            self.mark_ready(id);
        }
    }

    /// Hand a connection's bytes the guest has not been given, within what
    /// this call may be handed: the bytes and whether the stream ended after
    /// them, or `None` if they must wait (the connection is then ready
    /// again, for the next cycle).
    /// `most` caps it further (a guest's `receive`).
    pub fn hand(&mut self, id: u64, most: usize) -> Option<(Vec<u8>, bool)> {
        let c = self.conns.get_mut(&id)?;
        let Some(max) = self.handing.allowance(id, c.has_news()) else {
            self.mark_ready(id);
            return None;
        };
        let max = max.min(most);
        let mut data = self.handing.buffer(c.unhanded_len().min(max));
        let cutoff = c.hand_into(max, &mut data);
        self.handing.handed(id, data.len(), cutoff);
        if c.unhanded() {
            self.mark_ready(id);
        }
        Some((data, cutoff))
    }

    /// The connection is done: closed cleanly (its socket with it).
    fn release(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            self.handing.forget(id);
            // Dropping closes the socket, which also takes it out of
            // epoll: no deregister call needed.
            tracing::debug!(ca = %c.peer, id, "closed");
        }
    }

    /// Give up on a connection: reset it (RST), so its peer does not take
    /// a truncated stream for a complete one, and say how much was lost.
    pub fn give_up(&mut self, id: u64, why: GiveUp) {
        let Some(c) = self.conns.remove(&id) else { return };
        self.handing.forget(id);
        let (unsent, unconsumed) = (c.undelivered(), c.pending());
        let ca = c.peer;
        match why {
            GiveUp::Stalled(Stall::SendTimeout) => {
                self.stats.send_timeouts.add(1);
                let secs = self.stall_limits.send_timeout.unwrap_or_default().as_secs_f64();
                tracing::warn!(%ca, id, unsent, "connection reset: its peer took none of its output for {secs} s (send timeout)");
            }
            GiveUp::Stalled(Stall::Linger) => {
                self.stats.linger_resets.add(1);
                let secs = self.stall_limits.linger.as_secs_f64();
                tracing::warn!(%ca, id, unsent, "closing connection reset: its peer took none of what was left for {secs} s (linger)");
            }
            GiveUp::Poison => {
                self.stats.given_up.add(1);
                tracing::warn!(%ca, id, unsent, unconsumed, "connection reset: its bytes crashed the guest twice");
            }
        }
        self.stats.bytes_dropped.add(unsent + unconsumed);
        if c.adopted && !c.closing {
            self.gone.push(id);
        }
        c.reset();
    }

    /// Look at connections whose stall deadline came: reset those whose
    /// peer took nothing for too long, release lingering ones that are done.
    pub fn expire_stalls(&mut self) {
        while let Some(&Reverse((at, id))) = self.stalls.peek() {
            if at > self.now {
                break;
            }
            self.stalls.pop();
            self.look_at_output(id, at);
        }
    }

    /// When the loop should wake for the next look at a connection's output,
    /// if any. Looks are not urgent: waking a little late lets one pass take
    /// every look due by then (10,000 connections that each wrote once are
    /// looked at in a few passes, not 10,000).
    pub fn next_stall(&self) -> Option<Instant> {
        self.stalls.peek().map(|Reverse((at, _))| *at + self.stall_limits.slack())
    }

    /// If output waits for this connection's peer, make sure someone looks
    /// again in time (see [`Conn::check_output`]).
    fn watch_output(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !c.output_to_watch() {
            return;
        }
        let check = if c.output_waits() || c.lingering() {
            c.check_output(self.now, &self.stall_limits)
        } else {
            c.first_look(self.now, &self.stall_limits)
        };
        self.act_on(id, check);
    }

    /// Look at a listed connection whose time (`at`) came.
    fn look_at_output(&mut self, id: u64, at: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !c.take_look(at) {
            return;
        }
        let check = c.check_output(self.now, &self.stall_limits);
        self.act_on(id, check);
    }

    fn act_on(&mut self, id: u64, check: OutputCheck) {
        match check {
            OutputCheck::Nothing => {}
            OutputCheck::Wait(at) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.list(at);
                    self.stalls.push(Reverse((at, id)));
                }
            }
            OutputCheck::Release => self.release(id),
            OutputCheck::Stalled(stall) => self.give_up(id, GiveUp::Stalled(stall)),
        }
    }

    /// Close every connection as the server stops: what can be sent now
    /// is, then FIN; a connection with bytes that will never be delivered
    /// (queued, or received and not consumed) is reset instead.
    pub fn close_all(&mut self, scratch: &mut [u8]) {
        let (mut closed, mut reset, mut dropped) = (0u64, 0u64, 0u64);
        for (_, mut c) in self.conns.drain() {
            closed += 1;
            // Decided before any FIN goes out: a FIN first would tell the
            // peer its stream ended complete, whatever follows.
            if let Err(e) = c.flush(self.wirelog.as_mut()) {
                tracing::debug!(ca = %c.peer, "final send failed: {e}");
            }
            let (unconsumed, discarded) = (c.pending(), c.discard_input(scratch));
            // TLS records rustls could not hand the socket count too.
            if c.queued() + unconsumed + discarded > 0 || c.output_waits() {
                reset += 1;
                // The reset takes what the kernel holds with it.
                dropped += unconsumed + discarded + c.undelivered();
                c.reset();
            } else {
                c.close();
                let _ = c.flush(self.wirelog.as_mut());
            }
        }
        self.stats.given_up.add(reset);
        self.stats.bytes_dropped.add(dropped);
        if reset > 0 {
            tracing::warn!(closed, reset, dropped, "closed every connection; those with bytes undelivered were reset");
        } else {
            tracing::debug!(closed, "closed every connection");
        }
    }

    /// Act on what the guest (or a write) changed: send queues and FINs,
    /// resume paused reads, release finished connections, fix interest.
    pub fn settle(&mut self, registry: &Registry, scratch: &mut [u8]) {
        self.settle_dirty(registry, scratch);
        self.resume_starved(scratch);
        // A resumed TLS session may have records to send.
        self.settle_dirty(registry, scratch);
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
            c.read(scratch, self.wirelog.as_mut());
            let (news, flush) = (c.has_news() && c.adopted, c.needs_flush());
            if c.list_starved() {
                self.starved.push_back(id);
            }
            if news {
                self.mark_ready(id);
            }
            if flush {
                self.mark_dirty(id);
            }
        }
    }

    fn settle_dirty(&mut self, registry: &Registry, scratch: &mut [u8]) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.in_dirty = false;
            let was_cutoff = c.cutoff();
            if let Err(e) = c.flush(self.wirelog.as_mut()) {
                tracing::warn!(ca = %c.peer, "send failed: {e}");
            }
            if c.wants_read_resume() {
                c.clear_read_pause();
                c.read(scratch, self.wirelog.as_mut());
                if c.has_news() && c.adopted {
                    self.mark_ready(id);
                }
            }
            let c = self.conns.get_mut(&id).expect("present above");
            // Its own marks may have drained while the bound is reached.
            if c.list_starved() {
                self.starved.push_back(id);
            }
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
            if c.cutoff() && !was_cutoff && c.adopted {
                self.mark_ready(id);
            }
            self.watch_output(id);
        }
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

    fn core_with(limit: usize) -> Core {
        let acceptor = Acceptor::open("127.0.0.1:0".parse().unwrap(), 0, 16, false).unwrap();
        let limits = StallLimits { send_timeout: None, linger: Duration::from_secs(10) };
        Core::new(acceptor, Clock::real(), None, Budget::new(limit), limits)
    }

    /// A connection registered under `id`, and its peer.
    fn connect(core: &mut Core, poll: &Poll, id: u64) -> StdStream {
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
    fn settle_until(core: &mut Core, poll: &Poll, id: u64, want: u64) -> u64 {
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
            core.conns.get_mut(&a).unwrap().read(&mut scratch, None);
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
