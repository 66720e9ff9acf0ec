//! The admin endpoint (`--admin HOST:PORT`, off by default): HTTP/1.1 on a
//! thread of its own (`tiny_http`) that reads only what the event loops
//! publish ([`Stats`]: relaxed atomics), so a slow or hostile scraper
//! never holds a loop, and a loop never waits for it.
//!
//! - `GET /livez`: 200 while every loop turns (made a pass within
//!   [`LIVE_WITHIN`]); 503 naming the one that does not.
//! - `GET /readyz`: 200 while every worker's guest is up and the host is
//!   not draining; 503 with the reason (what a balancer's health check
//!   wants).
//! - `GET /status`: JSON: version, guest path and SHA-256, uptime, each
//!   worker's connections, guest state and last swap.
//! - `GET /metrics`: the counters in the OpenMetrics text format
//!   (`prometheus-client`), labelled by worker.
//! - `POST /swap` (body: a guest path, or empty for the current file): a
//!   hot swap of every worker, as SIGHUP does; JSON with each outcome.
//!
//! A program embedding the host serves it for its own servers: take
//! [`crate::Server::watched`] from each before `run`, then call [`serve`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tiny_http::{Header, Method, Request, Response};

use crate::guest::swap::{SwapOutcome, Swapper};
use crate::stats::{Histogram, Stats};
use crate::tyme::process_ms;

/// A loop that made no pass for this long is not live. Loops with an admin
/// endpoint make one at least every [`HEARTBEAT`].
pub const LIVE_WITHIN: Duration = Duration::from_secs(10);
/// The longest a watched loop sleeps.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long `POST /swap` waits for the loops' answers.
const SWAP_WAIT: Duration = Duration::from_secs(120);

/// One worker as the endpoint sees it.
#[derive(Clone)]
pub struct Watched {
    /// What its loop publishes.
    pub stats: Arc<Stats>,
    /// How `POST /swap` reaches it.
    pub swapper: Swapper,
}

/// Serve the endpoint at `addr` (port 0 picks a free one) for `workers`
/// (labelled 0, 1... in that order) on a thread of its own, which lives as
/// long as the process; returns where it listens. Errors: the address
/// cannot be bound.
pub fn serve(addr: SocketAddr, workers: Vec<Watched>) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot serve --admin on {addr}: {e}"))?;
    let bound = server.server_addr().to_ip().ok_or_else(|| anyhow!("--admin is not an IP address"))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(workers.clone())));
    std::thread::Builder::new().name("hio-admin".into()).spawn(move || {
        for mut request in server.incoming_requests() {
            if request.method() == &Method::Post && request.url() == "/swap" {
                // A swap takes as long as compiling the guest: health checks
                // must not wait behind it.
                let workers = workers.clone();
                std::thread::spawn(move || {
                    let response = swap(&mut request, &workers);
                    reply(request, response);
                });
                continue;
            }
            let response = answer(&mut request, &workers, &registry);
            reply(request, response);
        }
    })?;
    tracing::info!(admin = %bound, "admin endpoint: /livez /readyz /status /metrics, POST /swap");
    Ok(bound)
}

type Answer = Response<std::io::Cursor<Vec<u8>>>;

fn reply(request: Request, response: Answer) {
    if let Err(e) = request.respond(response) {
        tracing::debug!("admin endpoint: cannot answer: {e}");
    }
}

fn answer(request: &mut Request, workers: &[Watched], registry: &Registry) -> Answer {
    let path = request.url().split('?').next().unwrap_or_default().to_string();
    match (request.method(), path.as_str()) {
        (Method::Get, "/livez") => plain(verdict(workers, live)),
        (Method::Get, "/readyz") => plain(verdict(workers, ready)),
        (Method::Get, "/status") => json(200, &status(workers)),
        (Method::Get, "/metrics") => metrics(registry),
        (Method::Post, "/swap") => swap(request, workers),
        (_, "/livez" | "/readyz" | "/status" | "/metrics" | "/swap") => text(405, "method not allowed\n"),
        _ => text(404, "not found: /livez /readyz /status /metrics, POST /swap\n"),
    }
}

/// 200 "ok", or 503 with the first worker's reason.
fn verdict(workers: &[Watched], judge: fn(&Stats) -> Option<String>) -> Result<(), String> {
    for (n, w) in workers.iter().enumerate() {
        if let Some(why) = judge(&w.stats) {
            return Err(if workers.len() > 1 { format!("worker {n}: {why}") } else { why });
        }
    }
    Ok(())
}

fn live(s: &Stats) -> Option<String> {
    let since = process_ms().saturating_sub(s.last_pass_ms.get());
    (since > LIVE_WITHIN.as_millis() as u64).then(|| format!("the event loop made no pass for {since} ms"))
}

