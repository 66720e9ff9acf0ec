//! Upgrading the host binary without dropping a connection: a successor
//! process (`hio-host run --takeover --upgrade-socket PATH`) takes over
//! from the one serving at PATH its listen sockets and every plain
//! connection, with its unconsumed received bytes, its unsent queued bytes,
//! its id and addresses, and each worker's guest snapshot.
//!
//! The exchange, over a Unix stream socket (descriptors as `SCM_RIGHTS`):
//!
//! 1. The successor, its settings checked and its guest compiled, connects
//!    and says [`HELLO`] with its number of workers (which must be this
//!    process's: worker i's share goes to worker i), or is refused with a
//!    reason.
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
//! successor fails or vanishes at any point, it resumes as it was. The
//! whole exchange must fit in [`HAND_OVER_LIMIT`], so a slow or stuck
//! successor pauses the serving process that long at most.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use mio::Waker;
use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};

use super::Server;
use crate::config::Config;
use crate::net::conn::SavedConn;

/// What a successor says first: the protocol and its version (then its
/// workers and its [`Terms`], 4 bytes each); the serving process's answer
/// starts with it too.
pub const HELLO: &[u8; 8] = b"hio-tk/1";
/// The serving process's answer when it will not hand over, followed by
/// the reason's length (8 bytes), 8 spare bytes, and the reason.
const REFUSAL: &[u8; 8] = b"hio-tk/E";
/// The longest a hand-over may take from the successor's hello to its
/// commit: the serving process's workers are paused meanwhile.
pub const HAND_OVER_LIMIT: Duration = Duration::from_secs(5);
/// How long a successor has to say hello once connected.
const HELLO_WAIT: Duration = Duration::from_secs(1);
/// How long a successor waits for the serving process's answers.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Descriptors per message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 250;

/// A guest's snapshot on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSnapshot {
    pub format: String,
    pub state: Vec<u8>,
}

/// The settings a successor must share with the serving process to serve
/// what it hands over the same way: the listen sockets' protocol (TLS or
/// not, PROXY headers or not). Bits of one number on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub tls: bool,
    pub proxy_protocol: bool,
}

impl Terms {
    pub fn of(config: &Config) -> Terms {
        Terms { tls: config.tls.is_some(), proxy_protocol: config.proxy_protocol }
    }

    fn bits(self) -> u32 {
        u32::from(self.tls) | (u32::from(self.proxy_protocol) << 1)
    }

    fn describe(self) -> String {
        let tls = if self.tls { "TLS" } else { "plain TCP" };
        let proxy = if self.proxy_protocol { " with --proxy-protocol" } else { "" };
        format!("{tls}{proxy}")
    }
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

/// Say why there will be no hand-over.
fn refuse(stream: &mut UnixStream, why: &str) -> Result<()> {
    let mut frame = Vec::with_capacity(24 + why.len());
    frame.extend_from_slice(REFUSAL);
    frame.extend_from_slice(&(why.len() as u64).to_le_bytes());
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(why.as_bytes());
    stream.write_all(&frame)?;
    Ok(())
}

/// Read what [`send_parts`] (or [`refuse`]) sent.
fn recv_parts(stream: &mut UnixStream) -> Result<Vec<Part>> {
    let mut header = [0u8; 24];
    stream.read_exact(&mut header).context("the serving process sent no hand-over")?;
    let count = u64::from_le_bytes(header[8..16].try_into()?) as usize;
    let len = u64::from_le_bytes(header[16..24].try_into()?) as usize;
    if &header[..8] == REFUSAL {
        let mut why = vec![0u8; count.min(4096)];
        stream.read_exact(&mut why)?;
        bail!("the running hio-host will not hand over: {}", String::from_utf8_lossy(&why));
    }
    if &header[..8] != HELLO {
        bail!("the serving process speaks another hand-over protocol");
    }
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
    /// Ask the process serving at `path` for everything it can hand over
    /// to `workers` workers.
    pub fn begin(path: &Path, workers: usize, terms: Terms) -> Result<(Takeover, Vec<Part>)> {
        let mut stream = UnixStream::connect(path)
            .with_context(|| format!("no hio-host to take over from at {}", path.display()))?;
        stream.set_read_timeout(Some(ANSWER_WAIT))?;
        let mut hello = HELLO.to_vec();
        hello.extend_from_slice(&(workers as u32).to_le_bytes());
        hello.extend_from_slice(&terms.bits().to_le_bytes());
        stream.write_all(&hello)?;
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
/// one does (it would take the socket from the first), or to replace a file
/// that is no socket.
pub fn refuse_if_served(path: &Path) -> Result<()> {
    if socket_there(path)? && UnixStream::connect(path).is_ok() {
        bail!(
            "another hio-host listens for successors at {}: start with --takeover to take over from it",
            path.display()
        );
    }
    Ok(())
}

/// Whether a socket file is at `path` (nothing there: false); a file that
/// is no socket is an error, never to be replaced.
fn socket_there(path: &Path) -> Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(true),
        Ok(_) => bail!("--upgrade-socket {}: a file that is not a socket is there", path.display()),
        Err(_) => Ok(false),
    }
}

/// Listen at `path` for a successor; hand each worker's share over when one
/// comes (the listening thread ends once a successor has committed: the
/// serving process then drains what stayed). Returns a flag set once a
/// successor took over, before any worker lets go: from then on the socket
/// file at `path` is the successor's.
pub fn serve_successors(path: PathBuf, workers: Vec<WorkerLink>, terms: Terms) -> Result<Arc<AtomicBool>> {
    if socket_there(&path)? {
        // Left by a host that is gone (one that is not was refused at start).
        std::fs::remove_file(&path)?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot listen for a successor at {}", path.display()))?;
    tracing::info!(path = %path.display(), "listening for a successor (hio-host run --takeover)");
    // Whoever may connect here may take every connection: the owner only.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let handed = Arc::new(AtomicBool::new(false));
    let flag = handed.clone();
    std::thread::Builder::new().name("hio-successors".into()).spawn(move || {
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
            match hand_over(stream, &workers, terms, &path, &flag) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!("taken over by a successor: what moved is gone from here; draining the rest");
                    return;
                }
                Err(e) => tracing::warn!("takeover abandoned, serving on: {e:#}"),
            }
        }
    })?;
    Ok(handed)
}

