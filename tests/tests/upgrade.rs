//! Upgrading the host binary: a successor (`--takeover`) takes over the
//! listen socket and every plain connection, with its bytes, from the
//! process serving at `--upgrade-socket`; a successor that fails leaves
//! that process serving untouched; TLS sessions finish where they are.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hio_tests::pki::{Pki, TlsClient};
use hio_tests::{Client, Ending, HostProcess, PATIENCE, guest, host_binary};

fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hio-up-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// `hio-host run GUEST --upgrade-socket PATH --takeover EXTRA...`, once serving.
fn successor(guest_name: &str, path: &std::path::Path, extra: &[&str]) -> HostProcess {
    let mut cmd = Command::new(host_binary());
    cmd.args(["run", guest(guest_name).to_str().unwrap(), "--upgrade-socket", path.to_str().unwrap(), "--takeover"])
        .args(extra);
    HostProcess::launch(cmd)
}

/// The same, expected to fail: its exit status and log.
fn failing_successor(wrapper: &[&str], guest_name: &str, path: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(host_binary());
            c
        }
        None => Command::new(host_binary()),
    };
    cmd.args(["run", guest(guest_name).to_str().unwrap(), "--upgrade-socket", path.to_str().unwrap(), "--takeover"])
        .args(extra);
    let out = hio_tests::output_within(&mut cmd, PATIENCE).expect("the successor ends");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A client echoing without pause on one connection until told to stop:
/// every message of its own, of a size that varies, must come back whole.
fn echoer(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>) -> JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let size = 1 + (i * 131 + rounds as usize * 977) % 3000;
            let msg: Vec<u8> = (0..size).map(|k| b'a' + ((i + k + rounds as usize) % 26) as u8).collect();
            std::io::Write::write_all(&mut c.stream, &msg).map_err(|e| format!("client {i} send: {e}"))?;
            let mut back = vec![0u8; size];
            std::io::Read::read_exact(&mut c.stream, &mut back)
                .map_err(|e| format!("client {i} round {rounds}: {e}"))?;
            if back != msg {
                return Err(format!("client {i} round {rounds}: echo differs"));
            }
            rounds += 1;
        }
        c.stream.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
        match c.recv_until_end() {
            (rest, Ending::Fin) if rest.is_empty() => Ok(rounds),
            other => Err(format!("client {i} ended with {other:?}")),
        }
    })
}

/// New peers, one after another until told to stop, each served an echo:
/// counts those refused (or not served).
fn prober(addr: SocketAddr, stop: Arc<AtomicBool>, refused: Arc<AtomicU64>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut probes = 0;
        while !stop.load(Ordering::Relaxed) {
            probes += 1;
            let served = TcpStream::connect(addr).is_ok_and(|s| {
                let mut c = Client { stream: s };
                std::io::Write::write_all(&mut c.stream, b"probe").is_ok() && {
                    let mut b = [0u8; 5];
                    std::io::Read::read_exact(&mut c.stream, &mut b).is_ok() && &b == b"probe"
                }
            });
            if !served {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        probes
    })
}

#[test]
fn fifty_clients_echo_across_five_upgrades_without_a_byte_lost() {
    let path = socket_path("five");
    let mut current = HostProcess::spawn(&guest("echo"), &["--upgrade-socket", path.to_str().unwrap()]);
    let addr = current.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..50).map(|i| echoer(addr, i, stop.clone())).collect();
    let probe = prober(addr, stop.clone(), refused.clone());
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..5 {
        let next = successor("echo", &path, &[]);
        assert_eq!(next.addr(), addr, "the successor serves the same listen socket");
        let status = current.exit_within(PATIENCE);
        assert!(status.success(), "the old process ended badly: {status}\n{}", current.log());
        assert!(current.log().contains("connections moved to the successor process"), "{}", current.log());
        current = next;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let probes = probe.join().unwrap();
    for (i, c) in clients.into_iter().enumerate() {
        let rounds = c.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", current.log()));
        assert!(rounds > 0, "client {i} never echoed");
    }
    assert_eq!(refused.load(Ordering::Relaxed), 0, "of {probes} new peers, some were refused or not served");
    assert!(current.log().contains("took over from the process before connections="), "{}", current.log());
}

