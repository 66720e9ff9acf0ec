//! The admin endpoint (`--admin HOST:PORT`, off by default): HTTP/1.1
//! (`hyper`) on a thread of its own with a small async runtime, reading only
//! what the event loops publish ([`Stats`]: relaxed atomics), so a slow or
//! hostile client never holds a loop, and a loop never waits for it. Each
//! connection is a task, not a thread: one that never reads its answers or
//! sends its request a byte at a time holds only itself, for at most
//! [`CONNECTION_LIFETIME`]; at most [`MAX_CONNECTIONS`] are served at once
//! (more are closed at accept), requests' heads are bounded
//! ([`MAX_HEAD`]), and running out of descriptors only pauses accepting.
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
//!   hot swap of every worker, as SIGHUP does; JSON with each outcome. One
//!   at a time: another while one is under way is a 409.
//!
//! A program embedding the host serves it for its own servers: take
//! [`crate::Server::watched`] from each before `run`, then call [`serve`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};

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
/// Connections served at once; more are closed as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest one connection is kept, whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The time a request's head may take to arrive.
const HEAD_WITHIN: Duration = Duration::from_secs(5);
/// The largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 16 << 10;
/// The largest `POST /swap` body (a path), in bytes.
const MAX_SWAP_BODY: usize = 4096;

/// One worker as the endpoint sees it.
#[derive(Clone)]
pub struct Watched {
    /// What its loop publishes.
    pub stats: Arc<Stats>,
    /// How `POST /swap` reaches it.
    pub swapper: Swapper,
}

/// What the endpoint serves from: the workers, their metrics, and the one
/// swap that may be under way.
struct Admin {
    workers: Vec<Watched>,
    registry: Registry,
    swapping: tokio::sync::Mutex<()>,
}

/// Serve the endpoint at `addr` (port 0 picks a free one) for `workers`
/// (labelled 0, 1... in that order) on a thread of its own, which lives as
/// long as the process; returns where it listens. Errors: the address
/// cannot be bound.
pub fn serve(addr: SocketAddr, workers: Vec<Watched>) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot serve --admin on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(workers.clone())));
    let admin = Arc::new(Admin { workers, registry, swapping: tokio::sync::Mutex::new(()) });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("hio-admin".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, admin).await,
                Err(e) => tracing::error!("admin endpoint: cannot listen: {e}"),
            }
        })
    })?;
    tracing::info!(admin = %bound, "admin endpoint: /livez /readyz /status /metrics, POST /swap");
    Ok(bound)
}

async fn accept_loop(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: the connection waits in
                // the backlog; look again shortly rather than give up.
                tracing::debug!("admin endpoint: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(request, &admin).await.into_response()) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_WITHIN)
                .max_buf_size(MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                tracing::debug!("admin endpoint: connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// An answer: status, content type, body.
struct Reply(u16, &'static str, Vec<u8>);

impl Reply {
    fn into_response(self) -> Response<Full<Bytes>> {
        let Reply(code, content_type, body) = self;
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    }
}

async fn answer(request: Request<Incoming>, admin: &Arc<Admin>) -> Reply {
    let workers = &admin.workers;
    match (request.method().clone(), request.uri().path()) {
        (Method::GET, "/livez") => plain(verdict(workers, live)),
        (Method::GET, "/readyz") => plain(verdict(workers, ready)),
        (Method::GET, "/status") => {
            let workers = workers.clone();
            // Hashing the guest's file reads it: off the endpoint's thread.
            match tokio::task::spawn_blocking(move || status(&workers)).await {
                Ok(value) => json(200, &value),
                Err(e) => text(500, &format!("cannot make the status: {e}\n")),
            }
        }
        (Method::GET, "/metrics") => metrics(&admin.registry),
        (Method::POST, "/swap") => swap(request, admin.clone()).await,
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

fn plain(verdict: Result<(), String>) -> Reply {
    match verdict {
        Ok(()) => text(200, "ok\n"),
        Err(why) => text(503, &format!("{why}\n")),
    }
}

fn text(code: u16, body: &str) -> Reply {
    Reply(code, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn json(code: u16, value: &serde_json::Value) -> Reply {
    Reply(code, "application/json", format!("{value}\n").into_bytes())
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

fn metrics(registry: &Registry) -> Reply {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => Reply(200, "application/openmetrics-text; version=1.0.0; charset=utf-8", body.into_bytes()),
        Err(e) => text(500, &format!("cannot encode the metrics: {e}\n")),
    }
}

/// `POST /swap`: the body is a path (UTF-8, at most [`MAX_SWAP_BODY`]
/// bytes) or empty; one swap at a time.
async fn swap(request: Request<Incoming>, admin: Arc<Admin>) -> Reply {
    let body = match Limited::new(request.into_body(), MAX_SWAP_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return text(413, &format!("the body must be a guest's path of at most {MAX_SWAP_BODY} bytes: {e}\n"));
        }
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return text(400, "the body must be a guest's path in UTF-8 (or empty)\n");
    };
    let Ok(_one) = admin.swapping.try_lock() else {
        return text(409, "a swap is under way; ask again once it is done\n");
    };
    let path = Some(body.trim()).filter(|p| !p.is_empty()).map(std::path::PathBuf::from);
    let workers = admin.workers.clone();
    match tokio::task::spawn_blocking(move || swap_all(path, &workers)).await {
        Ok(reply) => reply,
        Err(e) => text(500, &format!("the swap failed: {e}\n")),
    }
}

fn swap_all(path: Option<std::path::PathBuf>, workers: &[Watched]) -> Reply {
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
        "Connections ended, by reason: clean (not reset by the host: the guest's close once everything was sent, \
         or the peer's own end or reset), proxy_header (closed before the guest met it); every other reason is a \
         reset by the host",
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
    ("hio_bytes_sent", "Bytes written to peers (plaintext)", true, "", &[("", |s| s.bytes_sent.get())]),
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
        let histograms: [HistogramSeries; 4] = [
            ("hio_swap_pause_seconds", "Hot swaps' pauses of the event loop", |s| &s.swap_pause),
            (
                "hio_handover_pass_seconds",
                "Per hand-over of connections to a starting guest, its longest pass of the event loop",
                |s| &s.handover_pass,
            ),
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
