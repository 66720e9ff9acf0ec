//! `hio:tcp/host` and `hio:tcp/types`: tyme, logging and the drain.

use super::StoreData;
use super::hio::tcp::host::{Host, Level};
use super::log_limit::clean;

impl Host for StoreData {
    fn tyme(&mut self) -> f64 {
        self.host_ref().tyme()
    }

    fn draining(&mut self) -> bool {
        self.host_ref().draining()
    }

    /// Rate-limited and cleaned like the guest's stdout (see `log_limit`).
    fn log(&mut self, level: Level, message: String) {
        if !self.log_limit.admit() {
            return;
        }
        let message = clean(&message);
        match level {
            Level::Trace => tracing::trace!(target: "guest", "{message}"),
            Level::Debug => tracing::debug!(target: "guest", "{message}"),
            Level::Info => tracing::info!(target: "guest", "{message}"),
            Level::Warn => tracing::warn!(target: "guest", "{message}"),
            Level::Error => tracing::error!(target: "guest", "{message}"),
        }
    }
}

impl super::hio::tcp::types::Host for StoreData {}
