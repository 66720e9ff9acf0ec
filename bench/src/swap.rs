//! swap: serve echo with N open connections, hot-swap the guest (SIGHUP
//! after replacing the file, alternating echo and upper) K times; then
//! check every connection still answers.
//!
//! Per swap, from the host's log: the swap's own pass (old guest's `save`,
//! the new instance, its `start`), and for a lazy hand-over (WIT
//! `handover`, every SDK guest) the longest pass of guest work until the
//! last connection was handed and how long that took. The loop's longest
//! stop is the larger of the swap's pass and that. A probe connection
//! meanwhile echoes one byte after another: its slowest round trip from
//! the swap's pass to the end of the hand-over is what a busy peer saw.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{Host, echo_once, log_field, pct, root, rss_kib, us};

/// One swap's figures, in microseconds.
struct Figures {
    /// The swap's own pass.
    pause: u64,
    /// The longest pass of guest work during the hand-over after it.
    longest_pass: u64,
    /// From the swap's pass to the last connection handed.
    handover: u64,
    /// The probe's slowest round trip over that time.
    probe: u64,
}

impl Figures {
    /// The loop's longest stop for this swap.
    fn stop(&self) -> u64 {
        self.pause.max(self.longest_pass)
    }
}

/// Print the table for each connection count.
pub(crate) fn run(conns: &[usize], swaps: usize) -> Result<()> {
    println!(
        "| open connections | swaps | longest stop p50 | p99 | max | swap pass p50 | hand-over passes' longest p50 | hand-over done p50 | probe's slowest round trip p50 | max |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in conns {
        let (figures, _) = swap_run(n, swaps, |_, _| Ok(()))?;
        let sorted = |f: fn(&Figures) -> u64| {
            let mut v: Vec<u64> = figures.iter().map(f).collect();
            v.sort_unstable();
            v
        };
        let (stop, pause, pass) = (sorted(Figures::stop), sorted(|f| f.pause), sorted(|f| f.longest_pass));
        let (handover, probe) = (sorted(|f| f.handover), sorted(|f| f.probe));
        println!(
            "| {n} | {swaps} | {} | {} | {} | {} | {} | {} | {} | {} |",
            us(pct(&stop, 50.0)),
            us(pct(&stop, 99.0)),
            us(*stop.last().unwrap_or(&0)),
            us(pct(&pause, 50.0)),
            us(pct(&pass, 50.0)),
            us(pct(&handover, 50.0)),
            us(pct(&probe, 50.0)),
            us(*probe.last().unwrap_or(&0)),
        );
    }
    Ok(())
}

/// RSS after a warm-up of 10 swaps, and after `swaps` more.
pub(crate) fn memory(conns: usize, swaps: usize) -> Result<(u64, u64)> {
    let mut before = 0;
    let (_, after) = swap_run(conns, swaps + 10, |i, host| {
        if i == 10 {
            before = rss_kib(host.child.id())?;
        }
        Ok(())
    })?;
    Ok((before, after))
}

/// Round trips of one byte on one connection until stopped: each one's end
/// and length.
struct Probe {
    stop: Arc<AtomicBool>,
    trips: Arc<Mutex<Vec<(Instant, Duration)>>>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Probe {
    fn start(mut c: TcpStream) -> Probe {
        let (stop, trips) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (s, t) = (stop.clone(), trips.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let got = echo_once(&mut c, b"p")?;
                let now = Instant::now();
                if got != b"p" && got != b"P" {
                    bail!("the probe got {got:?}");
                }
                t.lock().map_err(|_| anyhow::anyhow!("probe lock"))?.push((now, now - sent));
                // About 5,000 round trips a second: enough to see any pause
                // over a fraction of a millisecond, little load on the host.
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        });
        Probe { stop, trips, thread }
    }

    /// The slowest round trip that ended between `from` and `to`.
    fn slowest(&self, from: Instant, to: Instant) -> u64 {
        let trips = self.trips.lock().map(|t| t.clone()).unwrap_or_default();
        trips
            .iter()
            .filter(|(end, _)| *end >= from && *end <= to)
            .map(|(_, rtt)| rtt.as_micros() as u64)
            .max()
            .unwrap_or(0)
    }

    fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the probe panicked"))?
    }
}

/// Serve echo with `conns` connections (the probe's among them: 10,000 is
/// the host's default limit), swap `swaps`
/// times (calling `each` after every swap); returns each swap's figures
/// and the host's final RSS.
fn swap_run(
    conns: usize,
    swaps: usize,
    mut each: impl FnMut(usize, &Host) -> Result<()>,
) -> Result<(Vec<Figures>, u64)> {
    let dir = std::env::temp_dir().join(format!("hio-bench-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let guests = [root().join("target/wasm/echo.wasm"), root().join("target/wasm/upper.wasm")];
    let live = dir.join("guest.wasm");
    std::fs::copy(&guests[0], &live)?;
    let host = Host::spawn(&live)?;
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns.max(2) {
        let mut c = TcpStream::connect(host.addr)?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        c.set_nodelay(true)?;
        echo_once(&mut c, b"x")?;
        clients.push(c);
    }
    let probe = Probe::start(clients.pop().expect("two or more"));
    let mut figures = Vec::with_capacity(swaps);
    for i in 0..swaps {
        let tmp = dir.join("next.tmp");
        std::fs::copy(&guests[(i + 1) % 2], &tmp)?;
        std::fs::rename(&tmp, &live)?;
        host.signal("-HUP")?;
        let line = host.expect("swapped guest")?;
        let seen = Instant::now();
        let pause = log_field(&line, "pause_us")?;
        let handed = log_field(&line, "connections")? as usize;
        if handed != clients.len() + 1 {
            bail!("swap {i} handed over {handed} connections, not {}", clients.len() + 1);
        }
        let done = host.expect("hand-over complete")?;
        let (longest_pass, handover) = (log_field(&done, "longest_pass_us")?, log_field(&done, "took_us")?);
        // The log line comes a moment after the pass; round trips that
        // ended in the pass end after its start.
        let from = seen - Duration::from_micros(pause) - Duration::from_millis(1);
        let to = Instant::now().max(seen + Duration::from_micros(handover));
        std::thread::sleep(Duration::from_millis(2));
        figures.push(Figures { pause, longest_pass, handover: handover + pause, probe: probe.slowest(from, to) });
        each(i + 1, &host)?;
    }
    probe.finish()?;
    let rss = rss_kib(host.child.id())?;
    // Every connection survived every swap and is served by the last guest.
    let want: &[u8] = if swaps % 2 == 1 { b"Z" } else { b"z" };
    for c in &mut clients {
        let got = echo_once(c, b"z")?;
        if got != want {
            bail!("after the swaps a connection answered {got:?}, not {want:?}");
        }
    }
    drop(host);
    std::fs::remove_dir_all(dir)?;
    Ok((figures, rss))
}
