//! The event loop and the embedding API: hio's `openServer` + Doer, with the
//! sockets in the host and the Server logic in a guest.
//!
//! One pass: poll readiness; read what arrived into host buffers and accept
//! new connections; call the guest once with only the connections that have
//! news; then act on what the guest did (flush queues, FINs, closes) for only
//! the connections it touched. Idle connections cost nothing.

pub mod pool;
pub mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mio::{Events, Interest, Poll, Token, Waker};
use wasmtime::component::Component;

use self::state::{Core, GiveUp};
use crate::config::Config;
use crate::guest::cache::Origin;
use crate::guest::handing::Verdict;
use crate::guest::swap::{Loaded, SwapOutcome, SwapReport, Swapper, stamp};
use crate::guest::{self, Arrival, Cycle, Failed, Generation, GuestConfig, Runtime};
use crate::net::acceptor::{self, Acceptor, Shed};
use crate::net::backpressure::Budget;
use crate::net::conn::Conn;
use crate::net::tls::TlsConfig;
use crate::net::wirelog::WireLog;
use crate::tyme::Clock;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Connection ids double as mio tokens and start above the fixed tokens.
pub const FIRST_CONN_TOKEN: u64 = 16;
/// Size of the one read buffer shared by every connection.
const SCRATCH: usize = 64 * 1024;
/// How soon to accept again after an accept error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How often `--watch` looks at the guest file.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The first restart waits this long; each further one in a row twice as
/// long as the one before, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Cycles that only a guest's tymer asked for come at most this often: a
/// guest that asks to be woken again at once cannot hold the loop (and a
/// core) when nothing happens. Readiness and accepts are not held back.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(1);

/// Stops a running [`Server`] from any thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::Release);
        if let Err(e) = self.waker.wake() {
            tracing::error!("cannot wake the event loop to stop it: {e}");
        }
    }
}

/// Who holds the host's core between passes.
enum Tenant {
    /// A guest instance serving.
    Up(Generation),
    /// The guest crashed: the host keeps serving sockets (reading into its
    /// buffers, sending what is queued) and starts a guest again at `retry`.
    Down { core: Box<Core>, retry: Instant },
    /// Only while one is being replaced by another.
    Moving,
}

impl Tenant {
    fn core(&mut self) -> &mut Core {
        match self {
            Tenant::Up(g) => g.core(),
            Tenant::Down { core, .. } => core,
            Tenant::Moving => unreachable!("a tenant is always in place between passes"),
        }
    }

    fn into_core(self) -> Option<Core> {
        match self {
            Tenant::Up(g) => Some(g.into_core()),
            Tenant::Down { core, .. } => Some(*core),
            Tenant::Moving => None,
        }
    }
}

/// The guest failed. Connections that held bytes they were handed and had
/// not consumed are suspects: each is handed its bytes alone from now on. A
/// suspect that holds them again at a failure crashed the guest twice: the
/// host resets it, so one peer cannot keep the guest down for everyone.
/// Returns whether it found such a culprit.
fn quarantine(core: &mut Core) -> bool {
    let conns = &core.conns;
    match core.handing.failed(|id| conns.get(&id).is_some_and(Conn::owes_guest)) {
        Verdict::NoneHeld => false,
        Verdict::Culprit(id) => {
            core.give_up(id, GiveUp::Poison);
            true
        }
        Verdict::Isolated(n) => {
            tracing::warn!(
                suspects = n,
                "guest failed holding these connections' bytes: each is now handed its bytes alone"
            );
            false
        }
    }
}

/// The tyme a guest asked to be woken at, as the loop can use it: NaN and
/// +inf mean never; anything else (-inf, a tyme long past, 1e300) is an
/// ordinary tyme, so no value a guest returns can upset the loop.
fn usable_wake(wake: Option<f64>) -> Option<f64> {
    wake.filter(|w| !w.is_nan() && *w != f64::INFINITY)
}

