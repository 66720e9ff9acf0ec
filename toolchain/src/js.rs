//! JavaScript guests: `app.js` against the `hio:tcp` WIT, made a component
//! by componentize-js (StarlingMonkey), installed from the npm registry
//! into a directory of its own. Needs Node.js (and npm).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::status;

/// The componentize-js release the guests are tested with.
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// The script that calls componentize-js: source, WIT, output.
const SCRIPT: &str = r#"import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
const [source, wit, out] = process.argv.slice(2);
// Guests get no HTTP: only the WASI the engine itself needs.
const { component } = await componentize({
  sourcePath: source, witPath: wit, worldName: 'server', disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
"#;

/// The tool in `env` (installed there with npm when missing); returns the
/// script to run with `node`. Errors: no `node` or `npm`, or npm fails.
pub fn componentize_js(env: &Path) -> Result<PathBuf> {
    let have_node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_node {
        bail!("JavaScript guests need Node.js and npm (on Debian: apt install nodejs npm)");
    }
    let script = env.join("componentize.mjs");
    let installed = env.join(".installed");
    if std::fs::read_to_string(&installed).ok().as_deref() != Some(COMPONENTIZE_JS) {
        eprintln!("hio-build: installing {COMPONENTIZE_JS} into {}", env.display());
        std::fs::create_dir_all(env).with_context(|| format!("cannot create {}", env.display()))?;
        status(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                .arg(env)
                .arg(COMPONENTIZE_JS),
        )
        .context("cannot install componentize-js")?;
        std::fs::write(&installed, COMPONENTIZE_JS)?;
    }
    std::fs::write(&script, SCRIPT).with_context(|| format!("cannot write {}", script.display()))?;
    Ok(script)
}

/// Make `dir/app.js` the component `out/NAME.wasm` against the WIT in
/// `wit` (a file or directory), with the `script` of [`componentize_js`].
pub fn build(script: &Path, dir: &Path, wit: &Path, name: &str, out: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let dest = out.join(format!("{name}.wasm"));
    status(Command::new("node").arg(script).arg(dir.join("app.js")).arg(wit).arg(&dest))?;
    Ok(dest)
}
