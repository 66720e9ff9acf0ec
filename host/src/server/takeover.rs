//! Upgrading the host binary without dropping a connection: a successor
//! process (`hio-host run --takeover --upgrade-socket PATH`) takes over
//! from the one serving at PATH its listen sockets and every plain
//! connection, with its unconsumed received bytes, its unsent queued bytes,
//! its id and addresses, and each worker's guest snapshot.
//!
//! The exchange, over a Unix stream socket (descriptors as `SCM_RIGHTS`):
//!
//! 1. The successor, its settings checked and its guest compiled, connects
//!    and says [`HELLO`].
//! 2. Each of the serving process's workers pauses and hands over copies of
//!    what can move ([`Part`]); they go to the successor in one message.
//! 3. The successor builds its host state from them and starts its guests
//!    (touching no socket yet), then commits (`C`). The serving process
//!    lets go of what moved (closing its own descriptors only: the sockets
//!    stay open in the successor, so peers see nothing), answers `D`, and
//!    drains what stayed (TLS sessions, closing connections) under the
//!    drain rules. The successor then serves, and listens at PATH itself.
//!
//! Until the commit nothing has changed in the serving process: if the
//! successor fails or vanishes at any point, it resumes as it was.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mio::Waker;
use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};

use super::Server;
use crate::config::Config;
use crate::net::conn::SavedConn;

/// What a successor says first: the protocol and its version.
pub const HELLO: &[u8; 8] = b"hio-tk/1";
/// How long the serving process waits on each step of a successor's
/// (its hello, each write, its commit).
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// Descriptors per message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 250;

/// A guest's snapshot on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSnapshot {
    pub format: String,
    pub state: Vec<u8>,
}

/// One worker's share of a takeover.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerState {
    pub next_id: u64,
    pub listeners: usize,
    pub conns: Vec<SavedConn>,
    pub snapshot: Option<SavedSnapshot>,
}

/// A worker's share with its descriptors: its listen sockets, then one per
/// connection, in `state.conns` order. `Fd` is `OwnedFd` once received,
/// `RawFd` on the way out (see [`Ask`]).
pub struct Part<Fd = OwnedFd> {
    pub state: WorkerState,
    pub fds: Vec<Fd>,
}

/// A request to a worker to hand over its share: it answers on `reply`
/// with its own descriptors, then waits, paused, for the verdict: `true`
/// once the successor has committed, `false` to go on serving. It waits
/// without a deadline, so its descriptors stay valid for as long as the
/// successors' thread may send them; that thread bounds its own time (every
/// socket operation has a timeout) and always answers, or drops the
/// sender, which also lets the worker go on.
pub struct Ask {
    pub reply: Sender<Result<Part<RawFd>, String>>,
    pub verdict: Receiver<bool>,
}

/// How the successors' thread reaches a worker.
#[derive(Clone)]
pub struct WorkerLink {
    pub asks: Sender<Ask>,
    pub waker: Arc<Waker>,
}

/// The parts, over `stream`: a header (magic, descriptor count, payload
/// length), the descriptors in batches of one byte each, then the payload.
fn send_parts(stream: &mut UnixStream, parts: Vec<Part<RawFd>>) -> Result<()> {
    let (states, fds): (Vec<WorkerState>, Vec<Vec<RawFd>>) = parts.into_iter().map(|p| (p.state, p.fds)).unzip();
    let raw: Vec<RawFd> = fds.into_iter().flatten().collect();
    let payload = postcard::to_stdvec(&states).context("cannot encode the hand-over")?;
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(HELLO);
    header.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    for batch in raw.chunks(FDS_PER_MESSAGE) {
        if stream.send_with_fd(b"F", batch)? != 1 {
            bail!("the successor's socket took no byte");
        }
    }
    stream.write_all(&payload)?;
    Ok(())
}