/// Time left before `deadline`, or an error once it passed.
fn left(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("the hand-over took longer than {} s", HAND_OVER_LIMIT.as_secs());
    }
    Ok(left)
}

/// One successor's takeover, from this side: whether it took over.
fn hand_over(
    mut stream: UnixStream,
    workers: &[WorkerLink],
    terms: Terms,
    path: &Path,
    handed: &AtomicBool,
) -> Result<bool> {
    stream.set_read_timeout(Some(HELLO_WAIT))?;
    stream.set_write_timeout(Some(HELLO_WAIT))?;
    let mut hello = [0u8; 16];
    if stream.read_exact(&mut hello).is_err() {
        // Another host checking whether someone listens here.
        tracing::debug!("a connection to the upgrade socket left without a word");
        return Ok(false);
    }
    if &hello[..8] != HELLO {
        bail!("a successor spoke another protocol");
    }
    let theirs = u32::from_le_bytes(hello[8..12].try_into()?) as usize;
    if theirs != workers.len() {
        let n = workers.len();
        refuse(&mut stream, &format!("it has {n} workers: start this one with --workers {n}"))?;
        bail!("a successor with {theirs} workers asked; this host has {n}");
    }
    if u32::from_le_bytes(hello[12..16].try_into()?) != terms.bits() {
        refuse(&mut stream, &format!("it serves {}: start this one with the same", terms.describe()))?;
        bail!("a successor that would serve otherwise than {} asked", terms.describe());
    }
    tracing::info!(workers = workers.len(), "a successor asks to take over");
    let deadline = Instant::now() + HAND_OVER_LIMIT;
    let mut verdicts = Vec::with_capacity(workers.len());
    let mut parts = Vec::with_capacity(workers.len());
    let asked = (|| {
        for w in workers {
            let (reply_tx, reply_rx) = mpsc::channel();
            let (verdict_tx, verdict_rx) = mpsc::channel();
            w.asks.send(Ask { reply: reply_tx, verdict: verdict_rx }).map_err(|_| anyhow!("a worker is gone"))?;
            w.waker.wake()?;
            verdicts.push(verdict_tx);
            let part = reply_rx.recv_timeout(left(deadline)?).map_err(|_| anyhow!("a worker did not answer"))?;
            match part {
                Ok(part) => parts.push(part),
                Err(e) => {
                    let _ = refuse(&mut stream, &e);
                    bail!("a worker cannot hand over: {e}");
                }
            }
        }
        stream.set_write_timeout(Some(left(deadline)?))?;
        send_parts(&mut stream, std::mem::take(&mut parts))?;
        stream.set_read_timeout(Some(left(deadline)?))?;
        let mut commit = [0u8; 1];
        stream.read_exact(&mut commit).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                anyhow!("the successor did not commit within {} s of its hello", HAND_OVER_LIMIT.as_secs())
            }
            _ => anyhow!("the successor went away before it committed (it failed to start?)"),
        })?;
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
        handed.store(true, Ordering::Release);
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
        Server::start(config, Some(listeners), Some(moved))
    }

    /// The predecessor has let go: the moved sockets are this server's.
    /// Returns how many connections moved here.
    pub fn committed(&mut self) -> usize {
        self.guest.host().committed()
    }

    /// Let a successor process take over from this worker (see
    /// `serve_successors`).
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
