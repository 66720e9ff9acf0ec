//! Interfaces a guest may export or leave out (`batch` since WIT 0.2.2,
//! `handover` since 0.2.3). `bindgen!` would make every guest export them,
//! so the host looks for them by name when a guest starts, whatever 0.2.x
//! version the guest was built against, and checks once that their types
//! are this host's.

use anyhow::{Result, anyhow};
use wasmtime::component::{Component, ComponentNamedList, Func, Instance, Lift, Lower};
use wasmtime::{AsContextMut, Engine};

use super::StoreData;

/// The function `func` of the interface `iface` (a name without its
/// version, e.g. "hio:tcp/batch") if the guest exports it, checked to take
/// `P` and return `R`. An interface exported without it, or with other
/// types, is an error: the guest is not one this host can serve.
pub fn find<P, R>(
    engine: &Engine,
    component: &Component,
    instance: &Instance,
    mut store: impl AsContextMut<Data = StoreData>,
    (iface, func): (&str, &str),
) -> Result<Option<Func>>
where
    P: ComponentNamedList + Lower,
    R: ComponentNamedList + Lift,
{
    let ty = component.component_type();
    let Some((name, _)) = ty.exports(engine).find(|(name, _)| name.split('@').next() == Some(iface)) else {
        return Ok(None);
    };
    let found = instance
        .get_export_index(&mut store, None, name)
        .and_then(|i| instance.get_export_index(&mut store, Some(&i), func))
        .and_then(|f| instance.get_func(&mut store, f))
        .ok_or_else(|| anyhow!("it exports {name} without `{func}`"))?;
    found.typed::<P, R>(&store).map_err(|e| anyhow!("its {name}#{func} is not this host's: {e:#}"))?;
    Ok(Some(found))
}
