//! Loading guest components and running one instance of them: the engine
//! and linker made once per host ([`Runtime`]), and a running instance
//! with its store ([`Generation`]), each call bounded by a deadline (epoch
//! interruption), fuel and a memory limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use wasmtime::component::{Component, Func, HasSelf, Linker, TypedFunc};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::batch::{Answers, BatchCycle, News};
use super::hio::tcp::remoter::Connection;
use super::ticker::{EPOCH_TICK, InCall, Ticker};
use super::{
    Arrival, Cycle, GuestConfig, ListenerRef, Server, ServerPre, Snapshot, StoreData, cache, log_limit, optional,
};
use crate::config::Limits;
use crate::state::{HostState, handover};

/// Interfaces this host gives guests (besides WASI 0.2, linked with nothing
/// granted; `instantiate_pre` checks those), and the one it needs from them.
const PROVIDED: &[&str] = &["hio:tcp/types", "hio:tcp/host", "hio:tcp/acceptor", "hio:tcp/remoter"];
const GUEST_EXPORT: &str = "hio:tcp/guest";
/// The version of `wit/hio.wit` this host was built from.
pub const WIT_VERSION: (u64, u64, u64) = (0, 2, 3);

/// A `hio:tcp` interface name's version (`hio:tcp/host@0.2.1` gives 0.2.1).
fn hio_version(name: &str) -> Option<(u64, u64, u64)> {
    let (iface, version) = name.split_once('@')?;
    if !iface.starts_with("hio:tcp/") {
        return None;
    }
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) => Some((major, minor, patch)),
        _ => Some((u64::MAX, 0, 0)),
    }
}

/// The compatibility promise (semver, as Cargo reads it): a guest built
/// against `hio:tcp` 0.y.z fits a host of 0.y.w. With z <= w it always
/// links (a patch release only adds); with z > w it links unless it uses
/// what the patch added. Any other version is refused with one line naming
/// both.
fn version_problem(names: &[String]) -> Option<String> {
    let (major, minor, _) = WIT_VERSION;
    let speaks = format!("this host speaks hio:tcp@{major}.{minor}.x (built from {})", wit_version());
    names.iter().filter_map(|n| hio_version(n).map(|v| (n, v))).find_map(|(name, (ma, mi, _))| {
        let compatible = ma == major && (major > 0 || mi == minor);
        (!compatible).then(|| match name.split_once('@') {
            Some((_, v)) => format!("guest speaks hio:tcp@{v}, {speaks}"),
            None => format!("guest uses {name}, {speaks}"),
        })
    })
}

/// Say so when a guest of a newer patch release fails to link: it uses
/// what this host lacks.
fn newer_patch(names: &[String], e: wasmtime::Error) -> anyhow::Error {
    let newest = names.iter().filter_map(|n| hio_version(n)).max();
    match newest {
        Some(v @ (major, minor, patch)) if v > WIT_VERSION => anyhow!(
            "guest speaks hio:tcp@{major}.{minor}.{patch}, newer than this host's {}, and uses what it lacks: {e:#}",
            wit_version()
        ),
        _ => e.into(),
    }
}

fn wit_version() -> String {
    let (major, minor, patch) = WIT_VERSION;
    format!("{major}.{minor}.{patch}")
}

/// A length the host keeps far below 4 GiB (a call's lending bound, a
/// queue's cap), as WIT's u32.
fn wit_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The least time instantiating a guest may take (see `Runtime::instantiate`).
const INSTANTIATE_WITHIN: Duration = Duration::from_secs(1);

/// Epoch ticks a call may run for `limit`: rounded up, plus the tick
/// already under way.
fn ticks(limit: Duration) -> u64 {
    limit.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64 + 1
}

/// The largest guest file read (an interpreter's component is tens of MB):
/// a path to something endless (`/dev/zero`) is refused, not read until
/// memory runs out.
pub const MAX_GUEST_BYTES: u64 = 512 << 20;

