//! Echo scenarios against the native baseline and hio-host, side by side.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::load::{Load, Outcome, cpu_seconds};
use crate::{Host, root, rss_kib};

struct Row {
    server: &'static str,
    out: Outcome,
    total_msgs: u64,
    server_cpu: f64,
}

fn servers() -> Result<[(&'static str, Host); 2]> {
    Ok([("native mio", Host::native()?), ("hio-host echo.wasm", Host::spawn(&root().join("target/wasm/echo.wasm"))?)])
}

pub fn run(scenarios: &str, seconds: f64) -> Result<()> {
    let duration = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs(1);
    for s in scenarios.split(',') {
        match s {
            "a" => traffic("(a) latency: 1 connection, 64 B, 1 in flight", 1, 64, 1, warmup, duration)?,
            "b" => traffic("(b) throughput: 100 connections, 1 KiB, 4 in flight", 100, 1024, 4, warmup, duration)?,
            "c" => traffic("(c) bandwidth: 1 connection, 64 KiB, 4 in flight", 1, 64 * 1024, 4, warmup, duration)?,
            "d" => idle(10_000, Duration::from_secs(10))?,
            "e" => connects(Duration::from_secs_f64(seconds.min(3.0)))?,
            other => bail!("unknown scenario {other:?}: a, b, c, d or e"),
        }
    }
    Ok(())
}

fn traffic(
    title: &str,
    conns: usize,
    size: usize,
    inflight: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<()> {
    let mut rows = Vec::new();
    for (name, host) in servers()? {
        let pid = host.child.id();
        let load = Load { conns, size, inflight, warmup, duration };
        let cpu0 = cpu_seconds(Some(pid));
        let out = load.run(host.addr)?;
        let server_cpu = cpu_seconds(Some(pid)) - cpu0;
        // Server CPU covers warm-up too, so divide by every message of the run.
        let total_msgs = (out.msgs as f64 * (warmup + duration).as_secs_f64() / out.seconds.max(1e-9)) as u64;
        rows.push(Row { server: name, out, total_msgs, server_cpu });
    }
    println!("\n### {title}\n");
    println!(
        "| server | msgs/s | MiB/s | p50 µs | p99 µs | p99.9 µs | errors | server CPU s per M msgs | load generator CPU |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let o = &r.out;
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.0} % |",
            r.server,
            o.msgs as f64 / o.seconds,
            o.bytes as f64 / o.seconds / (1024.0 * 1024.0),
            o.pct(50.0),
            o.pct(99.0),
            o.pct(99.9),
            o.errors,
            r.server_cpu / (r.total_msgs as f64 / 1e6),
            100.0 * o.own_cpu / o.seconds,
        );
    }
    let (n, h) = (&rows[0], &rows[1]);
    println!(
        "| **ratio hio/native** | **{:.2}x** | **{:.2}x** | {:.2}x | **{:.2}x** | {:.2}x | | **{:.2}x** | |",
        (h.out.msgs as f64 / h.out.seconds) / (n.out.msgs as f64 / n.out.seconds),
        (h.out.bytes as f64 / h.out.seconds) / (n.out.bytes as f64 / n.out.seconds),
        h.out.pct(50.0) / n.out.pct(50.0),
        h.out.pct(99.0) / n.out.pct(99.0),
        h.out.pct(99.9) / n.out.pct(99.9),
        (h.server_cpu / h.total_msgs as f64) / (n.server_cpu / n.total_msgs as f64),
    );
    Ok(())
}

fn echo_once(c: &mut TcpStream, msg: &[u8]) -> bool {
    let mut got = vec![0; msg.len()];
    c.write_all(msg).is_ok() && c.read_exact(&mut got).is_ok() && got == msg
}

/// (d) Many idle connections: server CPU while idle, RSS per connection, all answer after.
fn idle(conns: usize, hold: Duration) -> Result<()> {
    println!("\n### (d) {conns} idle connections held {}s, then each echoes once\n", hold.as_secs());
    println!("| server | connected | server CPU while idle | RSS per connection | answered after idle |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, host) in servers()? {
        let pid = host.child.id();
        let rss0 = rss_kib(pid)?;
        let mut socks = Vec::with_capacity(conns);
        for _ in 0..conns {
            let mut c = TcpStream::connect(host.addr)?;
            c.set_read_timeout(Some(Duration::from_secs(30)))?;
            if echo_once(&mut c, b"hi") {
                socks.push(c);
            }
        }
        let connected = socks.len();
        let rss1 = rss_kib(pid)?;
        let cpu0 = cpu_seconds(Some(pid));
        std::thread::sleep(hold);
        let idle_cpu = (cpu_seconds(Some(pid)) - cpu0) / hold.as_secs_f64();
        let answered = socks.iter_mut().map(|c| echo_once(c, b"again")).filter(|ok| *ok).count();
        println!(
            "| {name} | {connected} | {:.2} % of a core | {:.1} KiB | {answered} / {conns} |",
            idle_cpu * 100.0,
            (rss1 as f64 - rss0 as f64) / connected.max(1) as f64,
        );
    }
    Ok(())
}

/// (e) Connect, echo once, close, from 4 threads.
fn connects(duration: Duration) -> Result<()> {
    println!("\n### (e) connect, echo 64 B, close, 4 client threads, {}s\n", duration.as_secs_f64());
    println!("| server | connections/s | failed | server CPU ms per 1000 connections |");
    println!("| --- | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for (name, host) in servers()? {
        let pid = host.child.id();
        let (ok, failed, stop) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let cpu0 = cpu_seconds(Some(pid));
        let start = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (ok, failed, stop, addr): (_, _, _, SocketAddr) =
                    (ok.clone(), failed.clone(), stop.clone(), host.addr);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let good = TcpStream::connect(addr)
                            .map(|mut c| {
                                let _ = c.set_nodelay(true);
                                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                                echo_once(&mut c, &[7u8; 64])
                            })
                            .unwrap_or(false);
                        if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds(Some(pid)) - cpu0;
        let n = ok.load(Ordering::Relaxed);
        rates.push(n as f64 / secs);
        println!(
            "| {name} | {:.0} | {} | {:.1} |",
            n as f64 / secs,
            failed.load(Ordering::Relaxed),
            cpu * 1000.0 / (n as f64 / 1000.0)
        );
    }
    println!("| **ratio hio/native** | **{:.2}x** | | |", rates[1] / rates[0]);
    Ok(())
}
