//! A fleet: two hio-host processes behind HAProxy (Debian's, in TCP mode)
//! with `send-proxy-v2` and health checks on each host's `/readyz`, the
//! configuration the README's "Running a fleet" shows.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hio_tests::{Client, HostProcess, KillOnDrop, PATIENCE, guest};

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HAProxy in front of `backends` (their listen and admin addresses).
struct Balancer {
    _haproxy: KillOnDrop,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Balancer {
    fn start(name: &str, backends: &[&HostProcess]) -> Balancer {
        let port = free_port();
        let mut servers = String::new();
        for (i, b) in backends.iter().enumerate() {
            let admin = b.admin.expect("backends run with --admin");
            servers.push_str(&format!("  server hio{i} {} send-proxy-v2 check port {}\n", b.addr(), admin.port()));
        }
        let config = format!(
            "global\n  maxconn 4096\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\
             frontend hio\n  bind 127.0.0.1:{port}\n  default_backend hio\n\
             backend hio\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
             default-server inter 100ms fall 2 rise 1\n{servers}"
        );
        let dir = std::env::temp_dir().join(format!("hio-fleet-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let haproxy = KillOnDrop(
            Command::new("haproxy")
                .args(["-db", "-f", file.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("haproxy (Debian's package)"),
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < PATIENCE, "haproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Its first health checks.
        std::thread::sleep(Duration::from_millis(500));
        Balancer { _haproxy: haproxy, addr, _dir: dir }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn backend(guest_name: &str) -> HostProcess {
    HostProcess::spawn(&guest(guest_name), &["--proxy-protocol", "--admin", "127.0.0.1:0"])
}

#[test]
fn clients_through_haproxy_are_seen_with_their_own_address() {
    let (a, b) = (backend("whoami"), backend("whoami"));
    let lb = Balancer::start("whoami", &[&a, &b]);
    for _ in 0..4 {
        let mut c = Client::connect(lb.addr);
        let me = c.stream.local_addr().unwrap();
        let greeting = c.recv_line();
        assert!(greeting.starts_with(&format!("plain ca={me} via=127.0.0.1:")), "{greeting} (client {me})");
        c.echo(b"through the balancer");
    }
    // Round robin: both hosts served clients (health checks go to /readyz).
    for host in [&a, &b] {
        let out = Command::new("curl")
            .args(["-s", "-m", "10"])
            .arg(format!("http://{}/metrics", host.admin.unwrap()))
            .output()
            .unwrap();
        let metrics = String::from_utf8_lossy(&out.stdout);
        let accepted = metrics
            .lines()
            .find_map(|l| l.strip_prefix("hio_connections_accepted_total{worker=\"0\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Two clients each, and maybe the probe that waited for HAProxy to listen.
        assert!(accepted.is_some_and(|n| n >= 2), "{metrics}");
    }
}

/// 50 clients echoing through HAProxy while each backend is hot-swapped in
/// turn (`POST /swap`), then while one is drained (SIGTERM): HAProxy takes
/// it out once its `/readyz` says draining, the clients on it finish there,
/// new ones go to the other. No error, no byte lost.
#[test]
fn a_rolling_swap_and_a_drain_lose_nothing_behind_haproxy() {
    let (a, b) = (backend("echo"), backend("echo"));
    let lb = Balancer::start("rolling", &[&a, &b]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let (stop, addr) = (stop.clone(), lb.addr);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut c = Client::connect(addr);
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("client {i} round {rounds}|");
                    std::io::Write::write_all(&mut c.stream, msg.as_bytes()).map_err(|e| e.to_string())?;
                    let mut back = vec![0u8; msg.len()];
                    std::io::Read::read_exact(&mut c.stream, &mut back).map_err(|e| format!("client {i}: {e}"))?;
                    if back != msg.as_bytes() {
                        return Err(format!("client {i}: echo differs"));
                    }
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(rounds)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for host in [&a, &b] {
        let admin = host.admin.unwrap();
        let out = Command::new("curl")
            .args(["-s", "-m", "30", "-X", "POST", "--data-binary", guest("echo").to_str().unwrap()])
            .arg(format!("http://{admin}/swap"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("\"ok\":true"), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Drain one: its clients finish there, HAProxy sends new ones to the other.
    a.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..10 {
        let mut fresh = Client::connect(lb.addr);
        fresh.echo(format!("new client {i} during the drain").as_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let rounds = c.join().unwrap().unwrap_or_else(|e| panic!("{e}\na:\n{}\nb:\n{}", a.log(), b.log()));
        assert!(rounds > 0);
    }
    assert!(a.log().contains("draining: listener closed"), "{}", a.log());
}