#[test]
fn a_successor_that_fails_leaves_the_old_one_serving() {
    let path = socket_path("fails");
    let host = HostProcess::spawn(&guest("lines"), &["--upgrade-socket", path.to_str().unwrap()]);
    let mut clients: Vec<Client> = (0..60).map(|_| host.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("c{i}\nhalf").as_bytes());
        assert_eq!(c.recv_line(), format!("1 C{i}\n"));
    }
    // Fails before asking: bad settings.
    let (ok, log) = failing_successor(&[], "lines", &path, &["--tymeout", "-1"]);
    assert!(!ok && log.contains("tymeout"), "{log}");
    // Fails after it was handed everything, before it commits: its guest
    // cannot start; it has too few workers; it cannot receive the sockets.
    let (ok, log) = failing_successor(&[], "badstart", &path, &[]);
    assert!(!ok && log.contains("cannot start"), "{log}");
    let (ok, log) = failing_successor(&[], "lines", &path, &["--workers", "2"]);
    assert!(!ok && log.contains("start this one with --workers 1"), "{log}");
    let (ok, log) = failing_successor(&["prlimit", "--nofile=40:40"], "lines", &path, &[]);
    assert!(!ok && log.contains("descriptors were lost"), "{log}");
    // Every connection carries on where it was, with its half line.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!(" c{i}\n").as_bytes());
        assert_eq!(c.recv_line(), format!("2 HALF C{i}\n"));
    }
    let mut fresh = host.connect();
    fresh.send(b"new\n");
    assert_eq!(fresh.recv_line(), "1 NEW\n");
    // The one with too few workers was refused before anything paused.
    assert_eq!(host.log().matches("the successor did not take over; serving on").count(), 2, "{}", host.log());
    // And a sound successor still takes over afterwards.
    let mut next = successor("lines", &path, &[]);
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("c{i} again\n").as_bytes());
        assert_eq!(c.recv_line(), format!("3 C{i} AGAIN\n"));
    }
    next.signal("TERM");
    for c in &mut clients {
        c.send(b"quit\n");
        assert_eq!(c.recv_line(), "bye\n");
    }
    fresh.send(b"quit\n");
    assert_eq!(fresh.recv_line(), "bye\n");
    assert!(next.exit_within(PATIENCE).success());
}

/// A TLS server's connections are all TLS: none moves (a session cannot
/// leave its process here), each finishes where it is; the listen socket
/// moves, so new TLS clients reach the successor.
#[test]
fn tls_clients_finish_on_the_old_process_while_new_ones_reach_the_new_one() {
    let pki = Pki::new("upgrade");
    let path = socket_path("tls");
    let (cert, key) = (pki.server_cert.to_str().unwrap(), pki.server_key.to_str().unwrap());
    let tls = ["--tls-cert", cert, "--tls-key", key, "--certify", "none"];
    let mut flags = vec!["--upgrade-socket", path.to_str().unwrap()];
    flags.extend(tls);
    let mut old = HostProcess::spawn(&guest("echo"), &flags);
    let mut staying = TlsClient::connect(old.addr(), pki.client(None, None)).unwrap();
    staying.echo(b"before the upgrade").unwrap();
    // A successor that would serve plain TCP on the TLS port is refused.
    let (ok, log) = failing_successor(&[], "echo", &path, &[]);
    assert!(!ok && log.contains("it serves TLS: start this one with the same"), "{log}");
    let mut new = successor("echo", &path, &tls);
    staying.echo(b"still served by the old process").unwrap();
    let mut arriving = TlsClient::connect(new.addr(), pki.client(None, None)).unwrap();
    arriving.echo(b"a new TLS client").unwrap();
    staying.echo(b"the old process serves on").unwrap();
    assert!(old.child.0.try_wait().unwrap().is_none(), "the old process left before its TLS client was done");
    assert!(old.log().contains("moved=0"), "{}", old.log());
    drop(staying);
    assert!(old.exit_within(PATIENCE).success(), "{}", old.log());
    arriving.echo(b"the new process serves on").unwrap();
    new.signal("TERM");
    drop(arriving);
    assert!(new.exit_within(PATIENCE).success());
}

