//! Guests other than echo: per-connection state, and a misbehaving guest.

use hio_tests::TestServer;

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
        "err connection closed; err connection closed; err connection closed; err connection closed\n"
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
    assert_eq!(poison.recv_to_end(), b"", "the poison connection is closed");
    assert_eq!(b.recv_exact(8), b"b during");
    for i in 0..10 {
        a.echo(format!("a after {i}").as_bytes());
        b.echo(format!("b after {i}").as_bytes());
    }
    server.connect().echo(b"new connections too");
    // Dropping the server asserts the host's run ended without error.
}
