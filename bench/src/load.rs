//! A mio load generator that checks every byte that comes back.
//!
//! Each connection sends a byte stream whose byte at offset i is a function
//! of (connection, i), keeps up to `inflight` messages outstanding, and
//! checks each byte that comes back against the stream. A message's latency
//! is from its first byte written to its last byte answered.
//!
//! With `lines`, each message is one line of lower-case letters and the
//! answer expected is the `lines` guest's: the line's number on its
//! connection, a space, the line upper-cased.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

pub struct Load {
    pub conns: usize,
    pub size: usize,
    pub inflight: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Send lines and expect the `lines` guest's answers, not an echo.
    pub lines: bool,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub msgs: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Per-message latencies in microseconds, sorted.
    pub latencies: Vec<u32>,
    pub errors: u64,
    /// CPU seconds the load generator itself used while measuring.
    pub own_cpu: f64,
}

impl Outcome {
    pub fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i] as f64
    }
}

fn pattern(conn: usize, offset: u64) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(conn as u64 * 7) % 251) as u8
}

struct Conn {
    sock: TcpStream,
    sent: u64,
    checked: u64,
    /// (first-byte time, stream offset where the message ends)
    outstanding: VecDeque<(Instant, u64)>,
    out: Vec<u8>,
    out_off: usize,
    dead: bool,
    /// Lines sent, and the answers expected and not yet come (`lines`).
    lines: u64,
    expect: VecDeque<u8>,
}

/// This process's CPU seconds so far.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else { return f64::NAN };
    // Fields after the ")" of the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

impl Load {
    pub fn run(&self, addr: SocketAddr) -> Result<Outcome> {
        let mut poll = Poll::new()?;
        let mut conns = Vec::with_capacity(self.conns);
        for i in 0..self.conns {
            let std = std::net::TcpStream::connect(addr)?;
            std.set_nodelay(true)?;
            std.set_nonblocking(true)?;
            let mut sock = TcpStream::from_std(std);
            poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            conns.push(Conn {
                sock,
                sent: 0,
                checked: 0,
                outstanding: VecDeque::new(),
                out: Vec::new(),
                out_off: 0,
                dead: false,
                lines: 0,
                expect: VecDeque::new(),
            });
        }
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 256 * 1024];
        let start = Instant::now();
        let measure_from = start + self.warmup;
        let stop_sending = measure_from + self.duration;
        let hard_stop = stop_sending + Duration::from_secs(10);
        let mut out = Outcome::default();
        let mut cpu_at_start = None;
        let mut measuring_started = None;
        // Prime every connection.
        for (i, c) in conns.iter_mut().enumerate() {
            self.fill(i, c, Instant::now(), stop_sending);
            flush(c);
        }
        loop {
            let now = Instant::now();
            if now >= measure_from && cpu_at_start.is_none() {
                cpu_at_start = Some(cpu_seconds(None));
                measuring_started = Some(now);
            }
            let drained = conns.iter().all(|c| c.dead || c.outstanding.is_empty());
            if (now >= stop_sending && drained) || now >= hard_stop {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(50)))?;
            for ev in events.iter() {
                let i = ev.token().0;
                let c = &mut conns[i];
                if c.dead {
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    loop {
                        match c.sock.read(&mut buf) {
                            Ok(0) => {
                                c.dead = true;
                                out.errors += 1;
                                break;
                            }
                            Ok(n) => {
                                for (k, &b) in buf[..n].iter().enumerate() {
                                    let want = if self.lines {
                                        c.expect.pop_front()
                                    } else {
                                        Some(pattern(i, c.checked + k as u64))
                                    };
                                    if want != Some(b) {
                                        bail!("connection {i}: wrong byte at offset {}", c.checked + k as u64);
                                    }
                                }
                                c.checked += n as u64;
                                let now = Instant::now();
                                while let Some(&(t0, end)) = c.outstanding.front() {
                                    if end > c.checked {
                                        break;
                                    }
                                    c.outstanding.pop_front();
                                    if t0 >= measure_from && t0 < stop_sending {
                                        out.msgs += 1;
                                        out.bytes += self.size as u64;
                                        out.latencies.push((now - t0).as_micros().min(u32::MAX as u128) as u32);
                                    }
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Err(_) => {
                                c.dead = true;
                                out.errors += 1;
                                break;
                            }
                        }
                    }
                }
                if !c.dead {
                    self.fill(i, c, Instant::now(), stop_sending);
                    flush(c);
                }
            }
        }
        let end = Instant::now();
        out.seconds = measuring_started.map(|s| (end.min(stop_sending) - s).as_secs_f64()).unwrap_or(0.0);
        out.own_cpu = cpu_seconds(None) - cpu_at_start.unwrap_or(f64::NAN);
        out.errors += conns.iter().filter(|c| !c.dead && !c.outstanding.is_empty()).count() as u64;
        out.latencies.sort_unstable();
        Ok(out)
    }

    /// Queue new messages while fewer than `inflight` are outstanding.
    fn fill(&self, i: usize, c: &mut Conn, now: Instant, stop: Instant) {
        if now >= stop {
            return;
        }
        while c.outstanding.len() < self.inflight {
            if c.out_off == c.out.len() {
                c.out.clear();
                c.out_off = 0;
            }
            let base = c.sent;
            c.sent += self.size as u64;
            if !self.lines {
                c.out.extend((0..self.size as u64).map(|k| pattern(i, base + k)));
                c.outstanding.push_back((now, c.sent));
                continue;
            }
            let line = (0..self.size as u64 - 1).map(|k| b'a' + pattern(i, base + k) % 26);
            c.out.extend(line.clone());
            c.out.push(b'\n');
            c.lines += 1;
            c.expect.extend(format!("{} ", c.lines).bytes());
            c.expect.extend(line.map(|b| b.to_ascii_uppercase()));
            c.expect.push_back(b'\n');
            c.outstanding.push_back((now, c.checked + c.expect.len() as u64));
        }
    }
}

fn flush(c: &mut Conn) {
    while c.out_off < c.out.len() {
        match c.sock.write(&c.out[c.out_off..]) {
            Ok(n) => c.out_off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                c.dead = true;
                break;
            }
        }
    }
}
