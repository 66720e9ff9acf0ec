//! Peers that stop reading: the host never holds a connection forever,
//! never ends a stream with a FIN after dropping bytes, and peers that do
//! not read cannot stall those that do.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hio_tests::pki::Pki;
use hio_tests::{Client, Ending, HostProcess, TestServer, guest};

/// Small enough that the kernel holds little of what the server sends.
const SMALL_RCVBUF: usize = 16 << 10;

/// A peer that writes `size` bytes (then, if `half_close`, shuts its write
/// side) and reads nothing; the thread ends when its writes do.
fn non_reader(addr: std::net::SocketAddr, size: usize, half_close: bool) -> (Client, JoinHandle<std::io::Result<()>>) {
    let c = Client::connect_with(addr, Some(SMALL_RCVBUF));
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&vec![b'x'; size])?;
        if half_close {
            w.shutdown(Shutdown::Write)?;
        }
        Ok(())
    });
    (c, writer)
}

#[test]
fn peers_that_stop_reading_are_reset_after_the_send_timeout_and_free_their_slots() {
    let host = HostProcess::spawn(&guest("echo"), &["--max-conns", "4", "--send-timeout", "2"]);
    let started = Instant::now();
    // More than the kernel's buffers on both sides hold: their writes block.
    let stuck: Vec<_> = (0..4).map(|i| non_reader(host.addr(), 16 << 20, i % 2 == 0)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // They hold every slot: a newcomer is refused.
    let (got, _) = host.connect().recv_until_end();
    assert!(got.is_empty(), "a fifth connection was served");
    // Reading now would be progress: wait for the resets first.
    hio_tests::eventually("four send timeouts", || host.log().matches("(send timeout)").count() == 4);
    for (_c, writer) in stuck {
        // The reset shows on the blocked write (which takes the socket's
        // error, so a read after it would see a plain end).
        let err = writer.join().unwrap().expect_err("the peer's writes go on after its reset");
        assert!(matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{err}");
    }
    assert!(started.elapsed() >= Duration::from_secs(2), "reset before the send timeout");
    // Their slots are free again.
    host.connect().echo(b"served again");
}

#[test]
fn a_closed_connection_whose_peer_never_reads_is_reset_after_linger_and_a_slow_reader_gets_everything() {
    let host = HostProcess::spawn(&guest("evil"), &["--linger", "1"]);
    // The guest queues 4 MiB and closes; this peer never reads.
    let mut silent = Client::connect_with(host.addr(), Some(SMALL_RCVBUF));
    silent.send(b"dump");
    std::thread::sleep(Duration::from_millis(2500));
    let (got, ending) = silent.recv_until_end();
    assert_eq!(
        ending,
        Ending::Reset,
        "a closed connection with bytes undelivered ended with a FIN after {} bytes",
        got.len()
    );
    assert!(got.len() < 4 << 20);
    hio_tests::eventually("the reset in the log", || host.log().contains("(linger)"));
    // This one reads in bursts with pauses shorter than the linger time.
    let mut slow = host.connect();
    slow.send(b"dump");
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut next_pause = 1 << 20;
    loop {
        if all.len() >= next_pause {
            std::thread::sleep(Duration::from_millis(400));
            next_pause += 1 << 20;
        }
        match slow.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("after {} bytes: {e}\n{}", all.len(), host.log()),
        }
    }
    let want: Vec<u8> = (0..4u8).flat_map(|i| vec![b'a' + i; 1 << 20]).collect();
    assert!(all == want, "got {} bytes, want every one of 4 MiB then a clean end", all.len());
}

#[test]
fn the_idle_tymeout_never_cuts_output_still_waiting_for_its_peer() {
    let host = HostProcess::spawn(&guest("echo"), &["--tymeout", "1"]);
    let size = 6 << 20;
    let (mut c, writer) = non_reader(host.addr(), size, true);
    // The peer reads nothing for longer than the tymeout, then everything.
    std::thread::sleep(Duration::from_millis(2500));
    let (got, ending) = c.recv_until_end();
    assert_eq!((got.len(), ending), (size, Ending::Fin), "the echo was cut\n{}", host.log());
    assert!(got.iter().all(|&b| b == b'x'));
    writer.join().unwrap().unwrap();
    assert!(!host.log().contains("idle for"), "{}", host.log());
}

#[test]
fn peers_that_do_not_read_cannot_stall_those_that_do() {
    // A 1 MiB bound that eight peers which never read their echoes fill.
    let host = HostProcess::spawn(&guest("echo"), &["--max-buffered-mib", "1"]);
    let _stuck: Vec<_> = (0..8).map(|_| non_reader(host.addr(), 2 << 20, false)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut reader = host.connect();
    for i in 0..50 {
        reader.echo(format!("message {i} {}", "x".repeat(1000)).as_bytes());
    }
    let big: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
    reader.echo(&big);
}

#[test]
fn a_tls_peer_that_stops_reading_is_reset_too() {
    let pki = Pki::new("stall");
    let tls = pki.server_config();
    let server = TestServer::start_with("echo", move |c| {
        c.tls = Some(tls);
        c.send_timeout = 1.0;
    });
    let config = pki.client(Some(&pki.alice), None);
    let sock = Client::connect_with(server.addr, Some(SMALL_RCVBUF)).stream;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), sock);
    // Write records without ever reading the echoes: the host's queue
    // fills mid-record, then the socket's.
    let chunk = vec![b't'; 16 << 10];
    let start = Instant::now();
    let err = loop {
        if let Err(e) = tls.write_all(&chunk).and_then(|_| tls.flush()) {
            break e;
        }
        assert!(start.elapsed() < hio_tests::PATIENCE, "never reset");
    };
    assert!(matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{err}");
    hio_tests::eventually("the send timeout counted", || server.stats.send_timeouts.get() == 1);
}

/// The writer of a peer that never read ended with a reset.
fn was_reset(writer: JoinHandle<std::io::Result<()>>) -> bool {
    writer
        .join()
        .unwrap()
        .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe))
}