/// A guest file's bytes: a regular file (not a FIFO that would block the
/// reader, not a device), at most [`MAX_GUEST_BYTES`].
fn read_guest(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        anyhow::bail!("not a regular file");
    }
    if meta.len() > MAX_GUEST_BYTES {
        anyhow::bail!("{} bytes, over the {} MiB a guest may have", meta.len(), MAX_GUEST_BYTES >> 20);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?.take(MAX_GUEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_GUEST_BYTES {
        anyhow::bail!("it grew past the {} MiB a guest may have while being read", MAX_GUEST_BYTES >> 20);
    }
    Ok(bytes)
}

/// What `hio-host check` found.
#[derive(Debug)]
pub struct Check {
    /// What the component imports (`iface@version`).
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
    /// Empty when the component fits.
    pub problems: Vec<String>,
}

/// A guest that could not start, and the host state it was given back.
pub struct Failed {
    pub error: anyhow::Error,
    pub host: HostState,
}

/// Engine and linker, made once per host and shared by every guest generation.
pub struct Runtime {
    pub engine: Engine,
    linker: Linker<StoreData>,
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
        Server::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |s| s)?;
        // For guests built against WASI (other languages): nothing granted.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let ticker = Arc::new(Ticker::start(engine.clone())?);
        Ok(Runtime { engine, linker, limits, ticker, cache })
    }

    /// Epoch ticks a call may run: the deadline.
    fn deadline_ticks(&self) -> u64 {
        ticks(self.limits.deadline)
    }

    /// Load and check a guest component from a file.
    pub fn load(&self, path: &Path) -> Result<Component> {
        Ok(self.load_from(path)?.0)
    }

    /// Load a guest (compiled, or from the cache) and check it fits: the
    /// imports it asks for against the host's, its exports against the
    /// `hio:tcp/server` world. A guest that does not fit fails here, at load.
    pub fn load_from(&self, path: &Path) -> Result<(Component, cache::Origin)> {
        let (component, origin) = self.compile(path)?;
        self.fit(&component).map_err(|e| anyhow!("{} does not fit the hio:tcp host: {e:#}", path.display()))?;
        Ok((component, origin))
    }

    /// A component's import and export names.
    fn names(&self, component: &Component) -> (Vec<String>, Vec<String>) {
        let ty = component.component_type();
        let imports = ty.imports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let exports = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        (imports, exports)
    }

    fn compile(&self, path: &Path) -> Result<(Component, cache::Origin)> {
        let bytes = read_guest(path).with_context(|| format!("cannot read guest {}", path.display()))?;
        cache::component(&self.engine, &bytes, self.cache.as_deref()).map_err(|e| {
            // A core module where a component was meant: say where the component is.
            let hint = if format!("{e:#}").contains("parse a wasm module with a component parser") {
                " (a core wasm module: `hio-host build` makes the component, TARGET/wasm/NAME.wasm)"
            } else {
                ""
            };
            anyhow!("{} is not a valid wasm component{hint}: {e:#}", path.display())
        })
    }

    /// Whether the linker can give `component` everything it imports and
    /// find the exports the host calls.
    fn fit(&self, component: &Component) -> Result<()> {
        let (imports, exports) = self.names(component);
        let names: Vec<String> = imports.into_iter().chain(exports).collect();
        if let Some(problem) = version_problem(&names) {
            anyhow::bail!(problem);
        }
        let pre = self.linker.instantiate_pre(component).map_err(|e| newer_patch(&names, e))?;
        ServerPre::new(pre).map_err(|e| newer_patch(&names, e))?;
        Ok(())
    }

    /// What a component imports and exports, and why it does not fit this
    /// host, if it does not (`hio-host check`).
    pub fn check(&self, path: &Path) -> Result<Check> {
        let (component, _) = self.compile(path)?;
        let (imports, exports) = self.names(&component);
        let iface = |name: &String| name.split('@').next().unwrap_or_default().to_string();
        let mut problems: Vec<String> = imports
            .iter()
            .filter(|i| !i.starts_with("wasi:") && !PROVIDED.contains(&iface(i).as_str()))
            .map(|i| format!("imports {i}, which this host does not provide"))
            .collect();
        if !exports.iter().any(|e| iface(e) == GUEST_EXPORT) {
            problems.push(format!(
                "does not export {GUEST_EXPORT}@{} (start, service, save); a Rust guest exports it with \
                 `hio_guest::export_service!(YourService)`",
                wit_version()
            ));
        }
        if problems.is_empty()
            && let Err(e) = self.fit(&component)
        {
            problems.push(format!("{e:#}"));
        }
        Ok(Check { imports, exports, problems })
    }

    /// Instantiate a component in a fresh store holding `host`. On failure
    /// the host state comes back in the error, so nothing the host holds is lost.
    pub fn instantiate(&self, component: &Component, host: HostState) -> Result<Generation, Box<Failed>> {
        let data = StoreData::new(host, GuestLimiter::new(self.limits.memory));
        let mut store = Store::new(&self.engine, data);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        let deadline = self.deadline_ticks();
        // Instantiating is mostly the engine's work (memories, tables), and
        // on a loaded machine it has taken over 100 ms: it gets the deadline
        // or INSTANTIATE_WITHIN, whichever is longer; `start` gets the deadline.
        store.set_epoch_deadline(deadline.max(ticks(INSTANTIATE_WITHIN)));
        if let Some(fuel) = self.limits.fuel
            && let Err(e) = store.set_fuel(fuel)
        {
            let host = store.data_mut().take_host();
            return Err(Box::new(Failed { error: anyhow!("cannot give the guest fuel: {e:#}"), host }));
        }
        let in_call = self.ticker.enter();
        let instance = self.linker.instantiate(&mut store, component);
        drop(in_call);
        let bindings = instance.map_err(anyhow::Error::from).and_then(|instance| {
            let bindings = Server::new(&mut store, &instance)?;
            let batch = optional::find::<(&BatchCycle,), (Answers,)>(
                &self.engine,
                component,
                &instance,
                &mut store,
                ("hio:tcp/batch", "service"),
            )?;
            let handover = optional::find::<(&[Connection], bool), ()>(
                &self.engine,
                component,
                &instance,
                &mut store,
                ("hio:tcp/handover", "adopt"),
            )?;
            Ok((bindings, batch, handover))
        });
        match bindings {
            Ok((bindings, batch, handover)) => Ok(Generation {
                store,
                bindings,
                batch,
                handover,
                deadline,
                limits: self.limits.clone(),
                ticker: self.ticker.clone(),
            }),
            Err(e) => Err(Box::new(Failed {
                error: anyhow!("guest does not fit the hio:tcp world: {e:#}"),
                host: store.data_mut().take_host(),
            })),
        }
    }

    /// Instantiate and start a component on `host`: a new generation, or
    /// the host state back with the reason it could not start.
    pub fn launch(
        &self,
        component: &Component,
        host: HostState,
        config: &GuestConfig,
        snapshot: Option<&Snapshot>,
    ) -> Result<Generation, Box<Failed>> {
        let mut generation = self.instantiate(component, host)?;
        match generation.start(config, snapshot) {
            Ok(()) => Ok(generation),
            Err(error) => Err(Box::new(Failed { error, host: generation.into_host() })),
        }
    }
}

