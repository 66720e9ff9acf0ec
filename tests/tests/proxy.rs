//! `--proxy-protocol`: a header from a balancer (HAProxy's send-proxy v1
//! and send-proxy-v2) names the client; the guest sees it as `ca` and the
//! balancer as `proxied-by`; a bad header closes only that connection.

use std::io::{Read, Write};
use std::net::TcpStream;

use hio_tests::{Client, HostProcess, guest};

/// A v2 PROXY header for an IPv4 TCP client.
fn v2(client: ([u8; 4], u16), server: ([u8; 4], u16)) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client.0);
    h.extend_from_slice(&server.0);
    h.extend_from_slice(&client.1.to_be_bytes());
    h.extend_from_slice(&server.1.to_be_bytes());
    h
}

fn whoami_host() -> HostProcess {
    HostProcess::spawn(&guest("whoami"), &["--proxy-protocol"])
}

#[test]
fn the_guest_sees_the_client_a_v1_or_v2_header_names() {
    let host = whoami_host();
    let mut c = host.connect();
    let local = c.stream.local_addr().unwrap();
    c.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n");
    assert_eq!(c.recv_line(), format!("plain ca=192.0.2.7:4242 via={local}\n"));
    c.echo(b"and then its own bytes");
    let mut c = host.connect();
    let mut first = v2(([203, 0, 113, 9], 5555), ([198, 51, 100, 1], 443));
    // The client's first bytes in the same segment as the header.
    first.extend_from_slice(b"right behind the header");
    c.send(&first);
    assert!(c.recv_line().starts_with("plain ca=203.0.113.9:5555 via=127.0.0.1:"));
    assert_eq!(c.recv_exact(23), b"right behind the header");
    let mut c = host.connect();
    c.send(b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n");
    let greeting = c.recv_line();
    assert!(greeting.contains("2001:db8::7") && greeting.contains("4242 via="), "{greeting}");
}

#[test]
fn a_header_in_pieces_waits_for_the_rest() {
    let host = HostProcess::spawn(&guest("lines"), &["--proxy-protocol"]);
    let mut c = host.connect();
    for piece in [&b"PROXY TCP4 192.0.2"[..], b".7 198.51.100.1 42", b"42 443\r\nhello\n"] {
        c.send(piece);
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    assert_eq!(c.recv_line(), "1 HELLO\n");
}

#[test]
fn a_balancers_own_check_keeps_the_peer_address() {
    let host = whoami_host();
    let mut c = host.connect();
    // v2 LOCAL, as HAProxy sends for its health checks; v1 UNKNOWN.
    c.send(&[b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x20, 0x00, 0, 0]].concat());
    assert_eq!(c.recv_line(), "plain\n");
    let mut c = host.connect();
    c.send(b"PROXY UNKNOWN\r\n");
    assert_eq!(c.recv_line(), "plain\n");
}

#[test]
fn a_bad_or_missing_header_closes_only_that_connection() {
    let host = whoami_host();
    // A v2 header that says 2,000 more bytes follow: over the 1 KiB bound.
    let long = [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x21, 0x11, 0x07, 0xD0], &[0; 1100]].concat();
    for bad in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], b"PROXY TCP4 banana 198.51.100.1 1 2\r\n", &long] {
        let mut s = TcpStream::connect(host.addr()).unwrap();
        s.set_read_timeout(Some(hio_tests::PATIENCE)).unwrap();
        let _ = s.write_all(bad);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty(), "a connection without a good header was served: {got:?}");
    }
    // One that sends nothing is closed after 5 s.
    let mut silent = Client::connect(host.addr());
    assert!(silent.closed_by_server(std::time::Duration::from_secs(8)), "a silent peer kept its slot");
    let mut good = host.connect();
    good.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n");
    assert!(good.recv_line().starts_with("plain ca=192.0.2.7:4242"));
    let log = host.log();
    assert!(log.contains("PROXY protocol: bad PROXY v1 header"), "{log}");
    assert!(log.contains("a PROXY v2 header of 2016 bytes, over the 1024 taken"), "{log}");
    assert!(log.contains("no whole PROXY header in time"), "{log}");
}

#[test]
fn without_the_flag_a_header_is_just_bytes() {
    let host = HostProcess::spawn(&guest("whoami"), &[]);
    let mut c = host.connect();
    assert_eq!(c.recv_line(), "plain\n");
    c.echo(b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n");
}
