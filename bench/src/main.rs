//! hio-host benchmarks, run against the real `hio-host` binary.
//!
//!   hio-bench echo [--scenarios a,b,c,d,e,g,l,m] [--seconds 5] [--rounds 3] [--compare HIO_HOST_BINARY] [--no-peers]
//!   hio-bench swap [--conns 100,1000,10000] [--swaps 30]
//!   hio-bench swap-memory [--swaps 1000] [--conns 100]
//!   hio-bench upgrade [--conns 100,1000,10000] [--upgrades 10]
//!                                            (binary upgrade by --takeover: pauses)
//!   hio-bench startup                        (launch to serving, first and cached)
//!   hio-bench load --addr ADDR [--conns 100] [--size 1024] [--inflight 4] [--seconds 5] [--lines]
//!                                            (drive any echo server, or with --lines a lines
//!                                            server, e.g. while profiling it)
//!   hio-bench tls [--seconds 5]              (TLS echo and handshakes/s)
//!   hio-bench workers [--seconds 5]          (--workers 1 vs 2: per-loop CPU and capacity)
//!   hio-bench native-echo [--listen ADDR] [--tls-cert PEM --tls-key PEM]
//!                                            (the baseline server itself)
//!   hio-bench native-lines [--listen ADDR]   (the lines guest's policy in native code)
//!
//! echo: the same scenarios against a minimal native mio echo server,
//! `hio-host run echo.wasm`, and (a)-(c) also hio 0.6.10's own Python
//! server and HAProxy 2.6's Lua echo (`--no-peers`: without them), side by
//! side; see BENCHMARKS.md. Scenario g is (b) at 100, 1,000 and 10,000
//! connections (the cost curve). Scenario l is a policy that works: the
//! `lines` guest (count, upper-case, partial lines) against the same policy
//! in a native mio server, 100 connections, 64 B lines, 4 in flight.
//! `--compare` puts another build's `hio-host` in the baseline's place (a
//! before/after of a change, in alternating rounds); scenario m is (b)
//! with and without the admin endpoint scraped 10 times a second.
//!
//! swap: see `swap.rs` (the loop's pauses at a hot swap and its hand-over).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use anyhow::{Context, Result, bail};

mod echo;
mod load;
mod native;
mod peers;
mod swap;
mod tls;
mod upgrade;
mod workers;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    match args.first().map(String::as_str) {
        Some("native-lines") => native::serve_lines(flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into()).parse()?),
        Some("native-echo") => {
            let addr = flag("--listen").unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
            match (flag("--tls-cert"), flag("--tls-key")) {
                (Some(cert), Some(key)) => {
                    let certs = tls::Certs::from_files(cert.into(), key.into());
                    native::serve_tls(addr, certs.server_config()?)
                }
                _ => native::serve(addr),
            }
        }
        Some("tls") => tls::run(flag("--seconds").unwrap_or_else(|| "5".into()).parse()?),
        Some("workers") => workers::run(flag("--seconds").unwrap_or_else(|| "5".into()).parse()?),
        Some("echo") => {
            let scenarios = flag("--scenarios").unwrap_or_else(|| "a,b,c,d,e,l".into());
            let seconds: f64 = flag("--seconds").unwrap_or_else(|| "5".into()).parse()?;
            let rounds: usize = flag("--rounds").unwrap_or_else(|| "3".into()).parse()?;
            let compare = flag("--compare").map(PathBuf::from);
            let peers = !args.iter().any(|a| a == "--no-peers");
            echo::run(&scenarios, &echo::Options { seconds, rounds, compare: compare.as_deref(), peers })
        }
        Some("swap") => {
            let conns = counts(flag("--conns"))?;
            let swaps: usize = flag("--swaps").unwrap_or_else(|| "30".into()).parse()?;
            swap::run(&conns, swaps)
        }
        Some("startup") => startup(),
        Some("upgrade") => {
            upgrade::run(&counts(flag("--conns"))?, flag("--upgrades").unwrap_or_else(|| "10".into()).parse()?)
        }
        Some("load") => {
            let addr: SocketAddr = flag("--addr").context("load needs --addr HOST:PORT")?.parse()?;
            let num = |name: &str, default: &str| flag(name).unwrap_or_else(|| default.into()).parse::<usize>();
            let load = load::Load {
                conns: num("--conns", "100")?,
                size: num("--size", "1024")?,
                inflight: num("--inflight", "4")?,
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(num("--seconds", "5")? as u64),
                lines: args.iter().any(|a| a == "--lines"),
            };
            let out = load.run(addr)?;
            println!(
                "{:.0} msgs/s, p50 {:.0} µs, p99 {:.0} µs, {} errors",
                out.msgs as f64 / out.seconds,
                out.pct(50.0),
                out.pct(99.0),
                out.errors
            );
            Ok(())
        }
        Some("swap-memory") => {
            let swaps: usize = flag("--swaps").unwrap_or_else(|| "1000".into()).parse()?;
            let conns: usize = flag("--conns").unwrap_or_else(|| "100".into()).parse()?;
            let (before, after) = swap::memory(conns, swaps)?;
            println!("| swaps | open connections | host RSS after 10 swaps | after {swaps} swaps | growth |");
            println!("| ---: | ---: | ---: | ---: | ---: |");
            println!(
                "| {swaps} | {conns} | {:.1} MiB | {:.1} MiB | {:+.1} MiB |",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                (after as f64 - before as f64) / 1024.0
            );
            Ok(())
        }
        _ => bail!(
            "usage: hio-bench swap [--conns 100,1000,10000] [--swaps 30] | swap-memory [--swaps 1000] [--conns 100]"
        ),
    }
}

