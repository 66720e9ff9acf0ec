//! A test guest written against the raw WIT (no SDK Server), as a policy
//! author in another language would, that hands the host odd values and
//! echoes everything else:
//!
//! - "wake VALUE\n" (inf, -inf, nan, 1e300, -1, now): from then on every
//!   `service` asks to be woken at VALUE ("now": the cycle's own tyme);
//! - "calls\n": answers how many times `service` has been called;
//! - "logflood N\n": calls `host.log` N times with 1 KiB lines, one of them
//!   trying to forge a host log line;
//! - "hold\n": never closes this connection, not even once its peer is done;
//! - any bytes containing "VENOM", wherever they reach it (a cycle's
//!   arrivals, a connection handed by `accept-all` or `start`, or pulled
//!   with `receive` during `start`): it panics;
//! - in a batch cycle (WIT 0.2.2 `batch`), "overroom\n", "outofrange\n" and
//!   "stranger\n": its result answers that connection with one byte more than
//!   its room, with bytes past the end of the result, or answers a
//!   connection it never held; "zeros N\n": N empty answers (each valid),
//!   then "zeros-ok\n"; "ones N\n": N answers of one "z" each, then
//!   "ones-ok\n". Everything else in a batch cycle is served
//!   as in a `guest.service` cycle, by host calls.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use hio_guest::bindings::exports::hio::tcp::batch::{Answer, Answers, Cycle as BatchCycle, Guest as BatchGuest};
use hio_guest::bindings::exports::hio::tcp::guest::{Arrival, Config, Cycle, Guest, Snapshot};
use hio_guest::bindings::exports::hio::tcp::handover::Guest as HandoverGuest;
use hio_guest::bindings::hio::tcp::acceptor::Listener;
use hio_guest::bindings::hio::tcp::host::{self, Level};
use hio_guest::bindings::hio::tcp::remoter::{Connection, Remoter};

#[derive(Default)]
struct Rogue {
    listener: Option<Listener>,
    conns: HashMap<u64, Remoter>,
    wake: Option<String>,
    calls: u64,
    held: HashSet<u64>,
}

thread_local! {
    static ROGUE: RefCell<Rogue> = RefCell::default();
}

fn check(data: &[u8]) {
    if data.windows(5).any(|w| w == b"VENOM") {
        panic!("venom");
    }
}

impl Rogue {
    fn take(&mut self, conn: Connection, pull: bool) {
        check(&conn.data);
        let mut data = conn.data;
        if pull && let Ok(more) = conn.remoter.receive(u32::MAX) {
            check(&more.data);
            data.extend_from_slice(&more.data);
        }
        self.conns.insert(conn.id, conn.remoter);
        self.serve(conn.id, data, conn.cutoff);
    }

    fn serve(&mut self, id: u64, data: Vec<u8>, cutoff: bool) {
        check(&data);
        let Some(conn) = self.conns.get(&id) else { return };
        let text = String::from_utf8_lossy(&data).into_owned();
        let answer = if let Some(value) = text.strip_prefix("wake ") {
            self.wake = Some(value.trim().to_string());
            "ok\n".to_string()
        } else if text == "hold\n" {
            self.held.insert(id);
            "held\n".to_string()
        } else if text == "calls\n" {
            format!("{}\n", self.calls)
        } else if let Some(n) = text.strip_prefix("logflood ") {
            let line = "x".repeat(1024);
            for _ in 0..n.trim().parse::<u32>().unwrap_or(0) {
                host::log(Level::Info, &line);
            }
            host::log(Level::Error, "flood\nERROR hio_host: forged line");
            "flooded\n".to_string()
        } else {
            text
        };
        if !data.is_empty() && conn.tx_consume(answer.as_bytes(), data.len() as u64).is_err() {
            self.conns.remove(&id);
            return;
        }
        if cutoff
            && !self.held.contains(&id)
            && let Some(conn) = self.conns.remove(&id)
        {
            let _ = conn.close();
        }
    }

    fn wake(&self, tyme: f64) -> Option<f64> {
        match self.wake.as_deref()? {
            "now" => Some(tyme),
            value => value.parse().ok(),
        }
    }
}

struct Export;

impl Guest for Export {
    fn start(_: Config, listener: Listener, connections: Vec<Connection>, _: Option<Snapshot>) -> Result<(), String> {
        ROGUE.with_borrow_mut(|r| {
            r.listener = Some(listener);
            for conn in connections {
                r.take(conn, true);
            }
        });
        Ok(())
    }

    fn service(cycle: Cycle) -> Option<f64> {
        ROGUE.with_borrow_mut(|r| {
            r.calls += 1;
            if cycle.accepts {
                let accepted = r.listener.as_ref().and_then(|l| l.accept_all().ok()).unwrap_or_default();
                for conn in accepted {
                    r.take(conn, false);
                }
            }
            for arrival in cycle.ready {
                r.serve(arrival.id, arrival.data, arrival.cutoff);
            }
            r.wake(cycle.tyme)
        })
    }

    fn save() -> Snapshot {
        Snapshot { format: String::new(), state: Vec::new() }
    }
}

impl BatchGuest for Export {
    fn service(cycle: BatchCycle) -> Answers {
        let mut out = Answers { wake: None, answers: Vec::new(), bytes: Vec::new() };
        let mut ready = Vec::new();
        let mut at = 0;
        for news in cycle.news {
            let data = cycle.bytes[at..at + news.len as usize].to_vec();
            at += news.len as usize;
            let (start, consume) = (out.bytes.len() as u32, data.len() as u64);
            let many = |prefix: &[u8]| {
                data.strip_prefix(prefix).and_then(|n| String::from_utf8_lossy(n).trim().parse::<usize>().ok())
            };
            if let Some((n, len, ok)) = many(b"zeros ")
                .map(|n| (n, 0, &b"zeros-ok\n"[..]))
                .or(many(b"ones ").map(|n| (n, 1, &b"ones-ok\n"[..])))
            {
                let z = out.bytes.len() as u32;
                out.bytes.push(b'z');
                out.answers.reserve(n + 1);
                out.answers.extend((0..n).map(|_| Answer { id: news.id, start: z, len, consume: 0 }));
                let start = out.bytes.len() as u32;
                out.bytes.extend_from_slice(ok);
                out.answers.push(Answer { id: news.id, start, len: ok.len() as u32, consume: data.len() as u64 });
                continue;
            }
            let answer = match data.as_slice() {
                b"overroom\n" => Answer { id: news.id, start, len: news.room + 1, consume },
                b"outofrange\n" => Answer { id: news.id, start, len: u32::MAX, consume },
                b"stranger\n" => Answer { id: news.id + 1_000_000, start, len: 1, consume },
                _ => {
                    ready.push(Arrival { id: news.id, data, cutoff: news.cutoff });
                    continue;
                }
            };
            out.bytes.resize(out.bytes.len() + news.room as usize + 1, b'x');
            out.answers.push(answer);
        }
        out.wake = <Export as Guest>::service(Cycle { tyme: cycle.tyme, accepts: cycle.accepts, ready });
        out
    }
}

impl HandoverGuest for Export {
    fn adopt(connections: Vec<Connection>, _: bool) {
        ROGUE.with_borrow_mut(|r| connections.into_iter().for_each(|conn| r.take(conn, true)));
    }
}

hio_guest::bindings::export_bindings!(Export with_types_in hio_guest::bindings);
