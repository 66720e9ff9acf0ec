//! `hio-host run GUEST.wasm`: serve a guest component.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hio_host::tls::{self, Certify, TlsConfig, TlsVersion};
use hio_host::{Config, acceptor};

#[derive(Parser)]
#[command(name = "hio-host", version, about = "Serve TCP with hio's Server logic running in a sandboxed wasm guest")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Say whether GUEST fits this host (its imports and exports), without serving.
    Check {
        /// The guest component (.wasm).
        guest: PathBuf,
    },
    /// Open the listen socket and serve connections with GUEST's policy.
    /// SIGHUP re-reads GUEST and hot-swaps it in; SIGINT/SIGTERM close and exit.
    Run(Box<RunArgs>),
}

#[derive(Parser)]
struct RunArgs {
    /// The guest component (.wasm) holding the Server logic, e.g. target/wasm/echo.wasm.
    guest: PathBuf,
    /// Listen address HOST:PORT, [IPV6]:PORT or :PORT (all IPv4 interfaces).
    /// Port 0 picks a free port, which is logged.
    #[arg(long, default_value = "127.0.0.1:56000", value_name = "HOST:PORT")]
    listen: String,
    /// Close a connection idle this many seconds (nothing received, nothing
    /// sent, nothing waiting to be sent: a peer that stops reading its
    /// replies is bounded by --send-timeout instead); 0 never closes.
    #[arg(long, default_value_t = hio_host::DEFAULT_TYMEOUT, value_name = "SECS", allow_negative_numbers = true)]
    tymeout: f64,
    /// Reset a connection whose peer takes none of the output queued for it
    /// for this many seconds (it stopped reading); 0: never.
    #[arg(long, value_name = "SECS", default_value_t = hio_host::DEFAULT_SEND_TIMEOUT, allow_negative_numbers = true)]
    send_timeout: f64,
    /// Reset a connection the guest closed whose peer takes no byte of what
    /// is left to send (queued, then in the kernel) for this many seconds (> 0).
    #[arg(long, value_name = "SECS", default_value_t = hio_host::DEFAULT_LINGER, allow_negative_numbers = true)]
    linger: f64,
    /// Longest sleep between guest cycles when nothing happens. Readiness and
    /// the guest's own tymers wake it sooner; idle connections cost nothing.
    #[arg(long, default_value_t = hio_host::DEFAULT_TOCK, value_name = "SECS", allow_negative_numbers = true)]
    tock: f64,
    /// Socket send/receive buffer size to raise to, and the guest's read size (hio's bs).
    #[arg(long, default_value_t = acceptor::DEFAULT_BS, value_name = "BYTES")]
    bs: u32,
    /// Listen backlog (hio's bl).
    #[arg(long, default_value_t = acceptor::DEFAULT_BL, value_name = "N")]
    bl: u32,
    /// Write hio-format wire logs of every byte received (rx.log) and sent (tx.log) into DIR.
    #[arg(long, value_name = "DIR")]
    wirelog: Option<PathBuf>,
    /// Hot-swap the guest whenever GUEST changes on disk (SIGHUP swaps on demand).
    #[arg(long)]
    watch: bool,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to. Without it,
    /// client certificates are checked against the system trust store (as hio).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates; repeat for
    /// more files. A revoked client is refused, on full handshakes and on
    /// session resumption; with CRLs, every certificate of a client's chain
    /// below the CA must be covered by one. Read again on SIGHUP.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_crl: Vec<PathBuf>,
    /// Client certificates: none (not asked for), optional (checked if sent),
    /// required (hio's default).
    #[arg(long, value_name = "MODE", default_value = "required", requires = "tls_cert")]
    certify: Certify,
    /// Only this TLS version (1.2 or 1.3); both by default.
    #[arg(long, value_name = "VERSION", requires = "tls_cert")]
    tls_version: Option<TlsVersion>,
    /// ALPN protocols to offer, comma-separated, in preference order.
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "tls_cert")]
    alpn: Vec<String>,
    /// Compile the guest every time instead of using the compiled-guest cache
    /// ($HIO_CACHE_DIR, else $XDG_CACHE_HOME/hio-host, else ~/.cache/hio-host).
    #[arg(long)]
    no_cache: bool,
    /// Most connections held at once; beyond it new ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = hio_host::DEFAULT_MAX_CONNS)]
    max_conns: usize,
    /// Most bytes, in MiB, held across all connections (received and not yet
    /// consumed, queued and not yet sent); at it the host stops reading from
    /// peers that hold 4 KiB or more until bytes drain (peers that read their
    /// replies keep being served), and a guest queuing past twice it is told `full`.
    #[arg(long, value_name = "MIB", default_value_t = hio_host::DEFAULT_MAX_BUFFERED >> 20)]
    max_buffered_mib: usize,
    /// A crashed guest is restarted after a back-off (10 ms, doubling up to
    /// 5 s) with every connection handed over; after this many failures in a
    /// row the host gives up: closes everything and exits 1. 0: never give up.
    #[arg(long, value_name = "N", default_value_t = hio_host::DEFAULT_MAX_RESTARTS)]
    max_restarts: u32,
    /// Event loops, each on its own thread with its own listen socket on the
    /// same address (SO_REUSEPORT), its own guest instance and its own
    /// connections (1 to 1024). --max-conns and --max-buffered-mib are split
    /// between them; --wirelog writes DIR/worker-N. Another process on the
    /// same address is refused, whatever its workers.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
    /// Longest one call into the guest may run before it is stopped (and restarted).
    #[arg(long, value_name = "MS", default_value_t = 100)]
    deadline_ms: u64,
    /// Fuel (about one unit per wasm instruction) each call into the guest may
    /// burn before it is stopped and restarted; off by default (metering
    /// slows guest code). A bound on work that does not depend on machine load.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
    /// Largest linear memory a guest may grow to, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    guest_memory_mib: usize,
    /// Abort a TLS handshake not finished within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = tls::DEFAULT_HANDSHAKE_TIMEOUT, allow_negative_numbers = true, requires = "tls_cert")]
    handshake_timeout: f64,
}

