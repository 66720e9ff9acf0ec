//! WASI for guests built for `wasm32-wasip2` or in other languages (for
//! instance Python with componentize-py): linked, but with nothing granted.
//! No files, no network, no environment, no arguments; stdout and stderr go
//! to the host's log, rate-limited so a chatty guest cannot flood it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::StoreData;
use super::log_limit::{LogLimit, MAX_LINE, clean};
use crate::stats::Stats;

/// A WASI context granting nothing, and the guest's two output streams.
pub fn context(stats: &Arc<Stats>) -> (WasiCtx, [GuestOutput; 2]) {
    let outputs = [GuestOutput::new("stdout", stats.clone()), GuestOutput::new("stderr", stats.clone())];
    let ctx = WasiCtxBuilder::new()
        .stdout(outputs[0].clone())
        .stderr(outputs[1].clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    (ctx, outputs)
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// One of a guest's output streams, shared by every handle it opens to it.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<Lines>>,
}

struct Lines {
    name: &'static str,
    partial: Vec<u8>,
    limit: LogLimit,
}

impl GuestOutput {
    fn new(name: &'static str, stats: Arc<Stats>) -> GuestOutput {
        GuestOutput {
            inner: Arc::new(Mutex::new(Lines { name, partial: Vec::new(), limit: LogLimit::new(name, stats) })),
        }
    }

    /// See [`LogLimit::report`].
    pub fn report(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).limit.report();
    }
}

impl Lines {
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.push(&bytes[..end]);
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
            bytes = &bytes[end + 1..];
        }
        self.push(bytes);
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self, line: &[u8]) {
        if self.limit.admit() {
            tracing::info!(target: "guest", stream = self.name, "{}", clean(&String::from_utf8_lossy(line)));
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_split_into_lines_and_long_ones_cut() {
        let out = GuestOutput::new("stdout", Arc::default());
        let mut l = out.inner.lock().unwrap();
        l.write(b"one\ntw");
        assert_eq!(l.partial, b"tw");
        l.write(&vec![b'x'; 2 * MAX_LINE]);
        assert_eq!(l.partial.len(), MAX_LINE);
        l.write(b"\n");
        assert!(l.partial.is_empty());
    }
}
