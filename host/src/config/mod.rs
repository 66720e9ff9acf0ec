//! Everything a server is opened with, in one type: the library's
//! [`Config`] is also the `hio-host run` command line (each field's doc is
//! its `--help` text), and it is checked in one place, [`Config::validate`].
//! hio's names (ha, bs, bl, tymeout, tock, wirelog) are kept; see the
//! README's table.

pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::net::acceptor;
use crate::net::conn::StallLimits;
use crate::net::tls::TlsConfig;
use crate::tyme::{VirtualTyme, seconds};

/// Default idle tymeout, in seconds. hio's Server means 1.0 s (and by a bug
/// really runs with 0, i.e. never); a production server closes idle peers,
/// but 1 s would cut off any client that pauses, so the default is 30 s.
pub const DEFAULT_TYMEOUT: f64 = 30.0;
/// Default for [`Config::tock`], in seconds.
pub const DEFAULT_TOCK: f64 = 1.0;
/// Default connection cap: well under the usual 20k-65k descriptor limits.
pub const DEFAULT_MAX_CONNS: usize = 10_000;
/// Default for [`Config::max_restarts`].
pub const DEFAULT_MAX_RESTARTS: u32 = 8;
/// Default for [`Config::send_timeout`], in seconds: long enough for a peer
/// that pauses, short enough that peers that stop reading cannot hold
/// connection slots and buffers for long (nginx's `send_timeout` is 60 s).
pub const DEFAULT_SEND_TIMEOUT: f64 = 30.0;
/// Default for [`Config::linger`], in seconds.
pub const DEFAULT_LINGER: f64 = 10.0;
/// Default for [`Config::drain_timeout`], in seconds: under the 30 s that
/// Kubernetes (`terminationGracePeriodSeconds`) and many supervisors wait
/// after SIGTERM before SIGKILL, so what is left is reset, counted and
/// logged by the host rather than cut by the kill; systemd waits 90 s.
pub const DEFAULT_DRAIN_TIMEOUT: f64 = 25.0;
/// Default bound on bytes held across a server's connections: a generous
/// working set, far below the 10 GiB that 10,000 connections at their
/// per-connection marks could otherwise hold.
pub const DEFAULT_MAX_BUFFERED: usize = 256 << 20;

/// Everything needed to open a server; `Config::new(guest)` gives hio's
/// defaults (the same as the command line's).
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// The guest component (.wasm) holding the Server logic, e.g. target/wasm/echo.wasm.
    #[arg(value_name = "GUEST")]
    pub guest: PathBuf,
    /// Listen address (hio's ha): HOST:PORT (an IPv6 host in brackets) or :PORT (all IPv4
    /// interfaces); HOST alone means port 56000. Port 0 picks a free port,
    /// which is logged.
    #[arg(long = "listen", value_name = "HOST:PORT", default_value = "127.0.0.1:56000", value_parser = address)]
    pub ha: SocketAddr,
    /// Close a connection idle this many seconds (nothing received, nothing
    /// sent, nothing its peer has yet to take: a peer that stops reading its
    /// replies is bounded by --send-timeout instead); 0 never closes.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TYMEOUT, allow_negative_numbers = true)]
    pub tymeout: f64,
    /// Reset a connection whose peer takes none of the output queued for it
    /// for this many seconds (it stopped reading); 0: never.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SEND_TIMEOUT, allow_negative_numbers = true)]
    pub send_timeout: f64,
    /// Reset a connection the guest closed whose peer takes no byte of what
    /// is left to send (queued, then in the kernel) for this many seconds (> 0).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LINGER, allow_negative_numbers = true)]
    pub linger: f64,
    /// On SIGTERM or SIGINT (or `Server::drain`): stop accepting (new peers
    /// are refused), tell the guest (`host.draining`), keep serving the
    /// connections held until they end or this many seconds pass, then reset
    /// what is left and exit; a second signal ends the drain at once. 0: no
    /// drain, close at once (connections with bytes undelivered are reset).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_DRAIN_TIMEOUT, allow_negative_numbers = true)]
    pub drain_timeout: f64,
    /// Longest sleep between guest cycles when nothing happens, in seconds.
    /// Readiness and the guest's own tymers wake it sooner; idle connections
    /// cost nothing.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TOCK, allow_negative_numbers = true)]
    pub tock: f64,
    /// Socket send/receive buffer size to raise to, and the guest's read size (hio's bs), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = acceptor::DEFAULT_BS)]
    pub bs: u32,
    /// Listen backlog (hio's bl).
    #[arg(long, value_name = "N", default_value_t = acceptor::DEFAULT_BL)]
    pub bl: u32,
    /// Write hio-format wire logs of every byte received (rx.log) and sent (tx.log) into DIR.
    #[arg(long, value_name = "DIR")]
    pub wirelog: Option<PathBuf>,
    /// Hot-swap the guest whenever its file changes on disk (SIGHUP swaps on demand).
    #[arg(long)]
    pub watch: bool,
    /// Read a PROXY protocol header (v1 or v2, as HAProxy's send-proxy and
    /// send-proxy-v2 write it) at the start of every connection, before
    /// anything else (TLS included): the guest sees the client it names as
    /// `ca`, and the balancer as `proxied-by`. A connection whose header is
    /// malformed, over 1 KiB, or not whole within 5 s (the TLS handshake
    /// timeout on a TLS server) is closed with a log line. Only for
    /// listeners that nothing but the balancer can reach: the header is
    /// believed.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Terminate TLS (hio's ServerTls) with these files and options.
    #[command(flatten)]
    pub tls: Option<TlsConfig>,
    /// What each guest instance may use.
    #[command(flatten)]
    pub limits: Limits,
    /// Most connections held at once (at least 1); beyond it new ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS)]
    pub max_conns: usize,
    /// Most bytes held across all connections (received and not yet
    /// consumed, queued and not yet sent), given in MiB; at it the host stops
    /// reading from peers that hold 4 KiB or more until bytes drain (peers
    /// that read their replies keep being served), and a guest queuing past
    /// twice it is told `full`.
    #[arg(long = "max-buffered-mib", value_name = "MIB", default_value = "256", value_parser = mebibytes)]
    pub max_buffered: usize,
    /// A crashed guest is restarted after a back-off (10 ms, doubling up to
    /// 5 s) with every connection handed over; after this many failures in a
    /// row the host gives up: closes everything and exits 1. 0: never give up.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RESTARTS)]
    pub max_restarts: u32,
    /// Directory of compiled guests (`None`: compile every time). The
    /// command line's `--no-cache` sets it to `None`.
    #[arg(skip = default_cache_dir())]
    pub cache: Option<PathBuf>,
    /// Drive tyme by hand instead of by the real clock (tests).
    #[arg(skip)]
    pub virtual_tyme: Option<VirtualTyme>,
    /// Let other listeners of this process bind `ha` too (SO_REUSEPORT), as workers do.
    #[arg(skip)]
    pub reuse_port: bool,
}

