//! `--workers N`: N event loops on N threads, each with its own listen
//! socket on the same address (SO_REUSEPORT: the kernel spreads new
//! connections between them), or its own copy of the inherited ones, its own
//! guest instance and its own connections. Nothing is shared between
//! workers, so nothing is locked; a guest's `ixes` are those of its worker.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::Config;
use crate::server::admin;
use crate::server::notify::Notifier;
use crate::server::takeover::{self, Part, Takeover, Terms, WorkerLink, serve_successors};
use crate::server::{Server, Stopper};

/// What a server run as the process (the `hio-host` binary) does besides
/// serving. `Process::default()`: nothing (a library's embedded server).
#[derive(Default)]
pub struct Process {
    /// Drain on SIGTERM/SIGINT, close at once on the second, swap on SIGHUP.
    pub signals: bool,
    /// Where readiness, reloads, the drain and liveness are reported
    /// (systemd's `NOTIFY_SOCKET`, `--ready-fd`).
    pub notifier: Option<Arc<Notifier>>,
    /// Listen sockets to serve instead of binding `config.ha` (systemd's
    /// socket activation); every worker serves all of them.
    pub listeners: Vec<TcpListener>,
    /// Where this process listens for a successor to take over from it
    /// (`--upgrade-socket`; see `server::takeover`).
    pub upgrade_socket: Option<PathBuf>,
    /// Take over from the process listening at `upgrade_socket` instead of
    /// opening afresh (`--takeover`).
    pub takeover: bool,
    /// Serve the admin endpoint here (`--admin`; see `server::admin`).
    pub admin: Option<SocketAddr>,
}

