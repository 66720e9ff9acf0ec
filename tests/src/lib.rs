//! Helpers for component-level tests: a real host on its own thread serving
//! a real guest component, and real TCP clients.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use hio_host::stats::Stats;
pub use hio_host::{Config, Server, Stopper, Swapper, VirtualTyme};
pub use hio_test::pki;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// A built guest component, `target/wasm/NAME.wasm`.
pub fn guest(name: &str) -> PathBuf {
    let path = root().join("target/wasm").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build guests with `cargo xtask guests` (or run the suite with `cargo xtask test`)",
        path.display()
    );
    path
}

/// The hio-host binary, built by `cargo xtask build`.
pub fn host_binary() -> PathBuf {
    let path = root().join("target/release/hio-host");
    assert!(path.exists(), "{} is missing: run `cargo xtask build`", path.display());
    path
}

/// A host serving one guest on 127.0.0.1 (a free port) on its own thread.
/// Dropping it stops the host and checks it closed without error.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The host's counters, read while it runs.
    pub stats: Arc<Stats>,
    stopper: Stopper,
    swapper: Swapper,
    watched: hio_host::admin::Watched,
    thread: Option<JoinHandle<Result<()>>>,
}

impl TestServer {
    pub fn start(guest_name: &str) -> TestServer {
        Self::start_with(guest_name, |_| {})
    }

    /// Start with a config adjusted by `tweak` (listen address, tymeout, virtual tyme...).
    pub fn start_with(guest_name: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::new(guest(guest_name));
        config.ha = "127.0.0.1:0".parse().expect("literal address");
        tweak(&mut config);
        Self::try_start(config).expect("server starts")
    }

    pub fn try_start(config: Config) -> Result<TestServer> {
        // The host's log goes with the test's output (shown when it fails).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("HIO_LOG").unwrap_or_else(|_| "hio_host=info".into()),
            )
            .with_test_writer()
            .try_init();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<()> {
            let mut server = match Server::open(config) {
                Ok(s) => s,
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = tx.send(Err(e));
                    bail!(msg);
                }
            };
            let _ = tx.send(Ok((server.local_addr(), server.stopper(), server.watched())));
            server.run()
        });
        let (addr, stopper, watched) = rx.recv().context("server thread died")??;
        let (stats, swapper) = (watched.stats.clone(), watched.swapper.clone());
        Ok(TestServer { addr, stats, stopper, swapper, watched, thread: Some(thread) })
    }

    /// Serve the admin endpoint for this server on a free loopback port
    /// (its thread lives as long as the test process).
    pub fn serve_admin(&self) -> SocketAddr {
        hio_host::admin::serve("127.0.0.1:0".parse().expect("literal address"), vec![self.watched.clone()])
            .expect("the admin endpoint starts")
    }

    /// Hot-swaps this server's guest.
    pub fn swapper(&self) -> &Swapper {
        &self.swapper
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Stop the host and return how its run ended.
    pub fn stop(self) -> Result<()> {
        self.stopper.stop();
        self.join()
    }

    /// Ask the host to drain (`Stopper::drain`); `join` waits for its end.
    pub fn drain(&self) {
        self.stopper.drain();
    }

    /// Wait for the host's run to end, and return how it ended.
    pub fn join(mut self) -> Result<()> {
        self.thread.take().expect("joined once").join().expect("server thread panicked")
    }

    /// Whether the host's run has ended.
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stopper.stop();
            let res = t.join();
            if !std::thread::panicking() {
                res.expect("server thread panicked").expect("server ran without error");
            }
        }
    }
}

/// How long a test waits for bytes before calling it a failure.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A plain blocking TCP client with a read deadline.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, None)
    }

    /// Connect with the socket's receive buffer set to `rcvbuf` bytes
    /// first (a peer that cannot take much before the server must wait).
    pub fn connect_with(addr: SocketAddr, rcvbuf: Option<usize>) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
            .expect("create a socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("set SO_RCVBUF");
        }
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(PATIENCE)).expect("set timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client { stream }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send");
    }

    /// Read exactly `n` bytes or fail the test.
    pub fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.stream.read_exact(&mut buf).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
        buf
    }

    /// Send and expect the same bytes back.
    pub fn echo(&mut self, data: &[u8]) {
        self.send(data);
        let got = self.recv_exact(data.len());
        assert_eq!(got, data, "echo mismatch");
    }

    /// Read until a newline.
    pub fn recv_line(&mut self) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match self.stream.read(&mut b) {
                Ok(0) => panic!("connection closed mid-line after {:?}", String::from_utf8_lossy(&line)),
                Ok(_) => line.push(b[0]),
                Err(e) => panic!("reading a line: {e}"),
            }
        }
        String::from_utf8(line).expect("utf-8 line")
    }

    /// Read until the server ends the connection: what came first, and
    /// whether it ended with a FIN or a reset. Fails the test on a timeout.
    pub fn recv_until_end(&mut self) -> (Vec<u8>, Ending) {
        let mut all = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return (all, Ending::Fin),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return (all, Ending::Reset),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!("waiting for the end after {} bytes: {e}", all.len()),
            }
        }
    }

    /// Read `n` bytes, or what came before the connection ended.
    pub fn recv_until_end_or(&mut self, n: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = (&mut self.stream).take(n as u64).read_to_end(&mut all);
        all
    }

    /// Read everything until the server closes; fails on a reset or timeout.
    pub fn recv_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        self.stream.read_to_end(&mut all).expect("read to a clean end");
        all
    }

    /// Whether the server closed this connection (clean EOF) within `within`.
    pub fn closed_by_server(&mut self, within: Duration) -> bool {
        self.stream.set_read_timeout(Some(within)).expect("set timeout");
        let mut b = [0u8; 1];
        let res = self.stream.read(&mut b);
        self.stream.set_read_timeout(Some(PATIENCE)).expect("set timeout");
        match res {
            Ok(0) => true,
            Ok(_) => panic!("unexpected byte while waiting for close"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            Err(e) => panic!("waiting for close: {e}"),
        }
    }

    /// Close abruptly: RST instead of FIN.
    pub fn reset(self) {
        socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO)).expect("linger");
        drop(self.stream);
    }
}