fn ready(s: &Stats) -> Option<String> {
    if s.draining.get() == 1 {
        return Some("draining".into());
    }
    (s.guest_up.get() == 0).then(|| "the guest is down (restarting after a failure)".into())
}

fn plain(verdict: Result<(), String>) -> Answer {
    match verdict {
        Ok(()) => text(200, "ok\n"),
        Err(why) => text(503, &format!("{why}\n")),
    }
}

fn text(code: u16, body: &str) -> Answer {
    respond(code, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn json(code: u16, value: &serde_json::Value) -> Answer {
    respond(code, "application/json", format!("{value}\n").into_bytes())
}

fn respond(code: u16, content_type: &str, body: Vec<u8>) -> Answer {
    let header = Header::from_bytes("Content-Type", content_type).expect("a valid header");
    Response::from_data(body).with_status_code(code).with_header(header)
}

fn status(workers: &[Watched]) -> serde_json::Value {
    let guest = workers.first().map(|w| w.swapper.current()).unwrap_or_default();
    let sha256 = std::fs::read(&guest).map(|b| hex(&Sha256::digest(b))).unwrap_or_default();
    let each: Vec<serde_json::Value> = workers
        .iter()
        .map(|w| {
            let s = &w.stats;
            let last_swap = s.last_swap.lock().map(|l| l.clone()).unwrap_or_default();
            serde_json::json!({
                "connections": s.connections.get(),
                "buffered_bytes": s.buffered.get(),
                "guest_up": s.guest_up.get() == 1,
                "guest_starts": s.guest_starts.get(),
                "guest_failures": s.guest_failures.get(),
                "swaps_ok": s.swaps_ok.get(),
                "swaps_failed": s.swaps_failed.get(),
                "last_swap": last_swap,
                "draining": s.draining.get() == 1,
            })
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "guest": guest.display().to_string(),
        "guest_sha256": sha256,
        "uptime_s": process_ms() as f64 / 1e3,
        "connections": workers.iter().map(|w| w.stats.connections.get()).sum::<u64>(),
        "ready": verdict(workers, ready).is_ok(),
        "workers": each,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn metrics(registry: &Registry) -> Answer {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => respond(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", body.into_bytes()),
        Err(e) => text(500, &format!("cannot encode the metrics: {e}\n")),
    }
}

fn swap(request: &mut Request, workers: &[Watched]) -> Answer {
    use std::io::Read;
    let mut body = String::new();
    // A path is a few hundred bytes; more is not a request for this.
    if let Err(e) = request.as_reader().take(4096).read_to_string(&mut body) {
        return text(400, &format!("the body must be a guest's path in UTF-8 (or empty): {e}\n"));
    }
    let path = Some(body.trim()).filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let asked: Vec<_> = workers.iter().map(|w| w.swapper.swap(path.clone())).collect();
    let outcomes: Vec<SwapOutcome> =
        asked.into_iter().map(|rx| rx.recv_timeout(SWAP_WAIT).unwrap_or_else(|_| Err("no answer".into()))).collect();
    let ok = outcomes.iter().all(Result::is_ok);
    let each: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| match o {
            Ok(r) => serde_json::json!({
                "ok": true,
                "guest": r.guest.display().to_string(),
                "pause_us": r.pause.as_micros() as u64,
                "connections": r.connections,
            }),
            Err(e) => serde_json::json!({ "ok": false, "error": e }),
        })
        .collect();
    json(if ok { 200 } else { 422 }, &serde_json::json!({ "ok": ok, "workers": each }))
}

/// The workers' counters, read at each scrape.
#[derive(Debug)]
struct Metrics(Vec<Watched>);

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").finish_non_exhaustive()
    }
}

/// A histogram per worker: name, help, where it is.
type HistogramSeries = (&'static str, &'static str, fn(&Stats) -> &Histogram);

/// A counter (`counter` true) or gauge per worker: name, help, the name of
/// its extra label (or ""), and each value with that label's value.
type Series<'a> = (&'a str, &'a str, bool, &'a str, &'a [(&'a str, fn(&Stats) -> u64)]);

