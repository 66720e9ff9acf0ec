//! Write hio-host guests the way hio's Server is written.
//!
//! A guest author implements [`Service`] (at least [`Service::received`])
//! and exports it with [`export_service!`]; this crate holds hio's Server
//! bookkeeping (ixes keyed by ca, tymers, idle tymeouts, cutoffs), keeps the
//! policy's state for each connection ([`Service::Conn`]) and carries both
//! across a hot swap, and hides the WIT bindings.
//!
//! ```ignore
//! struct Echo;
//! impl hio_guest::Service for Echo {
//!     type Conn = ();
//!     fn new(_: &mut hio_guest::Server) -> Self { Echo }
//!     fn received(&mut self, ix: &mut hio_guest::Remoter, _: &mut ()) -> Result<(), hio_guest::Error> {
//!         ix.echo_rxbs()
//!     }
//! }
//! hio_guest::export_service!(Echo);
//! ```

#![warn(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "lazy-server",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "hio_guest::bindings",
    });
}

mod answers;
mod ca;
pub mod log;
mod remoter;
#[doc(hidden)]
pub mod runtime;
mod server;
pub mod snapshot;
pub mod tymers;
pub mod tyming;

pub use bindings::hio::tcp::remoter::{PeerCertificate, TlsInfo};
pub use ca::Ca;
pub use remoter::{Received, Remoter};
pub use server::Server;
pub use tyming::{Tymer, Tymist, Tymth};

use bindings::hio::tcp::types::Error as WitError;

/// What can go wrong in a Server or Remoter operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// hio's ValueError for a ca that is not in ixes.
    InvalidCa(Ca),
    /// The connection was closed.
    Closed,
    /// The host's socket operation failed.
    Io(String),
    /// The connection's send queue is at its cap: the peer is not reading.
    Full,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidCa(ca) => write!(f, "Invalid connection address '{ca}'"),
            Error::Closed => write!(f, "connection closed"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Full => write!(f, "send queue full"),
        }
    }
}

impl std::error::Error for Error {}

impl From<WitError> for Error {
    fn from(e: WitError) -> Self {
        match e {
            WitError::Closed => Error::Closed,
            WitError::Io(s) => Error::Io(s),
            WitError::Full => Error::Full,
        }
    }
}

