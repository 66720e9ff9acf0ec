//! The wasm side of the host: bindings to the `hio:tcp` world, the store's
//! state, and loading and starting guest components.

mod acceptor;
pub mod cache;
pub mod handing;
mod host;
mod log_limit;
mod remoter;
pub mod swap;
mod ticker;
mod wasi;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};

pub use crate::config::Limits;
use crate::server::state::Core;
use ticker::{EPOCH_TICK, InCall, Ticker};

wasmtime::component::bindgen!({
    path: "../wit",
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

/// A store's data: the guest's handle table, its limits, and the host's core.
pub struct State {
    pub table: ResourceTable,
    pub core: Core,
    limits: StoreLimits,
    wasi: wasmtime_wasi::WasiCtx,
    /// The rate limit of the guest's `host.log` calls.
    log_limit: log_limit::LogLimit,
    /// Its stdout and stderr, for their own rate limits' reports.
    outputs: [wasi::GuestOutput; 2],
}

impl State {
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
    /// would ask of it first, and, if `lend`, its bytes not yet handed (else
    /// they come in the next cycle's arrivals).
    pub fn give_connection(&mut self, id: u64, lend: bool) -> wasmtime::Result<Connection> {
        let c = self.core.conns.get_mut(&id).ok_or_else(|| wasmtime::format_err!("connection {id} vanished"))?;
        c.adopted = true;
        let (ha, ca, tls) = (c.local, c.peer, remoter::tls_state(c));
        let (data, cutoff) = if lend {
            self.core.hand(id, usize::MAX).unwrap_or_default()
        } else {
            if c.has_news() {
                self.core.mark_ready(id);
            }
            (Vec::new(), false)
        };
        let remoter = self.table.push(ConnRef { id, ha, ca })?;
        Ok(Connection { remoter, id, ha: address(ha), ca: address(ca), tls, data, cutoff })
    }
}

/// The news for one guest cycle, into `arrivals`: every ready connection
/// the guest holds, with its bytes not yet handed, as far as this call may
/// be handed them (see `handing`; the rest waits for the next cycle).
/// Connections the guest has not taken yet are left out: `accept` hands
/// them with their bytes.
pub fn arrivals(core: &mut Core, arrivals: &mut Vec<Arrival>) {
    core.begin_guest_call();
    // Reset by the host: the guest learns they ended.
    arrivals.extend(core.gone.drain(..).map(|id| Arrival { id, data: Vec::new(), cutoff: true }));
    let mut ready = std::mem::take(&mut core.ready);
    for &id in &ready {
        let Some(c) = core.conns.get_mut(&id) else { continue };
        c.in_ready = false;
        if !c.adopted || c.closing {
            continue;
        }
        if let Some((data, cutoff)) = core.hand(id, usize::MAX) {
            arrivals.push(Arrival { id, data, cutoff });
        }
    }
    // Keep the list's allocation for the next cycle.
    if core.ready.is_empty() {
        ready.clear();
        core.ready = ready;
    }
}

fn address(a: SocketAddr) -> Address {
    Address { host: a.ip().to_string(), port: a.port() }
}

/// Engine and linker, made once per host and shared by every guest generation.
pub struct Runtime {
    pub engine: Engine,
    linker: Linker<State>,
    limits: Limits,
    ticker: Arc<Ticker>,
    cache: Option<PathBuf>,
}

impl Runtime {
    pub fn new(limits: Limits, cache: Option<PathBuf>) -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(limits.fuel.is_some());
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        Server::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        // For guests built against WASI (other languages): nothing granted.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let ticker = Arc::new(Ticker::start(engine.clone())?);
        Ok(Runtime { engine, linker, limits, ticker, cache })
    }

    /// Epoch ticks a call may run: the deadline, rounded up, plus the tick
    /// already under way.
    fn deadline_ticks(&self) -> u64 {
        self.limits.deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1
    }

    /// Load and check a guest component from a file.
    pub fn load(&self, path: &Path) -> Result<Component> {
        Ok(self.load_from(path)?.0)
    }

    /// Load a guest (compiled, or from the cache) and check it fits: the
    /// imports it asks for against the host's, its exports against the
    /// `hio:tcp/server` world. A guest that does not fit fails here, at load.
    pub fn load_from(&self, path: &Path) -> Result<(Component, cache::Origin)> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read guest {}", path.display()))?;
        let (component, origin) = cache::component(&self.engine, &bytes, self.cache.as_deref())
            .map_err(|e| anyhow!("{} is not a valid wasm component: {e:#}", path.display()))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{} does not fit the hio:tcp host: {e:#}", path.display()))?;
        ServerPre::new(pre).map_err(|e| anyhow!("{} does not fit the hio:tcp host: {e:#}", path.display()))?;
        Ok((component, origin))
    }

    /// What a component imports and exports, and why it does not fit this
    /// host, if it does not (`hio-host check`).
    pub fn check(&self, path: &Path) -> Result<Check> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read guest {}", path.display()))?;
        let (component, _) = cache::component(&self.engine, &bytes, self.cache.as_deref())
            .map_err(|e| anyhow!("{} is not a valid wasm component: {e:#}", path.display()))?;
        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let mut problems: Vec<String> = imports
            .iter()
            .filter(|i| !PROVIDED.contains(&i.as_str()) && !i.starts_with("wasi:"))
            .map(|i| format!("imports {i}, which this host does not provide"))
            .collect();
        if !exports.iter().any(|e| e == GUEST_EXPORT) {
            problems.push(format!("does not export {GUEST_EXPORT} (start, service, save)"));
        }
        if problems.is_empty() {
            match self.linker.instantiate_pre(&component) {
                Err(e) => problems.push(format!("{e:#}")),
                Ok(pre) => {
                    if let Err(e) = ServerPre::new(pre) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
        }
        Ok(Check { imports, exports, problems })
    }

    /// Instantiate a component in a fresh store holding `core`. On failure
    /// the core comes back in the error, so nothing the host holds is lost.
    pub fn instantiate(&self, component: &Component, core: Core) -> Result<Generation, Box<Failed>> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory)
            .memories(4)
            .tables(16)
            .table_elements(1 << 20)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let ((wasi, outputs), log_limit) =
            (wasi::context(&core.stats), log_limit::LogLimit::new("log", core.stats.clone()));
        let state = State { table: ResourceTable::new(), core, limits, wasi, log_limit, outputs };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let deadline = self.deadline_ticks();
        store.set_epoch_deadline(deadline);
        if let Some(fuel) = self.limits.fuel
            && let Err(e) = store.set_fuel(fuel)
        {
            let core = store.into_data().core;
            return Err(Box::new(Failed { error: anyhow!("cannot give the guest fuel: {e:#}"), core }));
        }
        let in_call = self.ticker.enter();
        let instance = Server::instantiate(&mut store, component, &self.linker);
        drop(in_call);
        match instance {
            Ok(bindings) => {
                Ok(Generation { store, bindings, deadline, limits: self.limits.clone(), ticker: self.ticker.clone() })
            }
            Err(e) => Err(Box::new(Failed {
                error: anyhow!("guest does not fit the hio:tcp world: {e:#}"),
                core: store.into_data().core,
            })),
        }
    }
}