/// Wait before restart number `n` (1-based) in a row.
fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// A running server: the host's sockets plus the current guest generation.
pub struct Server {
    poll: Poll,
    events: Events,
    /// Connections with readiness this pass (kept to reuse its allocation).
    touched: Vec<(u64, bool, bool)>,
    scratch: Vec<u8>,
    runtime: Arc<Runtime>,
    component: Component,
    guest_config: GuestConfig,
    swapper: Swapper,
    loaded: Receiver<Loaded>,
    tenant: Tenant,
    next_wake: Option<f64>,
    tock: Duration,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Failed guests in a row (reset by a cycle that succeeds).
    restarts: u32,
    max_restarts: u32,
    max_conns: usize,
    /// Connections closed at once for being over `max_conns`.
    refused: u64,
    /// Connections closed at once for want of file descriptors.
    shed: u64,
    /// Accept again then, after an accept error.
    accept_retry: Option<Instant>,
    last_cycle: Instant,
    /// The arrivals list, kept between cycles for its allocation.
    arrivals: Vec<Arrival>,
    /// Where the TLS files are, to read them again on SIGHUP.
    tls_config: Option<TlsConfig>,
}

impl Server {
    /// Load the guest, open the listen socket and start the guest
    /// (hio's `openServer` + `reopen`).
    pub fn open(config: Config) -> Result<Server> {
        config.validate()?;
        let tock = config.tock_period()?;
        let tls = config.tls.as_ref().map(TlsConfig::acceptor).transpose()?;
        let stall_limits = config.stall_limits()?;
        let runtime = Arc::new(Runtime::new(config.limits.clone(), config.cache.clone())?);
        let loaded_stamp = stamp(&config.guest);
        let (component, origin) = runtime.load_from(&config.guest)?;
        let acceptor = Acceptor::open(config.ha, config.bs, config.bl, config.reuse_port)?;
        let poll = Poll::new().context("cannot create poller")?;
        let mut acceptor = acceptor;
        poll.registry().register(&mut acceptor.listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let wirelog = match &config.wirelog {
            Some(dir) => Some(WireLog::open(dir).with_context(|| format!("cannot open wirelog in {}", dir.display()))?),
            None => None,
        };
        let clock = match &config.virtual_tyme {
            Some(v) => Clock::Virtual(v.clone()),
            None => Clock::real(),
        };
        let mut core = Core::new(acceptor, clock, wirelog, Budget::new(config.max_buffered), stall_limits);
        core.tls = tls;
        let guest_config = GuestConfig { tymeout: config.tymeout, bs: config.bs };
        let mut generation = runtime.launch(&component, core, &guest_config, None).map_err(|f| f.error)?;
        let ha = generation.core().acceptor.ha;
        let code = if origin == Origin::Cached { "cached" } else { "compiled" };
        tracing::info!(%ha, eha = %generation.core().acceptor.eha(), guest = %config.guest.display(), code = %code, "serving");
        let current = Arc::new(Mutex::new(config.guest.clone()));
        let (swapper, loaded) = Swapper::new(runtime.clone(), current, waker.clone());
        let stop = Arc::new(AtomicBool::new(false));
        if config.watch {
            swapper.clone().watch(WATCH_EVERY, stop.clone(), loaded_stamp);
        }
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            touched: Vec::with_capacity(1024),
            scratch: vec![0; SCRATCH],
            runtime,
            component,
            guest_config,
            swapper,
            loaded,
            tenant: Tenant::Up(generation),
            // The first cycle runs at once so the guest can set its tymers.
            next_wake: Some(f64::NEG_INFINITY),
            tock,
            stop,
            waker,
            signals: None,
            restarts: 0,
            max_restarts: config.max_restarts,
            max_conns: config.max_conns,
            refused: 0,
            shed: 0,
            accept_retry: None,
            last_cycle: Instant::now(),
            arrivals: Vec::new(),
            tls_config: config.tls,
        })
    }

    /// The resolved listen address (port 0 replaced by the real one).
    pub fn local_addr(&mut self) -> SocketAddr {
        self.core().acceptor.ha
    }

    /// Connections the host holds (taken by the guest or not).
    pub fn connection_count(&mut self) -> usize {
        self.core().conns.len()
    }

    /// Bytes the host holds for all connections (received and not
    /// consumed, queued and not sent).
    pub fn buffered(&mut self) -> usize {
        self.core().budget.held()
    }

    /// The counters of what this server did about misbehaving peers and
    /// guests; readable from any thread while it runs.
    pub fn stats(&mut self) -> Arc<crate::stats::Stats> {
        self.core().stats.clone()
    }

    pub fn stopper(&self) -> Stopper {
        Stopper { flag: self.stop.clone(), waker: self.waker.clone() }
    }

    /// Swaps the guest from any thread (hot swap).
    pub fn swapper(&self) -> Swapper {
        self.swapper.clone()
    }

    /// Stop `run` on SIGINT or SIGTERM; re-read the guest file on SIGHUP.
    pub fn stop_on_signals(&mut self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        self.poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    fn core(&mut self) -> &mut Core {
        self.tenant.core()
    }

    /// Serve until stopped, then close everything.
    pub fn run(&mut self) -> Result<()> {
        while !self.stop.load(Ordering::Acquire) {
            self.step(None)?;
        }
        self.close();
        Ok(())
    }

    /// One pass of the loop. Waits at most `wait` (or until the guest's next
    /// tymer, or tock) for readiness.
    pub fn step(&mut self, wait: Option<Duration>) -> Result<()> {
        let timeout = self.poll_timeout(wait);
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            return Err(e).context("poll failed");
        }
        let (mut accept, mut reload) = (false, false);
        let mut touched = std::mem::take(&mut self.touched);
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKER => {}
                SIGNALS => {
                    if let Some(signals) = &mut self.signals {
                        for sig in signals.pending() {
                            if sig == signal_hook::consts::SIGHUP {
                                tracing::info!(guest = %self.swapper.current().display(), "SIGHUP: swapping guest");
                                self.swapper.request(None, None);
                                reload = true;
                            } else {
                                tracing::info!("signal {sig}: closing");
                                self.stop.store(true, Ordering::Release);
                            }
                        }
                    }
                }
                Token(t) => {
                    touched.push((t as u64, ev.is_readable() || ev.is_read_closed() || ev.is_error(), ev.is_writable()))
                }
            }
        }
        if reload {
            self.reload_tls();
        }
        // One clock read serves the whole pass.
        let now = Instant::now();
        self.core().now = now;
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept_retry = None;
            accept = true;
        }
        let new_accepts = accept && self.accept_all() > 0;
        self.expire_handshakes(now);
        self.core().expire_stalls();
        for &(id, readable, writable) in &touched {
            self.serve_io(id, readable, writable);
        }
        touched.clear();
        self.touched = touched;
        self.cycle(new_accepts, now)?;
        while let Ok(loaded) = self.loaded.try_recv() {
            self.install(loaded)?;
        }
        self.settle();
        if let Some(wl) = &mut self.core().wirelog {
            wl.flush();
        }
        Ok(())
    }

    /// Read the TLS files again (SIGHUP): new handshakes use them, so a
    /// certificate can be rotated and a client revoked without a restart.
    /// Files that do not load leave the old ones in use.
    fn reload_tls(&mut self) {
        let (Some(config), Some(old)) = (&self.tls_config, &mut self.tenant.core().tls) else { return };
        match old.reloaded(config) {
            Ok(new) => {
                *old = new;
                tracing::info!(cert = %config.cert.display(), "TLS certificate, key, CAs and CRLs reloaded");
            }
            Err(e) => tracing::error!("TLS files not reloaded, the old ones stay in use: {e:#}"),
        }
    }

    fn poll_timeout(&mut self, wait: Option<Duration>) -> Duration {
        if !(self.core().ready.is_empty() && self.core().gone.is_empty()) {
            return Duration::ZERO;
        }
        let mut t = wait.unwrap_or(self.tock);
        let now = Instant::now();
        if let Some(&(deadline, _)) = self.core().handshakes.front() {
            t = t.min(deadline.saturating_duration_since(now));
        }
        if let Some(at) = self.core().next_stall() {
            t = t.min(at.saturating_duration_since(now));
        }
        if let Some(retry) = self.accept_retry {
            t = t.min(retry.saturating_duration_since(now));
        }
        if let Tenant::Down { retry, .. } = &self.tenant {
            return t.min(retry.saturating_duration_since(now));
        }
        if let Some(wake) = self.next_wake {
            let core = self.core();
            let tyme = core.clock.tyme_at(now);
            let until = if core.clock.is_virtual() {
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

    /// Accept every pending connection into host-held axes; the kernel
    /// reports bytes that arrived before registration, so reading starts at
    /// once and they wait in the host until the guest takes the connection.
    fn accept_all(&mut self) -> usize {
        let registry = self.poll.registry();
        let core = self.tenant.core();
        let mut accepted = 0;
        loop {
            match core.acceptor.listener.accept() {
                Ok((mut sock, ca)) => {
                    if core.conns.len() >= self.max_conns {
                        // Full: a clean close now, so the peer is not left
                        // hanging in the backlog.
                        self.refused += 1;
                        if self.refused.is_power_of_two() {
                            tracing::warn!(%ca, max_conns = self.max_conns, refused = self.refused, "at --max-conns: closing new connection");
                        }
                        let _ = sock.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    let id = core.next_id;
                    core.next_id += 1;
                    // Bound to one address, that is every connection's ha;
                    // bound to all, ask which one this peer dialled.
                    let ha = if core.acceptor.ha.ip().is_unspecified() {
                        sock.local_addr().unwrap_or(core.acceptor.ha)
                    } else {
                        core.acceptor.ha
                    };
                    if let Err(e) = sock.set_nodelay(true) {
                        tracing::debug!(%ca, "cannot set TCP_NODELAY: {e}");
                    }
                    if let Err(e) = registry.register(&mut sock, Token(id as usize), Interest::READABLE) {
                        tracing::warn!(%ca, "cannot register connection, dropping it: {e}");
                        continue;
                    }
                    tracing::debug!(%ca, id, "accepted");
                    let conn = match &core.tls {
                        None => Conn::new(sock, ha, ca, core.budget.clone()),
                        Some(tls) => match tls.session() {
                            Ok(session) => {
                                core.handshakes.push_back((Instant::now() + tls.handshake_timeout, id));
                                Conn::new_tls(sock, ha, ca, core.budget.clone(), session, tls.verifier())
                            }
                            Err(e) => {
                                tracing::error!(%ca, "{e:#}");
                                let _ = registry.deregister(&mut sock);
                                continue;
                            }
                        },
                    };
                    core.conns.insert(id, conn);
                    core.axes.push_back(id);
                    accepted += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A peer that reset before we got to it: nothing to serve.
                Err(e) if crate::net::conn::is_cutoff_error(&e) => continue,
                Err(e) if acceptor::out_of_descriptors(&e) => {
                    self.shed += 1;
                    if self.shed.is_power_of_two() {
                        tracing::warn!(shed = self.shed, "out of file descriptors ({e}): refusing new connections");
                    }
                    match core.acceptor.shed() {
                        Shed::Refused => continue,
                        Shed::Empty => break,
                        Shed::Stuck => {
                            self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                            break;
                        }
                    }
                }
                Err(e) => {
                    // The listener is edge-triggered: look again soon rather
                    // than wait for the next connection to arrive.
                    tracing::error!("accept failed: {e}");
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    break;
                }
            }
        }
        accepted
    }

    /// Abort TLS handshakes past their time limit, so stalled clients cannot
    /// pin connections. Deadlines are in accept order: only due ones are seen.
    fn expire_handshakes(&mut self, now: Instant) {
        let core = self.tenant.core();
        while let Some(&(deadline, id)) = core.handshakes.front() {
            if deadline > now {
                break;
            }
            core.handshakes.pop_front();
            let Some(c) = core.conns.get_mut(&id) else { continue };
            if c.handshaking() {
                c.abort("handshake not finished in time".into());
                let adopted = c.adopted;
                core.mark_dirty(id);
                if adopted {
                    core.mark_ready(id);
                }
            }
        }
    }

    /// Readiness on one connection: read into its host buffer, send what is queued.
    fn serve_io(&mut self, id: u64, readable: bool, writable: bool) {
        let core = self.tenant.core();
        let Some(c) = core.conns.get_mut(&id) else { return };
        let was_cutoff = c.cutoff();
        let mut news = false;
        if writable
            && (c.queued() > 0 || c.needs_flush())
            && let Err(e) = c.flush(core.wirelog.as_mut())
        {
            tracing::warn!(ca = %c.peer, "send failed: {e}");
        }
        if readable {
            let got = c.read(&mut self.scratch, core.wirelog.as_mut());
            news = got.bytes > 0 || got.new_cutoff || got.tls_changed;
        }
        news |= c.cutoff() != was_cutoff;
        let (adopted, dirty) = (c.adopted, writable || c.needs_flush());
        if c.list_starved() {
            core.starved.push_back(id);
        }
        if dirty {
            // settle sends what is left, fixes interest, releases closed ones.
            core.mark_dirty(id);
        }
        if news && adopted {
            core.mark_ready(id);
        }
    }

    /// Call the guest if anything is new for it, its tymer is due, or tock
    /// passed; or start one again if it is down and its wait is over.
    fn cycle(&mut self, new_accepts: bool, now: Instant) -> Result<()> {
        if let Tenant::Down { retry, .. } = &self.tenant {
            if now < *retry {
                return Ok(());
            }
            return self.restart();
        }
        let core = self.core();
        let tyme = core.clock.tyme_at(now);
        let since = now.saturating_duration_since(self.last_cycle);
        let due = self.next_wake.is_some_and(|w| w <= tyme) && since >= MIN_WAKE_INTERVAL;
        let heartbeat = since >= self.tock;
        let core = self.core();
        if !(due || heartbeat || new_accepts || !core.ready.is_empty() || !core.gone.is_empty()) {
            return Ok(());
        }
        let mut ready = std::mem::take(&mut self.arrivals);
        let core = self.core();
        guest::arrivals(core, &mut ready);
        let cycle = Cycle { tyme, accepts: !core.axes.is_empty(), ready };
        self.last_cycle = now;
        let Tenant::Up(generation) = &mut self.tenant else { unreachable!("checked above") };
        match generation.service(&cycle) {
            Ok(wake) => {
                self.next_wake = usable_wake(wake);
                if self.next_wake.is_some_and(|w| w <= tyme) {
                    let spins = self.tenant.core().stats.wake_spins.add(1);
                    if spins.is_power_of_two() {
                        tracing::warn!(
                            spins,
                            "guest asks to be woken again at once; its tymer wake-ups are held to one per {} ms",
                            MIN_WAKE_INTERVAL.as_millis()
                        );
                    }
                }
                self.restarts = 0;
                let mut ready = cycle.ready;
                let core = self.tenant.core();
                core.handing.succeeded();
                for arrival in ready.drain(..) {
                    core.handing.recycle(arrival.data);
                }
                self.arrivals = ready;
                Ok(())
            }
            Err(e) => {
                tracing::error!("{e}");
                let mut core = std::mem::replace(&mut self.tenant, Tenant::Moving).into_core().expect("was up");
                let culprit = quarantine(&mut core);
                self.go_down(core, culprit)
            }
        }
    }

    /// The guest failed: keep the core and start a guest again after a
    /// back-off that doubles with every failure in a row, or give up at the
    /// limit (the documented fail policy: better a clear exit for a
    /// supervisor than a guest crashing in a hot loop). A failure that
    /// named its culprit (a peer whose bytes crash the guest, now reset)
    /// starts the count again: peers sending poison together cannot add
    /// their failures up to the limit, nor to a long back-off.
    fn go_down(&mut self, core: Core, culprit: bool) -> Result<()> {
        if culprit {
            self.restarts = 0;
        }
        self.restarts += 1;
        if self.max_restarts > 0 && self.restarts > self.max_restarts {
            let n = core.conns.len();
            self.tenant = Tenant::Down { core: Box::new(core), retry: Instant::now() };
            bail!("guest failed {} times in a row; giving up ({n} connections closed)", self.max_restarts);
        }
        let wait = backoff(self.restarts);
        tracing::warn!(
            attempt = self.restarts,
            wait_ms = wait.as_millis() as u64,
            "guest down; restarting it after a back-off (connections and bytes kept)"
        );
        self.tenant = Tenant::Down { core: Box::new(core), retry: Instant::now() + wait };
        Ok(())
    }

    /// Start the current component afresh on the kept core and hand it every
    /// connection; nothing the host holds is lost.
    fn restart(&mut self) -> Result<()> {
        let core = std::mem::replace(&mut self.tenant, Tenant::Moving).into_core().expect("was down");
        match self.runtime.launch(&self.component, core, &self.guest_config, None) {
            Ok(generation) => {
                self.tenant = Tenant::Up(generation);
                tracing::warn!(attempt = self.restarts, "guest restarted; connections handed over");
                self.next_wake = Some(f64::NEG_INFINITY);
                Ok(())
            }
            Err(failed) => {
                let Failed { error, mut core } = *failed;
                tracing::error!("{error:#}");
                // Blamed like a failed cycle: start is handed no bytes, but
                // a guest may pull some (`receive`) or accept connections.
                let culprit = quarantine(&mut core);
                self.go_down(core, culprit)
            }
        }
    }

    /// Hot swap: the old guest saves its state, a new instance of the loaded
    /// component starts with it and every connection. If the new one cannot
    /// start, the old component starts again from the same state.
    fn install(&mut self, loaded: Loaded) -> Result<()> {
        let Loaded { path, component, reply } = loaded;
        let outcome = match component {
            Err(e) => Err(format!("{e:#}")),
            Ok(component) => self.hand_over(&path, component),
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
        if let Some(reply) = reply {
            // Whoever asked may have stopped listening; the log has it.
            let _ = reply.send(outcome);
        }
        if self.gave_up() {
            bail!("guest failed {} times in a row; giving up", self.max_restarts);
        }
        Ok(())
    }

    fn gave_up(&self) -> bool {
        self.max_restarts > 0 && self.restarts > self.max_restarts
    }

    fn hand_over(&mut self, path: &Path, component: Component) -> SwapOutcome {
        let started = Instant::now();
        let (core, snapshot, down) = match std::mem::replace(&mut self.tenant, Tenant::Moving) {
            Tenant::Up(mut old) => {
                let snapshot = match old.save() {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!("{e:#}; the new guest starts without its state");
                        None
                    }
                };
                (old.into_core(), snapshot, None)
            }
            // A crashed guest has no state to give, and the new one may be its fix.
            Tenant::Down { core, retry } => (*core, None, Some(retry)),
            Tenant::Moving => unreachable!("a tenant is always in place between passes"),
        };
        let connections = core.conns.values().filter(|c| c.adopted).count();
        match self.runtime.launch(&component, core, &self.guest_config, snapshot.as_ref()) {
            Ok(generation) => {
                self.tenant = Tenant::Up(generation);
                self.component = component;
                self.swapper.set_current(path.to_path_buf());
                self.next_wake = Some(f64::NEG_INFINITY);
                if down.is_some() {
                    self.restarts = 0;
                }
                Ok(SwapReport { guest: path.to_path_buf(), pause: started.elapsed(), connections })
            }
            Err(failed) => {
                let Failed { error, mut core } = *failed;
                // The new guest is thrown away: its failure says nothing of the peers.
                core.handing.discard_lent();
                if let Some(retry) = down {
                    self.tenant = Tenant::Down { core: Box::new(core), retry };
                    return Err(format!("{error:#}"));
                }
                match self.runtime.launch(&self.component, core, &self.guest_config, snapshot.as_ref()) {
                    Ok(generation) => self.tenant = Tenant::Up(generation),
                    Err(again) => {
                        tracing::error!("the old guest could not take back its state: {:#}", again.error);
                        if let Err(e) = self.go_down(again.core, false) {
                            tracing::error!("{e:#}");
                        }
                    }
                }
                Err(format!("{error:#}"))
            }
        }
    }

    /// Act on what the guest (or a write) changed: send queues and FINs,
    /// resume paused reads, release finished connections, fix interest.
    fn settle(&mut self) {
        let registry = self.poll.registry();
        self.tenant.core().settle(registry, &mut self.scratch);
    }

    /// Close every connection (sending what the socket takes now) and the
    /// listen socket. Called by `run` on stop and by `Drop`.
    pub fn close(&mut self) {
        let Some(mut core) = std::mem::replace(&mut self.tenant, Tenant::Moving).into_core() else {
            return;
        };
        core.close_all(&mut self.scratch);
        let _ = self.poll.registry().deregister(&mut core.acceptor.listener);
        tracing::info!(ha = %core.acceptor.ha, "closed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
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
}