/// How a server ended a connection.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Ending {
    /// A clean end: everything sent was delivered.
    Fin,
    /// A reset: the server gave up on bytes it held.
    Reset,
}

/// `clients` connections to `server` each send a message per round before
/// any reads its echo, for `rounds` rounds: every echo must come back to its
/// own connection, whole and in order.
pub fn assert_interleaved_echo(server: &TestServer, clients: usize, rounds: usize) {
    let mut clients: Vec<Client> = (0..clients).map(|_| server.connect()).collect();
    for round in 0..rounds {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(format!("client {i} round {round}|").as_bytes());
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let want = format!("client {i} round {round}|");
            assert_eq!(c.recv_exact(want.len()), want.as_bytes());
        }
    }
}

/// A child process that is killed when dropped, so a failing test never
/// leaves a host behind (holding ports, and the test's output pipes).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The hio-host binary serving on a free port of 127.0.0.1 in its own
/// process, with its log (drained continuously, so the host never blocks on
/// a full pipe).
pub struct HostProcess {
    pub child: KillOnDrop,
    pub port: u16,
    /// Where its admin endpoint listens (`--admin`), from the ready line.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// Reads the host's stderr into `log` until the host closes it.
    drained: Option<std::thread::JoinHandle<()>>,
}

impl HostProcess {
    /// `hio-host run GUEST --listen 127.0.0.1:0 EXTRA...`
    pub fn spawn(guest_file: &Path, extra: &[&str]) -> HostProcess {
        Self::spawn_under(&[], &[], guest_file, extra)
    }

    /// The same under a wrapper that execs it (e.g. `prlimit --nofile=64:64`),
    /// with more environment variables (e.g. `HIO_LOG`).
    pub fn spawn_under(wrapper: &[&str], env: &[(&str, &str)], guest_file: &Path, extra: &[&str]) -> HostProcess {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(host_binary());
                c
            }
            None => Command::new(host_binary()),
        };
        cmd.args(["run", guest_file.to_str().expect("UTF-8 path"), "--listen", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied());
        Self::launch(cmd)
    }

    /// Start `cmd` (a `hio-host run ...` command line) and wait until it
    /// serves, as a supervisor would: `--ready-fd 1` gives the ready line
    /// on stdout, with the first listen address.
    pub fn launch(mut cmd: Command) -> HostProcess {
        cmd.args(["--ready-fd", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().expect("start hio-host"));
        let mut stderr = BufReader::new(child.0.stderr.take().expect("piped"));
        let log = Arc::new(Mutex::new(String::new()));
        let keep = log.clone();
        let drained = std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
                keep.lock().expect("log lock").push_str(&line);
                line.clear();
            }
        });
        let mut ready = String::new();
        let mut stdout = BufReader::new(child.0.stdout.take().expect("piped"));
        let n = stdout.read_line(&mut ready).expect("read the ready line");
        if n == 0 {
            let _ = child.0.wait();
            let _ = drained.join();
            panic!("host exited before serving:\n{}", log.lock().expect("log lock"));
        }
        let port = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("LISTEN="))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no LISTEN= in the ready line {ready:?}"))
            .port();
        let admin = ready.split_whitespace().find_map(|w| w.strip_prefix("ADMIN=")?.parse().ok());
        HostProcess { child, port, admin, log, drained: Some(drained) }
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr())
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Wait for the host to exit, and for its last log lines to be read
    /// (a pipe still holds them after the exit); fails the test if it is
    /// still running after `within`.
    pub fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait for the host") {
                if let Some(drained) = self.drained.take() {
                    eventually("the host's last log lines", || drained.is_finished());
                }
                return status;
            }
            assert!(start.elapsed() < within, "the host did not exit within {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send a signal by name (`HUP`, `TERM`...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.0.id().to_string()).status();
        assert!(ok.expect("run kill").success(), "kill -{sig} failed");
    }

    /// A `Vm*` line of /proc/PID/status in KiB (`VmRSS` now, `VmHWM` the peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).expect("host status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

/// Run `cmd` to its end, its stdout and stderr captured; if it is still
/// running after `within` it is killed and `None` returned (a server that
/// should have refused to start must not hang the test).
pub fn output_within(cmd: &mut Command, within: Duration) -> Option<std::process::Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command");
    let start = Instant::now();
    while child.try_wait().expect("wait for the command").is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(child.wait_with_output().expect("collect the command's output"))
}

/// Poll `cond` until it holds or `PATIENCE` runs out.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The Python with the real hio installed (set up by `cargo xtask test`).
pub fn hio_python() -> PathBuf {
    let path =
        std::env::var_os("HIO_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join("target/pyenv/bin/python"));
    assert!(path.exists(), "{} is missing: `cargo xtask test` creates a venv with hio==0.6.10", path.display());
    path
}
