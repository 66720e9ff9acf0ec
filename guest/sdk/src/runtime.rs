//! The glue behind `export_service!`: one Server and one Service per guest
//! instance, driven by the host's `start`, `service` and `save` calls.

use std::cell::RefCell;

use crate::bindings::exports::hio::tcp::guest::{Config, Cycle, Snapshot};
use crate::bindings::hio::tcp::acceptor::Listener;
use crate::bindings::hio::tcp::remoter::Connection;
use crate::{Server, Service, log, snapshot};

struct App {
    server: Server,
    service: Box<dyn Service>,
}

thread_local! {
    static APP: RefCell<Option<App>> = const { RefCell::new(None) };
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
    let adopted = connections.len();
    for conn in connections {
        server.adopt(conn);
    }
    let state = match predecessor {
        None => None,
        Some(s) if s.format == snapshot::FORMAT => {
            let state = snapshot::State::decode(&s.state);
            if state.is_none() {
                log::warn("predecessor's hio-guest/1 state is damaged: starting fresh");
            }
            state
        }
        Some(s) => {
            log::warn(&format!("predecessor's state format '{}' is unknown: starting fresh", s.format));
            None
        }
    };
    if let Some(state) = &state {
        server.restore_ixes(&state.ixes);
    }
    let mut service = S::new(&mut server);
    if let Some(state) = state
        && !state.kind.is_empty()
        && !service.restore(&state.kind, &state.service)
    {
        log::warn(&format!("predecessor's policy state '{}' is not understood here: policy starts fresh", state.kind));
    }
    if adopted > 0 {
        log::info(&format!("took over {adopted} connections"));
    }
    APP.with_borrow_mut(|app| *app = Some(App { server, service: Box::new(service) }));
    Ok(())
}

pub fn service(cycle: Cycle) -> Option<f64> {
    APP.with_borrow_mut(|app| {
        let App { server, service } = app.as_mut()?;
        server.begin_cycle(cycle.tyme, cycle.accepts, cycle.ready);
        service.recur(server);
        for ca in server.take_removed() {
            service.removed(&ca);
        }
        server.next_wake()
    })
}

pub fn save() -> Snapshot {
    let state = APP.with_borrow(|app| match app {
        Some(App { server, service }) => {
            snapshot::State { ixes: server.save_ixes(), kind: service.kind().to_string(), service: service.save() }
        }
        None => snapshot::State::default(),
    });
    Snapshot { format: snapshot::FORMAT.to_string(), state: state.encode() }
}
