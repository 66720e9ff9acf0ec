//! The host's tyme: what guests read as hio's `tymist.tyme`.
//!
//! Production runs on a monotonic real clock; tests run on a virtual tyme
//! advanced by hand, so idle timeouts are tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The longest setting in seconds the host takes (about 31 years): longer
/// is a mistake, and far longer does not fit a `Duration`.
pub const MAX_SECONDS: f64 = 1e9;

/// The shortest setting in seconds the host takes, other than 0: shorter
/// rounds to nothing (or spins the loop).
pub const MIN_SECONDS: f64 = 0.001;

/// A setting of `value` seconds as a `Duration`, or an error naming it:
/// from `MIN_SECONDS` to `MAX_SECONDS` (or 0 itself if `zero_ok`).
pub fn seconds(name: &str, value: f64, zero_ok: bool) -> Result<Duration> {
    let ok = (zero_ok && value == 0.0) || (MIN_SECONDS..=MAX_SECONDS).contains(&value);
    if !ok {
        let zero = if zero_ok { "0 or " } else { "" };
        bail!("{name} must be {zero}a number of seconds from {MIN_SECONDS} to {MAX_SECONDS}, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Where tyme comes from.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Seconds since the host started.
    Real(Instant),
    /// Seconds set by hand through a [`VirtualTyme`].
    Virtual(VirtualTyme),
}

impl Clock {
    /// The real clock, starting at 0.0 now.
    pub fn real() -> Self {
        Clock::Real(Instant::now())
    }

    /// The tyme now, in seconds.
    pub fn tyme(&self) -> f64 {
        self.tyme_at(Instant::now())
    }

    /// The tyme at `now`, for a caller that has already read the clock.
    pub fn tyme_at(&self, now: Instant) -> f64 {
        match self {
            Clock::Real(start) => now.saturating_duration_since(*start).as_secs_f64(),
            Clock::Virtual(v) => v.tyme(),
        }
    }

    /// Whether tyme moves only by hand.
    pub fn is_virtual(&self) -> bool {
        matches!(self, Clock::Virtual(_))
    }
}

/// A virtual tyme shared between the host and whoever drives it (hio's
/// Tymist). Cloning shares the same tyme.
#[derive(Clone, Debug, Default)]
pub struct VirtualTyme(Arc<AtomicU64>);

impl VirtualTyme {
    /// A virtual tyme at `tyme` seconds.
    pub fn new(tyme: f64) -> Self {
        VirtualTyme(Arc::new(AtomicU64::new(tyme.to_bits())))
    }

    /// The tyme now, in seconds.
    pub fn tyme(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Acquire))
    }

    /// Advance tyme by `tock` seconds (hio's `Tymist.tick`).
    pub fn tick(&self, tock: f64) {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let next = (f64::from_bits(cur) + tock).to_bits();
            match self.0.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }
}

/// Milliseconds since this process first asked: a clock every thread shares
/// (the loops' last passes, the admin endpoint's uptime).
pub fn process_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_tyme_advances_only_when_ticked() {
        let v = VirtualTyme::new(0.0);
        let clock = Clock::Virtual(v.clone());
        assert_eq!(clock.tyme(), 0.0);
        v.tick(0.5);
        v.tick(0.25);
        assert_eq!(clock.tyme(), 0.75);
        assert!(clock.is_virtual());
    }

    #[test]
    fn settings_in_seconds_are_checked_before_they_become_durations() {
        assert_eq!(seconds("tock", 1.5, false).unwrap(), Duration::from_millis(1500));
        assert_eq!(seconds("linger", 0.0, true).unwrap(), Duration::ZERO);
        for (bad, zero_ok) in
            [(0.0, false), (-1.0, true), (f64::NAN, true), (f64::INFINITY, true), (1e30, true), (1e-12, true)]
        {
            let err = seconds("tock", bad, zero_ok).unwrap_err().to_string();
            assert!(err.starts_with("tock must be"), "{err}");
        }
    }

    #[test]
    fn real_clock_is_monotonic() {
        let clock = Clock::real();
        let a = clock.tyme();
        let b = clock.tyme();
        assert!(b >= a && a >= 0.0);
    }
}
