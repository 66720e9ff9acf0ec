//! The glue behind `export_service!`: one Server and one Service per guest
//! instance, driven by the host's `start`, `service`, `adopt` and `save`
//! calls.

use std::cell::RefCell;

use crate::bindings::exports::hio::tcp::batch::{Answers, Cycle as BatchCycle};
use crate::bindings::exports::hio::tcp::guest::{Config, Cycle, Snapshot};
use crate::bindings::hio::tcp::acceptor::Listener;
use crate::bindings::hio::tcp::remoter::Connection;
use crate::{Server, Service, answers, log, snapshot};

/// What the exported functions call, whatever the Service's type.
trait Instance {
    fn service(&mut self, cycle: Cycle) -> Option<f64>;
    fn service_batch(&mut self, cycle: BatchCycle) -> Answers;
    fn adopt(&mut self, connections: Vec<Connection>, complete: bool);
    fn save(&self) -> snapshot::State;
}

struct App<S: Service> {
    server: Server<S::Conn>,
    service: S,
}

thread_local! {
    static APP: RefCell<Option<Box<dyn Instance>>> = const { RefCell::new(None) };
}

pub fn start<S: Service>(
    config: Config,
    listener: Listener,
    connections: Vec<Connection>,
    predecessor: Option<Snapshot>,
) -> Result<(), String> {
    // A panic aborts the instance; say why in the host's log first.
    std::panic::set_hook(Box::new(|info| log::error(&format!("guest panicked: {info}"))));
    let mut server = Server::new(config.tymeout, config.bs, listener, crate::bindings::hio::tcp::host::tyme());
    let mut state = predecessor.and_then(decode).unwrap_or_default();
    // The policy reads its part of each connection's state once it is built.
    let conns: Vec<(u64, Vec<u8>)> = state.ixes.iter_mut().filter_map(|ix| Some((ix.id, ix.conn.take()?))).collect();
    let (saved, handed) = (state.ixes.len(), connections.len());
    server.expect(std::mem::take(&mut state.ixes));
    server.adopt(connections, false);
    let mut service = S::new(&mut server);
    restore(&mut service, &mut server, state, conns);
    if saved > 0 || handed > 0 {
        log::info(&format!("taking over {saved} saved connections, {handed} handed at start"));
    }
    APP.with_borrow_mut(|app| *app = Some(Box::new(App { server, service })));
    Ok(())
}

/// A predecessor's state, if this SDK can read it.
fn decode(snapshot: Snapshot) -> Option<snapshot::State> {
    if !snapshot::READS.contains(&snapshot.format.as_str()) {
        log::warn(&format!("predecessor's state format '{}' is unknown: starting fresh", snapshot.format));
        return None;
    }
    let state = snapshot::State::decode(&snapshot.state);
    if state.is_none() {
        log::warn(&format!("predecessor's {} state is damaged: starting fresh", snapshot.format));
    }
    state
}

/// The policy takes over its predecessor's state, then each connection's
/// (`conns`: id and saved bytes), handed over yet or not.
fn restore<S: Service>(
    service: &mut S,
    server: &mut Server<S::Conn>,
    state: snapshot::State,
    conns: Vec<(u64, Vec<u8>)>,
) {
    if state.kind.is_empty() {
        return;
    }
    if !service.restore(&state.kind, &state.service) {
        log::warn(&format!("predecessor's policy state '{}' is not understood here: policy starts fresh", state.kind));
        return;
    }
    for (id, saved) in conns {
        let restored = service.restore_conn(&saved);
        let Some(conn) = server.conn_state(id) else { continue };
        match restored {
            Some(restored) => *conn = restored,
            None => log::warn(&format!("connection {id}: predecessor's state for it is not understood: starts fresh")),
        }
    }
}

impl<S: Service> App<S> {
    /// The policy's part of a cycle, once its news are in; returns the
    /// tyme of the next cycle wanted.
    fn recur(&mut self, began_draining: bool) -> Option<f64> {
        let App { server, service } = self;
        service.recur(server);
        if began_draining {
            service.draining(server);
        }
        for (ca, conn) in server.take_removed() {
            service.removed(&ca, conn);
        }
        server.next_wake()
    }
}

impl<S: Service> Instance for App<S> {
    fn service(&mut self, cycle: Cycle) -> Option<f64> {
        let began_draining = self.server.begin_cycle(cycle.tyme, cycle.accepts, cycle.ready);
        self.recur(began_draining)
    }

    fn service_batch(&mut self, cycle: BatchCycle) -> Answers {
        // The cycle's buffer goes as soon as its bytes are in rxbs.
        let began_draining = self.server.begin_batch(cycle);
        let wake = self.recur(began_draining);
        self.server.end_batch();
        let (answers, bytes) = answers::finish();
        Answers { wake, answers, bytes }
    }

    fn adopt(&mut self, connections: Vec<Connection>, complete: bool) {
        self.server.adopt(connections, complete);
    }

    fn save(&self) -> snapshot::State {
        let App { server, service } = self;
        let kind = service.kind();
        let ixes = server.save_ixes(|conn| (!kind.is_empty()).then(|| service.save_conn(conn)));
        let policy = if kind.is_empty() { Vec::new() } else { service.save() };
        snapshot::State { ixes, kind: kind.to_string(), service: policy }
    }
}

pub fn service(cycle: Cycle) -> Option<f64> {
    APP.with_borrow_mut(|app| app.as_mut()?.service(cycle))
}

pub fn service_batch(cycle: BatchCycle) -> Answers {
    let answers = APP.with_borrow_mut(|app| app.as_mut().map(|app| app.service_batch(cycle)));
    answers.unwrap_or(Answers { wake: None, answers: Vec::new(), bytes: Vec::new() })
}

pub fn adopt(connections: Vec<Connection>, complete: bool) {
    APP.with_borrow_mut(|app| app.as_mut().map(|app| app.adopt(connections, complete)));
}

pub fn save() -> Snapshot {
    let state = APP.with_borrow(|app| app.as_ref().map(|app| app.save()).unwrap_or_default());
    Snapshot { format: snapshot::FORMAT.to_string(), state: state.encode() }
}
