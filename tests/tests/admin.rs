//! The admin endpoint (`--admin`) with real clients: `curl` for the plain
//! routes, the official Prometheus Python client's OpenMetrics parser for
//! `/metrics`, whose counters must match what the test did.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use hio_tests::{HostProcess, eventually, guest, hio_python, root};

/// `curl` a route: (status, body).
fn curl(admin: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "30", "-X", method, "-w", "\n%{http_code}", &format!("http://{admin}{path}")]);
    if let Some(body) = body {
        cmd.args(["--data-binary", body]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("a status code");
    (code.trim().parse().expect("a status code"), body.to_string())
}

/// Every sample of `/metrics`, as the Prometheus client parsed it.
fn metrics(admin: SocketAddr) -> Vec<serde_json::Value> {
    let out = Command::new(hio_python())
        .arg(root().join("tests/py/metrics.py"))
        .arg(format!("http://{admin}/metrics"))
        .output()
        .expect("the metrics script");
    assert!(out.status.success(), "the parser refused /metrics: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON samples")
}

/// The value of the sample `name` with `label=value` (if given) of worker 0.
fn sample(samples: &[serde_json::Value], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|s| s["name"] == name && s["labels"]["worker"] == "0" && label.is_none_or(|(k, v)| s["labels"][k] == v))
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("no {name} {label:?} in {samples:?}"))
}

