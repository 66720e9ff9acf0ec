//! Log through the host's log.

use crate::bindings::hio::tcp::host::{Level, log};

/// Log `message` at trace level in the host's log (target `guest`, rate-limited).
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Log `message` at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log `message` at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log `message` at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log `message` at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}
