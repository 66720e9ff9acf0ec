//! The echo guest in the real host, driven by real TCP clients.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use hio_tests::{Client, TestServer, assert_interleaved_echo, eventually, hio_python, root};

#[test]
fn single_client_echo() {
    let server = TestServer::start("echo");
    let mut c = server.connect();
    c.echo(b"hello hio\n");
}

#[test]
fn several_messages_in_a_row() {
    let server = TestServer::start("echo");
    let mut c = server.connect();
    for i in 0..50 {
        c.echo(format!("message number {i}\n").as_bytes());
    }
    // Many messages sent before any is read come back in order, whole.
    let burst: Vec<u8> = (0..200).flat_map(|i| format!("burst {i};").into_bytes()).collect();
    for chunk in burst.chunks(37) {
        c.send(chunk);
    }
    assert_eq!(c.recv_exact(burst.len()), burst);
}

#[test]
fn one_mebibyte_intact() {
    let server = TestServer::start("echo");
    let mut c = server.connect();
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut writer = c.stream.try_clone().unwrap();
    let sent = data.clone();
    // Write from another thread: the server echoes while we are still sending.
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let got = c.recv_exact(data.len());
    t.join().unwrap();
    assert!(got == data, "1 MiB came back altered");
}

#[test]
fn interleaved_clients_do_not_cross_talk() {
    let server = TestServer::start("echo");
    assert_interleaved_echo(&server, 3, 20);
}

#[test]
fn two_hundred_concurrent_clients() {
    let server = TestServer::start("echo");
    let addr = server.addr;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for j in 0..5 {
                    c.echo(format!("client {i} message {j} {}\n", "x".repeat(i % 50)).as_bytes());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn half_close_still_gets_every_byte_then_a_clean_end() {
    let server = TestServer::start("echo");
    let mut c = server.connect();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.send(&data);
    c.stream.shutdown(Shutdown::Write).unwrap();
    // Everything echoed, then EOF (FIN, not a reset): hio itself drops these bytes.
    let got = c.recv_to_end();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    // The server forgot the connection.
    eventually("server to drop the half-closed connection", || {
        TcpStream::connect(server.addr).is_ok() && {
            let mut probe = server.connect();
            probe.echo(b"probe");
            true
        }
    });
}

#[test]
fn abrupt_reset_of_one_client_leaves_others_served() {
    let server = TestServer::start("echo");
    let mut a = server.connect();
    let mut b = server.connect();
    a.echo(b"a1");
    b.echo(b"b1");
    let mut victim = server.connect();
    victim.echo(b"about to vanish");
    // Queue bytes toward the victim that it will never read, then reset.
    victim.send(&vec![7u8; 200_000]);
    victim.reset();
    // A client that resets right after connecting, before being served.
    server.connect().reset();
    for i in 0..20 {
        a.echo(format!("a {i}").as_bytes());
        b.echo(format!("b {i}").as_bytes());
    }
    let mut late = server.connect();
    late.echo(b"still accepting");
}

#[test]
fn ipv6_listener_serves() {
    let server = TestServer::start_with("echo", |c| c.ha = "[::1]:0".parse().unwrap());
    assert!(server.addr.is_ipv6());
    let mut c = server.connect();
    c.echo(b"over ipv6");
}

#[test]
fn real_hio_client_interoperates() {
    let server = TestServer::start("echo");
    let out = Command::new(hio_python())
        .arg(root().join("tests/py/hio_client.py"))
        .arg(server.addr.port().to_string())
        .arg("40")
        .output()
        .expect("run hio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hio client failed: {stdout}{stderr}");
    assert_eq!(stdout.trim(), "ok 40");
    // The server still serves others after hio's client closed.
    server.connect().echo(b"after hio");
}

#[test]
fn wirelog_records_both_directions() {
    let dir = std::env::temp_dir().join(format!("hio-wl-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.clone();
    let server = TestServer::start_with("echo", move |c| c.wirelog = Some(d));
    let mut c = server.connect();
    c.echo(b"logged bytes");
    let ca = c.stream.local_addr().unwrap();
    server.stop().unwrap();
    let who = format!("('{}', {})", ca.ip(), ca.port());
    let rx = std::fs::read_to_string(dir.join("rx.log")).unwrap();
    let tx = std::fs::read_to_string(dir.join("tx.log")).unwrap();
    assert_eq!(rx, format!("\nRx {who}:\nlogged bytes\n"));
    assert_eq!(tx, format!("\nTx {who}:\nlogged bytes\n"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stop_closes_every_connection_cleanly() {
    let server = TestServer::start("echo");
    let mut clients: Vec<Client> = (0..5).map(|_| server.connect()).collect();
    for c in &mut clients {
        c.echo(b"hi");
    }
    let addr = server.addr;
    server.stop().expect("clean stop");
    for c in &mut clients {
        assert!(c.closed_by_server(Duration::from_secs(5)), "connection left open at stop");
    }
    // The listen socket is closed too.
    assert!(TcpStream::connect(addr).is_err());
}

#[test]
fn slow_reader_gets_all_eight_mebibytes() {
    let server = TestServer::start("echo");
    let mut c = server.connect();
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8).collect();
    let mut writer = c.stream.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    // Read nothing for a while: the host must push back, not drop or hoard.
    std::thread::sleep(Duration::from_millis(700));
    let got = c.recv_exact(data.len());
    t.join().unwrap();
    assert!(got == data, "8 MiB came back altered");
    c.echo(b"and the connection still works");
}

#[test]
fn connections_beyond_max_conns_are_closed_not_left_hanging() {
    let server = TestServer::start_with("echo", |c| c.max_conns = 5);
    let mut held: Vec<Client> = (0..5).map(|_| server.connect()).collect();
    for c in &mut held {
        c.echo(b"inside the cap");
    }
    // 10,000 more, up to 100 at a time: each gets a clean end (or a reset)
    // promptly, none an echo.
    for _ in 0..100 {
        let mut wave: Vec<Client> = (0..100).map(|_| server.connect()).collect();
        for extra in &mut wave {
            let _ = extra.stream.write_all(b"let me in");
            assert!(extra.closed_by_server(Duration::from_secs(5)), "an extra connection was left hanging");
        }
    }
    for c in &mut held {
        c.echo(b"the five are still served");
    }
    // Room again once one leaves.
    drop(held.pop());
    hio_tests::eventually("a freed place", || {
        let mut c = server.connect();
        let mut b = [0u8; 1];
        c.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        c.stream.write_all(b"x").is_ok() && matches!(std::io::Read::read(&mut c.stream, &mut b), Ok(1))
    });
}
