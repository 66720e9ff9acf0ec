//! The event loop and the embedding API: hio's `openServer` + Doer, with the
//! sockets in the host and the Server logic in a guest.
//!
//! One pass ([`Server::step`]), one line per phase: poll readiness; accept
//! (`net::admission`); abort overdue handshakes and look at stalled peers;
//! read what arrived into host buffers and send what is queued; call the
//! guest once with only the connections that have news (`guest::supervisor`);
//! install a swapped-in guest; then act on what the guest did (flush queues,
//! FINs, closes) for only the connections it touched. Idle connections cost
//! nothing.
//!
//! - `admission`: who gets in (connection cap, shedding, accept retry)
//! - `pool`: `--workers N`
//!
//! What survives a guest is `crate::state`; the guest's lifecycle is
//! `crate::guest::supervisor`.

pub mod admin;
mod admission;
pub mod notify;
pub mod pool;
pub mod takeover;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::{Events, Interest, Poll, Token, Waker};

use self::admission::Admission;
use self::notify::Notifier;
use crate::config::Config;
use crate::guest::cache::Origin;
use crate::guest::supervisor::Supervisor;
use crate::guest::swap::{Change, Swapper, stamp};
use crate::guest::{GuestConfig, Runtime, Snapshot};
use crate::net::acceptor::Acceptor;
use crate::net::backpressure::Budget;
use crate::net::tls::TlsConfig;
use crate::net::wirelog::WireLog;
use crate::state::{HostState, LISTENER, Readiness, SIGNALS, WAKER};
use crate::stats::Stats;
use crate::tyme::Clock;

/// Size of the one read buffer shared by every connection.
const SCRATCH: usize = 64 * 1024;
/// How often `--watch` looks at the guest file.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// What the loop was asked to do from outside (a signal, another thread);
/// requests only move forward: serve, then drain, then stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Wanted {
    Serve = 0,
    Drain = 1,
    Stop = 2,
}

/// The request shared with other threads.
#[derive(Clone, Default)]
struct Request(Arc<AtomicU8>);

impl Request {
    fn get(&self) -> Wanted {
        match self.0.load(Ordering::Acquire) {
            0 => Wanted::Serve,
            1 => Wanted::Drain,
            _ => Wanted::Stop,
        }
    }

    fn ask(&self, wanted: Wanted) {
        self.0.fetch_max(wanted as u8, Ordering::AcqRel);
    }
}

/// Stops or drains a running [`Server`] from any thread.
#[derive(Clone)]
pub struct Stopper {
    request: Request,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Close at once: `run` closes every connection (those with bytes
    /// undelivered are reset) and returns.
    pub fn stop(&self) {
        self.ask(Wanted::Stop);
    }

    /// Drain (see [`Server::drain`]); `run` returns once drained.
    pub fn drain(&self) {
        self.ask(Wanted::Drain);
    }

    fn ask(&self, wanted: Wanted) {
        self.request.ask(wanted);
        if let Err(e) = self.waker.wake() {
            tracing::error!("cannot wake the event loop: {e}");
        }
    }
}

/// What stops or steers the loop from outside: the request, the waker
/// other threads use, the signals.
struct Control {
    request: Request,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// Where the TLS files are, to read them again on SIGHUP.
    tls: Option<TlsConfig>,
    /// `--drain-timeout`; `None`: a drain request stops at once.
    drain_timeout: Option<Duration>,
    /// When the drain under way must end.
    drain_deadline: Option<Instant>,
    /// Where this loop reports to a supervisor, as which worker.
    notifier: Option<(Arc<Notifier>, usize)>,
    /// SIGHUP swaps asked for and not yet installed.
    reloads: usize,
    /// The longest the loop may sleep, so readers see it turn (the admin
    /// endpoint's liveness).
    heartbeat: Option<Duration>,
    /// A successor process's requests to take over (`--upgrade-socket`).
    asks: Option<std::sync::mpsc::Receiver<takeover::Ask>>,
    /// Set once the server closed (ends the `--watch` thread).
    closed: Arc<AtomicBool>,
}

/// Hot swaps: the handle others ask with, and the guests compiled for it.
struct Swaps {
    swapper: Swapper,
    loaded: Receiver<Change>,
}

/// A running server: the host's sockets plus the current guest generation.
pub struct Server {
    poll: Poll,
    events: Events,
    /// Connections with readiness this pass (kept to reuse its allocation).
    touched: Vec<Readiness>,
    scratch: Vec<u8>,
    guest: Supervisor,
    admission: Admission,
    swaps: Swaps,
    control: Control,
}

impl Server {
    /// Load the guest, open the listen socket and start the guest
    /// (hio's `openServer` + `reopen`).
    pub fn open(config: Config) -> Result<Server> {
        Server::start(config, None, None)
    }