impl Runtime {
    /// Instantiate and start a component on `core`: a new generation, or the
    /// core back with the reason it could not start.
    pub fn launch(
        &self,
        component: &Component,
        core: Core,
        config: &GuestConfig,
        snapshot: Option<&Snapshot>,
    ) -> Result<Generation, Box<Failed>> {
        let mut generation = self.instantiate(component, core)?;
        match generation.start(config, snapshot) {
            Ok(()) => Ok(generation),
            Err(error) => Err(Box::new(Failed { error, core: generation.into_core() })),
        }
    }
}

/// Interfaces this host gives guests (besides WASI 0.2, linked with nothing
/// granted; `instantiate_pre` checks those), and the one it needs from them.
const PROVIDED: &[&str] =
    &["hio:tcp/types@0.2.0", "hio:tcp/host@0.2.0", "hio:tcp/acceptor@0.2.0", "hio:tcp/remoter@0.2.0"];
const GUEST_EXPORT: &str = "hio:tcp/guest@0.2.0";

/// What `hio-host check` found.
#[derive(Debug)]
pub struct Check {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Empty when the component fits.
    pub problems: Vec<String>,
}

/// A failed instantiation and the core it was given.
pub struct Failed {
    pub error: anyhow::Error,
    pub core: Core,
}

