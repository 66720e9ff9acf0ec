//! `hio:tcp/host` and `hio:tcp/types`: tyme and logging.

use super::State;
use super::hio::tcp::host::{Host, Level};

/// Longest guest log line kept; a guest cannot flood the host log with one call.
const MAX_LOG_LINE: usize = 4096;

impl Host for State {
    fn tyme(&mut self) -> f64 {
        self.core.clock.tyme()
    }

    fn log(&mut self, level: Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        match level {
            Level::Trace => tracing::trace!(target: "guest", "{message}"),
            Level::Debug => tracing::debug!(target: "guest", "{message}"),
            Level::Info => tracing::info!(target: "guest", "{message}"),
            Level::Warn => tracing::warn!(target: "guest", "{message}"),
            Level::Error => tracing::error!(target: "guest", "{message}"),
        }
    }
}

impl super::hio::tcp::types::Host for State {}
