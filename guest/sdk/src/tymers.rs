//! Which connection's idle tymer runs out next, without scanning them all.
//!
//! One heap entry per connection at most, holding the stop tyme it had when
//! pushed. A connection refreshed since is found out when its entry comes
//! up and pushed again at its new stop, so refreshing on every byte costs
//! nothing here.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    stop: f64,
    id: u64,
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.stop.total_cmp(&other.stop).then(self.id.cmp(&other.id))
    }
}

/// Idle tymers of every connection, earliest stop first: a cycle looks only
/// at those due, not at every connection.
#[derive(Debug, Default)]
pub struct TymerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
}

/// What the queue's owner says about a connection whose entry came up.
pub enum Due {
    /// Gone already: forget the entry.
    Gone,
    /// Refreshed: it now stops at this tyme.
    Later(f64),
    /// Really idle past its stop.
    Expired,
}

impl TymerQueue {
    /// Stop connection `id`'s tymer at `stop` (seconds of tyme).
    pub fn push(&mut self, id: u64, stop: f64) {
        self.heap.push(Reverse(Entry { stop, id }));
    }

    /// The earliest stop tyme queued, if any.
    pub fn next(&self) -> Option<f64> {
        self.heap.peek().map(|Reverse(e)| e.stop)
    }

    /// Pop every entry due at `tyme`; `check` tells what became of it.
    /// Returns the ids that really expired.
    pub fn expire(&mut self, tyme: f64, mut check: impl FnMut(u64) -> Due) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(Reverse(e)) = self.heap.peek().copied() {
            if e.stop > tyme {
                break;
            }
            self.heap.pop();
            match check(e.id) {
                Due::Gone => {}
                Due::Later(stop) => self.push(e.id, stop),
                Due::Expired => expired.push(e.id),
            }
        }
        expired
    }

    /// Entries held (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn expires_in_order_and_requeues_refreshed() {
        let mut q = TymerQueue::default();
        // id -> current stop; 3 is removed before it comes up.
        let mut stops: HashMap<u64, f64> = [(1, 1.0), (2, 2.0), (4, 4.0)].into();
        q.push(1, 1.0);
        q.push(2, 2.0);
        q.push(3, 0.5);
        q.push(4, 4.0);
        assert_eq!(q.next(), Some(0.5));
        // 1 was refreshed to stop at 3.0.
        stops.insert(1, 3.0);
        let check = |stops: &HashMap<u64, f64>, tyme: f64, id: u64| match stops.get(&id) {
            None => Due::Gone,
            Some(&s) if s > tyme => Due::Later(s),
            Some(_) => Due::Expired,
        };
        let out = q.expire(2.0, |id| check(&stops, 2.0, id));
        assert_eq!(out, vec![2]);
        assert_eq!(q.next(), Some(3.0));
        assert_eq!(q.len(), 2);
        let out = q.expire(10.0, |id| check(&stops, 10.0, id));
        assert_eq!(out, vec![1, 4]);
        assert!(q.is_empty());
        assert_eq!(q.next(), None);
    }

    #[test]
    fn nothing_due_pops_nothing() {
        let mut q = TymerQueue::default();
        q.push(9, 5.0);
        assert!(q.expire(4.999, |_| Due::Expired).is_empty());
        assert_eq!(q.len(), 1);
    }
}