/// A server policy: what to do with connections and received bytes.
///
/// One instance lives for the guest's life. The SDK calls [`Service::recur`]
/// once per host cycle; its default runs hio's Server cycle and calls
/// [`Service::received`] for each connection with news.
pub trait Service: 'static {
    /// The policy's state for one connection (a count, a parser...): made
    /// with `Default` when the connection joins ixes, handed to
    /// [`Service::connected`] and [`Service::received`], given to
    /// [`Service::removed`] and dropped when the connection leaves, carried
    /// across a hot swap by [`Service::save_conn`] and
    /// [`Service::restore_conn`]. `()` for none.
    type Conn: Default + 'static;

    /// Build the policy when the guest starts (after the first connections
    /// taken over from a predecessor joined `server`'s ixes; the rest join
    /// in the next cycles, or at once when the policy asks for every
    /// connection, e.g. by [`Server::ixes`]).
    fn new(server: &mut Server<Self::Conn>) -> Self;

    /// A connection has new bytes in `ix.rxbs`, or was cut off. Bytes left in
    /// rxbs stay there (and in the host) for the next call. An error closes
    /// and removes the connection, with a warning in the host's log.
    fn received(&mut self, ix: &mut Remoter, conn: &mut Self::Conn) -> Result<(), Error>;

    /// A new connection joined ixes (for TLS: its handshake finished, and
    /// `ix.tls` says who the peer is). Not called for connections handed
    /// over from a previous guest at a swap or restart.
    fn connected(&mut self, _ix: &mut Remoter, _conn: &mut Self::Conn) {}

    /// A connection left ixes (closed by the policy, cut off, or idle); its
    /// state is dropped after this call.
    fn removed(&mut self, _ca: &Ca, _conn: Self::Conn) {}

    /// The host began draining (SIGTERM): no connection will join again,
    /// those in ixes are served until they end or the host's drain timeout
    /// resets them ([`Server::draining`] is true from now on). Called once,
    /// after that cycle's [`Service::recur`] (its cutoffs are gone from ixes). A request/response policy
    /// may close connections idle between requests here; the default does
    /// nothing, so every peer finishes its exchange.
    fn draining(&mut self, _server: &mut Server<Self::Conn>) {}

    /// Names the layout of what [`Service::save`] and [`Service::save_conn`]
    /// return, e.g. "lines/2". Change it whenever the layout changes. Empty:
    /// no state to carry (neither is called).
    fn kind(&self) -> &str {
        ""
    }

    /// The policy's state for a successor at a hot swap.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Take over a predecessor's state (called after `new`). Return false
    /// for a `kind` this policy does not understand: it then starts fresh,
    /// every connection with `Conn::default()`.
    fn restore(&mut self, _kind: &str, _state: &[u8]) -> bool {
        false
    }

    /// One connection's state for a successor at a hot swap.
    fn save_conn(&self, _conn: &Self::Conn) -> Vec<u8> {
        Vec::new()
    }

    /// Read back what a predecessor's [`Service::save_conn`] made, once
    /// [`Service::restore`] accepted its kind. `None`: not readable; that
    /// connection starts with `Conn::default()` and a warning is logged.
    fn restore_conn(&mut self, _saved: &[u8]) -> Option<Self::Conn> {
        Some(Self::Conn::default())
    }

    /// One cycle (hio's Doer `recur`). Override for full control; the parts
    /// are the public `Server::service_*` methods.
    fn recur(&mut self, server: &mut Server<Self::Conn>) {
        server.service_connects();
        for id in server.take_connected() {
            if let Some((ix, conn)) = server.ix_with_conn(id) {
                self.connected(ix, conn);
            }
        }
        for id in server.service_receives_ready() {
            let Some((ix, conn)) = server.ix_with_conn(id) else { continue };
            match self.received(ix, conn) {
                // hio's serviceCutoffs, for this connection: one cut off (or
                // closed by the policy) leaves ixes.
                Ok(()) => {
                    server.service_cutoff(id);
                }
                Err(e) => server.fail_ix(id, &e),
            }
        }
        server.service_tymeouts();
    }
}

/// Export a [`Service`] as this component's guest.
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        #[doc(hidden)]
        pub struct __HioGuest;

        impl $crate::bindings::exports::hio::tcp::guest::Guest for __HioGuest {
            fn start(
                config: $crate::bindings::exports::hio::tcp::guest::Config,
                listener: $crate::bindings::hio::tcp::acceptor::Listener,
                connections: ::std::vec::Vec<$crate::bindings::hio::tcp::remoter::Connection>,
                snapshot: ::std::option::Option<$crate::bindings::exports::hio::tcp::guest::Snapshot>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::runtime::start::<$service>(config, listener, connections, snapshot)
            }

            fn save() -> $crate::bindings::exports::hio::tcp::guest::Snapshot {
                $crate::runtime::save()
            }

            fn service(
                cycle: $crate::bindings::exports::hio::tcp::guest::Cycle,
            ) -> ::std::option::Option<f64> {
                $crate::runtime::service(cycle)
            }
        }

        impl $crate::bindings::exports::hio::tcp::batch::Guest for __HioGuest {
            fn service(
                cycle: $crate::bindings::exports::hio::tcp::batch::Cycle,
            ) -> $crate::bindings::exports::hio::tcp::batch::Answers {
                $crate::runtime::service_batch(cycle)
            }
        }

        impl $crate::bindings::exports::hio::tcp::handover::Guest for __HioGuest {
            fn adopt(
                connections: ::std::vec::Vec<$crate::bindings::hio::tcp::remoter::Connection>,
                complete: bool,
            ) {
                $crate::runtime::adopt(connections, complete)
            }
        }

        $crate::bindings::export_bindings!(__HioGuest with_types_in $crate::bindings);
    };
}