/// `--conns 100,1000,10000`: connection counts, those by default.
fn counts(flag: Option<String>) -> Result<Vec<usize>> {
    let text = flag.unwrap_or_else(|| "100,1000,10000".into());
    text.split(',').map(|n| n.parse().context("--conns takes numbers")).collect()
}

/// The number after `key=` in a host log line.
pub(crate) fn log_field(line: &str, key: &str) -> Result<u64> {
    let value = line.split(&format!("{key}=")).nth(1).and_then(|r| r.split_whitespace().next());
    value.with_context(|| format!("no {key} in the log line {line:?}"))?.parse().context("not a number")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ is in the workspace").to_path_buf()
}

fn us(micros: u64) -> String {
    if micros >= 10_000 { format!("{:.1} ms", micros as f64 / 1000.0) } else { format!("{micros} µs") }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The host, with its log lines delivered on a channel.
pub(crate) struct Host {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    log: Receiver<String>,
}

impl Host {
    fn spawn(guest: &Path) -> Result<Host> {
        Host::spawn_with(guest, &[])
    }

    fn spawn_with(guest: &Path, extra: &[&str]) -> Result<Host> {
        Host::spawn_binary(&root().join("target/release/hio-host"), guest, extra)
    }

    /// `binary run guest` (an `hio-host` binary of another build, to compare).
    fn spawn_binary(binary: &Path, guest: &Path, extra: &[&str]) -> Result<Host> {
        let mut cmd = Command::new(binary);
        cmd.args(["run", guest.to_str().context("utf-8 path")?, "--listen", "127.0.0.1:0", "--tymeout", "0"]);
        cmd.args(extra);
        Host::start(cmd)
    }

    /// The native baseline server (this binary's `native-echo`).
    fn native() -> Result<Host> {
        Host::native_serving("native-echo")
    }

    /// A native baseline server of this binary: `native-echo` or `native-lines`.
    fn native_serving(what: &str) -> Result<Host> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([what, "--listen", "127.0.0.1:0"]);
        Host::start(cmd)
    }

    /// A peer server that prints nothing useful: ready once `addr` accepts.
    fn start_when_listening(mut cmd: Command, addr: SocketAddr) -> Result<Host> {
        let child = cmd.stderr(Stdio::null()).spawn().with_context(|| format!("run {cmd:?}"))?;
        let (_, log) = mpsc::channel();
        let host = Host { child, addr, log };
        peers::wait_listening(addr)?;
        Ok(host)
    }

    fn start(mut cmd: Command) -> Result<Host> {
        let mut child =
            cmd.stderr(Stdio::piped()).spawn().with_context(|| format!("run {cmd:?} (cargo xtask build)"))?;
        let stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = loop {
            let line = log.recv_timeout(Duration::from_secs(30)).context("host did not start")?;
            if let Some(rest) = line.split(" ha=").nth(1) {
                break rest.split_whitespace().next().context("address")?.parse()?;
            }
        };
        Ok(Host { child, addr, log })
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status()?.success();
        if !ok {
            bail!("kill {sig} failed");
        }
        Ok(())
    }

    /// Wait for the next log line containing `needle`.
    fn expect(&self, needle: &str) -> Result<String> {
        loop {
            let line =
                self.log.recv_timeout(Duration::from_secs(60)).with_context(|| format!("no {needle:?} in the log"))?;
            if line.contains("failed") && line.contains("swap") {
                bail!("{line}");
            }
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.signal("-TERM");
        let _ = self.child.wait();
    }
}

fn echo_once(c: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>> {
    c.write_all(msg)?;
    let mut got = vec![0; msg.len()];
    c.read_exact(&mut got)?;
    Ok(got)
}

/// Time from launching `hio-host run echo.wasm` to its "serving" line: the
/// first start compiles the guest, later ones map it from the cache.
fn startup() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hio-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut times = Vec::new();
    for _ in 0..11 {
        let mut cmd = Command::new(root().join("target/release/hio-host"));
        cmd.args([
            "run",
            root().join("target/wasm/echo.wasm").to_str().context("utf-8 path")?,
            "--listen",
            "127.0.0.1:0",
        ])
        .env("HIO_CACHE_DIR", &dir);
        let start = std::time::Instant::now();
        let host = Host::start(cmd)?;
        times.push(start.elapsed());
        drop(host);
    }
    std::fs::remove_dir_all(&dir)?;
    let first = times.remove(0);
    times.sort();
    println!("| start | launch to serving |");
    println!("| --- | ---: |");
    println!("| first (compiles echo.wasm) | {:.1} ms |", first.as_secs_f64() * 1e3);
    println!("| later, cached (p50 of 10) | {:.1} ms |", times[times.len() / 2].as_secs_f64() * 1e3);
    println!("| later, cached (max of 10) | {:.1} ms |", times[times.len() - 1].as_secs_f64() * 1e3);
    Ok(())
}

/// The host's resident set in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()
        .context("VmRSS number")
}