/// The store's resource limits, remembering whether the guest hit its
/// memory limit (so a trap is named for its cause, not guessed from text).
pub(super) struct GuestLimiter {
    limits: StoreLimits,
    memory_hit: bool,
}

impl GuestLimiter {
    fn new(memory: usize) -> GuestLimiter {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .memories(4)
            .tables(16)
            .table_elements(1 << 20)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        GuestLimiter { limits, memory_hit: false }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grown = self.limits.memory_growing(current, desired, maximum);
        self.memory_hit |= !matches!(grown, Ok(true));
        grown
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// What a cycle's crossing is built in, kept between cycles for the
/// memory: the arrivals of `guest.service`, or `batch.service`'s cycle
/// (its buffer holds at most what one call is lent, 1 MiB, so it is kept
/// whole: given back, a 256 KiB cycle regrew it by doubling every time).
#[derive(Default)]
pub struct CycleBuffers {
    arrivals: Vec<Arrival>,
    batch: BatchCycle,
}

/// An instance that served its time, not yet freed. Freeing one (its
/// memory, its handle table) took the loop 1 ms at a swap with 10,000
/// connections, more with a bigger guest; freed on another thread while a
/// new instance was being made, it slowed that as much (both wait on the
/// process's memory map). So a swap frees the old one once its successor
/// holds every connection, on a thread of its own.
pub struct Retired(Store<StoreData>);

impl Retired {
    /// Free it on a thread of its own (here if none can be started).
    pub fn free(self) {
        let Retired(store) = self;
        if let Err(e) = std::thread::Builder::new().name("hio-free".into()).spawn(move || drop(store)) {
            tracing::debug!("cannot free the old guest off the loop: {e}");
        }
    }
}

/// One running guest instance and its store.
pub struct Generation {
    store: Store<StoreData>,
    bindings: Server,
    /// The guest's `batch.service`, when it exports one (WIT 0.2.2).
    batch: Option<Func>,
    /// The guest's `handover.adopt`, when it exports one (WIT 0.2.3).
    handover: Option<Func>,
    deadline: u64,
    limits: Limits,
    ticker: Arc<Ticker>,
}

impl Generation {
    pub fn host(&mut self) -> &mut HostState {
        self.store.data_mut().host_mut()
    }

    pub fn host_ref(&self) -> &HostState {
        self.store.data().host_ref()
    }

    /// End this generation, keeping the host's state.
    pub fn into_host(self) -> HostState {
        self.retire().0
    }

    /// End this generation, keeping the host's state and the instance
    /// apart, to be freed later (`Retired::free`).
    pub fn retire(mut self) -> (HostState, Retired) {
        (self.store.data_mut().take_host(), Retired(self.store))
    }

    /// Call the guest's `start`, handing it the listener and every live
    /// connection (a guest that exports `handover`: the first of them, the
    /// rest by `hand_over`). Their unconsumed bytes are lent again in the
    /// first cycle, not here: a guest that cannot start is never a peer's
    /// fault.
    pub fn start(&mut self, config: &GuestConfig, snapshot: Option<&Snapshot>) -> Result<()> {
        let data = self.store.data_mut();
        data.host_mut().guest_replaced();
        let ids = data.host_mut().starting_ids(self.handover.is_some());
        data.host_mut().guest_call_begins();
        let mut connections = Vec::with_capacity(ids.len());
        for id in ids {
            connections.push(data.give_connection(id, false)?);
        }
        let listener = data.table.push(ListenerRef)?;
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

    /// One guest cycle at `tyme`: the host's news lent, the guest called,
    /// its answers applied. Returns the tyme the guest wants its next cycle at.
    pub fn cycle(&mut self, tyme: f64, buffers: &mut CycleBuffers) -> Result<Option<f64>> {
        if let Some(adopt) = self.handover {
            self.hand_over(adopt)?;
        }
        match self.batch {
            Some(func) => self.cycle_batch(func, tyme, &mut buffers.batch),
            None => self.cycle_arrivals(tyme, &mut buffers.arrivals),
        }
    }

    /// One step of a lazy hand-over under way (`handover.adopt`), before a
    /// cycle: the next connections the guest is owed, those with news
    /// first, so the cycle can lend it their news.
    fn hand_over(&mut self, adopt: Func) -> Result<()> {
        let data = self.store.data_mut();
        let Some((ids, complete)) = data.host_mut().next_owed(handover::PER_PASS) else { return Ok(()) };
        let connections = ids.into_iter().map(|id| data.give_connection(id, false)).collect::<Result<Vec<_>, _>>()?;
        let _in_call = self.arm()?;
        // SAFETY: `optional::find` checked this function has this type
        // when the generation began.
        let adopt = unsafe { TypedFunc::<(&[Connection], bool), ()>::new_unchecked(adopt) };
        adopt.call(&mut self.store, (&connections, complete)).map_err(|e| self.trapped("adopt", e))
    }

    /// `guest.service`: one list per connection with news.
    fn cycle_arrivals(&mut self, tyme: f64, arrivals: &mut Vec<Arrival>) -> Result<Option<f64>> {
        let mut ready = std::mem::take(arrivals);
        let host = self.host();
        host.take_arrivals(|id, data, cutoff| ready.push(Arrival { id, data, cutoff }));
        let cycle = Cycle { tyme, accepts: host.accepts_waiting(), ready };
        let wake = {
            let _in_call = self.arm()?;
            self.bindings
                .hio_tcp_guest()
                .call_service(&mut self.store, &cycle)
                .map_err(|e| self.trapped("service", e))?
        };
        let mut ready = cycle.ready;
        self.host().guest_succeeded(ready.drain(..).map(|a| a.data));
        *arrivals = ready;
        Ok(wake)
    }

    /// `batch.service`: every connection's news in one buffer, the answers
    /// in the result. The rooms set aside for answers are withdrawn
    /// whatever happens.
    fn cycle_batch(&mut self, func: Func, tyme: f64, cycle: &mut BatchCycle) -> Result<Option<f64>> {
        let host = self.store.data_mut().host_mut();
        let BatchCycle { news, bytes, .. } = cycle;
        news.clear();
        bytes.clear();
        host.take_news(bytes, |id, len, cutoff, room| {
            news.push(News { id, len: wit_u32(len), cutoff, room: wit_u32(room) })
        });
        (cycle.tyme, cycle.accepts, cycle.draining) = (tyme, host.accepts_waiting(), host.draining());
        let served = self.call_batch(func, cycle);
        let host = self.host();
        for news in &cycle.news {
            host.withdraw_room(news.id);
        }
        let wake = served?;
        host.guest_succeeded(std::iter::empty());
        Ok(wake)
    }

    fn call_batch(&mut self, func: Func, cycle: &BatchCycle) -> Result<Option<f64>> {
        let by = std::time::Instant::now() + self.limits.deadline;
        let (answers,) = {
            let _in_call = self.arm()?;
            // SAFETY: `optional::find` checked this function has this type
            // when the generation began (checking it each cycle costs 1 %).
            let service = unsafe { TypedFunc::<(&BatchCycle,), (Answers,)>::new_unchecked(func) };
            service.call(&mut self.store, (cycle,)).map_err(|e| self.trapped("service", e))?
        };
        let data = self.store.data_mut();
        data.apply_answers(&answers, by).inspect_err(|_| {
            data.host_ref().stats().traps_other.add(1);
        })?;
        Ok(answers.wake)
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
        let stats = self.store.data().host_ref().stats();
        let cause = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                stats.traps_deadline.add(1);
                format!("ran past its {} ms deadline", self.limits.deadline.as_millis())
            }
            Some(Trap::OutOfFuel) => {
                stats.traps_fuel.add(1);
                format!("burnt all its fuel ({} per call)", self.limits.fuel.unwrap_or(0))
            }
            _ if self.store.data().limiter.memory_hit => {
                stats.traps_memory.add(1);
                format!("hit its memory limit of {} MiB", self.limits.memory >> 20)
            }
            // What a Rust panic compiles to.
            Some(Trap::UnreachableCodeReached) => {
                stats.traps_panic.add(1);
                "panicked (trapped on unreachable code)".to_string()
            }
            // wasmtime's refusal of a resource handle the guest does not
            // hold ("unknown handle index", "... used with the wrong type").
            None if e.root_cause().to_string().contains("handle index") => {
                stats.traps_forged_handle.add(1);
                "passed a handle it does not hold".to_string()
            }
            _ => {
                stats.traps_other.add(1);
                "trapped".to_string()
            }
        };
        anyhow!("guest {cause} in {call}: {e:#}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_compatible_versions_are_accepted_and_others_named() {
        let names = |v: &str| vec![format!("hio:tcp/host@{v}"), "wasi:io/streams@0.2.0".to_string()];
        for fits in ["0.2.0", "0.2.1", "0.2.9"] {
            assert_eq!(version_problem(&names(fits)), None, "{fits}");
        }
        for refused in ["0.3.0", "0.1.0", "1.0.0", "0.2"] {
            let problem = version_problem(&names(refused)).expect(refused);
            assert!(problem.starts_with(&format!("guest speaks hio:tcp@{refused}, this host speaks hio:tcp@0.2.x")));
        }
        assert_eq!(version_problem(&["hio:tcp/host".to_string()]), None, "unversioned: left to the linker");
    }
}
