//! Project tasks, runnable before anything else is installed:
//!
//!   cargo xtask run [ARGS]   build, then serve the echo guest on 127.0.0.1:56000
//!   cargo xtask test         build, set up test peers, run the whole suite
//!   cargo xtask build        host binary + every guest component
//!   cargo xtask guests       guest components only (target/wasm/NAME.wasm; Rust, Python, JavaScript)
//!   cargo xtask bench [ARGS] build, then run hio-bench (every scenario by default)
//!   cargo xtask wit          copy wit/hio.wit into the crates that package it
//!
//! Guests build with rustup's wasm32 target when it is installed, and
//! otherwise with Debian's rustc-web (see ../shared/notes/wasm-toolchain.md),
//! whose packages are installed here when missing (`hio-build`, which
//! `hio-host build` uses too). Python guests
//! (guest/NAME/app.py) build with componentize-py from a venv in target/pyenv.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use hio_build::status;

/// The real hio, as a peer for interop tests, and the builder of Python guests.
const PIP_PACKAGES: &[&str] = &["hio==0.6.10", hio_build::python::COMPONENTIZE_PY, "prometheus-client==0.21.*"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = root();
    let (task, rest) = args.split_first().map(|(t, r)| (t.as_str(), r)).unwrap_or(("help", &[]));
    match task {
        "guests" => build_guests(&root),
        "wit" => copy_wit(&root),
        "build" => build_all(&root),
        "run" => {
            build_all(&root)?;
            let mut cmd = Command::new(root.join("target/release/hio-host"));
            cmd.arg("run").arg(root.join("target/wasm/echo.wasm"));
            if !rest.iter().any(|a| a == "--listen") {
                cmd.args(["--listen", "127.0.0.1:56000"]);
            }
            status(cmd.args(rest))
        }
        "test" => {
            check_wit(&root)?;
            build_all(&root)?;
            ensure_test_peers()?;
            let python = python_env(&root)?;
            // The SDK's bookkeeping is plain Rust: its unit tests run natively.
            status(
                Command::new("cargo")
                    .current_dir(root.join("guest"))
                    .args(["test", "--release", "-p", "hio-guest"])
                    .env("CARGO_TARGET_DIR", root.join("target/guest-native")),
            )?;
            status(
                Command::new("cargo")
                    .current_dir(&root)
                    .args(["test", "--release", "--workspace"])
                    .args(rest)
                    .env("HIO_PYTHON", python),
            )
        }
        "bench" => {
            build_all(&root)?;
            // The peers the echo scenarios run beside hio-host: hio's own
            // server (from the venv) and HAProxy.
            ensure_test_peers()?;
            python_env(&root)?;
            let bench = root.join("target/release/hio-bench");
            if rest.is_empty() {
                // Shorter than each one's default, so the whole set stays
                // under 6 minutes on two cores; BENCHMARKS.md gives the
                // longer runs' commands.
                let all: [&[&str]; 7] = [
                    &["echo", "--seconds", "2"],
                    &["tls", "--seconds", "3"],
                    &["workers", "--seconds", "3"],
                    &["startup"],
                    &["swap", "--swaps", "10"],
                    &["upgrade", "--conns", "100,1000", "--upgrades", "3"],
                    &["swap-memory", "--swaps", "200"],
                ];
                for args in all {
                    let began = std::time::Instant::now();
                    status(Command::new(&bench).args(args))?;
                    eprintln!("xtask: hio-bench {} took {:.0} s", args.join(" "), began.elapsed().as_secs_f64());
                }
                Ok(())
            } else {
                status(Command::new(&bench).args(rest))
            }
        }
        _ => {
            eprintln!("usage: cargo xtask run|test|build|guests|bench|wit [ARGS]");
            Ok(())
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// The crates that carry the WIT inside them, so each packages and builds
/// on its own; `wit/hio.wit` is the one to edit.
const WIT_COPIES: &[&str] = &["host/wit/hio.wit", "guest/sdk/wit/hio.wit", "toolchain/wit/hio.wit"];

fn copy_wit(root: &Path) -> Result<()> {
    for copy in WIT_COPIES {
        std::fs::copy(root.join("wit/hio.wit"), root.join(copy)).with_context(|| format!("cannot write {copy}"))?;
    }
    Ok(())
}

fn check_wit(root: &Path) -> Result<()> {
    let source = std::fs::read(root.join("wit/hio.wit")).context("cannot read wit/hio.wit")?;
    for copy in WIT_COPIES {
        if std::fs::read(root.join(copy)).ok().as_ref() != Some(&source) {
            bail!("{copy} differs from wit/hio.wit: edit wit/hio.wit, then run `cargo xtask wit`");
        }
    }
    Ok(())
}

fn build_all(root: &Path) -> Result<()> {
    // The whole workspace, so `cargo test --workspace` reuses these builds
    // (building one package unifies dependency features differently).
    status(Command::new("cargo").current_dir(root).args(["build", "--release", "--workspace"]))?;
    build_guests(root)
}

/// Every cdylib in the guest workspace becomes target/wasm/NAME.wasm
/// (`hio-build`: rustup's wasm target, or Debian's toolchain).
fn build_guests(root: &Path) -> Result<()> {
    let toolchain = hio_build::Toolchain::find()?;
    let out = root.join("target/wasm");
    let spec = hio_build::Build {
        dir: root.join("guest"),
        target_dir: Some(root.join("target/wasm-build")),
        out: Some(out.clone()),
    };
    for dest in hio_build::build(&spec, &toolchain)? {
        eprintln!("xtask: guest component {}", dest.display());
    }
    build_python_guests(root, &out)?;
    build_js_guests(root, &out)
}

/// The real peers tests drive the host with, from Debian, each named by a
/// program it installs.
const TEST_PEERS: &[(&str, &str)] =
    &[("/usr/bin/systemd-socket-activate", "systemd"), ("/usr/bin/curl", "curl"), ("/usr/sbin/haproxy", "haproxy")];

fn ensure_test_peers() -> Result<()> {
    let missing: Vec<&str> =
        TEST_PEERS.iter().filter(|(program, _)| !Path::new(program).exists()).map(|(_, package)| *package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian's {} for the tests", missing.join(" "));
    hio_build::toolchain::apt_install(&missing).context("cannot install the tests' peers")
}

/// A venv with the real hio client for interop tests (target/pyenv).
fn python_env(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    let want = PIP_PACKAGES.join("\n");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(want.as_str()) {
        if !python.exists() {
            status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        status(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(PIP_PACKAGES),
        )?;
        std::fs::write(&ready, want)?;
    }
    Ok(python)
}

/// Python guests: guest/NAME/app.py becomes target/wasm/NAME.wasm with
/// componentize-py from the venv in target/pyenv.
fn build_python_guests(root: &Path, out: &Path) -> Result<()> {
    build_apps(root, out, "app.py", || {
        python_env(root)?;
        let tool = root.join("target/pyenv/bin/componentize-py");
        Ok(move |dir: &Path, wit: &Path, name: &str| hio_build::python::build(&tool, dir, wit, name, out))
    })
}

/// JavaScript guests: guest/NAME/app.js becomes target/wasm/NAME.wasm with
/// componentize-js, installed into target/jsenv. Node.js and npm come from
/// Debian when missing.
fn build_js_guests(root: &Path, out: &Path) -> Result<()> {
    build_apps(root, out, "app.js", || {
        if !Path::new("/usr/bin/node").exists() && Command::new("node").arg("--version").output().is_err() {
            eprintln!("xtask: installing Debian's nodejs npm for the JavaScript guests");
            hio_build::toolchain::apt_install(&["nodejs", "npm"])?;
        }
        let script = hio_build::js::componentize_js(&root.join("target/jsenv"))?;
        Ok(move |dir: &Path, wit: &Path, name: &str| hio_build::js::build(&script, dir, wit, name, out))
    })
}

/// Every guest/NAME holding `file` becomes target/wasm/NAME.wasm, rebuilt
/// when `file` or the WIT is newer; `tool` sets the builder up, only if
/// there is something to build.
fn build_apps<B: Fn(&Path, &Path, &str) -> Result<PathBuf>>(
    root: &Path,
    out: &Path,
    file: &str,
    tool: impl FnOnce() -> Result<B>,
) -> Result<()> {
    let mut apps = Vec::new();
    for entry in std::fs::read_dir(root.join("guest"))? {
        let dir = entry?.path();
        if dir.join(file).exists() {
            apps.push(dir);
        }
    }
    if apps.is_empty() {
        return Ok(());
    }
    apps.sort();
    let build = tool()?;
    let wit = root.join("wit");
    for dir in apps {
        let name = dir.file_name().and_then(|n| n.to_str()).context("guest directory name")?.to_string();
        let dest = out.join(format!("{name}.wasm"));
        if !fresh(&dest, &[&dir.join(file), &wit.join("hio.wit")]) {
            build(&dir, &wit, &name)?;
        }
        eprintln!("xtask: guest component {}", dest.display());
    }
    Ok(())
}

/// Whether `built` is newer than every one of `sources`.
fn fresh(built: &Path, sources: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    modified(built).is_some_and(|b| sources.iter().all(|s| modified(s).is_some_and(|s| b > s)))
}