/// Read what [`send_parts`] sent.
fn recv_parts(stream: &mut UnixStream) -> Result<Vec<Part>> {
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).context("the serving process sent no hand-over")?;
    if &header[..8] != HELLO {
        bail!("the serving process speaks another hand-over protocol");
    }
    let count = u64::from_le_bytes(header[8..16].try_into()?) as usize;
    let len = u64::from_le_bytes(header[16..24].try_into()?) as usize;
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(count);
    let mut batch = [0 as RawFd; FDS_PER_MESSAGE];
    while fds.len() < count {
        let mut byte = [0u8; 1];
        let (n, got) = stream.recv_with_fd(&mut byte, &mut batch)?;
        // SAFETY: the kernel just installed these descriptors in this
        // process for this message; nothing else owns them.
        fds.extend(batch[..got].iter().map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        if n == 0 {
            bail!("the serving process went away during the hand-over");
        }
        if got == 0 {
            // Every batch carries descriptors: the kernel dropped them.
            bail!("descriptors were lost in the hand-over (is this process's descriptor limit too low?)");
        }
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    let states: Vec<WorkerState> = postcard::from_bytes(&payload).context("cannot decode the hand-over")?;
    let mut fds = fds.into_iter();
    let mut parts = Vec::with_capacity(states.len());
    for state in states {
        let n = state.listeners + state.conns.len();
        let own: Vec<OwnedFd> = fds.by_ref().take(n).collect();
        if own.len() != n {
            bail!("the hand-over holds fewer descriptors than it names");
        }
        parts.push(Part { state, fds: own });
    }
    Ok(parts)
}

/// The successor's side: connected to the serving process, holding what it
/// handed over until [`Takeover::commit`].
pub struct Takeover {
    stream: UnixStream,
    path: PathBuf,
}

impl Takeover {
    /// Ask the process serving at `path` for everything it can hand over.
    pub fn begin(path: &Path) -> Result<(Takeover, Vec<Part>)> {
        let mut stream = UnixStream::connect(path)
            .with_context(|| format!("no hio-host to take over from at {}", path.display()))?;
        stream.set_read_timeout(Some(COMMIT_WAIT))?;
        stream.write_all(HELLO)?;
        let parts = recv_parts(&mut stream)?;
        Ok((Takeover { stream, path: path.to_path_buf() }, parts))
    }

    /// Everything handed over is running here (guests started, sockets not
    /// yet touched): tell the serving process to let go, and wait until it
    /// has.
    pub fn commit(mut self) -> Result<PathBuf> {
        self.stream.write_all(b"C")?;
        let mut done = [0u8; 1];
        self.stream.read_exact(&mut done).context("the serving process did not confirm the takeover")?;
        if &done != b"D" {
            bail!("the serving process refused the takeover");
        }
        Ok(self.path)
    }
}

/// Refuse to start a second host listening for successors at `path` while
/// one does (it would take the socket from the first).
pub fn refuse_if_served(path: &Path) -> Result<()> {
    if UnixStream::connect(path).is_ok() {
        bail!(
            "another hio-host listens for successors at {}: start with --takeover to take over from it",
            path.display()
        );
    }
    Ok(())
}

/// Listen at `path` for a successor; hand each worker's share over when one
/// comes. Returns once a successor has committed (the serving process then
/// drains what stayed) or the listener fails.
pub fn serve_successors(path: PathBuf, workers: Vec<WorkerLink>) -> Result<std::thread::JoinHandle<()>> {
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot listen for a successor at {}", path.display()))?;
    // Whoever may connect here may take every connection: the owner only.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let handle = std::thread::Builder::new().name("hio-successors".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // SAFETY: getuid cannot fail and touches no memory.
            let me = unsafe { libc::getuid() };
            match crate::net::acceptor::peer_uid(&stream) {
                Some(uid) if uid == me || uid == 0 => {}
                other => {
                    tracing::warn!(uid = ?other, "refused a takeover by another user");
                    continue;
                }
            }
            match hand_over(stream, &workers, &path) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!("taken over by a successor: what moved is gone from here; draining the rest");
                    return;
                }
                Err(e) => tracing::warn!("takeover abandoned, serving on: {e:#}"),
            }
        }
    })?;
    Ok(handle)
}

