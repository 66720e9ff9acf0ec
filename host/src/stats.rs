//! What a server did and holds, for operators (the admin endpoint's
//! `/metrics` and `/status`) and tests: connections accepted, refused and
//! reset, bytes moved, the guest's starts, failures and swaps. Only the
//! event loop writes them, with relaxed atomic stores (no lock, nothing to
//! wait for); any thread may read them while it runs ([`crate::Server::stats`]).

use std::sync::Mutex;

pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed) + n
    }
}

/// One value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// A server's counters (one set per worker with `--workers`).
#[derive(Debug)]
pub struct Stats {
    /// Open connections reset because their peer took no byte of their
    /// queued output for `send_timeout` seconds.
    pub send_timeouts: Counter,
    /// Closing connections reset because their peer took no byte of what
    /// was left to send for `linger` seconds.
    pub linger_resets: Counter,
    /// Connections reset because their input crashed the guest twice.
    pub poison_resets: Counter,
    /// Connections still open when a drain's deadline passed, reset.
    pub drain_resets: Counter,
    /// Connections reset as the server closed with bytes undelivered.
    pub shutdown_resets: Counter,
    /// Connections that ended cleanly: everything delivered, then FIN.
    pub closed: Counter,
    /// Connections closed for a missing or malformed PROXY header.
    pub proxy_refused: Counter,
    /// Bytes dropped with those resets: queued output the peer never got
    /// and received input the guest never consumed.
    pub bytes_dropped: Counter,
    /// Guest log lines (`host.log`, stdout, stderr) dropped over the rate limit.
    pub guest_log_dropped: Counter,
    /// Times a guest asked to be woken again at once; such wake-ups are
    /// held to one per `MIN_WAKE_INTERVAL`.
    pub wake_spins: Counter,
    /// Connections accepted into the host.
    pub accepted: Counter,
    /// New connections closed at once for being over `--max-conns`.
    pub refused_cap: Counter,
    /// New connections refused for want of file descriptors.
    pub refused_descriptors: Counter,
    /// Bytes read from peers (plaintext, for TLS).
    pub bytes_received: Counter,
    /// Bytes written to peers (plaintext): from the connections' queues, a
    /// batch cycle's answers and the guest's `send`.
    pub bytes_sent: Counter,
    /// Guest instances started (first start, restarts, swaps).
    pub guest_starts: Counter,
    /// Guest instances started again after a failure (a subset of starts).
    pub guest_restarts: Counter,
    /// Guest cycles (`service` calls), failed ones included.
    pub guest_cycles: Counter,
    /// Guest calls that failed (trap, deadline, fuel, memory, refusal).
    pub guest_failures: Counter,
    /// Hot swaps done (the refused ones: `swaps_failed`, the old guest kept serving).
    pub swaps_ok: Counter,
    /// Hot swaps refused.
    pub swaps_failed: Counter,
    /// Connections held now.
    pub connections: Gauge,
    /// Bytes held now across connections (received and not consumed,
    /// queued and not sent).
    pub buffered: Gauge,
    /// 1 while a guest is up, 0 while it is down (waiting to restart).
    pub guest_up: Gauge,
    /// 1 once draining.
    pub draining: Gauge,
    /// The bound on `buffered` (`--max-buffered`, this worker's share), in bytes.
    pub buffered_limit: Gauge,
    /// When the loop last made a pass, in ms on the process's clock
    /// (`crate::tyme::process_ms`).
    pub last_pass_ms: Gauge,
    /// The last hot swap: the guest and its pause, or why it was refused.
    pub last_swap: Mutex<Option<String>>,
    /// Guest traps, by cause: past the deadline, out of fuel, at the memory
    /// limit, a panic (wasm's `unreachable`, which is what a Rust panic
    /// becomes), a forged or stale resource handle, anything else.
    pub traps_deadline: Counter,
    /// Traps for burning all the fuel of a call.
    pub traps_fuel: Counter,
    /// Traps at the memory limit.
    pub traps_memory: Counter,
    /// Panics.
    pub traps_panic: Counter,
    /// Forged or stale resource handles.
    pub traps_forged_handle: Counter,
    /// Any other trap.
    pub traps_other: Counter,
    /// TLS handshakes finished.
    pub tls_handshakes: Counter,
    /// TLS handshakes failed, by cause: not finished within
    /// `--handshake-timeout`, the peer closed, its certificate was refused,
    /// anything else it broke in the protocol.
    pub tls_failed_timeout: Counter,
    /// Handshakes the peer closed.
    pub tls_failed_peer_closed: Counter,
    /// Handshakes with a refused certificate.
    pub tls_failed_certificate: Counter,
    /// Any other protocol failure.
    pub tls_failed_protocol: Counter,
    /// TLS handshakes' durations, from accept to connected, in seconds.
    pub tls_handshake: Histogram,
    /// Hot swaps' pauses of the loop, in seconds.
    pub swap_pause: Histogram,
    /// Per hand-over (WIT `handover`: after a swap, a restart or an
    /// upgrade), its longest pass of guest work, in seconds.
    pub handover_pass: Histogram,
    /// Guest calls' (`service`) durations, in seconds.
    pub guest_call: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        // 10 µs to about 5 s, doubling.
        let buckets = || Histogram::new(exponential_buckets(1e-5, 2.0, 20));
        Stats {
            send_timeouts: Counter::default(),
            linger_resets: Counter::default(),
            poison_resets: Counter::default(),
            drain_resets: Counter::default(),
            shutdown_resets: Counter::default(),
            closed: Counter::default(),
            proxy_refused: Counter::default(),
            bytes_dropped: Counter::default(),
            guest_log_dropped: Counter::default(),
            wake_spins: Counter::default(),
            accepted: Counter::default(),
            refused_cap: Counter::default(),
            refused_descriptors: Counter::default(),
            bytes_received: Counter::default(),
            bytes_sent: Counter::default(),
            guest_starts: Counter::default(),
            guest_restarts: Counter::default(),
            guest_cycles: Counter::default(),
            guest_failures: Counter::default(),
            swaps_ok: Counter::default(),
            swaps_failed: Counter::default(),
            connections: Gauge::default(),
            buffered: Gauge::default(),
            guest_up: Gauge::default(),
            draining: Gauge::default(),
            buffered_limit: Gauge::default(),
            last_pass_ms: Gauge::default(),
            last_swap: Mutex::default(),
            traps_deadline: Counter::default(),
            traps_fuel: Counter::default(),
            traps_memory: Counter::default(),
            traps_panic: Counter::default(),
            traps_forged_handle: Counter::default(),
            traps_other: Counter::default(),
            tls_handshakes: Counter::default(),
            tls_failed_timeout: Counter::default(),
            tls_failed_peer_closed: Counter::default(),
            tls_failed_certificate: Counter::default(),
            tls_failed_protocol: Counter::default(),
            tls_handshake: buckets(),
            swap_pause: buckets(),
            handover_pass: buckets(),
            guest_call: buckets(),
        }
    }
}
