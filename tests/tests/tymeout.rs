//! Idle tymeouts enforced by the guest, driven by virtual tyme.

use std::time::Duration;

use hio_tests::{TestServer, VirtualTyme};

const SHORT: Duration = Duration::from_millis(300);

fn virtual_server(tymeout: f64) -> (TestServer, VirtualTyme) {
    let tyme = VirtualTyme::new(0.0);
    let t = tyme.clone();
    let server = TestServer::start_with("echo", move |c| {
        c.tymeout = tymeout;
        c.virtual_tyme = Some(t);
        c.tock = 0.01;
    });
    (server, tyme)
}

#[test]
fn idle_connection_is_closed_after_tymeout_and_activity_refreshes_it() {
    let (server, tyme) = virtual_server(5.0);
    let mut idle = server.connect();
    let mut busy = server.connect();
    idle.echo(b"hello");
    busy.echo(b"hello");
    tyme.tick(4.0);
    assert!(!idle.closed_by_server(SHORT), "closed before its tymeout");
    busy.echo(b"still here"); // refreshes busy at tyme 4: its stop is now 9
    tyme.tick(2.0); // tyme 6: idle is past 5
    assert!(idle.closed_by_server(Duration::from_secs(5)), "idle connection not closed after tymeout");
    assert!(!busy.closed_by_server(SHORT), "refreshed connection closed early");
    busy.echo(b"refreshed again"); // stop 11
    tyme.tick(4.5); // 10.5
    assert!(!busy.closed_by_server(SHORT));
    tyme.tick(1.0); // 11.5
    assert!(busy.closed_by_server(Duration::from_secs(5)), "busy connection not closed once idle");
}

#[test]
fn tymeout_zero_never_closes() {
    let (server, tyme) = virtual_server(0.0);
    let mut c = server.connect();
    c.echo(b"hello");
    tyme.tick(1e6);
    assert!(!c.closed_by_server(SHORT));
    c.echo(b"still open after a million idle seconds");
}
