//! upgrade: serve echo with N open connections, 4 of them echoing without
//! pause; a successor process takes over (`--takeover`) K times, each from
//! the last. Per upgrade: the old process's pause (its workers stopped from
//! the successor's ask until they let go, as it logs it), the longest round
//! trip an echoing client saw meanwhile (what a peer notices), and the
//! successor's launch to ready. Then every connection must still answer.

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Host, echo_once, log_field, root, us};

const ACTIVE: usize = 4;

pub fn run(conns: &[usize], upgrades: usize) -> Result<()> {
    println!(
        "| open connections | upgrades | old process paused p50 | max | longest client round trip p50 | max | successor launch to ready p50 |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in conns {
        let r = measure(n, upgrades)?;
        println!(
            "| {n} | {upgrades} | {} | {} | {} | {} | {} |",
            us(r.paused[r.paused.len() / 2]),
            us(*r.paused.last().context("no upgrade")?),
            us(r.round_trip[r.round_trip.len() / 2]),
            us(*r.round_trip.last().context("no upgrade")?),
            us(r.launch[r.launch.len() / 2]),
        );
    }
    Ok(())
}

/// Sorted, in µs.
struct Figures {
    paused: Vec<u64>,
    round_trip: Vec<u64>,
    launch: Vec<u64>,
}

fn successor(path: &str) -> Result<Host> {
    let mut cmd = Command::new(root().join("target/release/hio-host"));
    let guest = root().join("target/wasm/echo.wasm");
    cmd.args(["run", guest.to_str().context("utf-8 path")?, "--tymeout", "0"]).args([
        "--upgrade-socket",
        path,
        "--takeover",
    ]);
    Host::start(cmd)
}

fn measure(conns: usize, upgrades: usize) -> Result<Figures> {
    let path = std::env::temp_dir().join(format!("hio-bench-upgrade-{}.sock", std::process::id()));
    let path = path.to_str().context("utf-8 path")?.to_string();
    let mut host = Host::spawn_with(&root().join("target/wasm/echo.wasm"), &["--upgrade-socket", &path])?;
    let mut idle = Vec::with_capacity(conns);
    for _ in 0..conns.saturating_sub(ACTIVE) {
        let mut c = TcpStream::connect(host.addr)?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        echo_once(&mut c, b"x")?;
        idle.push(c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let active: Vec<_> = (0..ACTIVE.min(conns))
        .map(|_| {
            let (stop, worst, addr) = (stop.clone(), worst.clone(), host.addr);
            std::thread::spawn(move || -> Result<()> {
                let mut c = TcpStream::connect(addr)?;
                c.set_nodelay(true)?;
                c.set_read_timeout(Some(Duration::from_secs(30)))?;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if echo_once(&mut c, b"ping")? != b"ping" {
                        bail!("an echo came back wrong");
                    }
                    worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut figures = Figures { paused: Vec::new(), round_trip: Vec::new(), launch: Vec::new() };
    for _ in 0..upgrades {
        std::thread::sleep(Duration::from_millis(200));
        worst.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let next = successor(&path)?;
        figures.launch.push(started.elapsed().as_micros() as u64);
        let line = host.expect("connections moved to the successor process")?;
        figures.paused.push(log_field(&line, "pause_us")?);
        let _ = host.child.wait();
        figures.round_trip.push(worst.load(Ordering::Relaxed));
        host = next;
    }
    stop.store(true, Ordering::Relaxed);
    for a in active {
        a.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    for c in &mut idle {
        if echo_once(c, b"z")? != b"z" {
            bail!("after the upgrades a connection answered wrong");
        }
    }
    drop(host);
    let _ = std::fs::remove_file(&path);
    for v in [&mut figures.paused, &mut figures.round_trip, &mut figures.launch] {
        v.sort_unstable();
    }
    Ok(figures)
}