/// One running guest instance and its store.
pub struct Generation {
    pub store: Store<State>,
    bindings: Server,
    deadline: u64,
    limits: Limits,
    ticker: Arc<Ticker>,
}

impl Generation {
    pub fn core(&mut self) -> &mut Core {
        &mut self.store.data_mut().core
    }

    /// End this generation, keeping the host's core.
    pub fn into_core(self) -> Core {
        self.store.into_data().core
    }

    /// Call the guest's `start`, handing it the listener and every live
    /// connection. Their unconsumed bytes are handed again in the first
    /// cycle, not here: a guest that cannot start is never a peer's fault.
    pub fn start(&mut self, config: &GuestConfig, snapshot: Option<&Snapshot>) -> Result<()> {
        let state = self.store.data_mut();
        let mut ids: Vec<u64> =
            state.core.conns.iter().filter(|(_, c)| c.adopted && !c.closing).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        // A new guest never knew the connections reset since the last one.
        state.core.gone.clear();
        state.core.begin_guest_call();
        let mut connections = Vec::with_capacity(ids.len());
        for &id in &ids {
            if let Some(c) = state.core.conns.get_mut(&id) {
                c.rewind();
            }
            connections.push(state.give_connection(id, false)?);
        }
        let listener = state.table.push(ListenerRef)?;
        let _in_call = self.arm()?;
        self.bindings
            .hio_tcp_guest()
            .call_start(&mut self.store, *config, listener, &connections, snapshot)
            .map_err(|e| self.trapped("start", e))?
            .map_err(|e| anyhow!("guest refused to start: {}", log_limit::clean(&e)))
    }

    /// The guest's state for its successor.
    pub fn save(&mut self) -> Result<Snapshot> {
        let _in_call = self.arm()?;
        self.bindings.hio_tcp_guest().call_save(&mut self.store).map_err(|e| self.trapped("save", e))
    }

    /// One guest cycle; returns the tyme the guest wants its next cycle at.
    pub fn service(&mut self, cycle: &Cycle) -> Result<Option<f64>> {
        let _in_call = self.arm()?;
        self.bindings.hio_tcp_guest().call_service(&mut self.store, cycle).map_err(|e| self.trapped("service", e))
    }

    /// Give the next call its full deadline and fuel, and keep the epoch
    /// advancing while it runs. (Also the moment to report log lines the
    /// last calls had dropped.)
    fn arm(&mut self) -> Result<InCall> {
        self.store.data_mut().report_dropped_logs();
        self.store.set_epoch_deadline(self.deadline);
        if let Some(fuel) = self.limits.fuel {
            self.store.set_fuel(fuel)?;
        }
        Ok(self.ticker.enter())
    }

    /// Name the cause of a trap plainly; the full trace follows.
    fn trapped(&self, call: &str, e: wasmtime::Error) -> anyhow::Error {
        let cause = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!("ran past its {} ms deadline", self.limits.deadline.as_millis()),
            Some(Trap::OutOfFuel) => format!("burnt all its fuel ({} per call)", self.limits.fuel.unwrap_or(0)),
            _ if format!("{e:#}").contains("memory") && format!("{e:#}").contains("grow") => {
                format!("hit its memory limit of {} MiB", self.limits.memory >> 20)
            }
            _ => "trapped".to_string(),
        };
        anyhow!("guest {cause} in {call}: {e:#}")
    }
}
