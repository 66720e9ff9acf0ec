//! systemd, with its own tools: socket activation by
//! `systemd-socket-activate` (Debian's systemd package), and the
//! notification protocol seen from a test-owned `NOTIFY_SOCKET`.

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hio_tests::{Client, Ending, HostProcess, KillOnDrop, PATIENCE, guest, host_binary};

/// Ports nobody listens on now, each different.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Connect once something listens there.
fn connect_when_listening(port: u16) -> Client {
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Client::connect(([127, 0, 0, 1], port).into());
        }
        assert!(start.elapsed() < PATIENCE, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_activation_serves_every_socket_systemd_passes_with_every_worker() {
    let ports: [u16; 2] = free_ports();
    let mut activate = Command::new("systemd-socket-activate");
    for port in ports {
        activate.args(["-l", &format!("127.0.0.1:{port}")]);
    }
    activate
        .arg(host_binary())
        .args(["run", guest("echo").to_str().unwrap(), "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut host = KillOnDrop(activate.spawn().expect("systemd-socket-activate (Debian's systemd package)"));
    // systemd-socket-activate starts the host at the first connection.
    let mut clients: Vec<Client> = (0..8).map(|i| connect_when_listening(ports[i % 2])).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.echo(format!("client {i} through systemd's socket").as_bytes());
    }
    // The same process (systemd-socket-activate execs the host) drains on SIGTERM.
    let ok = Command::new("kill").args(["-TERM", &host.0.id().to_string()]).status().unwrap();
    assert!(ok.success());
    for c in &mut clients {
        c.echo(b"still served while draining");
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(c.recv_until_end(), (Vec::new(), Ending::Fin));
    }
    let status = host.0.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(host.0.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("socket activation") && log.contains("sockets=2"), "{log}");
    assert_eq!(log.matches("listeners=2").count(), 2, "each worker serves both sockets:\n{log}");
}

/// The notifications a test-owned NOTIFY_SOCKET receives.
struct Notifications {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notifications {
    fn new(name: &str) -> Notifications {
        let path = std::env::temp_dir().join(format!("hio-notify-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        Notifications { socket, path }
    }

    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The next message with `state` (e.g. "READY=1"), skipping watchdog
    /// pings and status updates; every one skipped is returned too.
    fn until(&self, state: &str) -> (String, Vec<String>) {
        let mut skipped = Vec::new();
        loop {
            let m = self.next();
            if m.lines().any(|l| l == state) {
                return (m, skipped);
            }
            assert!(
                m.lines().all(|l| l == "WATCHDOG=1" || l.starts_with("STATUS=")),
                "{m:?} came before {state} (after {skipped:?})"
            );
            skipped.push(m);
        }
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn notify_socket_sees_ready_reloading_ready_stopping_in_order() {
    let n = Notifications::new("order");
    let env = [("NOTIFY_SOCKET", n.path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
    let mut host = HostProcess::spawn_under(&[], &env, &guest("echo"), &[]);
    let (ready, _) = n.until("READY=1");
    assert!(ready.contains(&format!("MAINPID={}", host.child.0.id())), "{ready:?}");
    assert!(ready.contains("STATUS=serving 0 connections with"), "{ready:?}");
    let mut c = host.connect();
    c.echo(b"served");
    host.signal("HUP");
    let (reloading, _) = n.until("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "notify-reload wants the clock: {reloading:?}");
    let (reloaded, _) = n.until("READY=1");
    assert!(reloaded.contains("STATUS=serving 1 connections"), "{reloaded:?}");
    host.signal("TERM");
    let (stopping, _) = n.until("STOPPING=1");
    assert!(stopping.contains("STATUS=draining 1 connections"), "{stopping:?}");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(host.exit_within(PATIENCE).success());
}

/// WATCHDOG_USEC=200000: fed about every 50 ms while the loop runs.
#[test]
fn the_watchdog_is_fed_while_the_loop_runs() {
    let n = Notifications::new("watchdog");
    let env = [("NOTIFY_SOCKET", n.path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")];
    let _host = HostProcess::spawn_under(&[], &env, &guest("echo"), &[]);
    n.until("READY=1");
    for _ in 0..3 {
        n.until("WATCHDOG=1");
    }
}

/// The example units in deploy/systemd pass `systemd-analyze verify` (with
/// ExecStart pointing at this build), and the example config file reads.
#[test]
fn the_example_units_and_config_are_valid() {
    let root = hio_tests::root();
    let dir = std::env::temp_dir().join(format!("hio-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for unit in ["hio-host.service", "hio-host.socket"] {
        let text = std::fs::read_to_string(root.join("deploy/systemd").join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/hio-host", host_binary().to_str().unwrap());
        std::fs::write(dir.join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args([dir.join("hio-host.service"), dir.join("hio-host.socket")])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    let config = root.join("deploy/hio-host.toml");
    let out = Command::new(host_binary())
        .args(["run", "--config", config.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("workers = 2    # from the config file"), "{printed}");
}

/// After a takeover the successor's READY=1 names its MAINPID, and the old
/// process's drain does not tell systemd the service is stopping.
#[test]
fn after_a_takeover_the_successor_speaks_for_the_service() {
    let n = Notifications::new("takeover");
    let socket = std::env::temp_dir().join(format!("hio-notify-upgrade-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let (notify, upgrade) = (n.path.to_str().unwrap(), socket.to_str().unwrap());
    let mut old =
        HostProcess::spawn_under(&[], &[("NOTIFY_SOCKET", notify)], &guest("echo"), &["--upgrade-socket", upgrade]);
    n.until("READY=1");
    let mut c = old.connect();
    c.echo(b"before");
    let mut cmd = Command::new(host_binary());
    cmd.args(["run", guest("echo").to_str().unwrap(), "--upgrade-socket", upgrade, "--takeover"])
        .env("NOTIFY_SOCKET", notify);
    let mut new = HostProcess::launch(cmd);
    let (ready, _) = n.until("READY=1");
    assert!(ready.contains(&format!("MAINPID={}", new.child.0.id())), "{ready:?}");
    assert!(old.exit_within(PATIENCE).success());
    c.echo(b"after");
    new.signal("TERM");
    let (stopping, _) = n.until("STOPPING=1");
    assert!(stopping.contains("STATUS=draining 1 connections"), "the old process's drain spoke: {stopping:?}");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(new.exit_within(PATIENCE).success());
}