impl Config {
    /// hio's defaults (those of `hio-host run`) for serving the component at `guest`.
    pub fn new(guest: impl Into<PathBuf>) -> Config {
        Config {
            guest: guest.into(),
            ha: SocketAddr::from(([127, 0, 0, 1], acceptor::DEFAULT_PORT)),
            bs: acceptor::DEFAULT_BS,
            bl: acceptor::DEFAULT_BL,
            tymeout: DEFAULT_TYMEOUT,
            tock: DEFAULT_TOCK,
            wirelog: None,
            virtual_tyme: None,
            watch: false,
            tls: None,
            limits: Limits::default(),
            max_conns: DEFAULT_MAX_CONNS,
            cache: default_cache_dir(),
            max_buffered: DEFAULT_MAX_BUFFERED,
            max_restarts: DEFAULT_MAX_RESTARTS,
            reuse_port: false,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            linger: DEFAULT_LINGER,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            proxy_protocol: false,
        }
    }

    /// Every check a server's settings must pass, with one clear error for
    /// the first that fails.
    pub fn validate(&self) -> Result<()> {
        seconds("tymeout", self.tymeout, true)?;
        self.drain_period()?;
        self.tock_period()?;
        self.stall_limits()?;
        if self.max_conns == 0 {
            bail!("max-conns must be at least 1");
        }
        if self.max_buffered < (1 << 20) {
            bail!("the bound on buffered bytes must be at least 1 MiB");
        }
        self.limits.validate()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// [`Config::drain_timeout`] as a duration; `None` for no drain.
    pub(crate) fn drain_period(&self) -> Result<Option<Duration>> {
        let d = seconds("drain timeout", self.drain_timeout, true)?;
        Ok((!d.is_zero()).then_some(d))
    }

    /// [`Config::tock`] as a duration.
    pub(crate) fn tock_period(&self) -> Result<Duration> {
        seconds("tock", self.tock, false)
    }

    /// The bounds on peers that do not take their output.
    pub(crate) fn stall_limits(&self) -> Result<StallLimits> {
        let send_timeout = seconds("send timeout", self.send_timeout, true)?;
        let linger = seconds("linger", self.linger, false)?;
        Ok(StallLimits { send_timeout: (!send_timeout.is_zero()).then_some(send_timeout), linger })
    }
}

/// What one guest instance may use. A guest that exceeds a limit traps; the
/// host restarts it and hands it every connection, so no byte is lost.
#[derive(Clone, Debug, clap::Args)]
pub struct Limits {
    /// Longest one call into the guest (start, service, save) may run before
    /// it is stopped (and restarted), given in milliseconds: a guest cannot
    /// stall the event loop for longer.
    #[arg(long = "deadline-ms", value_name = "MS", default_value = "100", value_parser = milliseconds)]
    pub deadline: Duration,
    /// Largest linear memory a guest may grow to, given in MiB.
    #[arg(long = "guest-memory-mib", value_name = "MIB", default_value = "64", value_parser = mebibytes)]
    pub memory: usize,
    /// Fuel (about one unit per wasm instruction) each call into the guest may
    /// burn before it is stopped and restarted: a bound on work that, unlike
    /// the deadline, does not depend on machine load. Off by default
    /// (metering slows guest code).
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { deadline: Duration::from_millis(100), memory: 64 << 20, fuel: None }
    }
}