/// Serve `config` with `workers` event loops until drained or stopped (by
/// signals, if `process.signals`) or until one of them fails; then close
/// them all. With one worker this is a plain [`Server`] on the calling thread.
pub fn run(config: Config, workers: usize, process: Process) -> Result<()> {
    let Process { signals, notifier, mut listeners, upgrade_socket, takeover, admin } = process;
    let terms = Terms::of(&config);
    let (predecessor, mut parts) = match (&upgrade_socket, takeover) {
        (None, true) => bail!("--takeover needs --upgrade-socket PATH: where the running hio-host listens"),
        (Some(path), true) => {
            Server::preflight(&config)?;
            tracing::info!("taking over the listen sockets and connections of the hio-host at {}", path.display());
            let (predecessor, parts) = Takeover::begin(path, workers, terms)?;
            if parts.len() != workers {
                bail!("the running hio-host has {} workers: start this one with --workers {0}", parts.len());
            }
            (Some(predecessor), parts.into_iter().map(Some).collect())
        }
        (path, false) => {
            if let Some(path) = path {
                takeover::refuse_if_served(path)?;
            }
            (None, (0..workers).map(|_| None).collect::<Vec<_>>())
        }
    };
    if workers <= 1 {
        let resume = parts.pop().flatten();
        let worker =
            Worker { n: 0, signals, notifier: notifier.clone(), inherited: listeners, resume, admin: admin.is_some() };
        let guest = config.guest.display().to_string();
        let mut server = worker.open(config)?;
        if let Some(predecessor) = predecessor {
            predecessor.commit()?;
            tracing::info!(connections = server.committed(), "took over from the process before");
        }
        let links = vec![server.link_successors()];
        let successors = match &upgrade_socket {
            Some(path) => listen_for_successors(path, links, terms, takeover)?,
            None => None,
        };
        let admin = admin.map(|addr| admin::serve(addr, vec![server.watched()])).transpose()?;
        if let Some(notifier) = &notifier {
            notifier.ready(&server.listening(), admin, &guest);
        }
        let ended = server.run();
        forget_upgrade_socket(upgrade_socket.as_deref(), successors);
        return ended;
    }
    let mut config = config;
    // Port 0 is a fresh port and inherited sockets are bound already:
    // nobody else can be there. The claim is kept until the workers are done.
    let claim = if config.ha.port() != 0 && listeners.is_empty() && !takeover {
        Some(crate::net::acceptor::claim(config.ha)?)
    } else {
        None
    };
    config.reuse_port = true;
    // Caps are per worker: each holds its share.
    config.max_conns = config.max_conns.div_ceil(workers).max(1);
    config.max_buffered = (config.max_buffered / workers).max(1 << 20);
    let early = if signals { Some(EarlySignals::watch()?) } else { None };
    let (done_tx, done_rx) = mpsc::channel();
    let mut running: Vec<Running> = Vec::with_capacity(workers);
    let mut listening = Vec::new();
    for (n, resume) in parts.into_iter().enumerate() {
        let mut own = config.clone();
        if let Some(dir) = &config.wirelog {
            // One log per worker: records of one loop never interleave with another's.
            own.wirelog = Some(dir.join(format!("worker-{n}")));
        }
        // The last worker takes the inherited sockets themselves, the others copies.
        let inherited = if n + 1 == workers { std::mem::take(&mut listeners) } else { copies(&listeners)? };
        let worker = Worker { n, signals, notifier: notifier.clone(), inherited, resume, admin: admin.is_some() };
        match start(worker, own, done_tx.clone()) {
            Ok((addrs, r)) => {
                // The first worker resolved port 0; the rest join it there.
                config.ha = addrs[0];
                listening = addrs;
                running.push(r);
            }
            Err(e) => {
                stop_all(running);
                return Err(e);
            }
        }
    }
    drop(done_tx);
    if let Some(predecessor) = predecessor
        && let Err(e) = predecessor.commit()
    {
        stop_all(running);
        return Err(e);
    }
    for r in &mut running {
        if let Some(go) = r.go.take() {
            let _ = go.send(true);
        }
    }
    let links = running.iter().map(|r| r.link.clone()).collect();
    let successors = match &upgrade_socket {
        Some(path) => match listen_for_successors(path, links, terms, takeover) {
            Ok(listening) => listening,
            Err(e) => {
                stop_all(running);
                return Err(e);
            }
        },
        None => None,
    };
    if let Some(early) = early {
        early.pass_on(&running);
    }
    let watched: Vec<admin::Watched> = running.iter().filter_map(|r| r.watched.clone()).collect();
    let admin = match admin.map(|addr| admin::serve(addr, watched)).transpose() {
        Ok(admin) => admin,
        Err(e) => {
            stop_all(running);
            return Err(e);
        }
    };
    if let Some(notifier) = &notifier {
        notifier.ready(&listening, admin, &config.guest.display().to_string());
    }
    // A signal reaches every worker, and each drains its own connections
    // in its own time; a failure reaches only one, and ends them all.
    let mut ended = Vec::with_capacity(workers);
    let mut running = Some(running);
    for result in done_rx.iter() {
        if result.is_err()
            && let Some(running) = running.take()
        {
            stop_all(running);
        }
        ended.push(result);
    }
    if let Some(running) = running {
        stop_all(running);
    }
    drop(claim);
    forget_upgrade_socket(upgrade_socket.as_deref(), successors);
    ended.into_iter().collect()
}

