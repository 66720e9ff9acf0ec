//! The glue behind `export_service!`: one Server and one Service per guest
//! instance, driven by the host's `start` and `service` calls.

use std::cell::RefCell;

use crate::bindings::exports::hio::tcp::guest::{Config, Cycle};
use crate::bindings::hio::tcp::acceptor::Listener;
use crate::bindings::hio::tcp::remoter::Remoter as Handle;
use crate::{Server, Service, log};

struct App {
    server: Server,
    service: Box<dyn Service>,
}

thread_local! {
    static APP: RefCell<Option<App>> = const { RefCell::new(None) };
}

pub fn start<S: Service>(config: Config, listener: Listener, connections: Vec<Handle>) -> Result<(), String> {
    // A panic aborts the instance; say why in the host's log first.
    std::panic::set_hook(Box::new(|info| log::error(&format!("guest panicked: {info}"))));
    let mut server = Server::new(config.tymeout, config.bs, listener, crate::bindings::hio::tcp::host::tyme());
    let adopted = connections.len();
    for handle in connections {
        server.adopt(handle);
    }
    if adopted > 0 {
        log::info(&format!("took over {adopted} connections"));
    }
    let service = S::new(&mut server);
    APP.with_borrow_mut(|app| *app = Some(App { server, service: Box::new(service) }));
    Ok(())
}

pub fn service(cycle: Cycle) -> Option<f64> {
    APP.with_borrow_mut(|app| {
        let App { server, service } = app.as_mut()?;
        server.begin_cycle(cycle.tyme, cycle.ready);
        service.recur(server);
        for ca in server.take_removed() {
            service.removed(&ca);
        }
        server.next_wake()
    })
}
