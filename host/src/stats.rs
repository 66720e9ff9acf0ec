//! Counters of what the host did about misbehaving peers and guests, for
//! operators and tests: connections reset, guest log lines dropped, guest
//! wake-ups held back. Only the event loop writes them; any thread may read
//! them while it runs ([`crate::Server::stats`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed) + n
    }
}

/// A server's counters (one set per worker with `--workers`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Open connections reset because their peer took no byte of their
    /// queued output for `send_timeout` seconds.
    pub send_timeouts: Counter,
    /// Closing connections reset because their peer took no byte of what
    /// was left to send for `linger` seconds.
    pub linger_resets: Counter,
    /// Connections reset because the host gave up on bytes it held for them
    /// (their input crashed the guest twice, or the server closed with
    /// bytes undelivered).
    pub given_up: Counter,
    /// Bytes dropped with those resets: queued output the peer never got
    /// and received input the guest never consumed.
    pub bytes_dropped: Counter,
    /// Guest log lines (`host.log`, stdout, stderr) dropped over the rate limit.
    pub guest_log_dropped: Counter,
    /// Times a guest asked to be woken again at once; such wake-ups are
    /// held to one per `MIN_WAKE_INTERVAL`.
    pub wake_spins: Counter,
}
