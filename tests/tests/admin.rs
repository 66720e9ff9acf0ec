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
    assert!(sample(&s, "hio_guest_call_seconds_count", None) >= 3.0, "a cycle per echo at least");
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
    let s = metrics(admin);
    assert!(sample(&s, "hio_guest_traps_total", Some(("cause", "other"))) >= 1.0, "a panic is a trap");
    assert_eq!(sample(&s, "hio_guest_traps_total", Some(("cause", "deadline"))), 0.0);
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
