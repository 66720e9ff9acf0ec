//! Telling a supervisor how the host is doing: systemd's notification
//! protocol (`sd_notify(3)`: `READY=1`, `RELOADING=1`, `STOPPING=1`,
//! `STATUS=`, `WATCHDOG=1`) when `NOTIFY_SOCKET` is set, and for anyone
//! else one line on `--ready-fd` once serving. One [`Notifier`] serves every
//! worker of a process; each worker's loop reports through it.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use sd_notify::NotifyState;

/// STATUS= is sent at most this often (and only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// A process's reports to its supervisor.
pub struct Notifier {
    /// `--ready-fd`: written once, then closed.
    ready_fd: Mutex<Option<File>>,
    /// How often every worker must show it is alive for the watchdog to be
    /// fed (a quarter of `WATCHDOG_USEC`), if systemd asked for one.
    watchdog: Option<Duration>,
    start: Instant,
    /// Each worker's last pass, in ms since `start`.
    beats: Vec<AtomicU64>,
    /// Each worker's connection count.
    connections: Vec<AtomicUsize>,
    last_ping: AtomicU64,
    last_status: Mutex<(u64, String)>,
    /// Hot swaps under way (RELOADING=1 at the first, READY=1 after the last).
    reloads: AtomicUsize,
    stopping: AtomicBool,
    /// A successor process took over: it speaks for the service now.
    handed_over: AtomicBool,
    guest: Mutex<String>,
}