    /// [`Server::open`] serving `listeners` (listen sockets opened by
    /// someone else: systemd's socket activation, a predecessor process)
    /// instead of binding `config.ha`. Each must be a listening TCP socket.
    pub fn open_on(config: Config, listeners: Vec<std::net::TcpListener>) -> Result<Server> {
        Server::start(config, Some(listeners), None)
    }

    /// What [`Server::open`] checks before it binds anything: the settings,
    /// the TLS files, and that the guest loads (compiling it into the cache,
    /// so opening later maps it in milliseconds). A successor process runs
    /// this before it asks its predecessor for anything.
    pub fn preflight(config: &Config) -> Result<()> {
        config.validate()?;
        config.tls.as_ref().map(TlsConfig::acceptor).transpose()?;
        Runtime::new(config.limits.clone(), config.cache.clone())?.load_from(&config.guest)?;
        Ok(())
    }

    /// Open on `inherited` listen sockets (else bind `config.ha`), with the
    /// connections and guest state a predecessor process moved here, if any.
    fn start(
        config: Config,
        inherited: Option<Vec<std::net::TcpListener>>,
        moved: Option<takeover::Moved>,
    ) -> Result<Server> {
        config.validate()?;
        let tls = config.tls.as_ref().map(TlsConfig::acceptor).transpose()?;
        let runtime = Arc::new(Runtime::new(config.limits.clone(), config.cache.clone())?);
        let loaded_stamp = stamp(&config.guest);
        let (component, origin) = runtime.load_from(&config.guest)?;
        let poll = Poll::new().context("cannot create poller")?;
        let mut acceptor = match inherited {
            None => Acceptor::open(config.ha, config.bs, config.bl, config.reuse_port)?,
            Some(listeners) => Acceptor::adopt(listeners, config.bs, config.bl)?,
        };
        acceptor.register(poll.registry(), LISTENER)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut host = HostState::new(
            acceptor,
            config.virtual_tyme.clone().map_or_else(Clock::real, Clock::Virtual),
            open_wirelog(&config)?,
            Budget::new(config.max_buffered),
            config.stall_limits()?,
            tls,
        );
        if config.proxy_protocol {
            host.expect_proxy_headers();
        }
        let current = Arc::new(Mutex::new(config.guest.clone()));
        let (swapper, loaded) = Swapper::new(runtime.clone(), current, waker.clone());
        let guest_config = GuestConfig { tymeout: config.tymeout, bs: config.bs };
        let pacing = (config.tock_period()?, config.max_restarts);
        let snapshot = match moved {
            Some(moved) => {
                host.import(moved.conns, moved.next_id, poll.registry())?;
                moved.snapshot.map(|s| Snapshot { format: s.format, state: s.state })
            }
            None => None,
        };
        let guest =
            Supervisor::start(runtime, component, guest_config, (host, snapshot.as_ref()), pacing, swapper.clone())?;
        let acceptor = guest.host_ref().acceptor();
        let (ha, eha, listeners) = (acceptor.ha, acceptor.eha(), acceptor.local_addrs().len());
        let code = if origin == Origin::Cached { "cached" } else { "compiled" };
        tracing::info!(%ha, %eha, listeners, guest = %config.guest.display(), code = %code, "serving");
        let closed = Arc::new(AtomicBool::new(false));
        if config.watch {
            swapper.clone().watch(WATCH_EVERY, closed.clone(), loaded_stamp);
        }
        Ok(Server {
            poll,
            events: Events::with_capacity(1024),
            touched: Vec::with_capacity(1024),
            scratch: vec![0; SCRATCH],
            guest,
            admission: Admission::new(config.max_conns),
            swaps: Swaps { swapper, loaded },
            control: Control {
                request: Request::default(),
                closed,
                waker,
                signals: None,
                drain_timeout: config.drain_period()?,
                tls: config.tls,
                drain_deadline: None,
                notifier: None,
                reloads: 0,
                heartbeat: None,
                asks: None,
            },
        })
    }

    /// The resolved listen address (port 0 replaced by the real one).
    pub fn local_addr(&self) -> SocketAddr {
        self.host().acceptor().ha
    }

