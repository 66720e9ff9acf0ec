//! The bound on bytes the host holds across all of one server's
//! connections (received and not consumed, queued and not sent).
//!
//! Per-connection high-water marks bound one peer; this bounds them all, so
//! ten thousand slow readers cannot add up to ten thousand marks. At the
//! limit the host stops reading from peers (TCP pushes back on them) until
//! bytes drain; a guest queuing past twice the limit is told `full`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared by a server's connections; each adds and removes what it holds.
/// (Atomic only so a server stays `Send`; one thread updates it.)
#[derive(Clone, Debug)]
pub struct Budget {
    held: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget { held: Arc::new(AtomicUsize::new(0)), limit }
    }

    /// Bytes held now by every connection.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// At or over the limit: reading pauses.
    pub fn full(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.limit
    }

    /// Whether a guest may queue `more` bytes: the hard ceiling is twice the
    /// limit, which a guest that only answers what it reads never reaches.
    pub fn fits(&self, more: usize) -> bool {
        self.held.load(Ordering::Relaxed).saturating_add(more) <= self.limit.saturating_mul(2)
    }

    /// Move one holder's share from `was` to `now` bytes.
    pub fn shift(&self, was: usize, now: usize) {
        if now >= was {
            self.held.fetch_add(now - was, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(was - now, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_ceiling() {
        let b = Budget::new(100);
        let other = b.clone();
        b.shift(0, 60);
        assert!(!b.full());
        other.shift(0, 40);
        assert!(b.full() && other.full());
        assert!(b.fits(100) && !b.fits(101));
        b.shift(60, 10);
        assert_eq!(other.held(), 50);
        assert!(!other.full());
    }
}
