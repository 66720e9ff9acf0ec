#![warn(missing_docs)]
//! Scaffold and build hio-host guest components, outside this repository
//! as inside it (`hio-host new`, `hio-host build`, `cargo xtask guests`).
//!
//! - [`toolchain`]: which Rust can build for wasm here: rustup's
//!   `wasm32-unknown-unknown` target, or Debian's `rustc-web` with the std
//!   sources (`-Z build-std`) and LLVM's `wasm-ld`, installed when missing.
//! - [`build()`]: `cargo build` a crate or workspace for wasm, then encode
//!   every `cdylib` as a component (`wit-component`).
//! - [`python`]: a Python guest (`app.py`) made a component by componentize-py.
//! - [`js`]: a JavaScript guest (`app.js`) made a component by componentize-js.
//! - [`scaffold`]: a new guest (Rust crate, Python or JavaScript app) from templates.
//! - [`build_dir`]: whichever a directory holds.

pub mod js;
pub mod python;
pub mod scaffold;
pub mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub use toolchain::Toolchain;

/// The `hio:tcp` WIT this tool was built with (written into Python and
/// JavaScript guests).
pub const WIT: &str = include_str!("../wit/hio.wit");

/// A guest's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// A crate depending on the `hio-guest` SDK (`Cargo.toml`).
    Rust,
    /// `app.py` against the WIT, with componentize-py.
    Python,
    /// `app.js` against the WIT, with componentize-js.
    Js,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Lang, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            other => Err(format!("no guest language {other:?}: rust, python or js")),
        }
    }
}

/// Build the guest at `dir`, whatever its language (a `Cargo.toml`: Rust;
/// an `app.py`: Python; an `app.js`: JavaScript), into
/// `TARGET/wasm/NAME.wasm`; returns the components made. Errors: none of
/// these files, or the build fails.
pub fn build_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join("Cargo.toml").is_file() {
        return build(&Build::new(dir), &Toolchain::find()?);
    }
    let dir = dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).context("the guest's directory has no name")?;
    let (wit, out) = (dir.join("wit"), dir.join("target/wasm"));
    if dir.join("app.py").is_file() {
        let tool = python::componentize_py(&dir.join("target/pyenv"))?;
        return Ok(vec![python::build(&tool, &dir, &wit, name, &out)?]);
    }
    if dir.join("app.js").is_file() {
        let script = js::componentize_js(&dir.join("target/jsenv"))?;
        return Ok(vec![js::build(&script, &dir, &wit, name, &out)?]);
    }
    bail!("{} holds no guest: no Cargo.toml (Rust), app.py (Python) or app.js (JavaScript)", dir.display())
}

/// Run `cmd`; an error names it and its exit status.
pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// What to build and where.
#[derive(Clone, Debug)]
pub struct Build {
    /// The crate or workspace (its `Cargo.toml`'s directory).
    pub dir: PathBuf,
    /// Cargo's target directory for the wasm build; default: `hio-wasm/` in
    /// the crate's own (`cargo metadata`), apart from cargo's native builds
    /// so a `cargo test` holding their lock can build the guest meanwhile.
    pub target_dir: Option<PathBuf>,
    /// Where components go (`NAME.wasm`, the package name); default:
    /// `wasm/` in the crate's target directory.
    pub out: Option<PathBuf>,
}

impl Build {
    /// Build the crate (every member, for a workspace) at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Build {
        Build { dir: dir.into(), target_dir: None, out: None }
    }
}

/// Build every `cdylib` package of `spec.dir` for wasm, in release mode,
/// and encode each as a component; returns their paths. Errors: no wasm
/// toolchain can be had, cargo fails, a module is not a guest (it does not
/// export the `hio:tcp` world's functions).
pub fn build(spec: &Build, toolchain: &Toolchain) -> Result<Vec<PathBuf>> {
    let meta = metadata(&spec.dir)?;
    let crate_target = PathBuf::from(meta["target_directory"].as_str().context("cargo metadata: no target directory")?);
    let target_dir = spec.target_dir.clone().unwrap_or_else(|| crate_target.join("hio-wasm"));
    let guests = cdylibs(&meta);
    if guests.is_empty() {
        bail!("{} has no cdylib package: a guest crate has `[lib] crate-type = [\"cdylib\"]`", spec.dir.display());
    }
    let mut cmd = toolchain.cargo_build();
    cmd.current_dir(&spec.dir).arg("--workspace").env("CARGO_TARGET_DIR", &target_dir);
    let st = cmd.status().context("cannot run cargo")?;
    if !st.success() {
        bail!("cargo build for {} failed ({st}); cargo's errors are above", toolchain::WASM_TARGET);
    }
    let built = target_dir.join(toolchain::WASM_TARGET).join("release");
    let out = spec.out.clone().unwrap_or_else(|| crate_target.join("wasm"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    guests.iter().map(|name| componentize(&built, name, &out)).collect()
}

/// The names of the `cdylib` packages in a workspace's metadata.
fn cdylibs(meta: &serde_json::Value) -> Vec<String> {
    let members: Vec<&str> =
        meta["workspace_members"].as_array().into_iter().flatten().filter_map(|m| m.as_str()).collect();
    let mut names: Vec<String> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id)))
        .filter(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "cdylib"))
        })
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

fn metadata(dir: &Path) -> Result<serde_json::Value> {
    let out = Command::new("cargo")
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .with_context(|| format!("cannot run cargo metadata in {}", dir.display()))?;
    if !out.status.success() {
        bail!("cargo metadata in {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata: not JSON")
}

/// The core module cargo built for package `name` as `out/NAME.wasm`, a component.
fn componentize(built: &Path, name: &str, out: &Path) -> Result<PathBuf> {
    let core = built.join(format!("{}.wasm", name.replace('-', "_")));
    let module = std::fs::read(&core).with_context(|| format!("guest {name} was not built at {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{name}: not a guest module"))?
        .validate(true)
        .encode()
        .with_context(|| format!("{name}: cannot make a component"))?;
    let dest = out.join(format!("{name}.wasm"));
    std::fs::write(&dest, component).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(dest)
}