/// The longest deadline a guest call may have: beyond it a guest that loops
/// would hold the event loop (and the signals that stop it) for longer
/// than any operator wants.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

impl Limits {
    /// Check every setting as `Server::open` does (seconds in range, TLS
    /// files named together...); the error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.deadline.is_zero() || self.memory < (1 << 20) {
            bail!("guest limits too small: deadline must be > 0 and memory at least 1 MiB");
        }
        if self.deadline > MAX_DEADLINE {
            bail!("the guest deadline must be at most {} ms", MAX_DEADLINE.as_millis());
        }
        if self.fuel == Some(0) {
            bail!("guest fuel must be more than 0 (or off)");
        }
        Ok(())
    }
}

/// Where compiled guests are kept: `$HIO_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/hio-host`, else `~/.cache/hio-host`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HIO_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("hio-host"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hio-host"))
}

/// A duration given in whole milliseconds.
fn milliseconds(text: &str) -> Result<Duration, String> {
    text.parse().map(Duration::from_millis).map_err(|e| format!("{e}"))
}

/// `--listen`: hio's ha.
fn address(text: &str) -> Result<SocketAddr, String> {
    acceptor::parse_ha(text).map_err(|e| format!("{e:#}"))
}

/// A size given in MiB, in bytes.
fn mebibytes(text: &str) -> Result<usize, String> {
    let mib: usize = text.parse().map_err(|e| format!("{e}"))?;
    mib.checked_mul(1 << 20).ok_or_else(|| format!("{mib} MiB is too many bytes"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn the_command_line_defaults_are_the_library_defaults() {
        let parsed = Cli::try_parse_from(["hio-host", "g.wasm"]).unwrap().config;
        let built = Config::new("g.wasm");
        assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
    }

    #[test]
    fn flags_fill_the_config_in_its_own_units() {
        let args = [
            "hio-host",
            "g.wasm",
            "--listen",
            ":7",
            "--max-buffered-mib",
            "4",
            "--deadline-ms",
            "50",
            "--guest-memory-mib",
            "16",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--certify",
            "optional",
            "--tls-version",
            "1.3",
            "--alpn",
            "h2,http/1.1",
            "--client-crl",
            "a.crl",
            "--client-crl",
            "b.crl",
        ];
        let c = Cli::try_parse_from(args).unwrap().config;
        assert_eq!(c.ha, "0.0.0.0:7".parse().unwrap());
        assert_eq!(c.max_buffered, 4 << 20);
        assert_eq!((c.limits.deadline, c.limits.memory), (Duration::from_millis(50), 16 << 20));
        let tls = c.tls.expect("TLS flags make a TLS config");
        assert_eq!(
            (tls.certify, tls.version),
            (crate::net::tls::Certify::Optional, Some(crate::net::tls::TlsVersion::Tls13))
        );
        assert_eq!(tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(tls.client_crls.len(), 2);
        assert!(
            Cli::try_parse_from(["hio-host", "g.wasm", "--tls-cert", "c.pem"]).is_err(),
            "a certificate needs its key"
        );
    }

    #[test]
    fn validate_names_the_setting_that_is_wrong() {
        type Spoil = fn(&mut Config);
        let cases: [(&str, Spoil); 5] = [
            ("tymeout", |c| c.tymeout = -1.0),
            ("tock", |c| c.tock = 0.0),
            ("linger", |c| c.linger = 0.0),
            ("max-conns", |c| c.max_conns = 0),
            ("send timeout", |c| c.send_timeout = 1e30),
        ];
        for (name, spoil) in cases {
            let mut c = Config::new("g.wasm");
            spoil(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
        assert!(Config::new("g.wasm").validate().is_ok());
    }
}
