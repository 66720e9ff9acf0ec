//! A guest's lifecycle, as the event loop sees it: the running instance
//! and its cycles; a crash, after which the host keeps serving sockets and
//! starts a fresh instance after a back-off (and gives up at the fail
//! policy); and a hot swap to another component. The host state passes
//! from instance to instance and is never lost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use wasmtime::component::Component;

use super::runtime::Retired;
use super::swap::{Loaded, SwapOutcome, SwapReport, Swapper};
use super::{CycleBuffers, Failed, Generation, GuestConfig, Runtime, Snapshot};
use crate::state::HostState;

/// The first restart waits this long; each further one in a row twice as
/// long as the one before, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Cycles that only a guest's tymer asked for come at most this often: a
/// guest that asks to be woken again at once cannot hold the loop (and a
/// core) when nothing happens. Readiness and accepts are not held back.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(1);

/// Who holds the host's state between passes.
enum Tenant {
    /// A guest instance serving.
    Up(Generation),
    /// The guest crashed: the host keeps serving sockets (reading into its
    /// buffers, sending what is queued) and starts a guest again at `retry`.
    Down { host: Box<HostState>, retry: Instant },
    /// Only while one is being replaced by another.
    Moving,
}

impl Tenant {
    /// Take the host state out, leaving `Moving` until it is put back:
    /// with the restart time of a guest that is down, or the instance of
    /// one that was up (dropped with the tuple unless kept to be freed).
    fn take(&mut self) -> Option<(HostState, Option<Instant>, Option<Retired>)> {
        match std::mem::replace(self, Tenant::Moving) {
            Tenant::Up(g) => {
                let (host, old) = g.retire();
                Some((host, None, Some(old)))
            }
            Tenant::Down { host, retry } => Some((*host, Some(retry), None)),
            Tenant::Moving => None,
        }
    }
}

/// Failed guests in a row (reset by a cycle that succeeds), and the fail policy.
struct Restarts {
    in_a_row: u32,
    /// Give up after this many in a row; 0 never gives up.
    max: u32,
}

impl Restarts {
    /// Another failure; one that named its culprit (a peer whose bytes crash
    /// the guest, now reset) starts the count again: peers sending poison
    /// together cannot add their failures up to the limit, nor to a long
    /// back-off.
    fn failed(&mut self, culprit: bool) {
        if culprit {
            self.in_a_row = 0;
        }
        self.in_a_row += 1;
    }

    fn exhausted(&self) -> bool {
        self.max > 0 && self.in_a_row > self.max
    }

    /// Wait before restart number `in_a_row` (1-based).
    fn backoff(&self) -> Duration {
        backoff(self.in_a_row)
    }
}

fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// A guest instance started (the first, a restart, a swap's): it is up.
fn guest_started(stats: &crate::stats::Stats) {
    stats.guest_starts.add(1);
    stats.guest_up.set(1);
}

/// The tyme a guest asked to be woken at, as the loop can use it: NaN and
/// +inf mean never; anything else (-inf, a tyme long past, 1e300) is an
/// ordinary tyme, so no value a guest returns can upset the loop.
fn usable_wake(wake: Option<f64>) -> Option<f64> {
    wake.filter(|w| !w.is_nan() && *w != f64::INFINITY)
}

/// A lazy hand-over under way (WIT `handover`), measured for the log: how
/// long until the last connection was handed, and the longest pass of the
/// loop's guest work meanwhile (what the hand-over costs the peers).
struct HandoverWatch {
    began: Instant,
    passes: u32,
    longest: Duration,
}

/// The guest's lifecycle: see the module doc.
pub struct Supervisor {
    runtime: Arc<Runtime>,
    component: Component,
    config: GuestConfig,
    tenant: Tenant,
    restarts: Restarts,
    /// The tyme the guest asked to be woken at.
    next_wake: Option<f64>,
    last_cycle: Instant,
    /// Longest wait between cycles (hio's tock).
    tock: Duration,
    /// What a cycle's crossing is built in, kept for its memory.
    buffers: CycleBuffers,
    swapper: Swapper,
    handover: Option<HandoverWatch>,
    /// The instance a swap replaced, freed once its successor holds every
    /// connection.
    retired: Option<Retired>,
}

