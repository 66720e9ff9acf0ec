//! Guests other than echo: per-connection state, and a misbehaving guest.

use std::time::Duration;

use hio_tests::{Client, Config, Ending, TestServer, VirtualTyme};

#[test]
fn lines_guest_keeps_per_connection_state_and_partial_lines() {
    let server = TestServer::start("lines");
    let mut a = server.connect();
    let mut b = server.connect();
    a.send(b"hello\nwor");
    assert_eq!(a.recv_line(), "1 HELLO\n");
    b.send(b"first\r\n");
    assert_eq!(b.recv_line(), "1 FIRST\n");
    // The partial "wor" waited (in the host) for the rest of its line.
    a.send(b"ld\nagain\n");
    assert_eq!(a.recv_line(), "2 WORLD\n");
    assert_eq!(a.recv_line(), "3 AGAIN\n");
    b.send(b"second\nquit\nignored\n");
    assert_eq!(b.recv_line(), "2 SECOND\n");
    assert_eq!(b.recv_line(), "bye\n");
    assert_eq!(b.recv_to_end(), b"", "quit closes after bye");
    a.send(b"more\n");
    assert_eq!(a.recv_line(), "4 MORE\n");
}

#[test]
fn closed_handles_answer_a_typed_error_and_others_keep_being_served() {
    let server = TestServer::start("zombie");
    let mut bystander = server.connect();
    bystander.echo(b"before");
    let mut z = server.connect();
    z.send(b"zombie\n");
    assert_eq!(z.recv_to_end(), b"", "the zombie connection is closed");
    bystander.echo(b"during");
    let mut reporter = server.connect();
    reporter.send(b"report\n");
    assert_eq!(
        reporter.recv_line(),
        "err connection closed; err connection closed; err connection closed; err connection closed; err connection closed\n"
    );
    bystander.echo(b"after");
}

#[test]
fn unknown_ca_is_hios_invalid_connection_address() {
    let server = TestServer::start("zombie");
    let mut c = server.connect();
    c.send(b"ghost\n");
    assert_eq!(c.recv_line(), "Invalid connection address '203.0.113.9:9'\n");
}

#[test]
fn a_guest_that_panics_is_restarted_and_the_poison_connection_closed() {
    let server = TestServer::start("crashy");
    let mut a = server.connect();
    let mut b = server.connect();
    a.echo(b"a before");
    b.echo(b"b before");
    let mut poison = server.connect();
    poison.echo(b"harmless first");
    // b's bytes and the poison may share the cycle that crashes: b's must
    // still come back exactly once.
    b.send(b"b during");
    poison.send(b"panic now");
    assert_eq!(poison.recv_until_end(), (Vec::new(), Ending::Reset), "the poison connection is reset");
    assert_eq!(b.recv_exact(8), b"b during");
    for i in 0..10 {
        a.echo(format!("a after {i}").as_bytes());
        b.echo(format!("b after {i}").as_bytes());
    }
    server.connect().echo(b"new connections too");
    // Dropping the server asserts the host's run ended without error.
}

#[test]
fn poison_in_a_connections_first_bytes_is_caught_too() {
    // The first bytes come with the accepted connection, not in a cycle's
    // arrivals, and after a restart with `start`: the host must still see
    // whose bytes were in the guest each time it failed.
    let server = TestServer::start("crashy");
    let mut a = server.connect();
    a.echo(b"a before");
    let mut poison = server.connect();
    poison.send(b"panic at once");
    assert_eq!(poison.recv_until_end(), (Vec::new(), Ending::Reset), "the poison connection is reset");
    a.echo(b"a after");
    server.connect().echo(b"new connections too");
}

fn crashy_on_virtual_tyme(max_restarts: u32, tweak: impl FnOnce(&mut Config)) -> (TestServer, VirtualTyme) {
    let tyme = VirtualTyme::new(0.0);
    let t = tyme.clone();
    let server = TestServer::start_with("crashy", move |c| {
        c.virtual_tyme = Some(t);
        c.tock = 0.01;
        c.max_restarts = max_restarts;
        // Tyme jumps by minutes here: no idle tymeout.
        c.tymeout = 0.0;
        tweak(c);
    });
    (server, tyme)
}