#[test]
fn the_send_timeout_holds_across_a_hot_swap_and_while_the_guest_is_down() {
    let tyme = hio_tests::VirtualTyme::new(0.0);
    let t = tyme.clone();
    let server = TestServer::start_with("crashy", move |c| {
        c.virtual_tyme = Some(t);
        c.tock = 0.01;
        c.tymeout = 0.0;
        c.max_restarts = 0;
        c.send_timeout = 1.0;
    });
    // Queued while one guest serves, timed out under the next one.
    let (_swapped, writer) = non_reader(server.addr, 16 << 20, false);
    std::thread::sleep(Duration::from_millis(200));
    let report = server.swapper().swap(Some(guest("crashy"))).recv_timeout(hio_tests::PATIENCE).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(was_reset(writer), "not reset after a swap");
    // Queued, then the guest goes down and cannot start again (crashy
    // cannot start at tyme 150): the host still times the peer out.
    let (_downed, writer) = non_reader(server.addr, 16 << 20, false);
    std::thread::sleep(Duration::from_millis(200));
    tyme.tick(150.0);
    server.connect().send(b"panic");
    assert!(was_reset(writer), "not reset while the guest was down");
    assert_eq!(server.stats.send_timeouts.get(), 2);
}

#[test]
fn a_peer_that_never_reads_is_reset_even_when_its_output_fits_in_the_kernel() {
    // 1.5 MB of echo fits in the kernel's send buffer: the host's own queue
    // stays empty, yet the peer takes nothing. The idle tymeout is off.
    let host = HostProcess::spawn(&guest("echo"), &["--tymeout", "0", "--send-timeout", "1", "--max-conns", "2"]);
    let mut parked: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect_with(host.addr(), Some(4096));
            c.send(&vec![b'k'; 1_500_000]);
            c
        })
        .collect();
    hio_tests::eventually("two send timeouts", || host.log().matches("(send timeout)").count() == 2);
    for c in &mut parked {
        let (got, ending) = c.recv_until_end();
        assert_eq!(ending, Ending::Reset, "ended with a FIN after {} bytes", got.len());
    }
    host.connect().echo(b"their slots are free");
}

#[test]
fn the_idle_tymeout_never_cuts_a_slow_reader_whose_reply_is_in_the_kernel() {
    let host = HostProcess::spawn(&guest("echo"), &["--tymeout", "1"]);
    let mut c = Client::connect_with(host.addr(), Some(4096));
    let size = 512 << 10;
    c.send(&vec![b's'; size]);
    // Reads a little at a time for longer than the tymeout.
    let mut got = 0;
    let mut buf = [0u8; 16 << 10];
    while got < size {
        std::thread::sleep(Duration::from_millis(100));
        match c.stream.read(&mut buf) {
            Ok(0) => panic!("closed after {got} bytes\n{}", host.log()),
            Ok(n) => got += n,
            Err(e) => panic!("after {got} bytes: {e}"),
        }
    }
    c.echo(b"still open");
    assert!(!host.log().contains("idle for"), "{}", host.log());
}

#[test]
fn a_half_closed_peer_that_never_reads_does_not_leave_replies_parked_in_the_kernel() {
    // Each peer sends its request and its FIN and never reads: the echo
    // guest answers and closes, and its reply sits in the kernel. The host
    // keeps the socket (and its bound) until the peer takes it, then resets.
    let host = HostProcess::spawn(&guest("echo"), &["--linger", "1", "--send-timeout", "60"]);
    let mut peers: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect_with(host.addr(), Some(4096));
            c.send(&vec![b'h'; 300_000]);
            c.stream.shutdown(Shutdown::Write).unwrap();
            c
        })
        .collect();
    hio_tests::eventually("three linger resets", || host.log().matches("(linger)").count() == 3);
    for c in &mut peers {
        let (got, ending) = c.recv_until_end();
        assert_eq!(ending, Ending::Reset, "ended with a FIN after {} of 300000 bytes", got.len());
    }
}
