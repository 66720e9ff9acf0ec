//! The guest side of the host: running guest components and their
//! lifecycle, and the glue that gives them the `hio:tcp` world (one module
//! per WIT interface, as wasmtime-wasi does).
//!
//! - `runtime`: engine, linker, loading and checking components, one
//!   running instance (`Generation`) with its limits
//! - `supervisor`: the lifecycle: start, cycles, crash, back-off, restart,
//!   fail policy, hot swap
//! - `swap`: compiling a new guest off the loop, `--watch`
//! - `cache`: compiled guests on disk
//! - `ticker`: the epoch clock behind call deadlines
//! - `acceptor`, `remoter`, `host`: the `hio:tcp` interfaces, `batch` one
//!   a guest may export (`optional` finds those); `wasi`: WASI
//!   with nothing granted; `log_limit`: what a guest may write to the log
//!
//! A guest's `listener` and `remoter` resources are keys (a connection's
//! id), not the objects: the host state owns every connection, and a handle
//! to one it has let go of answers `error::closed`, never a trap.

mod acceptor;
mod batch;
pub mod cache;
mod host;
mod log_limit;
mod optional;
mod remoter;
mod runtime;
pub mod supervisor;
pub mod swap;
mod ticker;
mod wasi;

use std::net::SocketAddr;

use wasmtime::component::{Resource, ResourceTable};

use self::runtime::GuestLimiter;
pub use self::runtime::{Check, CycleBuffers, Failed, Generation, Runtime};
use crate::state::HostState;

wasmtime::component::bindgen!({
    path: "wit",
    world: "server",
    with: {
        "hio:tcp/remoter.remoter": ConnRef,
        "hio:tcp/acceptor.listener": ListenerRef,
    },
});

pub use exports::hio::tcp::guest::{Arrival, Config as GuestConfig, Cycle, Snapshot};
use hio::tcp::remoter::Connection;
use hio::tcp::types::{Address, Error as WitError};

/// What a guest's remoter handle points at. The id is checked against the
/// host's live connections on every call, so a handle to a closed
/// connection is harmless.
pub struct ConnRef {
    pub id: u64,
    ha: SocketAddr,
    ca: SocketAddr,
}

/// A guest's listener handle: there is one listener per host.
pub struct ListenerRef;

/// A store's data: the guest's handle table, its limits, and the host's
/// state (which survives the guest).
pub struct StoreData {
    pub table: ResourceTable,
    /// Taken only as the generation ends (`Generation::retire`), so its
    /// instance can be freed off the loop.
    host: Option<HostState>,
    limiter: GuestLimiter,
    wasi: wasmtime_wasi::WasiCtx,
    /// The rate limit of the guest's `host.log` calls.
    log_limit: log_limit::LogLimit,
    /// Its stdout and stderr, for their own rate limits' reports.
    outputs: [wasi::GuestOutput; 2],
}

/// Why the host state is always there: `StoreData::take_host` ends the
/// store's use.
const HOST_HELD: &str = "a store holds the host state until its generation ends";

impl StoreData {
    fn new(host: HostState, limiter: GuestLimiter) -> StoreData {
        let ((wasi, outputs), log_limit) =
            (wasi::context(host.stats()), log_limit::LogLimit::new("log", host.stats().clone()));
        StoreData { table: ResourceTable::new(), host: Some(host), limiter, wasi, log_limit, outputs }
    }

    pub fn host_mut(&mut self) -> &mut HostState {
        self.host.as_mut().expect(HOST_HELD)
    }

    pub fn host_ref(&self) -> &HostState {
        self.host.as_ref().expect(HOST_HELD)
    }

    /// The host state, as the store's generation ends: nothing may use the
    /// store after this but its drop.
    fn take_host(&mut self) -> HostState {
        self.host.take().expect(HOST_HELD)
    }

    /// After a guest call: say how many log lines were dropped in a second
    /// that is over.
    fn report_dropped_logs(&mut self) {
        self.log_limit.report();
        self.outputs.iter().for_each(wasi::GuestOutput::report);
    }

    fn conn_ref(&self, handle: &Resource<ConnRef>) -> Result<&ConnRef, WitError> {
        // wasmtime has already validated the handle; a missing entry can only
        // mean the host dropped it, which it treats as closed.
        self.table.get(handle).map_err(|_| WitError::Closed)
    }

    /// Give a connection to the guest: a new remoter handle, what the guest
    /// would ask of it first, and, if `lend`, its bytes not yet lent (else
    /// they come in the next cycle's arrivals).
    pub fn give_connection(&mut self, id: u64, lend: bool) -> wasmtime::Result<Connection> {
        let vanished = || wasmtime::format_err!("connection {id} vanished");
        let c = self.host_ref().conn(id).ok_or_else(vanished)?;
        let (ha, ca, tls) = (c.local, c.peer, remoter::tls_state(c));
        let (data, cutoff) = self.host_mut().adopt(id, lend).ok_or_else(vanished)?;
        let remoter = self.table.push(ConnRef { id, ha, ca })?;
        Ok(Connection { remoter, id, ha: address(ha), ca: address(ca), tls, data, cutoff })
    }
}

fn address(a: SocketAddr) -> Address {
    Address { host: a.ip().to_string(), port: a.port() }
}
