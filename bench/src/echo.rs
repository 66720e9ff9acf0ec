//! Echo scenarios against the native baseline and hio-host, side by side.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::load::{Load, Outcome, cpu_seconds};
use crate::{Host, peers, root, rss_kib};

/// One server's figures in one round.
struct Figures {
    msgs_s: f64,
    mib_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    /// Server CPU seconds per million messages.
    cpu_per_m: f64,
    /// The load generator's own CPU, in cores.
    gen_cpu: f64,
}

impl Figures {
    fn of(out: &Outcome, server_cpu: f64, warmup: Duration, duration: Duration) -> Figures {
        // Server CPU covers warm-up too, so divide by every message of the run.
        let total_msgs = out.msgs as f64 * (warmup + duration).as_secs_f64() / out.seconds.max(1e-9);
        Figures {
            msgs_s: out.msgs as f64 / out.seconds,
            mib_s: out.bytes as f64 / out.seconds / (1024.0 * 1024.0),
            p50: out.pct(50.0),
            p99: out.pct(99.0),
            p999: out.pct(99.9),
            errors: out.errors,
            cpu_per_m: server_cpu / (total_msgs / 1e6),
            gen_cpu: out.own_cpu / out.seconds,
        }
    }

    /// Median of each figure over rounds; errors add up.
    fn median(rounds: &[Figures]) -> Figures {
        let m = |f: fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
        Figures {
            msgs_s: m(|f| f.msgs_s),
            mib_s: m(|f| f.mib_s),
            p50: m(|f| f.p50),
            p99: m(|f| f.p99),
            p999: m(|f| f.p999),
            errors: rounds.iter().map(|f| f.errors).sum(),
            cpu_per_m: m(|f| f.cpu_per_m),
            gen_cpu: m(|f| f.gen_cpu),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Servers taking turns; the ratios are each one's to the first's.
type Servers = Vec<(String, Host)>;

/// The baseline and this build's hio-host, or (`compare`) another hio-host
/// binary and this build's; with `peers` (the message size), also hio's
/// own Python server and HAProxy's Lua echo.
fn servers(compare: Option<&Path>, peers: Option<usize>) -> Result<Servers> {
    let echo = root().join("target/wasm/echo.wasm");
    let this = ("hio-host echo.wasm".to_string(), Host::spawn(&echo)?);
    let mut all = match compare {
        None => vec![("native mio".into(), Host::native()?), this],
        Some(bin) => vec![(format!("{} echo.wasm", bin.display()), Host::spawn_binary(bin, &echo, &[])?), this],
    };
    if let Some(size) = peers {
        all.push(("hio 0.6.10 (Python, EchoServerDoer)".into(), peers::hio_python()?));
        all.push(("HAProxy 2.6 Lua echo service".into(), peers::haproxy_lua(size)?));
    }
    Ok(all)
}

/// The traffic of a scenario: connections, message size, messages in
/// flight per connection, and whether they are lines for the `lines` guest.
struct Shape(usize, usize, usize, bool);

impl From<(usize, usize, usize)> for Shape {
    fn from((conns, size, inflight): (usize, usize, usize)) -> Shape {
        Shape(conns, size, inflight, false)
    }
}

/// A native line server doing the `lines` guest's work (count, upper-case,
/// keep partial lines), and hio-host with the `lines` guest.
fn line_servers() -> Result<Servers> {
    let lines = root().join("target/wasm/lines.wasm");
    Ok(vec![
        ("native mio lines".into(), Host::native_serving("native-lines")?),
        ("hio-host lines.wasm".into(), Host::spawn(&lines)?),
    ])
}

/// hio-host alone, and hio-host with its admin endpoint scraped 10 times a
/// second (Prometheus scrapes every 15 s to 1 min): the metrics' cost.
fn scraped() -> Result<Servers> {
    let echo = root().join("target/wasm/echo.wasm");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let watched = Host::spawn_with(&echo, &["--admin", &admin.to_string()])?;
    std::thread::spawn(move || {
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(mut c) = TcpStream::connect(admin) else { break };
            let mut body = Vec::new();
            if c.write_all(request.as_bytes()).and_then(|_| c.read_to_end(&mut body)).is_err() {
                break;
            }
        }
    });
    Ok(vec![
        ("hio-host echo.wasm".into(), Host::spawn(&echo)?),
        ("hio-host echo.wasm --admin, /metrics scraped 10/s".into(), watched),
    ])
}

/// What `hio-bench echo` runs and against whom.
pub struct Options<'a> {
    /// Seconds each server is loaded per round (after 1 s of warm-up).
    pub seconds: f64,
    /// Alternating rounds.
    pub rounds: usize,
    /// Another hio-host binary in the baseline's place.
    pub compare: Option<&'a Path>,
    /// Also run hio's Python server and HAProxy's Lua echo in (a)-(c).
    pub peers: bool,
}

pub fn run(scenarios: &str, o: &Options) -> Result<()> {
    let duration = Duration::from_secs_f64(o.seconds);
    let warmup = Duration::from_secs(1);
    let rounds = o.rounds.max(1);
    let (a, b, c) = ((1, 64, 1), (100, 1024, 4), (1, 64 * 1024, 4));
    let lineup = |(_, size, _): (usize, usize, usize)| servers(o.compare, o.peers.then_some(size));
    for s in scenarios.split(',') {
        let traffic = |title: &str, shape: Shape, all| traffic(title, shape, warmup, duration, rounds, all);
        match s {
            "a" => _ = traffic("(a) latency: 1 connection, 64 B, 1 in flight", a.into(), lineup(a)?)?,
            "b" => _ = traffic("(b) throughput: 100 connections, 1 KiB, 4 in flight", b.into(), lineup(b)?)?,
            "c" => _ = traffic("(c) bandwidth: 1 connection, 64 KiB, 4 in flight", c.into(), lineup(c)?)?,
            "d" => idle(10_000, Duration::from_secs(10))?,
            "e" => connects(Duration::from_secs_f64(o.seconds.min(3.0)))?,
            "m" => _ = traffic("(m) metrics' cost: (b) with the admin endpoint scraped", b.into(), scraped()?)?,
            "l" => {
                let title = "(l) a policy that works: the lines guest, 100 connections, 64 B lines, 4 in flight";
                _ = traffic(title, Shape(100, 64, 4, true), line_servers()?)?;
            }
            "g" => {
                let mut curve = Vec::new();
                for n in [100, 1_000, 10_000] {
                    let title = format!("(g) (b) at {n} connections, 1 KiB, 4 in flight each");
                    curve.push((n, traffic(&title, (n, 1024, 4).into(), servers(o.compare, None)?)?));
                }
                println!("\n### (g) server CPU per message as connections grow\n");
                println!("| connections | server CPU per message, hio-host / native |");
                println!("| ---: | ---: |");
                for (n, ratio) in &curve {
                    println!("| {n} | {ratio:.2}x |");
                }
                let (lo, hi) = curve.iter().fold((f64::MAX, 0f64), |(lo, hi), (_, r)| (lo.min(*r), hi.max(*r)));
                println!("\nFrom lowest to highest: {:.0} % apart.", (hi / lo - 1.0) * 100.0);
            }
            other => bail!("unknown scenario {other:?}: a, b, c, d, e, g, l or m"),
        }
    }
    Ok(())
}

/// Native and hio-host take turns, `rounds` times, so drift in the machine
/// (the other core's load, the kernel's state) falls on both alike; the
/// table gives each server's medians and the median of the rounds' ratios.
/// Returns the second server's median ratio of CPU per message to the first's.
fn traffic(
    title: &str,
    shape: Shape,
    warmup: Duration,
    duration: Duration,
    rounds: usize,
    servers: Servers,
) -> Result<f64> {
    let Shape(conns, size, inflight, lines) = shape;
    let mut figures: Vec<Vec<Figures>> = servers.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, host)) in servers.iter().enumerate() {
            let pid = host.child.id();
            let load = Load { conns, size, inflight, warmup, duration, lines };
            let cpu0 = cpu_seconds(Some(pid));
            let out = load.run(host.addr)?;
            let server_cpu = cpu_seconds(Some(pid)) - cpu0;
            figures[i].push(Figures::of(&out, server_cpu, warmup, duration));
        }
    }
    println!("\n### {title}\n");
    let each = if rounds > 1 { format!(" (median of {rounds} alternating rounds)") } else { String::new() };
    println!("Each server{each}:\n");
    println!(
        "| server | msgs/s | MiB/s | p50 µs | p99 µs | p99.9 µs | errors | server CPU s per M msgs | load generator CPU |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((name, _), rounds) in servers.iter().zip(&figures) {
        let f = Figures::median(rounds);
        println!(
            "| {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {:.0} % |",
            f.msgs_s,
            f.mib_s,
            f.p50,
            f.p99,
            f.p999,
            f.errors,
            f.cpu_per_m,
            100.0 * f.gen_cpu,
        );
    }
    // Each server's ratios to the first, round by round.
    let ratios = |i: usize, f: fn(&Figures) -> f64| -> Vec<f64> {
        figures[i].iter().zip(&figures[0]).map(|(h, n)| f(h) / f(n)).collect()
    };
    let first = &servers[0].0;
    for (i, (name, _)) in servers.iter().enumerate().skip(1) {
        let r = |f: fn(&Figures) -> f64| median(ratios(i, f));
        println!(
            "| **{name} / {first}** | **{:.2}x** | **{:.2}x** | {:.2}x | **{:.2}x** | {:.2}x | | **{:.2}x** | |",
            r(|f| f.msgs_s),
            r(|f| f.mib_s),
            r(|f| f.p50),
            r(|f| f.p99),
            r(|f| f.p999),
            r(|f| f.cpu_per_m),
        );
    }
    if rounds > 1 {
        let list = |v: Vec<f64>| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        println!(
            "\nRatios of {} by round: msgs/s {}; p99 {}; server CPU per message {}.",
            servers[1].0,
            list(ratios(1, |f| f.msgs_s)),
            list(ratios(1, |f| f.p99)),
            list(ratios(1, |f| f.cpu_per_m))
        );
    }
    if servers.len() > 2 {
        rank(&servers, &figures);
    }
    Ok(median(ratios(1, |f| f.cpu_per_m)))
}

/// Where the second server (hio-host) stands among all by throughput and by
/// server CPU per message (medians).
fn rank(servers: &Servers, figures: &[Vec<Figures>]) {
    let medians: Vec<Figures> = figures.iter().map(|f| Figures::median(f)).collect();
    let place = |better: fn(&Figures, &Figures) -> bool| {
        1 + medians.iter().enumerate().filter(|(i, f)| *i != 1 && better(f, &medians[1])).count()
    };
    let by_rate = place(|f, h| f.msgs_s > h.msgs_s);
    let by_cpu = place(|f, h| f.cpu_per_m < h.cpu_per_m);
    println!(
        "\n{} ranks {by_rate} of {} by msgs/s and {by_cpu} of {} by server CPU per message.",
        servers[1].0,
        servers.len(),
        servers.len()
    );
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
    for (name, host) in servers(None, None)? {
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
    for (name, host) in servers(None, None)? {
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
