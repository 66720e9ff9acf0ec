//! The guests of this repository through `hio-test`, the harness policy
//! authors use (so it is exercised on every run): lines, idle tymeouts,
//! hot swaps and crashes, read as the behaviour.

use hio_test::{End, TestHost};

fn lines() -> TestHost {
    TestHost::start(hio_tests::guest("lines"))
}

#[test]
fn lines_are_numbered_and_upper_cased_and_a_partial_line_waits() {
    let host = lines();
    let mut peer = host.connect();
    peer.send(b"hello\nwor");
    peer.expect(b"1 HELLO\n");
    peer.send(b"ld\r\n");
    peer.expect(b"2 WORLD\n");
    peer.send(b"quit\n");
    assert_eq!(peer.end(), End::Closed(b"bye\n".to_vec()));
}

#[test]
fn line_counts_survive_a_hot_swap_and_start_again_after_a_crash() {
    let host = lines();
    let (mut a, mut b) = (host.connect(), host.connect());
    a.send(b"x\n");
    a.expect(b"1 X\n");
    let report = host.swap(hio_tests::guest("lines"));
    assert_eq!(report.connections, 2);
    a.send(b"y\n");
    a.expect(b"2 Y\n");
    b.send(b"half");
    host.crash();
    assert_eq!((host.stats().guest_restarts.get(), host.stats().guest_failures.get()), (1, 1));
    b.send(b" a line\n");
    b.expect(b"1 HALF A LINE\n");
    a.send(b"z\n");
    a.expect(b"1 Z\n");
}

#[test]
fn an_idle_connection_is_closed_at_the_tymeout_and_not_before() {
    let host = TestHost::start_with(hio_tests::guest("echo"), |c| c.tymeout = 30.0);
    let mut idle = host.connect();
    idle.send(b"ping");
    idle.expect(b"ping");
    host.advance(29.0);
    idle.send(b"still here");
    idle.expect(b"still here");
    host.advance(30.5);
    idle.expect_closed();
    // Released once the kernel has handed the peer everything (linger).
    hio_tests::eventually("the closed connection to be released", || host.stats().connections.get() == 0);
}

#[test]
fn a_swap_to_another_policy_applies_to_open_connections_and_a_bad_one_is_refused() {
    let host = TestHost::start(hio_tests::guest("echo"));
    let mut peer = host.connect();
    peer.send(b"before");
    peer.expect(b"before");
    host.swap(hio_tests::guest("upper"));
    peer.send(b"after");
    peer.expect(b"AFTER");
    let refused = host.try_swap(hio_tests::guest("badstart")).expect_err("a guest that cannot start");
    assert!(refused.contains("in start"), "{refused}");
    peer.send(b"kept");
    peer.expect(b"KEPT");
    assert_eq!((host.stats().swaps_ok.get(), host.stats().swaps_failed.get()), (1, 1));
}

#[test]
fn a_drain_lets_peers_finish() {
    let host = lines();
    let mut peer = host.connect();
    peer.send(b"one\n");
    peer.expect(b"1 ONE\n");
    let thread = std::thread::spawn(move || host.drain());
    peer.send(b"two\n");
    peer.expect(b"2 TWO\n");
    peer.finish_sending();
    peer.expect_closed();
    thread.join().unwrap();
}

#[test]
fn tls_peers_with_generated_certificates() {
    let pki = hio_test::pki::Pki::new("harness");
    let host = TestHost::start_with(hio_tests::guest("echo"), |c| c.tls = Some(pki.server_config()));
    let mut alice = host.connect_tls(pki.client(Some(&pki.alice), None));
    alice.send(b"over TLS");
    alice.expect(b"over TLS");
    alice.finish_sending();
    alice.expect_closed();
    assert_eq!(host.stats().tls_handshakes.get(), 1);
}
