//! `--workers N`: N event loops on N threads, each with its own listen
//! socket on the same address (SO_REUSEPORT: the kernel spreads new
//! connections between them), its own guest instance and its own
//! connections. Nothing is shared between workers, so nothing is locked;
//! a guest's `ixes` are those of its worker.

use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};

use crate::config::Config;
use crate::server::{Server, Stopper};

/// Serve `config` with `workers` event loops until stopped (by signals, if
/// `signals`) or until one of them fails; then close them all. With one
/// worker this is a plain [`Server`] on the calling thread.
pub fn run(config: Config, workers: usize, signals: bool) -> Result<()> {
    if workers <= 1 {
        let mut server = Server::open(config)?;
        if signals {
            server.stop_on_signals()?;
        }
        return server.run();
    }
    let mut config = config;
    // Port 0 is a fresh port: nobody else can be there. The claim is kept
    // until the workers are done.
    let claim = if config.ha.port() != 0 { Some(crate::net::acceptor::claim(config.ha)?) } else { None };
    config.reuse_port = true;
    // Caps are per worker: each holds its share.
    config.max_conns = config.max_conns.div_ceil(workers).max(1);
    config.max_buffered = (config.max_buffered / workers).max(1 << 20);
    let (done_tx, done_rx) = mpsc::channel();
    let mut running: Vec<(Stopper, JoinHandle<()>)> = Vec::with_capacity(workers);
    for n in 0..workers {
        let mut own = config.clone();
        if let Some(dir) = &config.wirelog {
            // One log per worker: records of one loop never interleave with another's.
            own.wirelog = Some(dir.join(format!("worker-{n}")));
        }
        let started = start(n, own, signals, done_tx.clone());
        match started {
            Ok((ha, stopper, thread)) => {
                // The first worker resolved port 0; the rest join it there.
                config.ha = ha;
                running.push((stopper, thread));
            }
            Err(e) => {
                stop_all(running);
                return Err(e);
            }
        }
    }
    drop(done_tx);
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
    ended.into_iter().collect()
}

type Started = (std::net::SocketAddr, Stopper, JoinHandle<()>);

/// Open worker `n` on its own thread; returns once it is serving.
fn start(n: usize, config: Config, signals: bool, done: mpsc::Sender<Result<()>>) -> Result<Started> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("hio-worker-{n}"))
        .spawn(move || {
            let _span = tracing::info_span!("worker", n).entered();
            let opened = Server::open(config).and_then(|mut s| {
                if signals {
                    s.stop_on_signals()?;
                }
                Ok(s)
            });
            let mut server = match opened {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((server.local_addr(), server.stopper())));
            let _ = done.send(server.run().with_context(|| format!("worker {n}")));
        })
        .context("cannot start a worker thread")?;
    match ready_rx.recv() {
        Ok(Ok((ha, stopper))) => Ok((ha, stopper, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(anyhow!("worker {n} died while starting")),
    }
}

fn stop_all(running: Vec<(Stopper, JoinHandle<()>)>) {
    for (stopper, _) in &running {
        stopper.stop();
    }
    for (_, thread) in running {
        let _ = thread.join();
    }
}