/// One successor's takeover, from this side: whether it took over.
fn hand_over(mut stream: UnixStream, workers: &[WorkerLink], path: &Path) -> Result<bool> {
    stream.set_read_timeout(Some(COMMIT_WAIT))?;
    stream.set_write_timeout(Some(COMMIT_WAIT))?;
    let mut hello = [0u8; 8];
    if stream.read_exact(&mut hello).is_err() {
        // Another host checking whether someone listens here.
        tracing::debug!("a connection to the upgrade socket left without a word");
        return Ok(false);
    }
    if &hello != HELLO {
        bail!("a successor spoke another protocol");
    }
    tracing::info!(workers = workers.len(), "a successor asks to take over");
    let mut verdicts = Vec::with_capacity(workers.len());
    let mut parts = Vec::with_capacity(workers.len());
    let asked = (|| {
        for w in workers {
            let (reply_tx, reply_rx) = mpsc::channel();
            let (verdict_tx, verdict_rx) = mpsc::channel();
            w.asks.send(Ask { reply: reply_tx, verdict: verdict_rx }).map_err(|_| anyhow!("a worker is gone"))?;
            w.waker.wake()?;
            verdicts.push(verdict_tx);
            let part = reply_rx.recv_timeout(COMMIT_WAIT).map_err(|_| anyhow!("a worker did not answer"))?;
            parts.push(part.map_err(|e| anyhow!("a worker cannot hand over: {e}"))?);
        }
        send_parts(&mut stream, std::mem::take(&mut parts))?;
        let mut commit = [0u8; 1];
        stream.read_exact(&mut commit).context("the successor did not commit")?;
        if &commit != b"C" {
            bail!("the successor sent {commit:?} instead of its commit");
        }
        Ok(())
    })();
    // Confirmed before the workers let go (they are paused until then, so
    // the successor may start at once): once they have, this process may
    // be gone in an instant.
    let confirmed = asked.and_then(|()| {
        // The successor listens here next.
        let _ = std::fs::remove_file(path);
        stream.write_all(b"D").context("cannot confirm the takeover")
    });
    for v in &verdicts {
        let _ = v.send(confirmed.is_ok());
    }
    confirmed.map(|()| true)
}

/// A worker's end of the link: the asks, shared with the link's sender.
pub fn link(waker: Arc<Waker>) -> (WorkerLink, Receiver<Ask>) {
    let (asks, rx) = mpsc::channel();
    (WorkerLink { asks, waker }, rx)
}

/// What a predecessor moved to one worker, but its listen sockets.
pub struct Moved {
    pub conns: Vec<(SavedConn, OwnedFd)>,
    pub next_id: u64,
    pub snapshot: Option<SavedSnapshot>,
}

impl Server {
    /// A worker of a successor process: serve what a predecessor handed
    /// over (`part`), its guest started with the predecessor's snapshot.
    /// Nothing touches the moved sockets until [`Server::committed`].
    pub fn resume(config: Config, part: Part) -> Result<Server> {
        let Part { state, mut fds } = part;
        let conn_fds = fds.split_off(state.listeners.min(fds.len()));
        let listeners = fds.into_iter().map(std::net::TcpListener::from).collect();
        let conns = state.conns.into_iter().zip(conn_fds).collect();
        let moved = Moved { conns, next_id: state.next_id, snapshot: state.snapshot };
        let server = Server::start(config, Some(listeners), Some(moved))?;
        tracing::info!(connections = server.connection_count(), "took over from the process before");
        Ok(server)
    }

    /// The predecessor has let go: the moved sockets are this server's.
    pub fn committed(&mut self) {
        self.guest.host().committed();
    }

    /// Let a successor process take over from this worker (see
    /// [`serve_successors`]).
    pub fn link_successors(&mut self) -> WorkerLink {
        let (link, asks) = link(self.control.waker.clone());
        self.control.asks = Some(asks);
        link
    }

    /// A successor asks for this worker's share: hand it over and wait,
    /// paused, for the verdict.
    pub(super) fn answer_successor(&mut self) {
        let Some(asks) = &self.control.asks else { return };
        let asked: Vec<Ask> = asks.try_iter().collect();
        for ask in asked {
            self.hand_over(ask);
        }
    }

    fn hand_over(&mut self, ask: Ask) {
        let paused = Instant::now();
        if self.control.drain_deadline.is_some() {
            let _ = ask.reply.send(Err("it is draining".into()));
            return;
        }
        let moving = self.host().export();
        let snapshot = self.guest.snapshot().map(|s| SavedSnapshot { format: s.format, state: s.state });
        let ids: Vec<u64> = moving.conns.iter().map(|(saved, _)| saved.id).collect();
        let (saved, conn_fds): (Vec<SavedConn>, Vec<RawFd>) = moving.conns.into_iter().unzip();
        let state = WorkerState { next_id: moving.next_id, listeners: moving.listeners.len(), conns: saved, snapshot };
        let mut fds = moving.listeners;
        fds.extend(conn_fds);
        if ask.reply.send(Ok(Part { state, fds })).is_err() {
            return;
        }
        match ask.verdict.recv() {
            Ok(true) => {
                self.guest.host().moved(&ids, self.poll.registry());
                let pause_us = paused.elapsed().as_micros() as u64;
                tracing::info!(moved = ids.len(), pause_us, "connections moved to the successor process");
                if let Some((notifier, _)) = &self.control.notifier {
                    notifier.handed_over();
                }
                self.control.request.ask(super::Wanted::Drain);
            }
            _ => tracing::warn!("the successor did not take over; serving on"),
        }
    }
}