impl Supervisor {
    /// Start `component` on `host`, with a predecessor's `snapshot` when
    /// it takes over from another process.
    pub fn start(
        runtime: Arc<Runtime>,
        component: Component,
        config: GuestConfig,
        (host, snapshot): (HostState, Option<&Snapshot>),
        (tock, max_restarts): (Duration, u32),
        swapper: Swapper,
    ) -> Result<Supervisor> {
        let generation = runtime.launch(&component, host, &config, snapshot).map_err(|f| f.error)?;
        guest_started(generation.host_ref().stats());
        let mut supervisor = Supervisor {
            runtime,
            component,
            config,
            tenant: Tenant::Moving,
            restarts: Restarts { in_a_row: 0, max: max_restarts },
            next_wake: None,
            last_cycle: Instant::now(),
            tock,
            buffers: CycleBuffers::default(),
            swapper,
            handover: None,
            retired: None,
        };
        supervisor.serve(generation);
        Ok(supervisor)
    }

    /// A guest instance started: it serves from now on, with a cycle at
    /// once (so it can set its tymers), and its hand-over watched.
    fn serve(&mut self, generation: Generation) {
        let lazy = generation.host_ref().handing_over_connections();
        self.handover = lazy.then(|| HandoverWatch { began: Instant::now(), passes: 0, longest: Duration::ZERO });
        if !lazy {
            self.free_retired();
        }
        self.tenant = Tenant::Up(generation);
        self.next_wake = Some(f64::NEG_INFINITY);
    }

    /// A pass of guest work that took `took` is over: once the last
    /// connection of a hand-over is handed, say what it cost.
    fn watch_handover(&mut self, took: Duration) {
        let Some(watch) = &mut self.handover else { return };
        watch.passes += 1;
        watch.longest = watch.longest.max(took);
        if self.host_ref().handing_over() {
            return;
        }
        let Some(watch) = self.handover.take() else { return };
        self.free_retired();
        self.host_ref().stats().handover_pass.observe(watch.longest.as_secs_f64());
        tracing::info!(
            passes = watch.passes,
            longest_pass_us = watch.longest.as_micros() as u64,
            took_us = watch.began.elapsed().as_micros() as u64,
            "hand-over complete"
        );
    }

    /// The host state, whoever holds it.
    pub fn host(&mut self) -> &mut HostState {
        match &mut self.tenant {
            Tenant::Up(g) => g.host(),
            Tenant::Down { host, .. } => host,
            Tenant::Moving => unreachable!("a tenant is always in place between passes"),
        }
    }

    pub fn host_ref(&self) -> &HostState {
        match &self.tenant {
            Tenant::Up(g) => g.host_ref(),
            Tenant::Down { host, .. } => host,
            Tenant::Moving => unreachable!("a tenant is always in place between passes"),
        }
    }

    /// The guest's state for a successor process, if it is up to give it.
    pub fn snapshot(&mut self) -> Option<Snapshot> {
        let Tenant::Up(generation) = &mut self.tenant else { return None };
        generation.save().map_err(|e| tracing::warn!("{e:#}; the successor's guest starts without its state")).ok()
    }

    /// The host state, for closing: the guest is gone after this.
    pub fn take_host(&mut self) -> Option<HostState> {
        self.tenant.take().map(|(host, ..)| host)
    }

    /// Have the guest called in the next pass even if nothing is new for it
    /// (it has news of its own to look at, e.g. `host.draining`).
    pub fn wake_now(&mut self) {
        self.next_wake = Some(f64::NEG_INFINITY);
    }

    /// How long the loop may wait from `now` (at most `most`) before this
    /// guest needs it: its restart, its tymer, or its tock.
    pub fn wake_in(&self, now: Instant, most: Duration) -> Duration {
        let mut t = most.min(self.tock);
        if let Tenant::Down { retry, .. } = &self.tenant {
            return t.min(retry.saturating_duration_since(now));
        }
        if self.host_ref().handing_over() {
            return Duration::ZERO;
        }
        if let Some(wake) = self.next_wake {
            let clock = self.host_ref().clock();
            let tyme = clock.tyme_at(now);
            let until = if clock.is_virtual() {
                // Virtual tyme moves by hand: just look again soon.
                if wake <= tyme { 0.0 } else { t.as_secs_f64() }
            } else {
                wake - tyme
            };
            // Compared as seconds first: a wake far in the future does not
            // fit a Duration.
            if until < t.as_secs_f64() {
                let floor = (self.last_cycle + MIN_WAKE_INTERVAL).saturating_duration_since(now);
                t = Duration::from_secs_f64(until.max(0.0)).max(floor);
            }
        }
        t
    }

