//! Hot swap: the guest is replaced while the host keeps every socket and byte.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hio_tests::{Client, HostProcess, PATIENCE, TestServer, VirtualTyme, guest};

fn swap(server: &TestServer, name: &str) -> hio_host::SwapReport {
    server
        .swapper()
        .swap(Some(guest(name)))
        .recv_timeout(PATIENCE)
        .expect("swap answered")
        .unwrap_or_else(|e| panic!("swap to {name} failed: {e}"))
}

#[test]
fn fifty_swaps_under_load_lose_nothing() {
    let server = TestServer::start("echo");
    let addr = server.addr;
    let done = Arc::new(AtomicBool::new(false));
    // Odd while swap k is under way, 2k+2 once it is done: an exchange that
    // starts and ends in the same even phase must come from that phase's guest.
    let phase = Arc::new(AtomicUsize::new(0));
    let (echoed, uppered, checked) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let connected = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let (done, phase) = (done.clone(), phase.clone());
            let (echoed, uppered, checked) = (echoed.clone(), uppered.clone(), checked.clone());
            let connected = connected.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.echo(b"hello");
                connected.fetch_add(1, Ordering::Release);
                let mut n = 0u64;
                while !done.load(Ordering::Acquire) {
                    let msg = format!("client {i} message {n} abcdefghijklmnopqrstuvwxyz|");
                    let before = phase.load(Ordering::Acquire);
                    c.send(msg.as_bytes());
                    let got = c.recv_exact(msg.len());
                    let after = phase.load(Ordering::Acquire);
                    let upper = if got == msg.as_bytes() {
                        echoed.fetch_add(1, Ordering::Relaxed);
                        false
                    } else if got == msg.to_ascii_uppercase().as_bytes() {
                        uppered.fetch_add(1, Ordering::Relaxed);
                        true
                    } else {
                        panic!("client {i}: sent {msg:?}, got {:?}", String::from_utf8_lossy(&got));
                    };
                    if before == after && before % 2 == 0 {
                        // Phase 0 is echo; swap k (phase 2k+2) installed upper for even k.
                        let live_is_upper = before > 0 && (before / 2 - 1) % 2 == 0;
                        assert_eq!(upper, live_is_upper, "client {i}: answer from the wrong guest in phase {before}");
                        checked.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Connections opened during swaps must all be accepted and served.
    let connector = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::Acquire) {
                let mut c = Client::connect(addr);
                let msg = b"newcomer";
                c.send(msg);
                let got = c.recv_exact(msg.len());
                assert!(got == msg || got == b"NEWCOMER", "newcomer got {got:?}");
                n += 1;
            }
            n
        })
    };
    // Every client is in the guest's ixes before the first swap.
    hio_tests::eventually("50 clients connected", || connected.load(Ordering::Acquire) == 50);
    let mut pauses = Vec::new();
    for i in 0..50 {
        phase.store(2 * i + 1, Ordering::Release);
        let report = swap(&server, if i % 2 == 0 { "upper" } else { "echo" });
        phase.store(2 * i + 2, Ordering::Release);
        assert!(report.connections >= 50, "only {} connections handed over", report.connections);
        pauses.push(report.pause);
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::Release);
    let total: u64 = clients.into_iter().map(|t| t.join().expect("client saw an error")).sum();
    let newcomers = connector.join().expect("a newcomer failed");
    assert!(total > 500 && newcomers > 10, "too little traffic to mean anything: {total} / {newcomers}");
    assert!(echoed.load(Ordering::Relaxed) > 0 && uppered.load(Ordering::Relaxed) > 0, "both guests served");
    assert!(checked.load(Ordering::Relaxed) > 100, "too few exchanges inside a stable phase");
    // The last swap was to echo: that is what serves now.
    server.connect().echo(b"final guest is echo");
    pauses.sort();
    eprintln!("swap pause with ~51 connections: p50 {:?}, max {:?}", pauses[pauses.len() / 2], pauses.last().unwrap());
}

