//! The wasm side of the host: bindings to the `hio:tcp` world, the store's
//! state, and loading and starting guest components.

mod acceptor;
mod host;
mod remoter;

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store};

use crate::core::Core;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "server",
    with: {
        "hio:tcp/remoter.remoter": ConnRef,
        "hio:tcp/acceptor.listener": ListenerRef,
    },
});

pub use exports::hio::tcp::guest::{Config as GuestConfig, Cycle, Snapshot};
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

/// A store's data: the guest's handle table and the host's core.
pub struct State {
    pub table: ResourceTable,
    pub core: Core,
}

impl State {
    fn conn_ref(&self, handle: &Resource<ConnRef>) -> Result<&ConnRef, WitError> {
        // wasmtime has already validated the handle; a missing entry can only
        // mean the host dropped it, which it treats as closed.
        self.table.get(handle).map_err(|_| WitError::Closed)
    }

    /// Hand a connection to the guest as a new remoter handle.
    pub fn new_remoter(&mut self, id: u64) -> wasmtime::Result<Resource<ConnRef>> {
        let c = self.core.conns.get_mut(&id).ok_or_else(|| wasmtime::format_err!("connection {id} vanished"))?;
        c.adopted = true;
        let r = ConnRef { id, ha: c.ha, ca: c.ca };
        Ok(self.table.push(r)?)
    }
}

fn address(a: SocketAddr) -> Address {
    Address { host: a.ip().to_string(), port: a.port() }
}

/// Engine and linker, made once per host and shared by every guest generation.
pub struct Runtime {
    pub engine: Engine,
    linker: Linker<State>,
}

impl Runtime {
    pub fn new() -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        Server::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        Ok(Runtime { engine, linker })
    }

    /// Load and check a guest component from a file.
    pub fn load(&self, path: &Path) -> Result<Component> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read guest {}", path.display()))?;
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| anyhow!("{} is not a valid wasm component: {e:#}", path.display()))?;
        // Instantiability is checked here, against the host's imports, so a
        // guest asking for something the host does not give fails at load.
        self.linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("{} does not fit the hio:tcp host: {e:#}", path.display()))?;
        Ok(component)
    }

    /// Instantiate a component in a fresh store holding `core`. On failure
    /// the core comes back in the error, so nothing the host holds is lost.
    pub fn instantiate(&self, component: &Component, core: Core) -> Result<Generation, Box<Failed>> {
        let mut store = Store::new(&self.engine, State { table: ResourceTable::new(), core });
        match Server::instantiate(&mut store, component, &self.linker) {
            Ok(bindings) => Ok(Generation { store, bindings }),
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

/// A failed instantiation and the core it was given.
pub struct Failed {
    pub error: anyhow::Error,
    pub core: Core,
}

/// One running guest instance and its store.
pub struct Generation {
    pub store: Store<State>,
    bindings: Server,
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
    /// connection (each will be handed its unconsumed bytes again).
    pub fn start(&mut self, config: &GuestConfig, snapshot: Option<&Snapshot>) -> Result<()> {
        let state = self.store.data_mut();
        let mut ids: Vec<u64> =
            state.core.conns.iter().filter(|(_, c)| c.adopted && !c.closing).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut handles = Vec::with_capacity(ids.len());
        for &id in &ids {
            if let Some(c) = state.core.conns.get_mut(&id) {
                c.rewind();
                if c.has_news() {
                    state.core.mark_ready(id);
                }
            }
            handles.push(state.new_remoter(id)?);
        }
        let listener = state.table.push(ListenerRef)?;
        self.bindings
            .hio_tcp_guest()
            .call_start(&mut self.store, *config, listener, &handles, snapshot)
            .map_err(|e| anyhow!("guest trapped in start: {e:#}"))?
            .map_err(|e| anyhow!("guest refused to start: {e}"))
    }

    /// The guest's state for its successor.
    pub fn save(&mut self) -> Result<Snapshot> {
        self.bindings.hio_tcp_guest().call_save(&mut self.store).map_err(|e| anyhow!("guest trapped in save: {e:#}"))
    }

    /// One guest cycle; returns the tyme the guest wants its next cycle at.
    pub fn service(&mut self, cycle: &Cycle) -> Result<Option<f64>> {
        self.bindings
            .hio_tcp_guest()
            .call_service(&mut self.store, cycle)
            .map_err(|e| anyhow!("guest trapped in service: {e:#}"))
    }
}
