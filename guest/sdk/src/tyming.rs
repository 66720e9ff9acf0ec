//! hio's Tymist, Tymth and Tymer: tyme is virtual, advanced once per cycle
//! from the host's clock, so every tymer in a cycle sees the same tyme.

use std::cell::Cell;
use std::rc::Rc;

/// Owns the tyme (hio's Tymist).
#[derive(Clone, Debug, Default)]
pub struct Tymist {
    tyme: Rc<Cell<f64>>,
}

impl Tymist {
    /// A tymist at `tyme` seconds.
    pub fn new(tyme: f64) -> Self {
        Tymist { tyme: Rc::new(Cell::new(tyme)) }
    }

    /// The tyme now, in seconds.
    pub fn tyme(&self) -> f64 {
        self.tyme.get()
    }

    /// Advance by `tock` (hio's `tick`).
    pub fn tick(&self, tock: f64) {
        self.tyme.set(self.tyme.get() + tock);
    }

    /// Set tyme to the host's tyme for a new cycle; tyme never runs backwards.
    pub fn set(&self, tyme: f64) {
        if tyme > self.tyme.get() {
            self.tyme.set(tyme);
        }
    }

    /// A reader of this tymist's tyme (hio's `tymen()` returning a tymth).
    pub fn tymen(&self) -> Tymth {
        Tymth(self.tyme.clone())
    }
}

/// Reads a Tymist's tyme.
#[derive(Clone, Debug)]
pub struct Tymth(Rc<Cell<f64>>);

impl Tymth {
    /// The tyme now, in seconds.
    pub fn tyme(&self) -> f64 {
        self.0.get()
    }
}

/// hio's Tymer: a duration measured on a tymth.
#[derive(Clone, Debug)]
pub struct Tymer {
    tymth: Tymth,
    start: f64,
    stop: f64,
}

impl Tymer {
    /// Starts now (or at `start`) and lasts `duration`.
    pub fn new(tymth: Tymth, duration: f64, start: Option<f64>) -> Tymer {
        let start = start.unwrap_or_else(|| tymth.tyme());
        Tymer { tymth, start, stop: start + duration }
    }

    /// The tyme now, in seconds.
    pub fn tyme(&self) -> f64 {
        self.tymth.tyme()
    }

    /// How long it lasts, in seconds.
    pub fn duration(&self) -> f64 {
        self.stop - self.start
    }

    /// When it started, in seconds of tyme.
    pub fn start_tyme(&self) -> f64 {
        self.start
    }

    /// When it stops, in seconds of tyme.
    pub fn stop_tyme(&self) -> f64 {
        self.stop
    }

    /// Seconds since it started.
    pub fn elapsed(&self) -> f64 {
        self.tyme() - self.start
    }

    /// Seconds until it stops (negative once past).
    pub fn remaining(&self) -> f64 {
        self.stop - self.tyme()
    }

    /// Whether its stop has passed.
    pub fn expired(&self) -> bool {
        self.tyme() >= self.stop
    }

    /// Start again at `start` (default now), keeping or replacing the duration.
    pub fn start(&mut self, duration: Option<f64>, start: Option<f64>) {
        let duration = duration.unwrap_or_else(|| self.duration());
        self.start = start.unwrap_or_else(|| self.tyme());
        self.stop = self.start + duration;
    }

    /// hio's lossless restart: starts again at the old stop, not at now.
    pub fn restart(&mut self, duration: Option<f64>) {
        let stop = self.stop;
        self.start(duration, Some(stop));
    }

    /// Measure on another clock (hio's `wind`), restarting from its now.
    pub fn wind(&mut self, tymth: Tymth) {
        self.tymth = tymth;
        self.start(None, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tymer_follows_tymist() {
        let tymist = Tymist::new(0.0);
        let mut t = Tymer::new(tymist.tymen(), 1.0, None);
        assert!(!t.expired());
        assert_eq!(t.remaining(), 1.0);
        tymist.tick(0.5);
        assert_eq!(t.elapsed(), 0.5);
        assert!(!t.expired());
        tymist.tick(0.5);
        assert!(t.expired(), "expired exactly at stop, as hio's tyme >= stop");
        t.start(None, None);
        assert_eq!((t.start_tyme(), t.stop_tyme()), (1.0, 2.0));
    }

    #[test]
    fn restart_is_lossless() {
        let tymist = Tymist::new(0.0);
        let mut t = Tymer::new(tymist.tymen(), 1.0, None);
        tymist.tick(3.5);
        t.restart(None);
        // Restarted at the old stop (1.0), so still expired at 3.5.
        assert_eq!(t.stop_tyme(), 2.0);
        assert!(t.expired());
        t.start(Some(2.0), None);
        assert_eq!(t.stop_tyme(), 5.5);
        assert!(!t.expired());
    }

    #[test]
    fn wind_swaps_clock() {
        let a = Tymist::new(10.0);
        let b = Tymist::new(100.0);
        let mut t = Tymer::new(a.tymen(), 1.0, None);
        t.wind(b.tymen());
        assert_eq!(t.stop_tyme(), 101.0);
        a.tick(5.0);
        assert!(!t.expired());
    }

    #[test]
    fn tymist_never_runs_backwards() {
        let t = Tymist::new(5.0);
        t.set(4.0);
        assert_eq!(t.tyme(), 5.0);
        t.set(6.0);
        assert_eq!(t.tyme(), 6.0);
    }
}