#[test]
fn every_worker_hands_over_to_its_counterpart() {
    let path = socket_path("workers");
    let mut old = HostProcess::spawn(&guest("lines"), &["--workers", "2", "--upgrade-socket", path.to_str().unwrap()]);
    let mut clients: Vec<Client> = (0..20).map(|_| old.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("c{i}\n").as_bytes());
        assert_eq!(c.recv_line(), format!("1 C{i}\n"));
    }
    let (ok, log) = failing_successor(&[], "lines", &path, &[]);
    assert!(!ok && log.contains("start this one with --workers 2"), "{log}");
    let mut new = successor("lines", &path, &["--workers", "2"]);
    assert!(old.exit_within(PATIENCE).success(), "{}", old.log());
    assert_eq!(old.log().matches("connections moved to the successor process").count(), 2, "{}", old.log());
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("c{i}\nquit\n").as_bytes());
        assert_eq!(c.recv_line(), format!("2 C{i}\n"), "each line count came along");
        assert_eq!(c.recv_line(), "bye\n");
    }
    new.signal("TERM");
    assert!(new.exit_within(PATIENCE).success());
}

/// A successor that is handed everything and commits too late: the old
/// process waited at most `HAND_OVER_LIMIT` (5 s), resumed, and ignores
/// the late commit (no `D`), so the two never serve the same connection.
#[test]
fn a_successor_too_slow_to_commit_is_refused_and_the_old_one_resumes() {
    use std::io::{Read, Write};
    let path = socket_path("slow");
    let host = HostProcess::spawn(&guest("lines"), &["--upgrade-socket", path.to_str().unwrap()]);
    let mut c = host.connect();
    c.send(b"one\n");
    assert_eq!(c.recv_line(), "1 ONE\n");
    let mut slow = std::os::unix::net::UnixStream::connect(&path).unwrap();
    // Hello: 1 worker, plain TCP without PROXY headers.
    slow.write_all(b"hio-tk/1\x01\x00\x00\x00\x00\x00\x00\x00").unwrap();
    let mut header = [0u8; 24];
    slow.read_exact(&mut header).unwrap();
    assert_eq!(&header[..8], b"hio-tk/1", "handed over");
    // The descriptors' messages (a byte each, 250 descriptors a message) and the state.
    let fds = u64::from_le_bytes(header[8..16].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(header[16..24].try_into().unwrap()) as usize;
    let mut handed = vec![0u8; fds.div_ceil(250) + len];
    slow.read_exact(&mut handed).unwrap();
    std::thread::sleep(Duration::from_millis(5500));
    let _ = slow.write_all(b"C");
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a late commit was answered: {rest:?}");
    c.send(b"two\n");
    assert_eq!(c.recv_line(), "2 TWO\n", "the old process serves on");
    assert!(host.log().contains("did not commit within 5 s"), "{}", host.log());
    // And the upgrade socket is still there for a sound successor.
    let mut next = successor("lines", &path, &[]);
    c.send(b"three\nquit\n");
    assert_eq!(c.recv_line(), "3 THREE\n");
    assert_eq!(c.recv_line(), "bye\n");
    next.signal("TERM");
    assert!(next.exit_within(PATIENCE).success());
}

#[test]
fn a_second_host_cannot_steal_the_upgrade_socket() {
    let path = socket_path("steal");
    let _host = HostProcess::spawn(&guest("echo"), &["--upgrade-socket", path.to_str().unwrap()]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "whoever may connect may take every connection");
    // Nor may it replace a file that is not a socket.
    let precious = std::env::temp_dir().join(format!("hio-up-precious-{}", std::process::id()));
    std::fs::write(&precious, b"keep me").unwrap();
    let mut cmd = Command::new(host_binary());
    cmd.args(["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--upgrade-socket", precious.to_str().unwrap()]);
    let out = hio_tests::output_within(&mut cmd, PATIENCE).expect("ends");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    std::fs::remove_file(precious).unwrap();
    // Nowhere to listen for a successor: refused at start, not found out at the upgrade.
    let mut cmd = Command::new(host_binary());
    cmd.args(["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--upgrade-socket", "/nonexistent/hio/upgrade.sock"]);
    let out = hio_tests::output_within(&mut cmd, PATIENCE).expect("ends");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot listen for a successor"));
    let mut cmd = Command::new(host_binary());
    cmd.args(["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--upgrade-socket", path.to_str().unwrap()]);
    let out = hio_tests::output_within(&mut cmd, PATIENCE).expect("refused at once");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && log.contains("start with --takeover"), "{log}");
}
