//! What the host hands a guest in one call, and whose bytes are suspected
//! when a guest fails.
//!
//! Received bytes are lent to the guest (in a cycle's arrivals, with each
//! connection accepted) and stay in the host until consumed; `start` is
//! handed none, so a guest that cannot start is never blamed on a peer.
//! Two bounds apply: at most `PER_CALL` bytes per guest call, and while an
//! *isolated* connection has its turn, only its bytes. A connection is
//! isolated when a guest failed (in any call) while holding its unconsumed
//! bytes; handed alone, a failure names it the culprit. So one poison
//! message costs two guest restarts, however many peers were busy.

use rustc_hash::FxHashSet;

/// Most received bytes handed to a guest in one call (a cycle's arrivals and
/// what it accepts, or a start): 10,000 connections with full buffers must
/// not push gigabytes into a guest's memory at once. A connection left with
/// bytes to hand is ready again for the next cycle. (Each byte lent costs
/// the guest memory, which never shrinks: 200 slow readers under a 4 MiB
/// server bound grew the host by 15 MiB at 4 MiB a call, 10 MiB at 1 MiB;
/// 1 MiB a cycle is still far above what one crossing costs.)
pub const PER_CALL: usize = 1 << 20;

/// How many emptied arrival buffers are kept, and the largest kept: enough
/// for a busy cycle's worth, without holding on to a burst's memory.
const SPARE_BUFFERS: usize = 256;
const SPARE_CAPACITY: usize = 64 << 10;

#[derive(Default)]
pub struct Handing {
    /// Bytes still to be handed in the current call.
    left: usize,
    /// Connections handed bytes or a cutoff since the guest's last good
    /// cycle.
    lent: Vec<u64>,
    /// Suspects, handed bytes one at a time.
    isolated: FxHashSet<u64>,
    /// The isolated connection whose bytes the guest holds now.
    turn: Option<u64>,
    /// Emptied buffers of earlier arrivals, so handing bytes over does not
    /// allocate each time.
    spare: Vec<Vec<u8>>,
}

/// What a failed guest call says about the connections it held.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No connection owed the guest anything: not a peer's bytes.
    NoneHeld,
    /// An isolated connection alone held unconsumed bytes: the culprit.
    Culprit(u64),
    /// These many held bytes: each is handed its bytes alone from now on.
    Isolated(usize),
}

impl Handing {
    /// A new guest call begins. If a suspect has bytes to hand (`news`)
    /// and none has the turn, the one with the lowest id takes it: the
    /// guest is then handed that suspect's bytes and nobody else's until a
    /// cycle succeeds or fails, so a failure in between has one suspect.
    /// Returns the connection with the turn, if any.
    pub fn begin_call(&mut self, news: impl Fn(u64) -> bool) -> Option<u64> {
        self.left = PER_CALL;
        if self.turn.is_none() {
            self.turn = self.isolated.iter().copied().filter(|&id| news(id)).min();
        }
        self.turn
    }

    /// How much of `id`'s bytes may go in this call, or `None` if none may
    /// (the bound is spent, or a suspect has the turn). `news` says whether
    /// it has anything to hand at all.
    pub fn allowance(&mut self, id: u64, news: bool) -> Option<usize> {
        if !news {
            return Some(0);
        }
        if self.turn.is_some_and(|t| t != id) || self.left == 0 {
            return None;
        }
        Some(self.left)
    }

    /// `id` was handed `len` bytes (or its end).
    pub fn handed(&mut self, id: u64, len: usize, cutoff: bool) {
        self.left -= len.min(self.left);
        if len > 0 || cutoff {
            self.lent.push(id);
        }
    }