/// Crashy serving `a`, then crashed by a poison message at a tyme where no
/// restart can start it: the guest is down.
fn crashed(max_restarts: u32) -> (TestServer, VirtualTyme, Client, Client) {
    crashed_with(max_restarts, |_| {})
}

fn crashed_with(max_restarts: u32, tweak: impl FnOnce(&mut Config)) -> (TestServer, VirtualTyme, Client, Client) {
    let (server, tyme) = crashy_on_virtual_tyme(max_restarts, tweak);
    let mut a = server.connect();
    a.echo(b"a before");
    tyme.tick(150.0);
    let mut poison = server.connect();
    poison.send(b"panic");
    (server, tyme, a, poison)
}

#[test]
fn a_guest_down_for_a_while_is_restarted_with_back_off_and_nothing_is_lost() {
    let (server, tyme, mut a, mut poison) = crashed(0);
    // Every restart now fails in start. The host keeps reading, and keeps
    // accepting, while the guest is down.
    std::thread::sleep(Duration::from_millis(300));
    a.send(b"a while down");
    let mut b = server.connect();
    b.send(b"b while down");
    std::thread::sleep(Duration::from_millis(300));
    tyme.tick(100.0);
    // The next restart (at most a back-off of 1.28 s away) starts; the
    // poison is closed once it crashes that one too; the rest is echoed once.
    assert_eq!(a.recv_exact(12), b"a while down");
    assert_eq!(b.recv_exact(12), b"b while down");
    assert_eq!(poison.recv_until_end(), (Vec::new(), Ending::Reset), "the poison connection is reset");
    a.echo(b"a after");
    b.echo(b"b after");
}

#[test]
fn what_waited_for_a_restart_is_handed_over_in_shares_that_fit_the_guest() {
    // 80 connections with 256 KiB each waiting: 20 MiB, more than the
    // guest's 16 MiB of memory. Handed over at once, it would trap the new
    // guest at every restart; in shares of at most 4 MiB a call, it fits.
    let (server, tyme, mut a, mut poison) = crashed_with(0, |c| c.limits.memory = 16 << 20);
    let chunk: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 251) as u8).collect();
    let mut clients: Vec<Client> = (0..80).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.send(&chunk);
    }
    a.send(b"a waited");
    tyme.tick(100.0);
    assert_eq!(poison.recv_until_end(), (Vec::new(), Ending::Reset), "the poison connection is reset");
    assert_eq!(a.recv_exact(8), b"a waited");
    for c in &mut clients {
        assert!(c.recv_exact(chunk.len()) == chunk, "an echo came back changed");
    }
}

#[test]
fn a_guest_that_keeps_failing_hits_the_fail_policy() {
    let (server, _tyme, mut a, _poison) = crashed(3);
    // 3 restarts, 10 + 20 + 40 ms apart, all fail: the host gives up and
    // closes every connection.
    assert!(a.closed_by_server(Duration::from_secs(5)), "connections left open after giving up");
    let err = server.stop().expect_err("the host gave up");
    assert!(format!("{err:#}").contains("guest failed 3 times in a row; giving up"), "{err:#}");
}

#[test]
fn a_guest_that_is_down_can_be_swapped_for_a_working_one() {
    let (server, _tyme, mut a, mut poison) = crashed(0);
    // Down now (every restart fails in start): what arrives waits in the host.
    std::thread::sleep(Duration::from_millis(200));
    a.send(b"kept");
    let report = server.swapper().swap(Some(hio_tests::guest("upper"))).recv_timeout(hio_tests::PATIENCE).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(a.recv_exact(4), b"KEPT", "the fixed guest serves what arrived while down");
    assert_eq!(poison.recv_exact(5), b"PANIC");
}
