//! A guest built against `hio:tcp@0.2.0` (its WIT frozen in `wit/`, as
//! published), the release before `host.draining`: a plain echo on the raw
//! bindings. A host of any later 0.2.x must run it unchanged (semver: a
//! patch release only adds).

use std::cell::RefCell;
use std::collections::HashMap;

wit_bindgen::generate!({ path: "wit", world: "server" });

use exports::hio::tcp::guest::{Config, Cycle, Guest, Snapshot};
use hio::tcp::acceptor::Listener;
use hio::tcp::remoter::{Connection, Remoter};

#[derive(Default)]
struct Legacy {
    listener: Option<Listener>,
    conns: HashMap<u64, Remoter>,
}

thread_local! {
    static LEGACY: RefCell<Legacy> = RefCell::default();
}

impl Legacy {
    fn take(&mut self, conn: Connection) {
        self.conns.insert(conn.id, conn.remoter);
        self.echo(conn.id, &conn.data, conn.cutoff);
    }

    /// Echo what came; close once the peer is done.
    fn echo(&mut self, id: u64, data: &[u8], cutoff: bool) {
        let Some(conn) = self.conns.get(&id) else { return };
        if !data.is_empty() && conn.tx_consume(data, data.len() as u64).is_err() {
            // Refused (full): the bytes stay in the host, named again later.
            return;
        }
        if cutoff && let Some(conn) = self.conns.remove(&id) {
            let _ = conn.close();
        }
    }
}

struct Export;

impl Guest for Export {
    fn start(_: Config, listener: Listener, connections: Vec<Connection>, _: Option<Snapshot>) -> Result<(), String> {
        LEGACY.with_borrow_mut(|g| {
            for c in connections {
                g.take(c);
            }
            g.listener = Some(listener);
        });
        Ok(())
    }

    fn service(cycle: Cycle) -> Option<f64> {
        LEGACY.with_borrow_mut(|g| {
            if cycle.accepts
                && let Some(listener) = &g.listener
                && let Ok(all) = listener.accept_all()
            {
                for c in all {
                    g.take(c);
                }
            }
            for a in cycle.ready {
                g.echo(a.id, &a.data, a.cutoff);
            }
        });
        None
    }

    fn save() -> Snapshot {
        Snapshot { format: String::new(), state: Vec::new() }
    }
}

export!(Export);