const SERIES: &[Series] = &[
    ("hio_connections", "Connections held now", false, "", &[("", |s| s.connections.get())]),
    (
        "hio_buffered_bytes",
        "Bytes held now across connections (received, queued)",
        false,
        "",
        &[("", |s| s.buffered.get())],
    ),
    (
        "hio_buffered_bytes_limit",
        "The bound on hio_buffered_bytes (--max-buffered, this worker's share)",
        false,
        "",
        &[("", |s| s.buffered_limit.get())],
    ),
    ("hio_connections_accepted", "Connections accepted", true, "", &[("", |s| s.accepted.get())]),
    (
        "hio_connections_refused",
        "New connections refused, by reason",
        true,
        "reason",
        &[("cap", |s| s.refused_cap.get()), ("descriptors", |s| s.refused_descriptors.get())],
    ),
    (
        "hio_connections_closed",
        "Connections ended, by reason: clean (everything delivered, then FIN), proxy_header (closed before the \
         guest met it); every other reason is a reset",
        true,
        "reason",
        &[
            ("clean", |s| s.closed.get()),
            ("proxy_header", |s| s.proxy_refused.get()),
            ("send_timeout", |s| s.send_timeouts.get()),
            ("linger", |s| s.linger_resets.get()),
            ("poison", |s| s.poison_resets.get()),
            ("drain_timeout", |s| s.drain_resets.get()),
            ("shutdown", |s| s.shutdown_resets.get()),
        ],
    ),
    ("hio_bytes_received", "Bytes read from peers", true, "", &[("", |s| s.bytes_received.get())]),
    ("hio_bytes_sent", "Bytes written to peers from the queues", true, "", &[("", |s| s.bytes_sent.get())]),
    ("hio_bytes_dropped", "Bytes dropped with resets", true, "", &[("", |s| s.bytes_dropped.get())]),
    ("hio_guest_up", "1 while the guest is up", false, "", &[("", |s| s.guest_up.get())]),
    ("hio_guest_starts", "Guest instances started", true, "", &[("", |s| s.guest_starts.get())]),
    (
        "hio_guest_restarts",
        "Guest instances started again after a failure",
        true,
        "",
        &[("", |s| s.guest_restarts.get())],
    ),
    ("hio_guest_failures", "Guest calls that failed", true, "", &[("", |s| s.guest_failures.get())]),
    (
        "hio_swaps",
        "Hot swaps, by outcome",
        true,
        "outcome",
        &[("ok", |s| s.swaps_ok.get()), ("failed", |s| s.swaps_failed.get())],
    ),
    (
        "hio_guest_log_dropped",
        "Guest log lines dropped over the rate limit",
        true,
        "",
        &[("", |s| s.guest_log_dropped.get())],
    ),
    (
        "hio_guest_traps",
        "Guest traps, by cause",
        true,
        "cause",
        &[
            ("deadline", |s| s.traps_deadline.get()),
            ("fuel", |s| s.traps_fuel.get()),
            ("memory", |s| s.traps_memory.get()),
            ("panic", |s| s.traps_panic.get()),
            ("forged_handle", |s| s.traps_forged_handle.get()),
            ("other", |s| s.traps_other.get()),
        ],
    ),
    ("hio_tls_handshakes", "TLS handshakes completed", true, "", &[("", |s| s.tls_handshakes.get())]),
    (
        "hio_tls_handshakes_failed",
        "TLS handshakes failed, by reason",
        true,
        "reason",
        &[
            ("timeout", |s| s.tls_failed_timeout.get()),
            ("peer_closed", |s| s.tls_failed_peer_closed.get()),
            ("certificate", |s| s.tls_failed_certificate.get()),
            ("protocol", |s| s.tls_failed_protocol.get()),
        ],
    ),
    ("hio_draining", "1 once draining", false, "", &[("", |s| s.draining.get())]),
];

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for &(name, help, counter, key, values) in SERIES {
            let kind =
                if counter { ConstCounter::new(0u64).metric_type() } else { ConstGauge::new(0i64).metric_type() };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (n, w) in self.0.iter().enumerate() {
                for &(reason, value) in values {
                    let mut labels = vec![("worker", n.to_string())];
                    if !key.is_empty() {
                        labels.push((key, reason.to_string()));
                    }
                    let metric = family.encode_family(&labels)?;
                    let v = value(&w.stats);
                    if counter {
                        ConstCounter::new(v).encode(metric)?;
                    } else {
                        ConstGauge::new(v as i64).encode(metric)?;
                    }
                }
            }
        }
        let histograms: [HistogramSeries; 3] = [
            ("hio_swap_pause_seconds", "Hot swaps' pauses of the event loop", |s| &s.swap_pause),
            ("hio_guest_call_seconds", "Guest service calls' durations", |s| &s.guest_call),
            ("hio_tls_handshake_seconds", "TLS handshakes' durations, from accept to connected", |s| &s.tls_handshake),
        ];
        for (name, help, histogram) in histograms {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (n, w) in self.0.iter().enumerate() {
                histogram(&w.stats).encode(family.encode_family(&vec![("worker", n.to_string())])?)?;
            }
        }
        Ok(())
    }
}
