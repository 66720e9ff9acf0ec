//! Graceful drain: SIGTERM (or `Server::drain`) closes the listener at
//! once, tells the guest, serves every connection held to its end, resets
//! what is left at `--drain-timeout`, and exits 0; a second signal ends the
//! drain at once.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::Duration;

use hio_tests::{Client, Ending, HostProcess, TestServer, eventually, guest};

const EXIT: Duration = Duration::from_secs(20);

fn wait_for_drain(host: &HostProcess) {
    eventually("the drain to begin", || host.log().contains("draining: listener closed"));
}

fn refused(host: &HostProcess) -> bool {
    TcpStream::connect(host.addr()).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
}

#[test]
fn fifty_clients_mid_exchange_get_every_answer_before_the_exit() {
    let mut host = HostProcess::spawn(&guest("lines"), &[]);
    let mut clients: Vec<Client> = (0..50).map(|_| host.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("c{i} one\nc{i} two\n").as_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.recv_line(), format!("1 C{i} ONE\n"));
        assert_eq!(c.recv_line(), format!("2 C{i} TWO\n"));
        // The rest of the exchange is under way as the signal comes.
        c.send(b"thr");
    }
    host.signal("TERM");
    wait_for_drain(&host);
    assert!(refused(&host), "a new peer was let in during the drain");
    // The SDK tells the Service (the lines guest logs it).
    eventually("the guest to be told", || host.log().contains("draining: serving 50 connections to their end"));
    for c in &mut clients {
        c.send(b"ee\nfour\nquit\n");
    }
    for c in &mut clients {
        assert_eq!(c.recv_line(), "3 THREE\n");
        assert_eq!(c.recv_line(), "4 FOUR\n");
        assert_eq!(c.recv_line(), "bye\n");
        assert_eq!(c.recv_until_end(), (Vec::new(), Ending::Fin));
    }
    let status = host.exit_within(EXIT);
    assert!(status.success(), "exit status {status}");
    assert!(!host.log().contains("reset"), "{}", host.log());
}

#[test]
fn a_peer_that_never_finishes_is_reset_at_the_deadline() {
    let mut host = HostProcess::spawn(&guest("lines"), &["--drain-timeout", "0.5"]);
    let mut done = host.connect();
    let mut stuck = host.connect();
    done.send(b"x\n");
    assert_eq!(done.recv_line(), "1 X\n");
    stuck.send(b"never ended");
    host.signal("TERM");
    wait_for_drain(&host);
    done.send(b"quit\n");
    assert_eq!(done.recv_line(), "bye\n");
    assert_eq!(done.recv_until_end(), (Vec::new(), Ending::Fin));
    assert_eq!(stuck.recv_until_end(), (Vec::new(), Ending::Reset), "{}", host.log());
    let status = host.exit_within(EXIT);
    assert!(status.success(), "exit status {status}");
    let log = host.log();
    let line = log.lines().find(|l| l.contains("drain timeout passed")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("reset=1") && line.contains("dropped=11"), "{line}");
}

#[test]
fn a_guest_that_never_lets_go_is_cut_at_the_deadline() {
    let mut host = HostProcess::spawn(&guest("rogue"), &["--drain-timeout", "0.5"]);
    let mut held = host.connect();
    held.send(b"hold\n");
    assert_eq!(held.recv_line(), "held\n");
    host.signal("TERM");
    wait_for_drain(&host);
    // The peer is done; the guest keeps the connection anyway.
    held.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(held.recv_until_end(), (Vec::new(), Ending::Reset));
    assert!(host.exit_within(EXIT).success());
    assert!(host.log().contains("drain timeout passed"), "{}", host.log());
}

#[test]
fn a_second_signal_ends_the_drain_at_once() {
    for second in ["TERM", "INT"] {
        let mut host = HostProcess::spawn(&guest("echo"), &["--drain-timeout", "600"]);
        let mut idle = host.connect();
        idle.echo(b"answered");
        let mut unanswered = host.connect();
        unanswered.send(b"x");
        unanswered.recv_exact(1);
        host.signal("TERM");
        wait_for_drain(&host);
        host.signal(second);
        assert!(host.exit_within(EXIT).success());
        // Closed at once as without a drain: a clean end where nothing was lost.
        assert_eq!(idle.recv_until_end(), (Vec::new(), Ending::Fin));
        assert_eq!(unanswered.recv_until_end(), (Vec::new(), Ending::Fin));
        assert!(host.log().contains("closing now"), "{}", host.log());
    }
}

#[test]
fn the_library_drains_with_server_drain() {
    let server = TestServer::start("lines");
    let mut c = server.connect();
    c.send(b"a\n");
    assert_eq!(c.recv_line(), "1 A\n");
    server.drain();
    eventually("the listener to close", || {
        TcpStream::connect(server.addr).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    });
    c.send(b"b\n");
    assert_eq!(c.recv_line(), "2 B\n", "served while draining");
    assert!(!server.finished(), "ended with a connection open");
    c.send(b"quit\n");
    assert_eq!(c.recv_line(), "bye\n");
    eventually("the run to end", || server.finished());
    server.join().expect("a drained server ends well");
}

#[test]
fn a_guest_built_before_draining_existed_is_served_and_drained() {
    let mut host = HostProcess::spawn(&guest("legacy"), &[]);
    let mut c = host.connect();
    c.echo(b"hio:tcp@0.2.0");
    host.signal("TERM");
    wait_for_drain(&host);
    c.echo(b"still served");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.recv_until_end(), (Vec::new(), Ending::Fin));
    assert!(host.exit_within(EXIT).success());
}
