#![warn(missing_docs)]
//! Test an hio-host guest in the real host, from `cargo test`.
//!
//! [`TestHost`] serves a built component on a free loopback port, on a
//! thread of its own, on virtual tyme (it moves only when the test says
//! so); [`Peer`]s are real TCP connections. A test reads like the
//! behaviour:
//!
//! ```no_run
//! use hio_test::TestHost;
//!
//! let host = TestHost::start(hio_test::build_this_crate());
//! let mut peer = host.connect();
//! peer.send(b"hello\n");
//! peer.expect(b"1: hello\n");
//! host.swap(hio_test::build_this_crate()); // state carried over
//! host.crash();                             // as a trap would: state lost, bytes kept
//! host.advance(31.0);                       // past the idle tymeout
//! peer.expect_closed();
//! ```
//!
//! Every wait is bounded by [`PATIENCE`]; a failed expectation panics with
//! what was expected and what came. TLS: [`pki`] makes certificates and
//! client configurations; [`TestHost::connect_tls`] gives a TLS peer.

pub mod pki;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hio_host::stats::Stats;
use hio_host::{Config, Server, Stopper, SwapReport, Swapper, VirtualTyme};

pub use hio_host;

/// How long any expectation waits before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Build the crate whose tests are running (`CARGO_MANIFEST_DIR`) into a
/// component, once per test process; returns its path
/// (`target/wasm/NAME.wasm`). Uses rustup's wasm target or Debian's
/// toolchain ([`hio_build::Toolchain::find`]). Panics when the build fails,
/// with cargo's errors above.
pub fn build_this_crate() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set: run under cargo")?;
            build(Path::new(&dir)).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("cannot build the guest: {e}"))
}

/// Build the guest crate at `dir` into a component
/// (`TARGET/wasm/NAME.wasm`, as `hio-host build` does); returns its path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let toolchain = hio_build::Toolchain::find()?;
    eprintln!("hio-test: building {} into a component (as `hio-host build` does)", dir.display());
    // In TARGET/hio-wasm, shared with `hio-host build`, and not where the
    // `cargo test` running us holds its lock.
    let mut built = hio_build::build(&hio_build::Build::new(dir), &toolchain)?;
    anyhow::ensure!(
        built.len() == 1,
        "{} builds {} components; name one with TestHost::start",
        dir.display(),
        built.len()
    );
    Ok(built.remove(0))
}

