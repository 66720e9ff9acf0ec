//! What a guest may write to the host's log, whichever way it writes
//! (`host.log`, WASI stdout, WASI stderr): at most [`LINES_PER_SECOND`]
//! lines a second on each, every line cut at [`MAX_LINE`] bytes with its
//! control characters escaped. A guest can neither flood the host's log
//! nor forge lines in it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::Stats;

/// Lines a guest may log per second on each of its outputs.
pub const LINES_PER_SECOND: u32 = 100;
/// Longest line kept, in bytes; the rest is cut.
pub const MAX_LINE: usize = 4096;

const WINDOW: Duration = Duration::from_secs(1);

/// The rate limit of one guest output.
pub struct LogLimit {
    output: &'static str,
    window: Instant,
    in_window: u32,
    dropped: u64,
    stats: Arc<Stats>,
}

impl LogLimit {
    pub fn new(output: &'static str, stats: Arc<Stats>) -> LogLimit {
        LogLimit { output, window: Instant::now(), in_window: 0, dropped: 0, stats }
    }

    /// Whether one more line may go to the log now. Over the limit it says
    /// so once, and how many lines it dropped when the next second begins.
    pub fn admit(&mut self) -> bool {
        if self.window.elapsed() >= WINDOW {
            self.say_dropped();
            self.window = Instant::now();
            self.in_window = 0;
        }
        if self.in_window < LINES_PER_SECOND {
            self.in_window += 1;
            return true;
        }
        if self.dropped == 0 {
            tracing::warn!(target: "guest", output = self.output, "guest logs more than {LINES_PER_SECOND} lines a second: dropping lines for the rest of this second");
        }
        self.dropped += 1;
        self.stats.guest_log_dropped.add(1);
        false
    }
}

impl LogLimit {
    /// Once the second in which lines were dropped is over, say how many
    /// (called after every guest call, so the count comes even if the guest
    /// logs nothing more).
    pub fn report(&mut self) {
        if self.dropped > 0 && self.window.elapsed() >= WINDOW {
            self.say_dropped();
        }
    }

    fn say_dropped(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(target: "guest", output = self.output, dropped = self.dropped, "guest log lines dropped (over {LINES_PER_SECOND} a second)");
            self.dropped = 0;
        }
    }
}

impl Drop for LogLimit {
    fn drop(&mut self) {
        self.say_dropped();
    }
}

/// A guest's line as the host logs it: at most `MAX_LINE` bytes (cut on a
/// character boundary, marked with "..."), control characters escaped so
/// a guest cannot start a fake log line or drive the operator's terminal.
pub fn clean(line: &str) -> Cow<'_, str> {
    let mut cut = line.len().min(MAX_LINE);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    let kept = &line[..cut];
    if cut == line.len() && !kept.chars().any(char::is_control) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(cut + 3);
    for c in kept.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut < line.len() {
        out.push_str("...");
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_rate_are_dropped_and_counted() {
        let stats = Arc::new(Stats::default());
        let mut limit = LogLimit::new("log", stats.clone());
        let admitted = (0..3 * LINES_PER_SECOND).filter(|_| limit.admit()).count();
        assert_eq!(admitted, LINES_PER_SECOND as usize);
        assert_eq!(stats.guest_log_dropped.get(), 2 * u64::from(LINES_PER_SECOND));
        limit.report();
        assert_eq!(limit.dropped, 2 * u64::from(LINES_PER_SECOND), "counted until the second is over");
        limit.window -= WINDOW;
        limit.report();
        assert_eq!(limit.dropped, 0, "reported once the second is over");
        assert!(limit.admit(), "a new second admits again");
    }

    #[test]
    fn lines_are_cut_and_cannot_forge_other_lines() {
        assert!(matches!(clean("plain line"), Cow::Borrowed("plain line")));
        assert_eq!(clean("one\nINFO hio_host: forged\x1b[31m"), "one\\nINFO hio_host: forged\\u{1b}[31m");
        let long = "é".repeat(MAX_LINE);
        let cut = clean(&long);
        assert!(cut.len() <= MAX_LINE + 3 && cut.ends_with("...") && cut.starts_with('é'));
    }
}