    /// A buffer for `len` bytes: a spare one if it holds them without
    /// growing (growing would copy its old capacity for nothing).
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare.last() {
            Some(b) if b.capacity() >= len => self.spare.pop().unwrap_or_default(),
            _ => Vec::with_capacity(len),
        }
    }

    /// Take back a buffer handed out, once the guest has its copy.
    pub fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && data.capacity() <= SPARE_CAPACITY {
            data.clear();
            self.spare.push(data);
        }
    }

    /// The guest finished a cycle: what it was handed did not crash it.
    pub fn succeeded(&mut self) {
        self.lent.clear();
        if let Some(t) = self.turn.take() {
            self.isolated.remove(&t);
        }
    }

    /// The guest failed in a call; `owes` says which connections still held
    /// bytes they were handed.
    pub fn failed(&mut self, owes: impl Fn(u64) -> bool) -> Verdict {
        let mut suspects: Vec<u64> = self.lent.drain(..).filter(|&id| owes(id)).collect();
        suspects.sort_unstable();
        suspects.dedup();
        self.turn = None;
        match suspects.as_slice() {
            [] => Verdict::NoneHeld,
            [one] if self.isolated.remove(one) => Verdict::Culprit(*one),
            many => {
                self.isolated.extend(many);
                Verdict::Isolated(many.len())
            }
        }
    }

    /// A guest that failed is thrown away without a verdict (a new guest
    /// that could not take over at a swap: its failure says nothing about
    /// the peers, whose bytes go back to the old guest).
    pub fn discard_lent(&mut self) {
        self.lent.clear();
        self.turn = None;
    }

    /// A connection is gone.
    pub fn forget(&mut self, id: u64) {
        self.isolated.remove(&id);
        if self.turn == Some(id) {
            self.turn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: u64) -> bool {
        true
    }

    #[test]
    fn holders_are_isolated_and_each_handed_alone_until_cleared_or_blamed() {
        let mut h = Handing::default();
        assert_eq!(h.begin_call(any), None);
        for id in [1, 2, 3] {
            assert!(h.allowance(id, true).is_some());
            h.handed(id, 10, false);
        }
        // 1 consumed its bytes before the failure; 2 and 3 did not.
        assert_eq!(h.failed(|id| id != 1), Verdict::Isolated(2));
        assert!(!h.isolated.contains(&1));
        // While suspect 2 has its turn, nobody else is handed bytes, across
        // calls, until a cycle settles it.
        assert_eq!(h.begin_call(any), Some(2));
        assert!(h.allowance(2, true).is_some());
        h.handed(2, 10, false);
        assert_eq!(h.begin_call(any), Some(2));
        assert_eq!(h.allowance(3, true), None);
        assert_eq!(h.allowance(1, true), None);
        assert_eq!(h.allowance(1, false), Some(0), "nothing to hand is always allowed");
        // 2 went through a good cycle: cleared. 3 gets its turn and fails alone.
        h.succeeded();
        assert_eq!(h.begin_call(any), Some(3));
        assert!(h.allowance(3, true).is_some());
        h.handed(3, 10, false);
        assert_eq!(h.failed(|_| true), Verdict::Culprit(3));
        assert_eq!(h.begin_call(any), None);
        assert!(h.allowance(1, true).is_some() && h.allowance(2, true).is_some(), "no one is held back any more");
    }

    #[test]
    fn a_suspect_with_nothing_to_hand_does_not_take_the_turn() {
        let mut h = Handing::default();
        h.begin_call(any);
        h.handed(4, 10, false);
        h.handed(5, 10, false);
        assert_eq!(h.failed(any), Verdict::Isolated(2));
        assert_eq!(h.begin_call(|id| id == 5), Some(5));
        h.forget(5);
        assert_eq!(h.begin_call(|id| id == 4), Some(4), "a connection that is gone gives up its turn");
    }

    #[test]
    fn a_call_hands_at_most_its_bound() {
        let mut h = Handing::default();
        h.begin_call(any);
        h.handed(1, PER_CALL, false);
        assert_eq!(h.allowance(2, true), None);
        assert_eq!(h.allowance(2, false), Some(0), "nothing to hand is always allowed");
    }

    #[test]
    fn one_failure_alone_is_not_enough_to_blame() {
        let mut h = Handing::default();
        h.begin_call(any);
        h.handed(7, 10, false);
        assert_eq!(h.failed(any), Verdict::Isolated(1));
        h.begin_call(any);
        assert_eq!(h.allowance(7, true), Some(PER_CALL));
        h.handed(7, 10, false);
        assert_eq!(h.failed(any), Verdict::Culprit(7));
        assert_eq!(h.failed(any), Verdict::NoneHeld);
    }

    #[test]
    fn a_discarded_guest_leaves_no_evidence() {
        let mut h = Handing::default();
        h.begin_call(any);
        h.handed(7, 10, false);
        h.discard_lent();
        assert_eq!(h.failed(any), Verdict::NoneHeld);
    }
}
