//! Python guests: `app.py` against the `hio:tcp` WIT, made a component by
//! componentize-py (from `PATH`, or installed from PyPI into a venv).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::status;

/// The componentize-py release the guests are tested with.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.*";

/// `componentize-py` from `PATH`, else from a venv at `venv` (made, and
/// the tool installed from PyPI, when missing). Errors: no `python3`, or
/// pip cannot install it.
pub fn componentize_py(venv: &Path) -> Result<PathBuf> {
    let on_path = Command::new("componentize-py").arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path {
        return Ok(PathBuf::from("componentize-py"));
    }
    let tool = venv.join("bin/componentize-py");
    if !tool.exists() {
        eprintln!("hio-build: installing {COMPONENTIZE_PY} into {}", venv.display());
        status(Command::new("python3").args(["-m", "venv"]).arg(venv)).context("cannot make a Python venv")?;
        status(Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            COMPONENTIZE_PY,
        ]))
        .context("cannot install componentize-py")?;
    }
    Ok(tool)
}

/// Make `dir/app.py` the component `out/NAME.wasm` against the WIT in
/// `wit` (a directory or file), with `tool` (componentize-py).
pub fn build(tool: &Path, dir: &Path, wit: &Path, name: &str, out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let dest = out.join(format!("{name}.wasm"));
    status(
        Command::new(tool)
            .arg("-d")
            .arg(wit)
            .args(["-w", "server", "componentize", "app", "-p"])
            .arg(dir)
            .arg("-o")
            .arg(&dest),
    )?;
    Ok(dest)
}
