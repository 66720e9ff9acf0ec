//! Which Rust builds guests here. rustup's `wasm32-unknown-unknown` target
//! when it is installed; otherwise Debian's second Rust (`rustc-web`,
//! whose std for wasm is built from `rust-web-src` with `-Z build-std`)
//! and LLVM's `wasm-ld`, installed with apt when missing (as root, or with
//! sudo). Why Debian's: rustup's wasm target cannot be downloaded on every
//! machine, Debian's packages can.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::status;

/// The target guests are built for (the SDK needs no WASI).
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// Debian's packages for the second route.
pub const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "lld-22"];
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";
const DEBIAN_STD_SOURCES: &str = "/usr/lib/rustlib/src/rust/library";

/// A way to build for [`WASM_TARGET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's toolchain with the wasm target installed.
    Rustup,
    /// Debian's `rustc-web`, `-Z build-std`, LLVM's `wasm-ld`.
    Debian,
}

impl Toolchain {
    /// rustup's when it has the target, else Debian's, installing its
    /// packages when missing. Errors: neither, and apt cannot install.
    pub fn find() -> Result<Toolchain> {
        if rustup_has_wasm_target() {
            return Ok(Toolchain::Rustup);
        }
        if !debian_installed() {
            eprintln!("hio-build: no rustup {WASM_TARGET} target; installing Debian's {}", DEBIAN_PACKAGES.join(" "));
            apt_install(DEBIAN_PACKAGES).with_context(|| {
                format!(
                    "no wasm toolchain: run `rustup target add {WASM_TARGET}`, or on Debian \
                     `apt install {}`",
                    DEBIAN_PACKAGES.join(" ")
                )
            })?;
        }
        Ok(Toolchain::Debian)
    }

    /// `cargo build --release --target wasm32-unknown-unknown` for this toolchain.
    pub fn cargo_build(self) -> Command {
        match self {
            Toolchain::Rustup => {
                let mut c = Command::new("cargo");
                c.args(["build", "--release", "--target", WASM_TARGET]);
                c
            }
            Toolchain::Debian => {
                let mut c = Command::new(DEBIAN_CARGO);
                c.args(["build", "--release", "--target", WASM_TARGET, "-Z", "build-std=std,panic_abort"])
                    .env("RUSTC", DEBIAN_RUSTC)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", DEBIAN_WASM_LD)
                    // rustup's wrappers must not send Debian's cargo to rustup's toolchain.
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .env_remove("RUSTC_WRAPPER")
                    .env_remove("RUSTFLAGS");
                c
            }
        }
    }
}

fn rustup_has_wasm_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == WASM_TARGET))
        .unwrap_or(false)
}

fn debian_installed() -> bool {
    [DEBIAN_RUSTC, DEBIAN_CARGO, DEBIAN_WASM_LD, DEBIAN_STD_SOURCES].iter().all(|p| Path::new(p).exists())
}

/// `apt-get install` Debian packages (with sudo unless root).
pub fn apt_install(packages: &[&str]) -> Result<()> {
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
