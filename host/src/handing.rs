//! What the host hands a guest in one call, and whose bytes are suspected
//! when a guest fails.
//!
//! Received bytes are lent to the guest (in a cycle's arrivals, with each
//! connection handed over) and stay in the host until consumed. Two bounds
//! apply: at most `PER_CALL` bytes per guest call, and the bytes of at most
//! one *isolated* connection in the guest at a time. A connection is isolated when a guest
//! failed while holding its unconsumed bytes; handed alone, a failure that
//! again finds it the only holder names it the culprit.

use rustc_hash::FxHashSet;

/// Most received bytes handed to a guest in one call (a cycle's arrivals and
/// what it accepts, or a start): 10,000 connections with full buffers must
/// not push gigabytes into a guest's memory at once. A connection left with
/// bytes to hand is ready again for the next cycle.
pub const PER_CALL: usize = 4 << 20;

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
    /// A new guest call begins. (An isolated connection keeps its turn
    /// until a cycle succeeds or fails: bytes handed at a start are acted
    /// on in the cycle after.)
    pub fn begin_call(&mut self) {
        self.left = PER_CALL;
    }

    /// How much of `id`'s bytes may go in this call, or `None` if none may
    /// (the bound is spent, or another isolated connection has this call's
    /// turn). `news` says whether it has anything to hand at all.
    pub fn allowance(&mut self, id: u64, news: bool) -> Option<usize> {
        if !news {
            return Some(0);
        }
        if self.isolated.contains(&id) {
            match self.turn {
                Some(t) if t != id => return None,
                _ => self.turn = Some(id),
            }
        }
        if self.left == 0 { None } else { Some(self.left) }
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

    /// A guest failed to start: it was handed nothing it could act on.
    pub fn start_failed(&mut self) {
        self.lent.clear();
        self.turn = None;
    }

    /// A connection is gone.
    pub fn forget(&mut self, id: u64) {
        self.isolated.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_isolated_and_one_that_fails_alone_again_is_the_culprit() {
        let mut h = Handing::default();
        h.begin_call();
        for id in [1, 2, 3] {
            assert!(h.allowance(id, true).is_some());
            h.handed(id, 10, false);
        }
        // 1 consumed its bytes before the failure; 2 and 3 did not.
        assert_eq!(h.failed(|id| id != 1), Verdict::Isolated(2));
        assert!(!h.isolated.contains(&1));
        // Only one isolated connection's bytes are in the guest at a time,
        // across calls, until a cycle settles it; 1 is not held back.
        h.begin_call();
        assert!(h.allowance(2, true).is_some());
        h.handed(2, 10, false);
        h.begin_call();
        assert_eq!(h.allowance(3, true), None);
        assert!(h.allowance(1, true).is_some());
        // 2 went through a good cycle: cleared. 3 gets its turn and fails alone.
        h.succeeded();
        h.begin_call();
        assert!(h.allowance(3, true).is_some());
        h.handed(3, 10, false);
        assert_eq!(h.failed(|_| true), Verdict::Culprit(3));
        h.begin_call();
        assert!(h.allowance(2, true).is_some() && h.allowance(3, true).is_some(), "no one is held back any more");
    }

    #[test]
    fn a_call_hands_at_most_its_bound() {
        let mut h = Handing::default();
        h.begin_call();
        h.handed(1, PER_CALL, false);
        assert_eq!(h.allowance(2, true), None);
        assert_eq!(h.allowance(2, false), Some(0), "nothing to hand is always allowed");
    }

    #[test]
    fn one_failure_alone_is_not_enough_to_blame() {
        let mut h = Handing::default();
        h.begin_call();
        h.handed(7, 10, false);
        assert_eq!(h.failed(|_| true), Verdict::Isolated(1));
        h.begin_call();
        assert_eq!(h.allowance(7, true), Some(PER_CALL));
        h.handed(7, 10, false);
        assert_eq!(h.failed(|_| true), Verdict::Culprit(7));
        assert_eq!(h.failed(|_| true), Verdict::NoneHeld);
    }
}
