//! WASI for guests built for `wasm32-wasip2` or in other languages (for
//! instance Python with componentize-py): linked, but with nothing granted.
//! No files, no network, no environment, no arguments; stdout and stderr go
//! to the host's log, rate-limited so a chatty guest cannot flood it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::State;

/// Lines a guest may log per second on each of stdout and stderr.
const LINES_PER_SECOND: u32 = 100;
/// Longest line kept; the rest is cut.
const MAX_LINE: usize = 4096;

pub fn context() -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(GuestOutput::new("stdout"))
        .stderr(GuestOutput::new("stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// One of a guest's output streams, shared by every handle it opens to it.
#[derive(Clone)]
struct GuestOutput {
    inner: Arc<Mutex<Lines>>,
}

struct Lines {
    name: &'static str,
    partial: Vec<u8>,
    window: Instant,
    in_window: u32,
    dropped: u64,
}

impl GuestOutput {
    fn new(name: &'static str) -> GuestOutput {
        GuestOutput {
            inner: Arc::new(Mutex::new(Lines {
                name,
                partial: Vec::new(),
                window: Instant::now(),
                in_window: 0,
                dropped: 0,
            })),
        }
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
        if self.window.elapsed().as_secs() >= 1 {
            if self.dropped > 0 {
                tracing::warn!(target: "guest", stream = self.name, "{} lines of guest output dropped (over {LINES_PER_SECOND}/s)", self.dropped);
            }
            self.window = Instant::now();
            self.in_window = 0;
            self.dropped = 0;
        }
        if self.in_window >= LINES_PER_SECOND {
            self.dropped += 1;
            return;
        }
        self.in_window += 1;
        tracing::info!(target: "guest", stream = self.name, "{}", String::from_utf8_lossy(line));
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
    fn lines_are_split_cut_and_rate_limited() {
        let mut l = GuestOutput::new("stdout").inner.lock().unwrap().clone_state();
        l.write(b"one\ntw");
        assert_eq!(l.in_window, 1);
        assert_eq!(l.partial, b"tw");
        l.write(&vec![b'x'; 2 * MAX_LINE]);
        assert_eq!(l.partial.len(), MAX_LINE);
        l.write(b"\n");
        for _ in 0..(2 * LINES_PER_SECOND) {
            l.write(b"chatty\n");
        }
        assert_eq!(l.in_window, LINES_PER_SECOND);
        assert_eq!(l.dropped, u64::from(LINES_PER_SECOND) + 2);
    }

    impl Lines {
        fn clone_state(&self) -> Lines {
            Lines { name: self.name, partial: Vec::new(), window: self.window, in_window: 0, dropped: 0 }
        }
    }
}