/// Listen for a successor. A process that cannot fails to start, unless it
/// just took over: then serving matters more, and it serves on without.
/// Returns the flag set once a successor took over.
fn listen_for_successors(
    path: &Path,
    links: Vec<WorkerLink>,
    terms: Terms,
    took_over: bool,
) -> Result<Option<Arc<AtomicBool>>> {
    match serve_successors(path.to_path_buf(), links, terms) {
        Ok(handed) => Ok(Some(handed)),
        Err(e) if took_over => {
            tracing::error!("serving on without an upgrade socket: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// At exit, the upgrade socket goes, unless a successor took over: it
/// listens there now, and removing its socket would leave the next upgrade
/// nothing to connect to.
fn forget_upgrade_socket(path: Option<&Path>, handed: Option<Arc<AtomicBool>>) {
    if let (Some(path), Some(handed)) = (path, handed)
        && !handed.load(Ordering::Acquire)
    {
        let _ = std::fs::remove_file(path);
    }
}

/// A worker's thread and how to reach it.
struct Running {
    stopper: Stopper,
    thread: JoinHandle<()>,
    /// Lets it run (`true`) or end unused (`false`, or dropped) once every
    /// worker is open (and a predecessor has let go).
    go: Option<mpsc::Sender<bool>>,
    link: WorkerLink,
    watched: Option<admin::Watched>,
}

/// SIGTERM/SIGINT while workers start: each worker hears signals from when
/// it is open, so one that arrives after the first opened and before the
/// last did would reach only some. Caught here too, and passed on to all.
struct EarlySignals {
    seen: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl EarlySignals {
    fn watch() -> Result<EarlySignals> {
        let seen = Arc::new(AtomicBool::new(false));
        let ids = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]
            .into_iter()
            .map(|sig| signal_hook::flag::register(sig, seen.clone()))
            .collect::<std::io::Result<_>>()?;
        Ok(EarlySignals { seen, ids })
    }

    fn pass_on(self, running: &[Running]) {
        for id in self.ids {
            signal_hook::low_level::unregister(id);
        }
        if self.seen.load(Ordering::Acquire) {
            for r in running {
                r.stopper.drain();
            }
        }
    }
}

fn copies(listeners: &[TcpListener]) -> Result<Vec<TcpListener>> {
    listeners.iter().map(|l| l.try_clone().context("cannot share an inherited listen socket")).collect()
}

/// One event loop to start.
struct Worker {
    n: usize,
    signals: bool,
    notifier: Option<Arc<Notifier>>,
    inherited: Vec<TcpListener>,
    /// What a predecessor process handed this worker.
    resume: Option<Part>,
    /// The admin endpoint watches it.
    admin: bool,
}

impl Worker {
    fn open(self, config: Config) -> Result<Server> {
        let mut server = match (self.resume, self.inherited.is_empty()) {
            (Some(part), _) => Server::resume(config, part)?,
            (None, true) => Server::open(config)?,
            (None, false) => Server::open_on(config, self.inherited)?,
        };
        if self.signals {
            server.stop_on_signals()?;
        }
        if let Some(notifier) = self.notifier {
            server.report_to(notifier, self.n);
        }
        Ok(server)
    }
}

/// Open a worker on its own thread; returns once it is open, with where it
/// listens. It runs once told to go.
fn start(worker: Worker, config: Config, done: mpsc::Sender<Result<()>>) -> Result<(Vec<SocketAddr>, Running)> {
    let (n, resumed, watch) = (worker.n, worker.resume.is_some(), worker.admin);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("hio-worker-{n}"))
        .spawn(move || {
            let _span = tracing::info_span!("worker", n).entered();
            let mut server = match worker.open(config) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let watched = watch.then(|| server.watched());
            let _ = ready_tx.send(Ok((server.listening(), server.stopper(), server.link_successors(), watched)));
            if go_rx.recv() != Ok(true) {
                return;
            }
            if resumed {
                tracing::info!(connections = server.committed(), "took over from the process before");
            }
            let _ = done.send(server.run().with_context(|| format!("worker {n}")));
        })
        .context("cannot start a worker thread")?;
    match ready_rx.recv() {
        Ok(Ok((addrs, stopper, link, watched))) => {
            Ok((addrs, Running { stopper, thread, go: Some(go_tx), link, watched }))
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(anyhow!("worker {n} died while starting")),
    }
}

fn stop_all(running: Vec<Running>) {
    for r in &running {
        r.stopper.stop();
    }
    for r in running {
        // A worker not yet told to go ends unused.
        drop(r.go);
        let _ = r.thread.join();
    }
}