fn main() -> ExitCode {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HIO_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => serve(*args),
        Cmd::Check { guest } => check(&guest),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hio-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Buffers of a few hundred KiB (a burst's bytes, lifted out of the guest
/// and queued) come and go many times a second. By default glibc gives the
/// top of its heap back to the kernel as soon as 2x the last such buffer is
/// free there, and the next buffer then starts on fresh, zeroed pages: in
/// bench (c) the page faults tripled the host's kernel time. Fixed
/// thresholds keep up to 16 MiB of freed heap for reuse (a bounded amount,
/// unlike an allocator that keeps whole segments per thread).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

fn check(guest: &std::path::Path) -> anyhow::Result<()> {
    let c = hio_host::check(guest)?;
    println!("imports: {}", if c.imports.is_empty() { "(none)".into() } else { c.imports.join(", ") });
    println!("exports: {}", if c.exports.is_empty() { "(none)".into() } else { c.exports.join(", ") });
    if c.problems.is_empty() {
        println!("{} fits the hio:tcp/server world", guest.display());
        return Ok(());
    }
    for p in &c.problems {
        println!("problem: {p}");
    }
    anyhow::bail!("{} does not fit the hio:tcp/server world", guest.display())
}

/// Every connection is a descriptor: take the hard limit, and say so when
/// even that is below --max-conns (connections beyond it are then refused
/// as they arrive, never left hanging).
fn raise_descriptor_limit(max_conns: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < max_conns.saturating_add(64) => tracing::warn!(
            nofile = limit,
            max_conns,
            "the descriptor limit is below --max-conns; beyond it new connections are refused"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
}

fn serve(args: RunArgs) -> anyhow::Result<()> {
    let mut config = Config::new(args.guest);
    config.ha = acceptor::parse_ha(&args.listen)?;
    config.tymeout = args.tymeout;
    config.tock = args.tock;
    config.send_timeout = args.send_timeout;
    config.linger = args.linger;
    config.bs = args.bs;
    config.bl = args.bl;
    config.wirelog = args.wirelog;
    config.watch = args.watch;
    config.max_conns = args.max_conns;
    config.max_buffered = args.max_buffered_mib.saturating_mul(1 << 20);
    config.max_restarts = args.max_restarts;
    if args.no_cache {
        config.cache = None;
    }
    config.limits = hio_host::Limits {
        deadline: std::time::Duration::from_millis(args.deadline_ms),
        memory: args.guest_memory_mib.saturating_mul(1 << 20),
        fuel: args.fuel,
    };
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        let mut tls = TlsConfig::new(cert, key);
        tls.client_ca = args.client_ca;
        tls.client_crls = args.client_crl;
        tls.certify = args.certify;
        tls.version = args.tls_version;
        tls.alpn = args.alpn;
        tls.handshake_timeout = args.handshake_timeout;
        config.tls = Some(tls);
    }
    raise_descriptor_limit(config.max_conns);
    hio_host::pool::run(config, args.workers.into(), true)
}
