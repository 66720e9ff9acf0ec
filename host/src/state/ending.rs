//! How connections end: released once done, or given up on with a reset
//! (RST) so a peer never takes a truncated stream for a whole one; the
//! looks at peers that do not take their output (send timeout, linger);
//! and closing everything as the server stops.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::HostState;
use crate::net::conn::{Conn, OutputCheck, Stall, StallLimits};

/// Why the host gives up on a connection (and resets it).
#[derive(Debug, Clone, Copy)]
pub enum GiveUp {
    /// Its peer took none of its output for too long.
    Stalled(Stall),
    /// Its bytes crashed the guest twice.
    Poison,
}

/// When to look again at connections whose output waits for their peer,
/// earliest first (a connection listed again sooner, as it began closing,
/// leaves its later entry behind, to be skipped), and the limits.
pub struct Stalls {
    looks: BinaryHeap<Reverse<(Instant, u64)>>,
    limits: StallLimits,
}

impl Stalls {
    pub fn new(limits: StallLimits) -> Stalls {
        Stalls { looks: BinaryHeap::new(), limits }
    }
}

impl HostState {
    /// The connection is done: closed cleanly (its socket with it).
    pub(super) fn release(&mut self, id: u64) {
        if let Some(c) = self.remove(id) {
            self.stats.closed.add(1);
            tracing::debug!(ca = %c.peer, id, "closed");
        }
    }

    /// Close a connection whose PROXY header is missing or malformed: the
    /// guest never met it.
    pub(super) fn refuse_proxy(&mut self, id: u64, why: &str) {
        if let Some(c) = self.remove(id) {
            self.stats.proxy_refused.add(1);
            tracing::warn!(ca = %c.peer, id, "PROXY protocol: {why}: closing");
        }
    }

    /// Dropping the connection closes the socket, which also takes it out
    /// of epoll: no deregister call needed.
    fn remove(&mut self, id: u64) -> Option<Conn> {
        let c = self.conns.remove(&id)?;
        self.handing.forget(id);
        Some(c)
    }

    /// Give up on a connection: reset it (RST), so its peer does not take
    /// a truncated stream for a complete one, and say how much was lost.
    pub fn give_up(&mut self, id: u64, why: GiveUp) {
        let Some(c) = self.remove(id) else { return };
        let (unsent, unconsumed, ca) = (c.undelivered(), c.pending(), c.peer);
        let limits = self.stalls.limits;
        match why {
            GiveUp::Stalled(Stall::SendTimeout) => {
                self.stats.send_timeouts.add(1);
                let secs = limits.send_timeout.unwrap_or_default().as_secs_f64();
                tracing::warn!(%ca, id, unsent, "connection reset: its peer took none of its output for {secs} s (send timeout)");
            }
            GiveUp::Stalled(Stall::Linger) => {
                self.stats.linger_resets.add(1);
                let secs = limits.linger.as_secs_f64();
                tracing::warn!(%ca, id, unsent, "closing connection reset: its peer took none of what was left for {secs} s (linger)");
            }
            GiveUp::Poison => {
                self.stats.poison_resets.add(1);
                tracing::warn!(%ca, id, unsent, unconsumed, "connection reset: its bytes crashed the guest twice");
            }
        }
        self.stats.bytes_dropped.add(unsent + unconsumed);
        if c.held_by_guest() {
            self.gone.push(id);
        }
        c.reset();
    }

    /// Look at connections whose time came: reset those whose peer took
    /// nothing for too long, release lingering ones that are done.
    pub fn expire_stalls(&mut self) {
        while let Some(&Reverse((at, id))) = self.stalls.looks.peek() {
            if at > self.now {
                break;
            }
            self.stalls.looks.pop();
            self.look_at_output(id, at);
        }
    }

    /// When the loop should wake for the next look at a connection's output,
    /// if any. Looks are not urgent: waking a little late lets one pass take
    /// every look due by then (10,000 connections that each wrote once are
    /// looked at in a few passes, not 10,000).
    pub fn next_stall(&self) -> Option<Instant> {
        self.stalls.looks.peek().map(|Reverse((at, _))| *at + self.stalls.limits.slack())
    }

    /// If output waits for this connection's peer, make sure someone looks
    /// again in time (see `Conn::check_output`).
    pub(super) fn watch_output(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !c.output_to_watch() {
            return;
        }
        let check = if c.output_waits() || c.lingering() {
            c.check_output(self.now, &self.stalls.limits)
        } else {
            c.first_look(self.now, &self.stalls.limits)
        };
        self.act_on(id, check);
    }

    /// Look at a listed connection whose time (`at`) came.
    fn look_at_output(&mut self, id: u64, at: Instant) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if !c.take_look(at) {
            return;
        }
        let check = c.check_output(self.now, &self.stalls.limits);
        self.act_on(id, check);
    }

    fn act_on(&mut self, id: u64, check: OutputCheck) {
        match check {
            OutputCheck::Nothing => {}
            OutputCheck::Wait(at) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.list(at);
                    self.stalls.looks.push(Reverse((at, id)));
                }
            }
            OutputCheck::Release => self.release(id),
            OutputCheck::Stalled(stall) => self.give_up(id, GiveUp::Stalled(stall)),
        }
    }

    /// A drain's deadline passed: reset every connection still held (its
    /// exchange was cut short, so no peer may take it for finished), and
    /// say how many and how many bytes were lost.
    pub fn reset_all(&mut self, scratch: &mut [u8]) {
        let (mut reset, mut dropped) = (0u64, 0u64);
        for (_, mut c) in self.conns.drain() {
            if c.held() {
                continue;
            }
            reset += 1;
            dropped += c.pending() + c.discard_input(scratch) + c.undelivered();
            c.reset();
        }
        self.axes.clear();
        self.stats.drain_resets.add(reset);
        self.stats.bytes_dropped.add(dropped);
        if reset > 0 {
            tracing::warn!(reset, dropped, "drain timeout passed: connections still open were reset");
        }
    }

    /// Close every connection as the server stops: what can be sent now
    /// is, then FIN; a connection with bytes that will never be delivered
    /// (queued, or received and not consumed) is reset instead.
    pub fn close_all(&mut self, scratch: &mut [u8]) {
        let (mut closed, mut reset, mut dropped) = (0u64, 0u64, 0u64);
        for (_, mut c) in self.conns.drain() {
            // Still its predecessor's: left to it as it is.
            if c.held() {
                continue;
            }
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
        self.stats.shutdown_resets.add(reset);
        self.stats.closed.add(closed - reset);
        self.stats.bytes_dropped.add(dropped);
        if reset > 0 {
            tracing::warn!(closed, reset, dropped, "closed every connection; those with bytes undelivered were reset");
        } else {
            tracing::debug!(closed, "closed every connection");
        }
    }
}
