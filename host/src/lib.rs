//! hio-host: hio's non-blocking TCP server (`hio.core.tcp.serving`) with the
//! sockets in a native mio host and the Server logic in a sandboxed wasm
//! guest component.
//!
//! ```no_run
//! let mut server = hio_host::Server::open(hio_host::Config::new("target/wasm/echo.wasm"))?;
//! server.run()?; // until a Stopper or signal stops it; closes everything
//! # anyhow::Ok(())
//! ```

pub mod config;
mod guest;
mod net;
mod server;
pub mod stats;
pub mod tyme;

pub use net::{acceptor, tls};
pub use server::pool;

pub use config::{
    Config, DEFAULT_LINGER, DEFAULT_MAX_BUFFERED, DEFAULT_MAX_CONNS, DEFAULT_MAX_RESTARTS, DEFAULT_SEND_TIMEOUT,
    DEFAULT_TOCK, DEFAULT_TYMEOUT, Limits,
};
pub use guest::Check;

/// Whether the component at `path` fits this host (`hio-host check`), without serving.
pub fn check(path: &std::path::Path) -> anyhow::Result<Check> {
    guest::Runtime::new(Limits::default(), config::default_cache_dir())?.check(path)
}
pub use guest::swap::{SwapOutcome, SwapReport, Swapper};
pub use server::{Server, Stopper};
pub use tyme::VirtualTyme;
