//! Backpressure, in one place: how much one connection may hold (its
//! marks), how much all of a server's connections may hold together (the
//! [`Budget`]), what each may still do at that bound ([`FLOOR`]), and what
//! a guest may queue ([`may_queue`]). Nothing is dropped: at a mark or at
//! the bound the host stops reading, and TCP pushes back on the peer. (Who
//! resumes first when the bound drains is the host state's starved queue,
//! oldest first, round-robin.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Stop reading from a peer once this many received bytes wait for the
/// guest; reading resumes as the guest consumes them (see BENCHMARKS.md for
/// the size).
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

/// How many more bytes a connection holding `rx` received bytes and
/// `queued` queued ones may read now: up to its own marks, and while the
/// server-wide bound is reached (`full`), only up to [`FLOOR`].
pub fn read_room(rx: usize, queued: usize, full: bool) -> usize {
    if rx >= RX_HIGH_WATER || queued >= TX_HIGH_WATER {
        return 0;
    }
    let room = RX_HIGH_WATER - rx;
    if full { room.min(FLOOR.saturating_sub(rx + queued)) } else { room }
}

/// Whether a guest may queue `more` bytes on a connection that has
/// `queued`: under the queue's cap and the server's ceiling, and a queue
/// under [`FLOOR`] always fits, as reading does.
pub fn may_queue(queued: usize, more: usize, budget: &Budget) -> bool {
    let after = queued.saturating_add(more);
    after <= TX_CAP && (budget.fits(more) || after <= FLOOR)
}

/// What a guest may answer on a connection holding `queued` bytes in one
/// batch cycle (WIT `batch.news.room`): what [`may_queue`] would let it
/// queue, with the headroom under the server's ceiling shared among the
/// `among` connections of the cycle, so the rooms together stay under it.
pub fn answer_room(queued: usize, budget: &Budget, among: usize) -> usize {
    let share = budget.headroom() / among.max(1);
    TX_CAP.saturating_sub(queued).min(share.max(FLOOR.saturating_sub(queued)))
}

/// The bound on bytes the host holds across all of one server's
/// connections, shared by them; each adds and removes what it holds
/// (through its [`Share`]). Per-connection marks bound one peer; this
/// bounds them all, so ten thousand slow readers cannot add up to ten
/// thousand marks. (Atomic only so a server stays `Send`; one thread
/// updates it.)
#[derive(Clone, Debug)]
pub struct Budget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { held: Arc::new(AtomicUsize::new(0)), limit }
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now by every connection.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// At or over the limit: reading pauses (beyond [`FLOOR`]).
    pub fn full(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.limit
    }

    /// Whether a guest may queue `more` bytes: the hard ceiling is twice the
    /// limit, which a guest that only answers what it reads never reaches.
    pub fn fits(&self, more: usize) -> bool {
        self.held.load(Ordering::Relaxed).saturating_add(more) <= self.limit.saturating_mul(2)
    }

    /// Bytes a guest may still queue before the hard ceiling (see `fits`).
    pub fn headroom(&self) -> usize {
        self.limit.saturating_mul(2).saturating_sub(self.held.load(Ordering::Relaxed))
    }

    /// Move one holder's share from `was` to `now` bytes.
    fn shift(&self, was: usize, now: usize) {
        if now >= was {
            self.held.fetch_add(now - was, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(was - now, Ordering::Relaxed);
        }
    }
}

/// One connection's share of the [`Budget`]: the memory its buffers hold
/// (capacity, not just the bytes in them). Given back when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Budget,
    held: usize,
}

impl Share {
    pub fn new(budget: Budget) -> Share {
        Share { budget, held: 0 }
    }

    /// The connection's buffers now hold `capacity` bytes of memory.
    pub fn set(&mut self, capacity: usize) {
        if capacity != self.held {
            self.budget.shift(self.held, capacity);
            self.held = capacity;
        }
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.shift(self.held, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_rooms_share_the_headroom_and_keep_the_floor() {
        let b = Budget::new(100 << 10);
        let mut held = Share::new(b.clone());
        held.set(50 << 10);
        // 150 KiB of headroom under the 200 KiB ceiling, among 3.
        assert_eq!(answer_room(0, &b, 3), 50 << 10);
        // Among many, each keeps at least what the floor lets any queue hold.
        assert_eq!(answer_room(1 << 10, &b, 1000), FLOOR - (1 << 10));
        // Never past the queue's cap.
        assert_eq!(answer_room(TX_CAP - 10, &Budget::new(1 << 30), 1), 10);
    }

    #[test]
    fn limits_and_ceiling() {
        let b = Budget::new(100);
        let mut one = Share::new(b.clone());
        let mut other = Share::new(b.clone());
        one.set(60);
        assert!(!b.full());
        other.set(40);
        assert!(b.full());
        assert!(b.fits(100) && !b.fits(101));
        one.set(10);
        assert_eq!(b.held(), 50);
        assert!(!b.full());
        drop(other);
        assert_eq!(b.held(), 10, "a dropped share is given back");
    }

    #[test]
    fn room_stops_at_the_marks_and_at_the_bound_beyond_the_floor() {
        assert_eq!(read_room(0, 0, false), RX_HIGH_WATER);
        assert_eq!(read_room(RX_HIGH_WATER, 0, false), 0);
        assert_eq!(read_room(0, TX_HIGH_WATER, false), 0);
        assert_eq!(read_room(1000, 0, true), FLOOR - 1000);
        assert_eq!(read_room(FLOOR, 0, true), 0);
        let full = Budget::new(1);
        assert!(may_queue(0, FLOOR, &full) && !may_queue(0, FLOOR + 1, &full), "under the floor only");
        assert!(!may_queue(TX_CAP, 1, &Budget::new(usize::MAX / 4)));
    }
}