impl Notifier {
    /// For `workers` event loops; `ready_fd` is a descriptor this process
    /// owns and gives up (`--ready-fd N`).
    pub fn new(workers: usize, ready_fd: Option<RawFd>) -> Result<Notifier> {
        let ready_fd = match ready_fd {
            None => None,
            Some(fd) if fd < 0 => bail!("--ready-fd must be a descriptor number, not {fd}"),
            Some(fd) => {
                // SAFETY: F_GETFD only reads the descriptor's flags; it fails
                // on a descriptor that is not open.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    bail!("--ready-fd {fd}: no such open descriptor");
                }
                // SAFETY: the descriptor is open and, by `--ready-fd`'s
                // contract, given to this process to write and close.
                Some(unsafe { File::from_raw_fd(fd) })
            }
        };
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()).map(|d| d / 4);
        Ok(Notifier {
            ready_fd: Mutex::new(ready_fd),
            watchdog,
            start: Instant::now(),
            beats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            connections: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            last_ping: AtomicU64::new(0),
            last_status: Mutex::new((0, String::new())),
            reloads: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            guest: Mutex::new(String::new()),
        })
    }

    /// Every worker serves: `READY=1` with a status, and the ready line
    /// `READY=1 MAINPID=<pid> LISTEN=<addr>[ LISTEN=<addr>...][ ADMIN=<addr>]`
    /// on `--ready-fd`.
    pub fn ready(&self, listening: &[SocketAddr], admin: Option<SocketAddr>, guest: &str) {
        *lock(&self.guest) = guest.to_string();
        let status = self.sent_status();
        send(&[NotifyState::Ready, NotifyState::MainPid(std::process::id()), NotifyState::Status(&status)]);
        let Some(mut file) = lock(&self.ready_fd).take() else { return };
        let mut line = format!("READY=1 MAINPID={}", std::process::id());
        for addr in listening {
            line.push_str(&format!(" LISTEN={addr}"));
        }
        if let Some(addr) = admin {
            line.push_str(&format!(" ADMIN={addr}"));
        }
        line.push('\n');
        if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            tracing::warn!("cannot write the ready line to --ready-fd: {e}");
        }
        // Standard streams stay open; any other descriptor closes here, so
        // its reader sees the end.
        if matches!(std::os::fd::AsRawFd::as_raw_fd(&file), 0..=2) {
            std::mem::forget(file);
        }
    }

    /// A worker's pass: feeds the watchdog when every worker has made one
    /// since it was last fed (a stuck loop starves it), and refreshes STATUS=.
    pub fn beat(&self, worker: usize, connections: usize) {
        if self.handed_over.load(Ordering::Acquire) {
            return;
        }
        let now = self.start.elapsed().as_millis() as u64;
        if let Some(beat) = self.beats.get(worker) {
            beat.store(now, Ordering::Relaxed);
        }
        if let Some(count) = self.connections.get(worker) {
            count.store(connections, Ordering::Relaxed);
        }
        if let Some(every) = self.watchdog {
            let last = self.last_ping.load(Ordering::Relaxed);
            let all_alive = self.beats.iter().all(|b| b.load(Ordering::Relaxed) > last);
            if now.saturating_sub(last) >= every.as_millis() as u64
                && all_alive
                && self.last_ping.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                send(&[NotifyState::Watchdog]);
            }
        }
        self.refresh_status(now);
    }

    /// How long a worker may sleep before its next beat is due.
    pub fn beat_within(&self) -> Option<Duration> {
        self.watchdog
    }

    /// A hot swap begins (SIGHUP): `RELOADING=1` with the monotonic clock
    /// systemd's `Type=notify-reload` asks for.
    pub fn reloading(&self) {
        // systemd has nothing to reload once the service is stopping.
        if self.reloads.fetch_add(1, Ordering::AcqRel) == 0 && !self.stopping.load(Ordering::Acquire) {
            let mut states = vec![NotifyState::Reloading];
            if let Ok(now) = NotifyState::monotonic_usec_now() {
                states.push(now);
            }
            send(&states);
        }
    }

    /// A hot swap ended (done or refused): `READY=1` once none is under way.
    pub fn reloaded(&self, guest: &str) {
        *lock(&self.guest) = guest.to_string();
        let before = self.reloads.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if before == Ok(1) && !self.stopping.load(Ordering::Acquire) {
            let status = self.sent_status();
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }

    /// A successor process took over (its READY=1 names its MAINPID): this
    /// one says no more, so its drain does not read as the service stopping.
    pub fn handed_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// The drain began: `STOPPING=1`, once for all workers.
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) && !self.handed_over.load(Ordering::Acquire) {
            let status = self.sent_status();
            send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
        }
    }

    fn status_text(&self) -> String {
        let connections: usize = self.connections.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let doing = if self.stopping.load(Ordering::Acquire) { "draining" } else { "serving" };
        format!("{doing} {connections} connections with {}", lock(&self.guest))
    }

    /// The status, remembered as sent (so the refresh does not repeat it).
    fn sent_status(&self) -> String {
        let status = self.status_text();
        *lock(&self.last_status) = (self.start.elapsed().as_millis() as u64, status.clone());
        status
    }

    fn refresh_status(&self, now: u64) {
        let mut last = lock(&self.last_status);
        if now.saturating_sub(last.0) < STATUS_EVERY.as_millis() as u64 {
            return;
        }
        // Looked at once per STATUS_EVERY, changed or not (formatting it
        // every pass would allocate on the hot path).
        last.0 = now;
        let status = self.status_text();
        if status != last.1 {
            send(&[NotifyState::Status(&status)]);
            last.1 = status;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One datagram to `NOTIFY_SOCKET`, if set. A supervisor that went away is
/// not the host's failure: logged, not fatal.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_when_every_worker_beat_since_the_last_time() {
        let mut n = Notifier::new(2, None).unwrap();
        n.watchdog = Some(Duration::from_millis(1));
        n.start -= Duration::from_secs(10);
        n.beat(0, 0);
        assert_eq!(n.last_ping.load(Ordering::Relaxed), 0, "worker 1 has not beaten");
        n.beat(1, 0);
        let fed = n.last_ping.load(Ordering::Relaxed);
        assert!(fed > 0, "both beat");
        std::thread::sleep(Duration::from_millis(5));
        n.beat(0, 0);
        assert_eq!(n.last_ping.load(Ordering::Relaxed), fed, "worker 1 is stuck since");
    }
}
