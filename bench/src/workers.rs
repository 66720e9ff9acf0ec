//! `--workers N` scaling: scenario (b) against `hio-host run echo.wasm` with
//! one and with two workers.
//!
//! On a 2-core machine the load generator needs a core of its own, so raw
//! throughput cannot show what a second worker adds: the generator is the
//! limit. What can be measured fairly is each event loop's own CPU time
//! (from /proc/PID/task/TID/stat): capacity = messages/s divided by the
//! loops' share of a core, i.e. what the server would carry if each loop
//! had a core to itself. Two ways to count it:
//! - mean: messages/s ÷ the loops' mean share, as if each loop, once given
//!   its own core, ran its own connections as fast as that core allows
//!   (closed-loop clients, as here);
//! - busiest: messages/s ÷ the busiest loop's share, as if the connections'
//!   rates were fixed and the busiest loop's core were the bottleneck
//!   (the SO_REUSEPORT hash gives loops unequal shares of 100 connections).
//!
//! Two balanced workers that cost no more per message than one come out
//! near 2x either way.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{Load, cpu_seconds};
use crate::{Host, root};

/// CPU seconds of each of the process's event-loop threads, by name.
fn loop_threads(pid: u32) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let name = std::fs::read_to_string(task.join("comm"))?.trim().to_string();
        // One worker runs on the main thread; more run on hio-worker-N.
        if name == "hio-host" || name.starts_with("hio-worker") {
            let stat = std::fs::read_to_string(task.join("stat"))?;
            let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            out.push((name, (ticks(11) + ticks(12)) / 100.0));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub fn run(seconds: f64) -> Result<()> {
    let warmup = Duration::from_secs(1);
    let duration = Duration::from_secs_f64(seconds);
    println!("\n### --workers: (b) 100 connections, 1 KiB, 4 in flight\n");
    println!(
        "| workers | msgs/s | server CPU s per M msgs | loop threads' CPU (share of a core) | capacity, mean | capacity, busiest |"
    );
    println!("| ---: | ---: | ---: | --- | ---: | ---: |");
    let mut capacities = Vec::new();
    for workers in [1usize, 2] {
        let n = workers.to_string();
        let host = Host::spawn_with(&root().join("target/wasm/echo.wasm"), &["--workers", &n])?;
        // The first worker's "serving" line started us; wait for the others.
        for _ in 1..workers {
            host.expect("serving")?;
        }
        let pid = host.child.id();
        let load = Load { conns: 100, size: 1024, inflight: 4, warmup, duration, lines: false };
        // Warm-up runs inside `load.run`; sample threads around the whole run.
        let (cpu0, threads0) = (cpu_seconds(Some(pid)), loop_threads(pid)?);
        let start = std::time::Instant::now();
        let out = load.run(host.addr)?;
        let wall = start.elapsed().as_secs_f64();
        let (cpu1, threads1) = (cpu_seconds(Some(pid)), loop_threads(pid)?);
        let rate = out.msgs as f64 / out.seconds;
        let total_msgs = rate * wall;
        let shares: Vec<(String, f64)> = threads1
            .iter()
            .map(|(name, t1)| {
                let t0 = threads0.iter().find(|(n, _)| n == name).map_or(0.0, |(_, t)| *t);
                (name.clone(), (t1 - t0) / wall)
            })
            .collect();
        let loops: Vec<f64> = shares.iter().map(|(_, s)| *s).filter(|s| *s > 0.01).collect();
        let mean = loops.iter().sum::<f64>() / loops.len().max(1) as f64;
        let busiest = loops.iter().copied().fold(0.0, f64::max);
        let capacity = (rate / mean.max(1e-9), rate / busiest.max(1e-9));
        capacities.push(capacity);
        let shares_text: Vec<String> = shares.iter().map(|(n, s)| format!("{n} {:.0} %", s * 100.0)).collect();
        println!(
            "| {workers} | {rate:.0} | {:.2} | {} | {:.0} | {:.0} |",
            (cpu1 - cpu0) / (total_msgs / 1e6),
            shares_text.join(", "),
            capacity.0,
            capacity.1
        );
        if out.errors > 0 {
            println!("\n{} errors with {workers} workers", out.errors);
        }
    }
    println!(
        "\nCapacity with 2 workers: {:.2}x one worker (mean), {:.2}x (busiest).",
        capacities[1].0 / capacities[0].0,
        capacities[1].1 / capacities[0].1
    );
    Ok(())
}
