//! Guests written against the raw WIT that hand the host odd values: no
//! value a guest returns or passes can stop the host, hold its CPU, flood
//! its log, or cost more than the one connection whose bytes crash it.

use std::time::Duration;

use hio_tests::{Client, Ending, HostProcess, guest};

/// The host process is still running and serving.
fn still_serves(host: &mut HostProcess, c: &mut Client) {
    c.echo(b"still served");
    host.connect().echo(b"new connections too");
    assert!(host.child.0.try_wait().unwrap().is_none(), "the host exited\n{}", host.log());
}

#[test]
fn no_wake_tyme_a_guest_returns_upsets_the_host() {
    for value in ["inf", "1e300", "nan", "-inf", "-1", "1.7976931348623157e308"] {
        let mut host = HostProcess::spawn(&guest("rogue"), &[]);
        let mut c = host.connect();
        c.send(format!("wake {value}\n").as_bytes());
        assert_eq!(c.recv_line(), "ok\n", "wake {value}\n{}", host.log());
        // A few cycles with that wake tyme in force.
        for i in 0..5 {
            c.echo(format!("after wake {value}: {i}").as_bytes());
            std::thread::sleep(Duration::from_millis(20));
        }
        still_serves(&mut host, &mut c);
    }
}

#[test]
fn a_guest_that_asks_to_be_woken_now_forever_cannot_hold_the_cpu() {
    let host = HostProcess::spawn(&guest("rogue"), &[]);
    let mut c = host.connect();
    c.send(b"wake now\n");
    assert_eq!(c.recv_line(), "ok\n");
    let calls = |c: &mut Client| -> u64 {
        c.send(b"calls\n");
        c.recv_line().trim().parse().expect("a count")
    };
    let before = calls(&mut c);
    std::thread::sleep(Duration::from_secs(1));
    let during = calls(&mut c) - before;
    // Unchecked, such a guest was called about 1.4 million times a second.
    // Its tymer wake-ups are held to one a millisecond.
    assert!(during < 1500, "{during} guest calls in one idle second\n{}", host.log());
    hio_tests::eventually("the log to say so", || host.log().contains("asks to be woken again at once"));
}

#[test]
fn a_guest_cannot_flood_the_host_log() {
    let host = HostProcess::spawn(&guest("rogue"), &[]);
    let mut c = host.connect();
    c.send(b"logflood 20000\n");
    assert_eq!(c.recv_line(), "flooded\n");
    hio_tests::eventually("the log to say lines were dropped", || host.log().contains("dropping lines"));
    // Once that second is over, the count, though the guest logs nothing more.
    hio_tests::eventually("the dropped count", || host.log().contains("guest log lines dropped"));
    // In a new second, only the line that tries to forge a host line.
    c.send(b"logflood 0\n");
    assert_eq!(c.recv_line(), "flooded\n");
    hio_tests::eventually("the forged line", || host.log().contains("forged line"));
    let log = host.log();
    // 20,000 lines of 1 KiB would be 20 MiB; the limit lets 100 a second through.
    assert!(log.len() < 1 << 20, "the host log grew to {} bytes", log.len());
    assert!(!log.lines().any(|l| l.starts_with("ERROR hio_host: forged")), "a guest forged a host log line:\n{log}");
    assert!(log.contains(r"flood\nERROR hio_host: forged line"), "{log}");
}

#[test]
fn a_poison_connection_costs_two_restarts_wherever_its_bytes_reach_the_guest() {
    // VENOM in a cycle's arrival, then in what the guest pulls during
    // `start` after its restart; and VENOM in a connection's first bytes,
    // handed by `accept-all` during a cycle.
    for first_bytes in [false, true] {
        let mut host = HostProcess::spawn(&guest("rogue"), &[]);
        let mut bystanders: Vec<Client> = (0..3).map(|_| host.connect()).collect();
        for b in &mut bystanders {
            b.echo(b"before");
        }
        let mut poison = host.connect();
        if !first_bytes {
            poison.echo(b"harmless");
        }
        poison.send(b"VENOM");
        assert_eq!(poison.recv_until_end(), (Vec::new(), Ending::Reset), "poison not reset\n{}", host.log());
        for b in &mut bystanders {
            b.echo(b"after");
        }
        still_serves(&mut host, &mut bystanders[0]);
        let failures = host.log().matches("guest down; restarting it").count();
        assert!(failures <= 2, "the guest failed {failures} times for one poison connection\n{}", host.log());
    }
}