fn admin_host(guest_name: &str, extra: &[&str]) -> (HostProcess, SocketAddr) {
    let mut flags = vec!["--admin", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let host = HostProcess::spawn(&guest(guest_name), &flags);
    let admin = host.admin.expect("ADMIN= in the ready line");
    (host, admin)
}

#[test]
fn metrics_count_what_happened() {
    let (host, admin) = admin_host("echo", &[]);
    let mut clients: Vec<_> = (0..3).map(|_| host.connect()).collect();
    for c in &mut clients {
        c.echo(&[b'x'; 100]);
    }
    host.signal("HUP");
    eventually("the swap", || host.log().contains("swapped guest"));
    eventually("the metrics to show it all", || {
        let s = metrics(admin);
        sample(&s, "hio_swaps_total", Some(("outcome", "ok"))) == 1.0
            && sample(&s, "hio_bytes_sent_total", None) == 300.0
    });
    let s = metrics(admin);
    assert_eq!(sample(&s, "hio_connections", None), 3.0);
    assert_eq!(sample(&s, "hio_connections_accepted_total", None), 3.0);
    assert_eq!(sample(&s, "hio_bytes_received_total", None), 300.0);
    assert_eq!(sample(&s, "hio_guest_up", None), 1.0);
    assert_eq!(sample(&s, "hio_guest_starts_total", None), 2.0, "the first start and the swap");
    assert_eq!(sample(&s, "hio_connections_refused_total", Some(("reason", "cap"))), 0.0);
    assert_eq!(sample(&s, "hio_swap_pause_seconds_count", None), 1.0);
    eventually("the hand-over after the swap to be counted", || {
        sample(&metrics(admin), "hio_handover_pass_seconds_count", None) == 1.0
    });
    assert!(sample(&s, "hio_guest_call_seconds_count", None) >= 3.0, "a cycle per echo at least");
    assert!(sample(&s, "hio_buffered_bytes_limit", None) >= (1 << 20) as f64);
    drop(clients.pop());
    eventually("a clean close to be counted", || {
        sample(&metrics(admin), "hio_connections_closed_total", Some(("reason", "clean"))) == 1.0
    });
    let s = metrics(admin);
    assert_eq!(sample(&s, "hio_connections", None), 2.0);
    for reason in ["send_timeout", "linger", "poison", "drain_timeout", "shutdown", "proxy_header"] {
        assert_eq!(sample(&s, "hio_connections_closed_total", Some(("reason", reason))), 0.0, "{reason}");
    }
}

#[test]
fn a_crashing_guest_shows_in_the_metrics_and_readiness_follows_the_drain() {
    let (mut host, admin) = admin_host("crashy", &[]);
    assert_eq!(curl(admin, "GET", "/livez", None), (200, "ok\n".into()));
    assert_eq!(curl(admin, "GET", "/readyz", None), (200, "ok\n".into()));
    let mut c = host.connect();
    c.send(b"panic");
    eventually("the guest to fail and come back", || {
        let s = metrics(admin);
        sample(&s, "hio_guest_failures_total", None) >= 1.0 && sample(&s, "hio_guest_up", None) == 1.0
    });
    eventually("the poison peer to be reset", || {
        sample(&metrics(admin), "hio_connections_closed_total", Some(("reason", "poison"))) == 1.0
    });
    let s = metrics(admin);
    assert!(sample(&s, "hio_guest_traps_total", Some(("cause", "panic"))) >= 1.0, "a panic is a trap");
    assert!(sample(&s, "hio_guest_restarts_total", None) >= 1.0);
    for cause in ["deadline", "fuel", "memory", "forged_handle", "other"] {
        assert_eq!(sample(&s, "hio_guest_traps_total", Some(("cause", cause))), 0.0, "{cause}");
    }
    let mut held = host.connect();
    held.send(b"a");
    host.signal("TERM");
    eventually("readyz to say draining", || curl(admin, "GET", "/readyz", None) == (503, "draining\n".into()));
    assert_eq!(curl(admin, "GET", "/livez", None).0, 200, "a draining host is still live");
    drop(held);
    drop(c);
    assert!(host.exit_within(Duration::from_secs(30)).success());
}

#[test]
fn status_tells_the_guest_and_post_swap_swaps_it() {
    let (host, admin) = admin_host("echo", &[]);
    let (code, body) = curl(admin, "GET", "/status", None);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let echo = guest("echo");
    let sha = Command::new("sha256sum").arg(&echo).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(status["guest"], echo.to_str().unwrap());
    assert_eq!(status["guest_sha256"], sha);
    assert_eq!(status["ready"], true);
    let mut c = host.connect();
    c.echo(b"before");
    let (code, body) = curl(admin, "POST", "/swap", Some(guest("upper").to_str().unwrap()));
    let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, &outcome["ok"]), (200, &serde_json::Value::Bool(true)), "{body}");
    assert_eq!(outcome["workers"][0]["connections"], 1);
    c.send(b"after");
    assert_eq!(c.recv_exact(5), b"AFTER");
    let (code, body) = curl(admin, "POST", "/swap", Some("/nonexistent/guest.wasm"));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("cannot read guest"), "{body}");
    let (_, body) = curl(admin, "GET", "/status", None);
    assert!(body.contains("swap to /nonexistent/guest.wasm refused"), "{body}");
    // Endless or blocking "guests" are refused at once, not read.
    let fifo = std::env::temp_dir().join(format!("hio-admin-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in ["/dev/zero", fifo.to_str().unwrap()] {
        let (code, body) = curl(admin, "POST", "/swap", Some(path));
        assert!(code == 422 && body.contains("not a regular file"), "{path}: {code} {body}");
    }
    std::fs::remove_file(&fifo).unwrap();
    c.send(b"still");
    assert_eq!(c.recv_exact(5), b"STILL");
    assert_eq!(curl(admin, "GET", "/nope", None).0, 404);
    assert_eq!(curl(admin, "DELETE", "/swap", None).0, 405);
}

/// A guest down (crashed, and every restart fails) makes the host unready;
/// a swap to a working guest makes it ready again. In-process, on virtual
/// tyme: `crashy` cannot start while tyme is in [100, 200).
#[test]
fn readyz_is_503_while_the_guest_is_down_and_200_after_a_swap() {
    let tyme = hio_tests::VirtualTyme::new(0.0);
    let t = tyme.clone();
    let server = hio_tests::TestServer::start_with("crashy", move |c| {
        c.virtual_tyme = Some(t);
        c.tock = 0.01;
        c.max_restarts = 0;
        c.tymeout = 0.0;
    });
    let admin = server.serve_admin();
    assert_eq!(curl(admin, "GET", "/readyz", None), (200, "ok\n".into()));
    let mut a = server.connect();
    a.echo(b"before");
    tyme.tick(150.0);
    let mut poison = server.connect();
    poison.send(b"panic");
    eventually("readyz to say the guest is down", || curl(admin, "GET", "/readyz", None).0 == 503);
    let (_, why) = curl(admin, "GET", "/readyz", None);
    assert!(why.contains("the guest is down"), "{why}");
    let (_, status) = curl(admin, "GET", "/status", None);
    assert!(status.contains("\"ready\":false"), "{status}");
    a.send(b"held while down");
    let (code, body) = curl(admin, "POST", "/swap", Some(guest("echo").to_str().unwrap()));
    assert_eq!(code, 200, "{body}");
    assert_eq!(curl(admin, "GET", "/readyz", None), (200, "ok\n".into()));
    assert_eq!(a.recv_exact(15), b"held while down", "nothing received while down is lost");
    server.connect().echo(b"new peers served");
}

