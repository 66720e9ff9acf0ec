//! Hot swap: compile a guest off the serving path, then hand it everything.
//!
//! Compiling runs on a thread of its own; the loop only pauses for the
//! hand-over (old guest's `save`, new instance, new guest's `start`). The
//! listen socket and every connection stay open throughout, and the bytes
//! in flight never leave the host.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use mio::Waker;
use wasmtime::component::Component;

use crate::guest::Runtime;

/// A guest file's modification time and length.
pub(crate) type Stamp = (SystemTime, u64);

pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// What a successful swap did.
#[derive(Debug, Clone)]
pub struct SwapReport {
    /// The component now serving.
    pub guest: PathBuf,
    /// How long the serving loop was stopped for the hand-over.
    pub pause: Duration,
    /// Connections handed to the new guest.
    pub connections: usize,
}

/// A swap's result: the report, or why the old guest is still serving.
pub type SwapOutcome = std::result::Result<SwapReport, String>;

/// What another thread asks the loop to do with its guest.
pub(crate) enum Change {
    /// Swap to this compiled (or failed) guest.
    Swap(Loaded),
    /// Fail the guest as a trap would ([`Swapper::crash_guest`]).
    Crash,
}

/// A compiled (or failed) guest waiting for the loop.
pub(crate) struct Loaded {
    pub path: PathBuf,
    pub component: Result<Component>,
    pub reply: Option<Sender<SwapOutcome>>,
}

/// Asks a running [`crate::Server`] to swap its guest, from any thread.
#[derive(Clone)]
pub struct Swapper {
    runtime: Arc<Runtime>,
    current: Arc<Mutex<PathBuf>>,
    loaded: Sender<Change>,
    waker: Arc<Waker>,
}

impl Swapper {
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        current: Arc<Mutex<PathBuf>>,
        waker: Arc<Waker>,
    ) -> (Swapper, Receiver<Change>) {
        let (loaded, rx) = mpsc::channel();
        (Swapper { runtime, current, loaded, waker }, rx)
    }

    /// The guest file now serving.
    pub fn current(&self) -> PathBuf {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_current(&self, path: PathBuf) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = path;
    }

    /// Swap to the guest at `path`, or re-read the current guest file.
    /// The receiver gets the outcome once the hand-over is done.
    pub fn swap(&self, path: Option<PathBuf>) -> Receiver<SwapOutcome> {
        let (tx, rx) = mpsc::channel();
        self.request(path, Some(tx));
        rx
    }

    pub(crate) fn request(&self, path: Option<PathBuf>, reply: Option<Sender<SwapOutcome>>) {
        let path = path.unwrap_or_else(|| self.current());
        let this = self.clone();
        let spawned = std::thread::Builder::new().name("hio-compile".into()).spawn(move || {
            let component = this.runtime.load(&path);
            // The server may be gone; then nobody wants this guest.
            this.send(Change::Swap(Loaded { path, component, reply }));
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start compiling the new guest: {e}");
        }
    }

    /// Make the guest fail as if it trapped, for tests of a policy: its
    /// instance and everything in its memory are dropped without `save`,
    /// and it is started again after the usual back-off with every
    /// connection and byte the host holds (counted in `guest_failures`).
    pub fn crash_guest(&self) {
        self.send(Change::Crash);
    }

    fn send(&self, change: Change) {
        // The server may be gone; then nobody wants this change.
        if self.loaded.send(change).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Swap whenever the current guest file changes on disk (checked every
    /// `every`; a change must hold still for one check, so a file being
    /// written is not loaded half-way). `loaded` is the file's stamp from
    /// before it was loaded, so a change made while the host was starting
    /// is not missed. Ends when `closed` is set.
    pub(crate) fn watch(self, every: Duration, closed: Arc<AtomicBool>, loaded: Option<Stamp>) {
        let spawned = std::thread::Builder::new().name("hio-watch".into()).spawn(move || {
            let mut loaded = loaded;
            let mut seen = loaded;
            while !closed.load(Ordering::Acquire) {
                std::thread::sleep(every);
                let now = stamp(&self.current());
                if now.is_some() && now == seen && now != loaded {
                    tracing::info!(guest = %self.current().display(), "guest file changed: swapping");
                    self.request(None, None);
                    loaded = now;
                }
                seen = now;
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot watch the guest file: {e}");
        }
    }
}
