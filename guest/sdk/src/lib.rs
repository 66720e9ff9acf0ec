//! Write hio-host guests the way hio's Server is written.
//!
//! A guest author implements [`Service`] (at least [`Service::received`])
//! and exports it with [`export_service!`]; this crate holds hio's Server
//! bookkeeping (ixes keyed by ca, tymers, idle tymeouts, cutoffs) and hides
//! the WIT bindings.
//!
//! ```ignore
//! struct Echo;
//! impl hio_guest::Service for Echo {
//!     fn new(_: &mut hio_guest::Server) -> Self { Echo }
//!     fn received(&mut self, ix: &mut hio_guest::Remoter) -> Result<(), hio_guest::Error> {
//!         ix.echo_rxbs()
//!     }
//! }
//! hio_guest::export_service!(Echo);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "server",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "hio_guest::bindings",
    });
}

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
pub use remoter::Remoter;
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
    /// Build the policy when the guest starts.
    fn new(server: &mut Server) -> Self
    where
        Self: Sized;

    /// A connection has new bytes in `ix.rxbs`, or was cut off. Bytes left in
    /// rxbs stay there (and in the host) for the next call.
    fn received(&mut self, ix: &mut Remoter) -> Result<(), Error>;

    /// A new connection joined ixes (for TLS: its handshake finished, and
    /// `ix.tls` says who the peer is). Not called for connections handed
    /// over from a previous guest at a swap or restart.
    fn connected(&mut self, _ix: &mut Remoter) {}

    /// A connection left ixes (closed by the policy, cut off, or idle).
    fn removed(&mut self, _ca: &Ca) {}

    /// Names the layout of what [`Service::save`] returns, e.g. "lines/1".
    /// Change it whenever the layout changes. Empty: no state to carry.
    fn kind(&self) -> &str {
        ""
    }

    /// The policy's state for a successor at a hot swap.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Take over a predecessor's state (called after `new`). Return false
    /// for a `kind` this policy does not understand: it then starts fresh.
    fn restore(&mut self, _kind: &str, _state: &[u8]) -> bool {
        false
    }

    /// One cycle (hio's Doer `recur`). Override for full control; the parts
    /// are the public `Server::service_*` methods.
    fn recur(&mut self, server: &mut Server) {
        server.service_connects();
        for ca in server.take_connected() {
            if let Some(ix) = server.ixes.get_mut(&ca) {
                self.connected(ix);
            }
        }
        for id in server.service_receives_ready() {
            let Some(ix) = server.ix_by_id(id) else {
                continue;
            };
            // hio's serviceCutoffs, for this connection, without a second
            // lookup: one cut off (or closed by the policy) leaves ixes.
            let ended = match self.received(ix) {
                Ok(()) => ix.cutoff || ix.closed(),
                Err(e) => {
                    log::warn(&format!("service of {} failed, closing it: {e}", ix.ca));
                    true
                }
            };
            if ended {
                let ca = ix.ca.clone();
                let _ = server.remove_ix(&ca, true);
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

        $crate::bindings::export_bindings!(__HioGuest with_types_in $crate::bindings);
    };
}