/// A host serving one guest, stopped (and checked) when dropped.
pub struct TestHost {
    addr: SocketAddr,
    tyme: VirtualTyme,
    stats: Arc<Stats>,
    swapper: Swapper,
    stopper: Stopper,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestHost {
    /// Serve `guest` with the defaults of `hio-host run` on virtual tyme
    /// starting at 0.0 s. Panics when it cannot start (with the reason).
    pub fn start(guest: impl AsRef<Path>) -> TestHost {
        TestHost::start_with(guest, |_| {})
    }

    /// Serve `guest` with settings changed by `tweak` (e.g. `c.tymeout`,
    /// in seconds; `c.tls`). Tyme is virtual unless `tweak` sets
    /// `c.virtual_tyme = None`.
    pub fn start_with(guest: impl AsRef<Path>, tweak: impl FnOnce(&mut Config)) -> TestHost {
        let tyme = VirtualTyme::new(0.0);
        let mut config = Config::new(guest.as_ref());
        config.ha = SocketAddr::from(([127, 0, 0, 1], 0));
        config.virtual_tyme = Some(tyme.clone());
        // Cycles every 10 ms of real time, so `advance` is seen at once.
        config.tock = 0.01;
        tweak(&mut config);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let mut server = match Server::open(config) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    return Ok(());
                }
            };
            let _ = tx.send(Ok((server.local_addr(), server.stopper(), server.swapper(), server.stats())));
            server.run()
        });
        match rx.recv() {
            Ok(Ok((addr, stopper, swapper, stats))) => {
                TestHost { addr, tyme, stats, swapper, stopper, thread: Some(thread) }
            }
            Ok(Err(e)) => panic!("the host did not start: {e}"),
            Err(_) => panic!("the host's thread died while starting"),
        }
    }

    /// Where it listens (127.0.0.1, a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new peer connected to it.
    pub fn connect(&self) -> Peer {
        Peer::connect(self.addr)
    }

    /// A new TLS peer (a host started with `c.tls`), its handshake done;
    /// `client` from [`pki::Pki::client`]. Panics if the handshake fails
    /// (in TLS 1.3 the server's refusal of a client certificate only shows
    /// on the first read: `expect_reset` or `end` then).
    pub fn connect_tls(&self, client: Arc<rustls::ClientConfig>) -> Peer {
        let tls = pki::TlsClient::connect(self.addr, client).unwrap_or_else(|e| panic!("TLS handshake failed: {e}"));
        Peer { wire: Wire::Tls(Box::new(tls.tls)) }
    }

    /// The guest's tyme now, in seconds.
    pub fn tyme(&self) -> f64 {
        self.tyme.tyme()
    }

    /// Move tyme `secs` seconds on and wait until the guest has run a
    /// cycle that saw it (its tymers and idle tymeouts fire).
    pub fn advance(&self, secs: f64) {
        self.tyme.tick(secs);
        self.cycles(2);
    }

    /// Wait until the guest has run `n` more cycles.
    pub fn cycles(&self, n: u64) {
        let want = self.stats.guest_cycles.get() + n;
        wait_for("the guest's cycles", || self.stats.guest_cycles.get() >= want);
    }

    /// Hot-swap to `guest` (a new build of the same policy, or another);
    /// returns the report. Panics when the host refuses it (the old guest
    /// then keeps serving), with why.
    #[track_caller]
    pub fn swap(&self, guest: impl AsRef<Path>) -> SwapReport {
        match self.try_swap(guest) {
            Ok(report) => report,
            Err(e) => panic!("the swap was refused: {e}"),
        }
    }

    /// Hot-swap to `guest`; `Err` with why it was refused.
    pub fn try_swap(&self, guest: impl AsRef<Path>) -> Result<SwapReport, String> {
        let outcome = self.swapper.swap(Some(guest.as_ref().to_path_buf())).recv_timeout(PATIENCE * 6);
        outcome.unwrap_or_else(|_| Err("no answer from the host".into()))
    }

    /// Make the guest fail as a trap would: its instance and memory are
    /// dropped (no `save`), a new one starts with every connection and
    /// unconsumed byte. Returns once the new one has run a cycle.
    pub fn crash(&self) {
        let starts = self.stats.guest_starts.get();
        self.swapper.crash_guest();
        wait_for("the guest to restart", || self.stats.guest_starts.get() > starts);
        self.cycles(1);
    }

    /// The host's counters: `connections`, `accepted`, `guest_starts`,
    /// `guest_restarts`, `guest_failures`, `swaps_ok`, `bytes_received`...
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Drain as on SIGTERM and wait for the host to finish (the guest sees
    /// `draining`); panics if the run ended in an error.
    pub fn drain(mut self) {
        self.stopper.drain();
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the host ended with an error: {e:#}"),
                Err(_) => panic!("the host's thread panicked"),
            }
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stopper.stop();
        if !std::thread::panicking() {
            self.join();
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A peer: one real TCP connection to the host, plain or TLS.
pub struct Peer {
    wire: Wire,
}

/// A peer's byte stream.
enum Wire {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

impl Peer {
    /// Connect to `addr`. Panics if it cannot.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_read_timeout(Some(PATIENCE)).expect("a read timeout");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Peer { wire: Wire::Plain(stream) }
    }

    /// This peer's address (the guest's `ca` for it).
    pub fn addr(&self) -> SocketAddr {
        self.socket().local_addr().expect("a local address")
    }

    fn socket(&self) -> &TcpStream {
        match &self.wire {
            Wire::Plain(s) => s,
            Wire::Tls(s) => &s.sock,
        }
    }

    /// Send `bytes` (all of them).
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.wire.write_all(bytes).and_then(|_| self.wire.flush()).unwrap_or_else(|e| panic!("cannot send: {e}"));
    }

    /// Expect exactly `want` next, within [`PATIENCE`].
    #[track_caller]
    pub fn expect(&mut self, want: &[u8]) {
        match self.read_exactly(want.len()) {
            Ok(got) if got == want => {}
            Ok(got) => panic!("expected {:?}, got {:?}", lossy(want), lossy(&got)),
            Err((got, why)) => panic!("expected {:?}, got {:?}, then {why}", lossy(want), lossy(&got)),
        }
    }

    /// Receive exactly `n` bytes. Panics on an end, a reset or
    /// [`PATIENCE`] passing first.
    #[track_caller]
    pub fn recv(&mut self, n: usize) -> Vec<u8> {
        self.read_exactly(n).unwrap_or_else(|(got, why)| panic!("wanted {n} bytes, got {:?}, then {why}", lossy(&got)))
    }

    /// `n` bytes, or those that came and why no more did.
    fn read_exactly(&mut self, n: usize) -> Result<Vec<u8>, (Vec<u8>, String)> {
        let mut got = vec![0; n];
        let mut have = 0;
        while have < n {
            match self.wire.read(&mut got[have..]) {
                Ok(0) => return Err((got[..have].to_vec(), "the connection ended".into())),
                Ok(k) => have += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err((got[..have].to_vec(), format!("nothing more for {PATIENCE:?}")));
                }
                Err(e) => return Err((got[..have].to_vec(), format!("the connection failed: {e}"))),
            }
        }
        Ok(got)
    }

    /// Receive up to and including the next `\n`, as text.
    #[track_caller]
    pub fn recv_line(&mut self) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            match self.read_exactly(1) {
                Ok(b) => line.extend(b),
                Err((_, why)) => panic!("wanted a line, got {:?}, then {why}", lossy(&line)),
            }
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Expect the host to end the connection cleanly (FIN) with nothing
    /// more before it.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        assert_eq!(self.end(), End::Closed(Vec::new()), "expected a clean end");
    }

    /// Expect the host to reset the connection.
    #[track_caller]
    pub fn expect_reset(&mut self) {
        assert!(matches!(self.end(), End::Reset(_)), "expected a reset");
    }

    /// Read until the connection ends: how it ended, and what came first.
    #[track_caller]
    pub fn end(&mut self) -> End {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.wire.read(&mut buf) {
                Ok(0) => return End::Closed(got),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return End::Reset(got),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("the connection did not end within {PATIENCE:?} (after {:?})", lossy(&got))
                }
                Err(e) => panic!("the connection failed after {:?}: {e}", lossy(&got)),
            }
        }
    }

    /// Half-close: this peer sends no more (TLS: close_notify; then FIN),
    /// and still reads.
    pub fn finish_sending(&mut self) {
        if let Wire::Tls(s) = &mut self.wire {
            s.conn.send_close_notify();
            s.flush().unwrap_or_else(|e| panic!("cannot send close_notify: {e}"));
        }
        self.socket().shutdown(Shutdown::Write).unwrap_or_else(|e| panic!("cannot half-close: {e}"));
    }

    /// The TCP socket, for anything else (under TLS, the ciphertext's).
    pub fn socket_mut(&mut self) -> &mut TcpStream {
        match &mut self.wire {
            Wire::Plain(s) => s,
            Wire::Tls(s) => &mut s.sock,
        }
    }
}

/// How a connection ended, with the bytes that came before.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A FIN: the host closed it.
    Closed(Vec<u8>),
    /// A reset: the host gave up on it.
    Reset(Vec<u8>),
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