    /// Every address this server listens on (one, unless it was given
    /// several sockets); empty once draining.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.host().acceptor().local_addrs()
    }

    /// What the admin endpoint watches of this loop; from now on the loop
    /// turns at least every `admin::HEARTBEAT`, so a live loop looks live.
    pub fn watched(&mut self) -> admin::Watched {
        self.control.heartbeat = Some(admin::HEARTBEAT);
        admin::Watched { stats: self.stats(), swapper: self.swapper() }
    }

    /// Report readiness, reloads, the drain and liveness to `notifier`, as
    /// worker `worker` of the process.
    pub fn report_to(&mut self, notifier: Arc<Notifier>, worker: usize) {
        self.control.notifier = Some((notifier, worker));
    }

    /// Connections the host holds (taken by the guest or not).
    pub fn connection_count(&self) -> usize {
        self.host().connection_count()
    }

    /// Bytes the host holds for all connections (received and not
    /// consumed, queued and not sent).
    pub fn buffered(&self) -> usize {
        self.host().budget().held()
    }

    /// The counters of what this server did about misbehaving peers and
    /// guests; readable from any thread while it runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.host().stats().clone()
    }

    /// A handle that stops or drains this server from any thread.
    pub fn stopper(&self) -> Stopper {
        Stopper { request: self.control.request.clone(), waker: self.control.waker.clone() }
    }

    /// Begin a graceful drain (what SIGTERM does): the listen sockets close
    /// at once (new peers are refused), the guest is told (`host.draining`
    /// turns true and it gets a cycle), the connections held are served
    /// until they end; `--drain-timeout` after this call those left are
    /// reset. [`Server::run`] returns once none is left. Without a drain
    /// timeout (0) this is [`Stopper::stop`].
    pub fn drain(&mut self) {
        self.control.request.ask(Wanted::Drain);
    }

    /// Whether this server has finished: stopped, or drained of connections.
    pub fn finished(&self) -> bool {
        match self.control.request.get() {
            Wanted::Serve => false,
            Wanted::Drain => self.control.drain_deadline.is_some() && self.host().connection_count() == 0,
            Wanted::Stop => true,
        }
    }

    /// Swaps the guest from any thread (hot swap).
    pub fn swapper(&self) -> Swapper {
        self.swaps.swapper.clone()
    }

    /// Drain on SIGTERM or SIGINT, stop at once on the second; re-read the
    /// guest file (and the TLS files) on SIGHUP.
    pub fn stop_on_signals(&mut self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        self.poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.control.signals = Some(signals);
        Ok(())
    }

    fn host(&self) -> &HostState {
        self.guest.host_ref()
    }

    /// Serve until stopped or drained, then close everything.
    pub fn run(&mut self) -> Result<()> {
        while !self.finished() {
            self.step(None)?;
        }
        self.close();
        Ok(())
    }

    /// One pass of the loop. Waits at most `wait` (or until the guest's next
    /// tymer, or tock) for readiness.
    pub fn step(&mut self, wait: Option<Duration>) -> Result<()> {
        let listener_ready = self.poll_events(wait)?;
        let now = Instant::now();
        self.answer_successor();
        self.follow_request(now);
        let registry = self.poll.registry();
        let host = self.guest.host();
        host.begin_pass(now);
        let new_accepts = self.admission.accept_all(host, registry, listener_ready, now) > 0;
        host.expire_handshakes();
        host.expire_stalls();
        host.serve_io(&self.touched, &mut self.scratch);
        self.guest.cycle(new_accepts, now)?;
        while let Ok(change) = self.swaps.loaded.try_recv() {
            match change {
                Change::Swap(loaded) => {
                    self.guest.install(loaded)?;
                    self.reloaded();
                }
                Change::Crash => self.guest.crash()?,
            }
        }
        self.guest.host().settle(self.poll.registry(), &mut self.scratch);
        self.publish();
        if let Some((notifier, worker)) = &self.control.notifier {
            notifier.beat(*worker, self.host().connection_count());
        }
        Ok(())
    }

    /// What the loop holds now, for readers on other threads (metrics,
    /// status, liveness): three relaxed stores a pass.
    fn publish(&self) {
        let host = self.host();
        let stats = host.stats();
        stats.connections.set(host.connection_count() as u64);
        stats.buffered.set(host.budget().held() as u64);
        stats.last_pass_ms.set(crate::tyme::process_ms());
    }

    /// A swap was installed (or refused): one SIGHUP's reload is over.
    fn reloaded(&mut self) {
        if self.control.reloads == 0 {
            return;
        }
        self.control.reloads -= 1;
        if let Some((notifier, _)) = &self.control.notifier {
            notifier.reloaded(&self.swaps.swapper.current().display().to_string());
        }
    }

    /// Begin a drain that was asked for, or end one whose time is up.
    fn follow_request(&mut self, now: Instant) {
        if self.control.request.get() != Wanted::Drain {
            return;
        }
        match (self.control.drain_deadline, self.control.drain_timeout) {
            (_, None) => self.control.request.ask(Wanted::Stop),
            (None, Some(timeout)) => {
                self.control.drain_deadline = Some(now + timeout);
                let host = self.guest.host();
                host.begin_drain(self.poll.registry());
                let connections = host.connection_count();
                tracing::info!(connections, timeout_s = timeout.as_secs_f64(), "draining: listener closed");
                self.guest.wake_now();
                if let Some((notifier, _)) = &self.control.notifier {
                    notifier.stopping();
                }
            }
            (Some(deadline), _) if now >= deadline => self.guest.host().reset_all(&mut self.scratch),
            (Some(_), _) => {}
        }
    }

    /// Wait for readiness; gather the connections' into `touched`, act on
    /// signals. Returns whether the listener has connections waiting.
    fn poll_events(&mut self, wait: Option<Duration>) -> Result<bool> {
        let timeout = self.poll_timeout(wait);
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            return Err(e).context("poll failed");
        }
        let (mut accept, mut signalled) = (false, false);
        self.touched.clear();
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKER => {}
                SIGNALS => signalled = true,
                Token(t) => self.touched.push(Readiness {
                    id: t as u64,
                    readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    short_read_drains: ev.is_readable() && !ev.is_read_closed() && !ev.is_error(),
                    writable: ev.is_writable(),
                }),
            }
        }
        if signalled {
            self.on_signals();
        }
        Ok(accept)
    }

    /// SIGHUP: swap the guest (re-read its file) and re-read the TLS files;
    /// SIGINT, SIGTERM: drain, or stop if already draining.
    fn on_signals(&mut self) {
        let Some(signals) = &mut self.control.signals else { return };
        let pending: Vec<i32> = signals.pending().collect();
        for sig in pending {
            if sig == signal_hook::consts::SIGHUP {
                tracing::info!(guest = %self.swaps.swapper.current().display(), "SIGHUP: swapping guest");
                self.swaps.swapper.request(None, None);
                self.control.reloads += 1;
                if let Some((notifier, _)) = &self.control.notifier {
                    notifier.reloading();
                }
                if let Some(tls) = &self.control.tls {
                    self.guest.host().reload_tls(tls);
                }
            } else if self.control.request.get() == Wanted::Serve && self.control.drain_timeout.is_some() {
                tracing::info!("signal {sig}: draining");
                self.control.request.ask(Wanted::Drain);
            } else {
                tracing::info!("signal {sig}: closing now");
                self.control.request.ask(Wanted::Stop);
            }
        }
    }

    fn poll_timeout(&self, wait: Option<Duration>) -> Duration {
        let host = self.host();
        if !host.quiet() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let deadlines =
            [host.next_handshake_deadline(), host.next_stall(), self.admission.retry_at(), self.control.drain_deadline];
        // A supervisor's watchdog wants to hear from every loop in time.
        let beat = self.control.notifier.as_ref().and_then(|(n, _)| n.beat_within());
        let beat = beat.into_iter().chain(self.control.heartbeat).min();
        let most = deadlines
            .into_iter()
            .flatten()
            .fold(wait.unwrap_or(Duration::MAX).min(beat.unwrap_or(Duration::MAX)), |t, at| {
                t.min(at.saturating_duration_since(now))
            });
        self.guest.wake_in(now, most)
    }

    /// Close every connection (sending what the socket takes now) and the
    /// listen socket. Called by `run` on stop and by `Drop`.
    pub fn close(&mut self) {
        self.control.closed.store(true, Ordering::Release);
        let Some(mut host) = self.guest.take_host() else { return };
        host.close_all(&mut self.scratch);
        host.acceptor_mut().close(self.poll.registry());
        tracing::info!(ha = %host.acceptor().ha, "closed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_wirelog(config: &Config) -> Result<Option<WireLog>> {
    let Some(dir) = &config.wirelog else { return Ok(None) };
    let wirelog = WireLog::open(dir).with_context(|| format!("cannot open wirelog in {}", dir.display()))?;
    Ok(Some(wirelog))
}
