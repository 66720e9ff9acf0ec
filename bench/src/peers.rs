//! The servers a user would pick instead of hio-host for a scripted
//! policy, run by the bench beside it: hio 0.6.10's own Python server (the
//! seed's implementation, `bench/py/hio_echo_server.py`) and HAProxy 2.6
//! with a Lua TCP echo service (`bench/haproxy/echo.lua`), one thread each
//! like hio-host's one loop.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Host, root};

/// A free loopback port (neither peer can listen on port 0 and tell us).
fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// hio 0.6.10's echo server, from the venv `cargo xtask test` makes.
pub fn hio_python() -> Result<Host> {
    let python = root().join("target/pyenv/bin/python");
    if !python.exists() {
        bail!("no {} (run cargo xtask test once, it makes the venv with hio)", python.display());
    }
    let addr = free_addr()?;
    let mut cmd = Command::new(python);
    cmd.arg(root().join("bench/py/hio_echo_server.py")).arg(addr.port().to_string());
    Host::start(cmd)
}

/// HAProxy with the Lua echo service for messages of `size` bytes.
pub fn haproxy_lua(size: usize) -> Result<Host> {
    let haproxy = PathBuf::from("/usr/sbin/haproxy");
    if !haproxy.exists() {
        bail!("no {} (cargo xtask bench installs Debian's haproxy)", haproxy.display());
    }
    let addr = free_addr()?;
    let dir = std::env::temp_dir().join(format!("hio-bench-haproxy-{}-{}", std::process::id(), addr.port()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  nbthread 1\n  lua-load {}\n\ndefaults\n  mode tcp\n  timeout client 60s\n  \
             timeout connect 5s\n  timeout server 60s\n\nfrontend echo\n  bind {addr}\n  \
             tcp-request content use-service lua.echo\n",
            root().join("bench/haproxy/echo.lua").display()
        ),
    )?;
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(&config).env("HIO_ECHO_SIZE", size.to_string());
    let host = Host::start_when_listening(cmd, addr);
    // Read at start; nothing is left to keep.
    let _ = std::fs::remove_dir_all(&dir);
    host
}

/// Wait until something accepts at `addr`.
pub fn wait_listening(addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err(anyhow::anyhow!("nothing listens at {addr} after 30 s")).context("peer did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