#[test]
fn failed_swaps_leave_the_old_guest_serving() {
    let server = TestServer::start("echo");
    let mut c = server.connect();
    c.echo(b"before");
    let dir = std::env::temp_dir().join(format!("hio-badswap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.wasm");
    let mut bytes = std::fs::read(guest("upper")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    let wrong_world = dir.join("empty.wasm");
    std::fs::write(&wrong_world, b"\0asm\x0d\x00\x01\x00").unwrap();
    for (path, why) in [
        (corrupt, "not a valid wasm component"),
        (wrong_world, "does not fit"),
        (dir.join("missing.wasm"), "cannot read guest"),
    ] {
        let outcome = server.swapper().swap(Some(path.clone())).recv_timeout(PATIENCE).expect("answered");
        let err = outcome.expect_err("a bad guest must not be swapped in");
        assert!(err.contains(why), "{}: {err}", path.display());
        c.echo(b"still the old echo guest");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_half_received_line_and_the_line_count_survive_a_swap() {
    let server = TestServer::start("lines");
    let mut c = server.connect();
    c.send(b"one\n");
    assert_eq!(c.recv_line(), "1 ONE\n");
    c.send(b"hal");
    std::thread::sleep(Duration::from_millis(50));
    swap(&server, "lines");
    c.send(b"f\n");
    assert_eq!(c.recv_line(), "2 HALF\n", "partial line or count lost across the swap");
}

#[test]
fn each_connections_state_comes_back_to_that_connection_after_a_swap() {
    let server = TestServer::start("lines");
    let mut clients: Vec<_> = (0..3).map(|_| server.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        for n in 1..=i + 1 {
            c.send(b"x\n");
            assert_eq!(c.recv_line(), format!("{n} X\n"));
        }
    }
    swap(&server, "lines");
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(b"y\n");
        assert_eq!(c.recv_line(), format!("{} Y\n", i + 2), "client {i} got another's count");
    }
}

#[test]
fn a_guest_that_does_not_know_the_old_state_starts_fresh_without_losing_bytes() {
    let server = TestServer::start("lines");
    let mut c = server.connect();
    c.send(b"one\n");
    assert_eq!(c.recv_line(), "1 ONE\n");
    c.send(b"unfinished ");
    std::thread::sleep(Duration::from_millis(50));
    swap(&server, "echo");
    // The bytes lines held back are the host's: echo gets them too.
    assert_eq!(c.recv_exact(11), b"unfinished ");
    c.echo(b"now echo\n");
}

#[test]
fn idle_tymers_carry_over() {
    let tyme = VirtualTyme::new(0.0);
    let t = tyme.clone();
    let server = TestServer::start_with("echo", move |c| {
        c.tymeout = 5.0;
        c.virtual_tyme = Some(t);
        c.tock = 0.01;
    });
    let mut c = server.connect();
    c.echo(b"hello");
    tyme.tick(4.0);
    swap(&server, "upper");
    tyme.tick(2.0);
    // A fresh tymer would have run to 10; the carried-over one stopped at 5.
    assert!(c.closed_by_server(Duration::from_secs(5)), "tymer restarted by the swap");
}

fn wait_upper(c: &mut Client, host: &HostProcess) {
    let start = Instant::now();
    loop {
        c.send(b"abc");
        if c.recv_exact(3) == b"ABC" {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "the new guest never took over; host log:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_and_watch_swap_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("hio-cli-swap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (mode, extra) in [("sighup", &[][..]), ("watch", &["--watch"][..])] {
        let file = dir.join(format!("{mode}.wasm"));
        std::fs::copy(guest("echo"), &file).unwrap();
        let mut host = HostProcess::spawn(&file, extra);
        let mut c = host.connect();
        c.echo(b"abc");
        // Write the new guest beside it and rename over: a reader never sees half a file.
        let tmp = dir.join(format!("{mode}.tmp"));
        std::fs::copy(guest("upper"), &tmp).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        if mode == "sighup" {
            host.signal("HUP");
        }
        wait_upper(&mut c, &host);
        host.signal("TERM");
        // The drain serves it to its end: the peer's FIN ends it.
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(host.child.0.wait().unwrap().success());
        let mut rest = Vec::new();
        c.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "clean close after the swap");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
