//! A lazy hand-over (WIT 0.2.3 `handover`): after a swap or a crash the
//! guest is handed its connections a few hundred per pass of the loop, so
//! no pass stops the loop for all of them. Each connection keeps what the
//! predecessor saved of it and every unconsumed byte, a policy that looks
//! at every connection sees them all, and a crash in the middle loses
//! nothing.

use std::time::Duration;

use hio_tests::{Client, HostProcess, PATIENCE, TestServer, eventually, guest};

/// More than two passes' worth of connections (256 a pass).
const MANY: usize = 700;

fn connect_all(addr: std::net::SocketAddr) -> Vec<Client> {
    (0..MANY).map(|_| Client::connect(addr)).collect()
}

/// Every peer sends `said` (all first, so the host serves them together),
/// then each must read the line `want`.
fn each_answers(peers: &mut [Client], said: &[u8], want: &str) {
    for p in peers.iter_mut() {
        p.send(said);
    }
    for p in peers.iter_mut() {
        assert_eq!(p.recv_line(), want);
    }
}

fn each_sends(peers: &mut [Client], said: &[u8]) {
    for p in peers {
        p.send(said);
    }
}

/// The `key=` number in the host's last "hand-over complete" line, once
/// `n` such lines were logged.
fn handover_field(host: &HostProcess, n: usize, key: &str) -> u64 {
    eventually("the hand-over completes", || host.log().matches("hand-over complete").count() >= n);
    let log = host.log();
    let line = log.lines().rfind(|l| l.contains("hand-over complete")).unwrap_or_default();
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn every_connection_keeps_its_state_and_its_partial_line_through_a_hand_over_in_passes() {
    let host = HostProcess::spawn(&guest("lines"), &[]);
    let mut peers = connect_all(host.addr());
    each_answers(&mut peers, b"first\n", "1 FIRST\n");
    // A partial line on each: unconsumed, it waits in the host for the
    // successor, which is handed these connections first (they have news).
    each_sends(&mut peers, b"sec");
    std::thread::sleep(Duration::from_millis(100));
    host.signal("HUP");
    let passes = handover_field(&host, 1, "passes");
    assert!(passes >= 2, "{MANY} connections handed in {passes} pass(es):\n{}", host.log());
    // The count and the partial line came back to each connection.
    each_answers(&mut peers, b"ond\n", "2 SECOND\n");
}

#[test]
fn a_policy_that_looks_at_every_connection_is_handed_them_all_at_once() {
    let host = HostProcess::spawn(&guest("chat"), &[]);
    let mut peers = connect_all(host.addr());
    // The last to connect speaks once everyone before it is in ixes.
    peers[MANY - 1].send(b"ready\n");
    for p in &mut peers {
        assert_eq!(p.recv_line(), "ready\n");
    }
    host.signal("HUP");
    // The successor's first cycle comes while most connections are still
    // owed; looking at ixes takes the rest over first.
    let want = format!("* new guest: {MANY} here\n");
    for p in &mut peers {
        assert_eq!(p.recv_line(), want);
    }
    handover_field(&host, 1, "passes");
    peers[0].send(b"after\n");
    for p in &mut peers {
        assert_eq!(p.recv_line(), "after\n");
    }
}

#[test]
fn a_crash_during_a_hand_over_loses_no_connection_and_no_byte() {
    let server = TestServer::start("lines");
    let mut peers = connect_all(server.addr);
    each_answers(&mut peers, b"a\n", "1 A\n");
    each_sends(&mut peers, b"b");
    let report = server.swapper().swap(Some(guest("lines"))).recv_timeout(PATIENCE).expect("swap answered");
    assert!(report.is_ok(), "{report:?}");
    // The crash is asked for at once, so it usually comes while most
    // connections are still owed (a busy machine may finish the hand-over
    // first: nothing here depends on which). The restarted guest, without
    // state (its counts start again), is handed them all with their bytes.
    let restarts = server.stats.guest_restarts.get();
    server.swapper().crash_guest();
    // Only then the rest of the line: sent earlier, the successor could
    // answer it before the crash is served.
    eventually("the guest restarts", || server.stats.guest_restarts.get() > restarts);
    each_answers(&mut peers, b"\n", "1 B\n");
}

#[test]
fn a_burst_of_swaps_during_hand_overs_lands_every_swap() {
    let server = TestServer::start("lines");
    let mut peers = connect_all(server.addr);
    each_answers(&mut peers, b"a\n", "1 A\n");
    // Asked for all at once: most arrive while the last one's hand-over
    // is under way, and the instances they replace wait to be freed.
    let swaps: Vec<_> = (0..30).map(|_| server.swapper().swap(Some(guest("lines")))).collect();
    for (i, reply) in swaps.into_iter().enumerate() {
        let report = reply.recv_timeout(PATIENCE).expect("swap answered");
        assert!(report.is_ok(), "swap {i} refused: {report:?}");
    }
    each_answers(&mut peers, b"b\n", "2 B\n");
}
