//! Project tasks, runnable before anything else is installed:
//!
//!   cargo xtask run [ARGS]   build, then serve the echo guest on 127.0.0.1:56000
//!   cargo xtask test         build, set up test peers, run the whole suite
//!   cargo xtask build        host binary + every guest component
//!   cargo xtask guests       guest components only (target/wasm/NAME.wasm)
//!   cargo xtask bench [ARGS] build, then run hio-bench (every scenario by default)
//!
//! Guests build with rustup's wasm32 target when it is installed, and
//! otherwise with Debian's rustc-web (see ../shared/notes/wasm-toolchain.md),
//! whose packages are installed here when missing. Python guests
//! (guest/NAME/app.py) build with componentize-py from a venv in target/pyenv.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld-22"];
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";
/// The real hio, as a peer for interop tests, and the builder of Python guests.
const PIP_PACKAGES: &[&str] = &["hio==0.6.10", "componentize-py==0.25.*", "prometheus-client==0.21.*"];

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
            let bench = root.join("target/release/hio-bench");
            if rest.is_empty() {
                status(Command::new(&bench).arg("echo"))?;
                status(Command::new(&bench).arg("tls"))?;
                status(Command::new(&bench).arg("workers"))?;
                status(Command::new(&bench).arg("startup"))?;
                status(Command::new(&bench).arg("swap"))?;
                status(Command::new(&bench).arg("upgrade"))?;
                status(Command::new(&bench).arg("swap-memory"))
            } else {
                status(Command::new(&bench).args(rest))
            }
        }
        _ => {
            eprintln!("usage: cargo xtask run|test|build|guests|bench [ARGS]");
            Ok(())
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn build_all(root: &Path) -> Result<()> {
    // The whole workspace, so `cargo test --workspace` reuses these builds
    // (building one package unifies dependency features differently).
    status(Command::new("cargo").current_dir(root).args(["build", "--release", "--workspace"]))?;
    build_guests(root)
}

/// Every cdylib in the guest workspace becomes target/wasm/NAME.wasm.
fn build_guests(root: &Path) -> Result<()> {
    let target_dir = root.join("target/wasm-build");
    let mut cmd = if rustup_has_wasm_target() {
        let mut c = Command::new("cargo");
        c.args(["build", "--release", "--target", WASM_TARGET]);
        c
    } else {
        ensure_debian_toolchain()?;
        let mut c = Command::new(DEBIAN_CARGO);
        c.args(["build", "--release", "--target", WASM_TARGET, "-Z", "build-std=std,panic_abort"])
            .env("RUSTC", DEBIAN_RUSTC)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", DEBIAN_WASM_LD)
            // rustup's wrappers must not redirect Debian's cargo to rustup's toolchain.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC_WRAPPER");
        c
    };
    status(cmd.current_dir(root.join("guest")).args(["--workspace"]).env("CARGO_TARGET_DIR", &target_dir))?;

    let out = root.join("target/wasm");
    std::fs::create_dir_all(&out)?;
    let built = target_dir.join(WASM_TARGET).join("release");
    for name in guest_names(root)? {
        let core = built.join(format!("{name}.wasm"));
        let module =
            std::fs::read(&core).with_context(|| format!("guest {name} was not built at {}", core.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .with_context(|| format!("{name}: not a guest module"))?
            .validate(true)
            .encode()
            .with_context(|| format!("{name}: cannot make a component"))?;
        let dest = out.join(format!("{name}.wasm"));
        std::fs::write(&dest, component)?;
        eprintln!("xtask: guest component {}", dest.display());
    }
    build_python_guests(root, &out)
}

/// Guest crates: cdylib packages under guest/ and tests/guests/.
fn guest_names(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for dir in [root.join("guest"), root.join("tests/guests")] {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let manifest = entry?.path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            if !text.contains("cdylib") {
                continue;
            }
            let name = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = \"").and_then(|r| r.strip_suffix('"')))
                .with_context(|| format!("no package name in {}", manifest.display()))?;
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn rustup_has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(false)
}

/// Install Debian's second Rust (with std sources) and LLVM's wasm linker.
fn ensure_debian_toolchain() -> Result<()> {
    let have = [DEBIAN_RUSTC, DEBIAN_CARGO, DEBIAN_WASM_LD].iter().all(|p| Path::new(p).exists())
        && Path::new("/usr/lib/rustlib/src/rust/library").exists();
    if have {
        return Ok(());
    }
    eprintln!("xtask: no rustup wasm target; installing Debian's {}", DEBIAN_PACKAGES.join(" "));
    apt_install(DEBIAN_PACKAGES).context("cannot install the wasm toolchain; see ../shared/notes/wasm-toolchain.md")
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
    apt_install(&missing).context("cannot install the tests' peers")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo { Command::new("sudo") } else { Command::new("apt-get") };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        status(&mut c)
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
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
/// componentize-py (rebuilt when app.py or the WIT is newer).
fn build_python_guests(root: &Path, out: &Path) -> Result<()> {
    let mut apps = Vec::new();
    for entry in std::fs::read_dir(root.join("guest"))? {
        let dir = entry?.path();
        if dir.join("app.py").exists() {
            apps.push(dir);
        }
    }
    if apps.is_empty() {
        return Ok(());
    }
    python_env(root)?;
    let tool = root.join("target/pyenv/bin/componentize-py");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let wit_time = modified(&root.join("wit/hio.wit"));
    for dir in apps {
        let name = dir.file_name().and_then(|n| n.to_str()).context("guest directory name")?.to_string();
        let dest = out.join(format!("{name}.wasm"));
        let fresh = modified(&dest).is_some_and(|d| Some(d) > modified(&dir.join("app.py")) && Some(d) > wit_time);
        if !fresh {
            status(
                Command::new(&tool)
                    .current_dir(root)
                    .args(["-d", "wit", "-w", "server", "componentize", "app", "-p"])
                    .arg(&dir)
                    .arg("-o")
                    .arg(&dest),
            )?;
        }
        eprintln!("xtask: guest component {}", dest.display());
    }
    Ok(())
}