#[test]
fn many_poison_connections_at_once_cost_only_themselves() {
    // Each poison connection is reset after its own turn; their failures do
    // not add up to the fail policy (8 in a row by default).
    let mut host = HostProcess::spawn(&guest("rogue"), &[]);
    let mut bystanders: Vec<Client> = (0..3).map(|_| host.connect()).collect();
    for b in &mut bystanders {
        b.echo(b"before");
    }
    let mut poison: Vec<Client> = (0..12).map(|_| host.connect()).collect();
    for p in &mut poison {
        p.echo(b"harmless");
    }
    for p in &mut poison {
        p.send(b"VENOM");
    }
    for p in &mut poison {
        assert_eq!(p.recv_until_end(), (Vec::new(), Ending::Reset), "poison not reset\n{}", host.log());
    }
    for b in &mut bystanders {
        b.echo(b"after");
    }
    still_serves(&mut host, &mut bystanders[0]);
}

#[test]
fn answers_in_a_batch_result_the_host_cannot_apply_fail_the_guest_not_the_host() {
    // One byte past the room the host set aside, bytes past the end of the
    // result, a connection the guest never held: each is the guest's fault,
    // named in the log, and fails it as a trap does. Nothing is lost: the
    // successor pulls the same bytes in `start` and answers them by a host
    // call (this guest echoes what it does not know).
    let cases = [
        ("overroom\n", "beyond what it may (more than its room)"),
        ("outofrange\n", "with bytes out of its result's range"),
        ("stranger\n", "beyond what it may (it does not hold it open)"),
    ];
    for (command, said) in cases {
        let mut host = HostProcess::spawn(&guest("rogue"), &[]);
        let mut bystander = host.connect();
        bystander.echo(b"before");
        let mut bad = host.connect();
        bad.echo(b"harmless");
        bad.send(command.as_bytes());
        assert_eq!(bad.recv_line(), command, "{}", host.log());
        bystander.echo(b"after");
        still_serves(&mut host, &mut bystander);
        let log = host.log();
        assert!(log.contains(said), "{command}: {said}\n{log}");
        assert_eq!(log.matches("guest down; restarting it").count(), 1, "{log}");
    }
}

#[test]
fn a_result_of_many_answers_is_held_to_the_call_deadline() {
    // Each answer is valid. Two million empty ones once held the loop,
    // every connection, for over a second (each wrote nothing to the
    // socket); now they cost next to nothing (200,000 here, to stay within
    // the deadline on a loaded machine). Answers of one byte each do
    // write: applying them counts against the call's deadline, and past it
    // the rest is not applied and the guest fails. The answers applied
    // stand, none twice; the line is answered again by the successor (it
    // pulls it in `start` and echoes what it does not know).
    let mut host = HostProcess::spawn(&guest("rogue"), &[]);
    let mut bystander = host.connect();
    bystander.echo(b"before");
    let mut c = host.connect();
    c.send(b"zeros 200000\n");
    assert_eq!(c.recv_line(), "zeros-ok\n", "{}", host.log());
    c.send(b"ones 500000\n");
    let mut got = Vec::new();
    while !got.ends_with(b"ones 500000\n") {
        got.extend_from_slice(&c.recv_exact(1));
        assert!(got.len() <= 500_000 + 12, "more than every answer and the echo");
    }
    let applied = got.len() - 12;
    assert!(got[..applied].iter().all(|&b| b == b'z'), "only the answers' bytes before the echo");
    assert!(applied < 500_000, "all {applied} answers applied: no deadline hit\n{}", host.log());
    bystander.echo(b"after");
    still_serves(&mut host, &mut bystander);
    // On a loaded machine the call itself may be cut at its deadline
    // first: then nothing was applied.
    let log = host.log();
    let cut = if applied > 0 { "answers ran past its deadline" } else { "ran past its 100 ms deadline" };
    assert!(log.contains(cut), "{applied} applied\n{log}");
}
