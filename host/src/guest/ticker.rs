//! The clock behind guest deadlines: a thread that advances the engine's
//! epoch while guest calls run, and sleeps once none has run for a while,
//! so an idle host is not woken 200 times a second for nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::{self, Thread};
use std::time::Duration;

use anyhow::Result;
use wasmtime::Engine;

/// One epoch tick: the granularity of a guest's deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks without a guest call before the thread parks: under load calls
/// come far more often, so it never parks and a call never has to wake it.
const IDLE_TICKS: u32 = 20;

#[derive(Default)]
struct Shared {
    running: AtomicBool,
    /// Calls started, ever: a change means the guest was called since.
    calls: AtomicU64,
    /// Calls under way now: the thread never parks while one runs, however
    /// long (a guest that loops must still meet its deadline).
    active: AtomicU64,
    parked: AtomicBool,
}

pub struct Ticker {
    shared: Arc<Shared>,
    thread: Thread,
}

impl Ticker {
    pub fn start(engine: Engine) -> Result<Ticker> {
        let shared = Arc::new(Shared { running: AtomicBool::new(true), ..Shared::default() });
        let s = shared.clone();
        let handle = thread::Builder::new().name("hio-epoch".into()).spawn(move || tick(&s, &engine))?;
        Ok(Ticker { shared, thread: handle.thread().clone() })
    }

    /// A guest call is about to run: the epoch advances until the guard is
    /// dropped.
    pub fn enter(&self) -> InCall {
        let s = &self.shared;
        s.calls.fetch_add(1, SeqCst);
        s.active.fetch_add(1, SeqCst);
        // SeqCst on both sides: either the thread sees this call before it
        // parks, or this sees it parked and wakes it.
        if s.parked.load(SeqCst) {
            self.thread.unpark();
        }
        InCall { shared: self.shared.clone() }
    }

    #[cfg(test)]
    fn parked(&self) -> bool {
        self.shared.parked.load(SeqCst)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.running.store(false, SeqCst);
        self.thread.unpark();
    }
}

/// A guest call under way; see [`Ticker::enter`].
pub struct InCall {
    shared: Arc<Shared>,
}

impl Drop for InCall {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, SeqCst);
    }
}

fn tick(s: &Shared, engine: &Engine) {
    let (mut seen, mut quiet) = (s.calls.load(SeqCst), 0);
    while s.running.load(SeqCst) {
        thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
        let calls = s.calls.load(SeqCst);
        if calls != seen || s.active.load(SeqCst) > 0 {
            (seen, quiet) = (calls, 0);
            continue;
        }
        quiet += 1;
        if quiet < IDLE_TICKS {
            continue;
        }
        s.parked.store(true, SeqCst);
        // Look again after saying so: a call that started in between either
        // shows here or saw `parked` and unparks this thread.
        while s.running.load(SeqCst) && s.calls.load(SeqCst) == seen && s.active.load(SeqCst) == 0 {
            thread::park();
        }
        s.parked.store(false, SeqCst);
        quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: impl Fn() -> bool) -> bool {
        (0..200).any(|_| {
            thread::sleep(EPOCH_TICK);
            what()
        })
    }

    #[test]
    fn parks_when_idle_never_during_a_call_and_wakes_for_the_next() {
        let ticker = Ticker::start(Engine::default()).unwrap();
        assert!(wait_until(|| ticker.parked()), "an idle ticker parks");
        let call = ticker.enter();
        assert!(wait_until(|| !ticker.parked()), "a call wakes it");
        // A long call: well past the idle ticks, it keeps ticking.
        thread::sleep(EPOCH_TICK * IDLE_TICKS * 3);
        assert!(!ticker.parked(), "never parked while a call runs");
        drop(call);
        assert!(wait_until(|| ticker.parked()), "parks again once calls stop");
    }
}