    /// Call the guest if anything is new for it, its tymer is due, or tock
    /// passed; or start one again if it is down and its wait is over.
    pub fn cycle(&mut self, new_accepts: bool, now: Instant) -> Result<()> {
        if let Tenant::Down { retry, .. } = &self.tenant {
            return if now < *retry { Ok(()) } else { self.restart() };
        }
        let tyme = self.host_ref().clock().tyme_at(now);
        let since = now.saturating_duration_since(self.last_cycle);
        let due = self.next_wake.is_some_and(|w| w <= tyme) && since >= MIN_WAKE_INTERVAL;
        let host = self.host_ref();
        if !(due || since >= self.tock || new_accepts || !host.quiet() || host.handing_over()) {
            return Ok(());
        }
        self.last_cycle = now;
        let Tenant::Up(generation) = &mut self.tenant else { unreachable!("checked above") };
        let called = Instant::now();
        let served = generation.cycle(tyme, &mut self.buffers);
        let took = called.elapsed();
        let stats = self.host_ref().stats();
        stats.guest_call.observe(took.as_secs_f64());
        stats.guest_cycles.add(1);
        match served {
            Ok(wake) => {
                self.watch_handover(took);
                self.woken(usable_wake(wake), tyme);
                self.restarts.in_a_row = 0;
                Ok(())
            }
            Err(e) => {
                tracing::error!("{e}");
                let Some((mut host, ..)) = self.tenant.take() else { unreachable!("was up") };
                let culprit = host.guest_failed();
                self.go_down(host, culprit)
            }
        }
    }

    /// The guest asked to be woken at `wake` after a cycle at `tyme`.
    fn woken(&mut self, wake: Option<f64>, tyme: f64) {
        self.next_wake = wake;
        if wake.is_some_and(|w| w <= tyme) {
            let spins = self.host().stats().wake_spins.add(1);
            if spins.is_power_of_two() {
                tracing::warn!(
                    spins,
                    "guest asks to be woken again at once; its tymer wake-ups are held to one per {} ms",
                    MIN_WAKE_INTERVAL.as_millis()
                );
            }
        }
    }

    fn free_retired(&mut self) {
        if let Some(old) = self.retired.take() {
            old.free();
        }
    }

    /// The guest failed: keep the host state and start a guest again after
    /// a back-off that doubles with every failure in a row, or give up at
    /// the limit (the documented fail policy: better a clear exit for a
    /// supervisor than a guest crashing in a hot loop).
    fn go_down(&mut self, host: HostState, culprit: bool) -> Result<()> {
        host.stats().guest_failures.add(1);
        host.stats().guest_up.set(0);
        self.restarts.failed(culprit);
        if self.restarts.exhausted() {
            let n = host.connection_count();
            self.tenant = Tenant::Down { host: Box::new(host), retry: Instant::now() };
            bail!("guest failed {} times in a row; giving up ({n} connections closed)", self.restarts.max);
        }
        let wait = self.restarts.backoff();
        tracing::warn!(
            attempt = self.restarts.in_a_row,
            wait_ms = wait.as_millis() as u64,
            "guest down; restarting it after a back-off (connections and bytes kept)"
        );
        self.tenant = Tenant::Down { host: Box::new(host), retry: Instant::now() + wait };
        Ok(())
    }

    /// Start the current component afresh on the kept state and hand it
    /// every connection; nothing the host holds is lost.
    fn restart(&mut self) -> Result<()> {
        let Some((host, ..)) = self.tenant.take() else { unreachable!("was down") };
        match self.runtime.launch(&self.component, host, &self.config, None) {
            Ok(generation) => {
                guest_started(generation.host_ref().stats());
                generation.host_ref().stats().guest_restarts.add(1);
                self.serve(generation);
                tracing::warn!(attempt = self.restarts.in_a_row, "guest restarted; connections handed over");
                Ok(())
            }
            Err(failed) => {
                let Failed { error, mut host } = *failed;
                tracing::error!("{error:#}");
                // Blamed like a failed cycle: start is lent no bytes, but
                // a guest may pull some (`receive`) or accept connections.
                let culprit = host.guest_failed();
                self.go_down(host, culprit)
            }
        }
    }