/// TLS handshakes: completed with their durations, failed by reason.
#[test]
fn tls_handshakes_are_counted_by_outcome() {
    let pki = hio_tests::pki::Pki::new("admin-tls");
    let server = hio_tests::TestServer::start_with("echo", |c| {
        let mut tls = pki.server_config();
        tls.handshake_timeout = 0.3;
        c.tls = Some(tls);
    });
    let admin = server.serve_admin();
    let mut good = hio_tests::pki::TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).unwrap();
    good.echo(b"hello").unwrap();
    assert!(
        hio_tests::pki::TlsClient::connect(server.addr, pki.client(Some(&pki.stranger), None))
            .and_then(|mut c| c.echo(b"x"))
            .is_err()
    );
    let mut garbage = server.connect();
    garbage.send(b"GET / HTTP/1.0\r\n\r\n");
    let mut silent = server.connect();
    let mut quitter = server.connect();
    quitter.send(&[0x16, 0x03, 0x01]);
    drop(quitter);
    eventually("every failure to be counted", || {
        let s = metrics(admin);
        ["certificate", "protocol", "timeout", "peer_closed"]
            .iter()
            .all(|r| sample(&s, "hio_tls_handshakes_failed_total", Some(("reason", r))) == 1.0)
    });
    let s = metrics(admin);
    assert_eq!(sample(&s, "hio_tls_handshakes_total", None), 1.0);
    assert_eq!(sample(&s, "hio_tls_handshake_seconds_count", None), 1.0);
    assert!(sample(&s, "hio_tls_handshake_seconds_sum", None) < 5.0);
    assert!(silent.closed_by_server(Duration::from_secs(10)));
}

/// Hostile admin clients hold only themselves: one that pipelines requests
/// and never reads its answers, one that sends an endless request line.
#[test]
fn hostile_admin_clients_do_not_hold_health_checks() {
    use std::io::{Read, Write};
    let (_host, admin) = admin_host("echo", &[]);
    let mut greedy = std::net::TcpStream::connect(admin).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    for _ in 0..3000 {
        if greedy.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
            break; // its buffers are full: it holds only itself
        }
    }
    let mut endless = std::net::TcpStream::connect(admin).unwrap();
    endless.write_all(b"GET /readyz?").unwrap();
    let chunk = vec![b'a'; 64 << 10];
    let mut refused = false;
    for _ in 0..64 {
        if endless.write_all(&chunk).is_err() {
            refused = true;
            break;
        }
    }
    endless.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = endless.read_to_end(&mut answer);
    assert!(
        refused || answer.starts_with(b"HTTP/1.1 431"),
        "a 4 MiB request line was taken: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(80)])
    );
    let start = std::time::Instant::now();
    assert_eq!(curl(admin, "GET", "/readyz", None), (200, "ok\n".into()));
    assert!(start.elapsed() < Duration::from_secs(5), "readyz took {:?}", start.elapsed());
}

/// Out of descriptors, the endpoint stops accepting for a while, then
/// serves again (it used to die with its accepting thread).
#[test]
fn the_admin_endpoint_survives_running_out_of_descriptors() {
    let host = HostProcess::spawn_under(
        &["prlimit", "--nofile=200:200"],
        &[],
        &guest("echo"),
        &["--admin", "127.0.0.1:0", "--max-conns", "1000"],
    );
    let admin = host.admin.expect("ADMIN= in the ready line");
    let flood: Vec<_> = (0..300).filter_map(|_| std::net::TcpStream::connect(host.addr()).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let _ = curl(admin, "GET", "/readyz", None); // may well fail now
    drop(flood);
    eventually("readyz to answer again", || curl(admin, "GET", "/readyz", None) == (200, "ok\n".into()));
    host.connect().echo(b"still serving");
}
