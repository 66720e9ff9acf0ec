//! {{name}} in the real host: real peers, virtual tyme, a hot swap and a crash.

use hio_test::{TestHost, build_this_crate};

#[test]
fn lines_come_back_numbered() {
    let host = TestHost::start(build_this_crate());
    let mut peer = host.connect();
    peer.send(b"hello\nwor");
    peer.expect(b"1: hello\n");
    peer.send(b"ld\n");
    peer.expect(b"2: world\n");
}

#[test]
fn numbers_survive_a_hot_swap_and_restart_after_a_crash() {
    let host = TestHost::start(build_this_crate());
    let mut peer = host.connect();
    peer.send(b"a\n");
    peer.expect(b"1: a\n");
    let report = host.swap(build_this_crate());
    assert_eq!(report.connections, 1);
    peer.send(b"b\n");
    peer.expect(b"2: b\n");
    // A partial line waits in the host: the crash loses none of it.
    peer.send(b"par");
    host.crash();
    peer.send(b"tial\n");
    peer.expect(b"1: partial\n");
    assert_eq!(host.stats().guest_restarts.get(), 1);
}

#[test]
fn an_idle_peer_is_closed_after_the_tymeout() {
    let host = TestHost::start_with(build_this_crate(), |c| c.tymeout = 30.0);
    let mut peer = host.connect();
    peer.send(b"x\n");
    peer.expect(b"1: x\n");
    host.advance(31.0);
    peer.expect_closed();
}