    /// Fail the guest as a trap would (`Swapper::crash_guest`): drop its
    /// instance without `save`, restart it after the back-off.
    pub fn crash(&mut self) -> Result<()> {
        if !matches!(self.tenant, Tenant::Up(_)) {
            return Ok(());
        }
        let Some((host, ..)) = self.tenant.take() else { return Ok(()) };
        tracing::warn!("guest made to fail on request (Swapper::crash_guest)");
        self.go_down(host, false)
    }

    /// Hot swap to a loaded component, and say how it went.
    pub fn install(&mut self, loaded: Loaded) -> Result<()> {
        let Loaded { path, component, reply } = loaded;
        let outcome = match component {
            Err(e) => Err(format!("{e:#}")),
            Ok(component) => self.swap_to(&path, component),
        };
        match &outcome {
            Ok(r) => tracing::info!(
                guest = %r.guest.display(),
                pause_us = r.pause.as_micros() as u64,
                connections = r.connections,
                "swapped guest"
            ),
            Err(e) => tracing::error!("swap to {} failed, old guest kept: {e}", path.display()),
        }
        self.record_swap(&path, &outcome);
        if let Some(reply) = reply {
            // Whoever asked may have stopped listening; the log has it.
            let _ = reply.send(outcome);
        }
        if self.restarts.exhausted() {
            bail!("guest failed {} times in a row; giving up", self.restarts.max);
        }
        Ok(())
    }

    /// Count the swap and keep its outcome for `/status`.
    fn record_swap(&mut self, path: &Path, outcome: &SwapOutcome) {
        let stats = self.host().stats().clone();
        let said = match outcome {
            Ok(r) => {
                stats.swaps_ok.add(1);
                stats.swap_pause.observe(r.pause.as_secs_f64());
                guest_started(&stats);
                format!("swapped to {} ({} µs pause)", r.guest.display(), r.pause.as_micros())
            }
            Err(e) => {
                stats.swaps_failed.add(1);
                format!("swap to {} refused: {e}", path.display())
            }
        };
        *stats.last_swap.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(said);
    }

    /// The old guest saves its state, a new instance of `component` starts
    /// with it and every connection. If the new one cannot start, the old
    /// component starts again from the same state.
    fn swap_to(&mut self, path: &Path, component: Component) -> SwapOutcome {
        let started = Instant::now();
        let snapshot = match &mut self.tenant {
            Tenant::Up(old) => {
                old.save().map_err(|e| tracing::warn!("{e:#}; the new guest starts without its state")).ok()
            }
            // A crashed guest has no state to give, and the new one may be its fix.
            _ => None,
        };
        let Some((host, down, old)) = self.tenant.take() else { unreachable!("a tenant is always in place") };
        if old.is_some() {
            self.free_retired();
            self.retired = old;
        }
        let connections = host.adopted_count();
        match self.runtime.launch(&component, host, &self.config, snapshot.as_ref()) {
            Ok(generation) => {
                self.serve(generation);
                self.component = component;
                self.swapper.set_current(path.to_path_buf());
                if down.is_some() {
                    self.restarts.in_a_row = 0;
                }
                Ok(SwapReport { guest: path.to_path_buf(), pause: started.elapsed(), connections })
            }
            Err(failed) => {
                let Failed { error, mut host } = *failed;
                // The new guest is thrown away: its failure says nothing of the peers.
                host.guest_discarded();
                match down {
                    Some(retry) => self.tenant = Tenant::Down { host: Box::new(host), retry },
                    None => self.take_back(host, snapshot.as_ref()),
                }
                Err(format!("{error:#}"))
            }
        }
    }

    /// A swap failed: the old component takes its state back.
    fn take_back(&mut self, host: HostState, snapshot: Option<&super::Snapshot>) {
        match self.runtime.launch(&self.component, host, &self.config, snapshot) {
            Ok(generation) => self.serve(generation),
            Err(again) => {
                tracing::error!("the old guest could not take back its state: {:#}", again.error);
                if let Err(e) = self.go_down(again.host, false) {
                    tracing::error!("{e:#}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_10_ms_up_to_5_s() {
        let waits: Vec<u128> = (1..=12).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_failure_that_names_its_culprit_starts_the_count_again() {
        let mut r = Restarts { in_a_row: 0, max: 2 };
        r.failed(false);
        r.failed(false);
        assert!(!r.exhausted());
        r.failed(true);
        assert_eq!(r.in_a_row, 1);
        r.failed(false);
        r.failed(false);
        assert!(r.exhausted());
        assert!(!Restarts { in_a_row: 100, max: 0 }.exhausted(), "0 never gives up");
    }
}
