//! hio-host: hio's non-blocking TCP server (`hio.core.tcp.serving`) with the
//! sockets in a native mio host and the Server logic in a sandboxed wasm
//! guest component. hio's names (ha, ca, ixes, tymeout...) and where each
//! lives here are in the README's table.
//!
//! ```no_run
//! let mut server = hio_host::Server::open(hio_host::Config::new("target/wasm/echo.wasm"))?;
//! server.run()?; // until drained or stopped (a Stopper, or signals); closes everything
//! # anyhow::Ok(())
//! ```
//!
//! The modules, from the bottom up (each uses only those above it):
//!
//! - [`tyme`]: the clock guests read (real or virtual) and settings in seconds
//! - [`stats`]: counters of what the host did about misbehaving peers and guests
//! - `net`: sockets and TLS: the listen socket ([`acceptor`]), one
//!   connection with its buffers, transport and output looks (`net::conn`),
//!   TLS configuration and peer identity ([`tls`]), the bounds on what
//!   connections hold (`net::backpressure`), wire logs
//! - [`config`]: everything a server is opened with, which is also the
//!   command line, and where its settings come from (flags, `HIO_*`
//!   variables, a TOML file: [`config::file`])
//! - `state`: what the host holds across guests (`HostState`): connections,
//!   the lists of what changed, what a guest is lent and whose bytes crash
//!   it, how connections end
//! - `guest`: running guest components (runtime, limits), their lifecycle
//!   (the supervisor: crash, back-off, restart, hot swap), and the WIT glue
//! - `server`: the event loop ([`Server`]) with its drain, admission,
//!   workers ([`pool`]), reports to a supervisor ([`Notifier`]: systemd's
//!   `sd_notify`, `--ready-fd`), the admin endpoint (health, status,
//!   metrics, swaps), binary upgrades (takeover)

#![warn(missing_docs)]

pub mod config;
mod guest;
mod net;
mod server;
mod state;
pub mod stats;
pub mod tyme;

pub use net::{acceptor, tls};
pub use server::{admin, pool};

pub use config::{
    Config, DEFAULT_DRAIN_TIMEOUT, DEFAULT_LINGER, DEFAULT_MAX_BUFFERED, DEFAULT_MAX_CONNS, DEFAULT_MAX_RESTARTS,
    DEFAULT_SEND_TIMEOUT, DEFAULT_TOCK, DEFAULT_TYMEOUT, Limits,
};
pub use guest::Check;
pub use guest::swap::{SwapOutcome, SwapReport, Swapper};
pub use server::notify::Notifier;
pub use server::{Server, Stopper};
pub use tyme::VirtualTyme;

/// Whether the component at `path` fits this host (`hio-host check`), without serving.
pub fn check(path: &std::path::Path) -> anyhow::Result<Check> {
    guest::Runtime::new(Limits::default(), config::default_cache_dir())?.check(path)
}
