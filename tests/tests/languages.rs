//! Guests in other languages: Python (componentize-py) and JavaScript
//! (componentize-js), on WASI with nothing granted. They serve like the
//! Rust echo guest, and swap with it and with each other.

use std::io::Write;
use std::net::Shutdown;

use std::time::Duration;

use hio_tests::{PATIENCE, TestServer, assert_interleaved_echo, guest};

/// An interpreter's start (importing its modules) takes tens of ms on a
/// quiet machine and more beside a busy test suite on two cores: more than
/// the default 100 ms call deadline meant for a cycle's work.
fn for_interpreters(config: &mut hio_host::Config) {
    config.limits.deadline = Duration::from_secs(2);
}

#[test]
fn the_python_guest_echoes_like_the_rust_one() {
    echoes_like_the_rust_one("python-echo");
}

#[test]
fn the_javascript_guest_echoes_like_the_rust_one() {
    echoes_like_the_rust_one("js-echo");
}

fn echoes_like_the_rust_one(name: &str) {
    let server = TestServer::start_with(name, for_interpreters);
    assert_interleaved_echo(&server, 3, 10);
    let mut big = server.connect();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8).collect();
    let mut writer = big.stream.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    assert!(big.recv_exact(data.len()) == data, "1 MiB through {name}");
    t.join().unwrap();
    big.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(big.recv_to_end(), b"", "half-close ends cleanly");
}

#[test]
fn rust_python_and_javascript_guests_swap_under_a_live_connection() {
    let server = TestServer::start_with("echo", for_interpreters);
    let mut c = server.connect();
    c.echo(b"rust");
    for name in ["python-echo", "upper", "js-echo", "python-echo", "js-echo", "echo"] {
        let report = server.swapper().swap(Some(guest(name))).recv_timeout(PATIENCE * 6).unwrap().expect(name);
        assert_eq!(report.connections, 1);
        c.send(b"after swap");
        let want: &[u8] = if name == "upper" { b"AFTER SWAP" } else { b"after swap" };
        assert_eq!(c.recv_exact(10), want);
    }
}
