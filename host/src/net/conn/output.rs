//! Whether a connection's peer takes what is sent to it: the looks behind
//! the send timeout (an open connection) and the linger time (a closed
//! one). Progress is what the peer's TCP acknowledged, read from the
//! kernel's send queue (`SIOCOUTQ`); there is no readiness event for it.

use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::{Conn, WriteSide};

/// First and longest wait between looks at a lingering connection's kernel
/// send queue.
const LINGER_FIRST_LOOK: Duration = Duration::from_millis(10);
const LINGER_MAX_LOOK: Duration = Duration::from_secs(1);

/// What [`Conn::check_output`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputCheck {
    /// Nothing waits for the peer.
    Nothing,
    /// Look again then.
    Wait(Instant),
    /// Closed, and everything it sent has reached the peer: release it.
    Release,
    /// The peer took nothing for too long: give up on it.
    Stalled(Stall),
}

/// Why the host gives up on a connection whose peer does not take its output.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Stall {
    /// Open: nothing taken for the send timeout.
    SendTimeout,
    /// Closed by the guest: nothing taken for the linger time.
    Linger,
}

/// How long a peer may leave its output untaken.
#[derive(Debug, Clone, Copy)]
pub struct StallLimits {
    /// Open connections; `None`: no limit.
    pub send_timeout: Option<Duration>,
    /// Closing connections.
    pub linger: Duration,
}

impl StallLimits {
    /// How late a look may come: at most 250 ms, and an eighth of the
    /// shortest limit.
    pub fn slack(&self) -> Duration {
        let shortest = self.send_timeout.map_or(self.linger, |t| t.min(self.linger));
        (shortest / 8).min(Duration::from_millis(250))
    }
}

/// Where a connection's output stands, as the looks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Open: bounded by the send timeout.
    Open,
    /// Closed by the guest, its queue still going out: bounded by linger.
    Closing,
    /// Its FIN sent: looked at often, to be let go once the peer has it all.
    Lingering,
}

/// What the looks know of one connection.
#[derive(Debug)]
pub(super) struct OutputWatch {
    /// Since when output has waited for the peer without it taking a byte;
    /// `None` when nothing waits.
    pub(super) stalled_since: Option<Instant>,
    /// When the next look is due, and in which phase it was asked for: a
    /// connection that has since begun closing, or lingering, needs an
    /// earlier one.
    listed: Option<(Instant, Phase)>,
    /// Bytes written to the socket, ever.
    written: u64,
    /// Bytes the peer's TCP had acknowledged at the last look.
    last_delivered: u64,
    /// Wrote to the socket since the last look.
    wrote: bool,
    /// Wait before the next look, while lingering.
    linger_look: Duration,
}

impl Default for OutputWatch {
    fn default() -> OutputWatch {
        OutputWatch {
            stalled_since: None,
            listed: None,
            written: 0,
            last_delivered: 0,
            wrote: false,
            linger_look: LINGER_FIRST_LOOK,
        }
    }
}

impl OutputWatch {
    /// `n` bytes went into the socket.
    pub(super) fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        self.wrote |= n > 0;
    }

    /// The guest closed the connection: its linger time counts from now,
    /// however long it waited before.
    pub(super) fn closed(&mut self) {
        self.stalled_since = None;
    }
}

impl Conn {
    /// Bytes queued in the host (or TLS records) wait for the socket.
    pub fn output_waits(&self) -> bool {
        self.write != WriteSide::Broken && (self.queued() > 0 || self.tls_wants_write())
    }

    /// Closed and its FIN sent: the peer may not have taken all the kernel
    /// holds for it yet. Until it has, the host keeps the socket: closing it
    /// would let a late byte from the peer reset the connection and destroy
    /// what the peer has not yet received, and would leave what it holds to
    /// the kernel, outside the host's bounds (a half-closed peer that never
    /// reads could park megabytes there, connection after connection).
    pub fn lingering(&self) -> bool {
        self.closing && self.write == WriteSide::FinSent
    }

    /// Bytes the peer has not taken: queued in the host, and in the kernel
    /// (sent and not yet acknowledged, or not yet sent).
    pub fn undelivered(&self) -> u64 {
        self.queued() + u64::from(kernel_unsent(&self.sock))
    }

    /// Bytes still to go out: queued in the host, and in the kernel not yet
    /// sent (a peer that stops reading closes its window and they stay).
    /// Unlike [`Conn::undelivered`], bytes in flight are not counted: their
    /// acknowledgement may be delayed (40 ms on Linux), and a guest must not
    /// take a peer that read everything for one still taking its output.
    pub fn unsent(&self) -> u64 {
        self.queued() + u64::from(kernel_queue(&self.sock, libc::SIOCOUTQNSD))
    }

    /// Whether to look at this connection's output in a while: something
    /// waits for the peer, or it wrote since the last look (what it wrote
    /// may sit in the kernel, unread); and no look is due soon enough already.
    pub fn output_to_watch(&mut self) -> bool {
        if self.output.listed.is_some_and(|(_, phase)| phase >= self.phase()) {
            return false;
        }
        std::mem::take(&mut self.output.wrote) || self.output_waits() || self.lingering()
    }

    fn phase(&self) -> Phase {
        match (self.closing, self.lingering()) {
            (_, true) => Phase::Lingering,
            (true, false) => Phase::Closing,
            (false, false) => Phase::Open,
        }
    }

    /// A look is due at `at`.
    pub fn list(&mut self, at: Instant) {
        self.output.listed = Some((at, self.phase()));
    }

    /// Whether a look due at `at` is the one it waits for (an earlier look
    /// replaced a later one when it began closing).
    pub fn take_look(&mut self, at: Instant) -> bool {
        let current = self.output.listed.is_some_and(|(when, _)| when == at);
        if current {
            self.output.listed = None;
        }
        current
    }

    /// Whether the peer is late taking its output: output waits for it in
    /// the host's queue or in the kernel's (which a peer that never reads
    /// can fill with megabytes before the host's queue grows at all).
    /// Progress is any byte its TCP acknowledged since the last look. A
    /// closed connection lingers until the kernel has handed the peer
    /// everything, its FIN included.
    pub fn check_output(&mut self, now: Instant, limits: &StallLimits) -> OutputCheck {
        self.output.wrote = false;
        let lingering = self.lingering();
        let unsent = u64::from(kernel_unsent(&self.sock));
        if lingering && unsent == 0 {
            return OutputCheck::Release;
        }
        if !lingering && !self.output_waits() && unsent == 0 {
            self.output.stalled_since = None;
            return OutputCheck::Nothing;
        }
        let out = &mut self.output;
        let delivered = out.written.saturating_sub(unsent);
        if delivered > out.last_delivered || out.stalled_since.is_none() {
            out.stalled_since = Some(now);
        }
        out.last_delivered = delivered;
        let (limit, stall) = match (self.closing, limits.send_timeout) {
            (true, _) => (limits.linger, Stall::Linger),
            (false, Some(t)) => (t, Stall::SendTimeout),
            (false, None) => return OutputCheck::Nothing,
        };
        let deadline = out.stalled_since.unwrap_or(now) + limit;
        if now >= deadline {
            return OutputCheck::Stalled(stall);
        }
        // Looks often enough to see progress in time; a lingering one
        // sooner, to let go of it as soon as the kernel is done.
        let look = if lingering {
            let look = out.linger_look;
            out.linger_look = (look * 2).min(LINGER_MAX_LOOK);
            look
        } else {
            look_every(limit)
        };
        OutputCheck::Wait((now + look).min(deadline))
    }

    /// The first look at a connection that only wrote: in a while, without
    /// asking the kernel now (most writes are taken at once). Its clock
    /// starts now, with nothing of what it wrote taken yet.
    pub fn first_look(&mut self, now: Instant, limits: &StallLimits) -> OutputCheck {
        self.output.stalled_since = Some(now);
        self.output.last_delivered = self.output.written;
        match (self.closing, limits.send_timeout) {
            (true, _) => OutputCheck::Wait(now + LINGER_FIRST_LOOK),
            (false, Some(t)) => OutputCheck::Wait(now + look_every(t)),
            (false, None) => OutputCheck::Nothing,
        }
    }
}

fn look_every(limit: Duration) -> Duration {
    (limit / 4).max(LINGER_FIRST_LOOK)
}

/// Bytes in the kernel's send queue not yet acknowledged by the peer
/// (SIOCOUTQ, a FIN counting one); 0 if it cannot tell.
fn kernel_unsent(sock: &TcpStream) -> u32 {
    kernel_queue(sock, libc::TIOCOUTQ)
}

/// A count of the socket's send queue by `request` (`TIOCOUTQ`: not yet
/// acknowledged; `SIOCOUTQNSD`: not yet sent); 0 if it cannot tell.
fn kernel_queue(sock: &TcpStream, request: libc::c_ulong) -> u32 {
    use std::os::fd::AsRawFd;
    let mut bytes: libc::c_int = 0;
    // SAFETY: both requests write one int through the pointer, which lives for the call.
    let ok = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut bytes) } == 0;
    if ok { u32::try_from(bytes).unwrap_or(0) } else { 0 }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpStream as StdStream;

    use super::super::tests::pair;
    use super::*;

    /// A connection whose peer reads nothing, with `queued` bytes waiting
    /// in the host after the kernel's buffers filled.
    fn stalled_pair(queued: usize) -> (Conn, StdStream) {
        let (mut c, peer) = pair();
        c.queue(vec![7u8; queued]);
        c.flush(None).unwrap();
        assert!(c.queued() > 0, "the kernel took it all");
        (c, peer)
    }

    const LIMITS: StallLimits =
        StallLimits { send_timeout: Some(Duration::from_secs(30)), linger: Duration::from_secs(5) };

    #[test]
    fn a_peer_that_takes_nothing_is_given_up_on_after_the_send_timeout() {
        let (mut c, _peer) = stalled_pair(16 << 20);
        let t0 = Instant::now();
        let OutputCheck::Wait(look) = c.check_output(t0, &LIMITS) else { panic!("not watched") };
        let since = c.output.stalled_since.unwrap();
        assert!(look > t0 && look <= since + Duration::from_secs(30), "looks again within the timeout");
        let late = since + Duration::from_secs(30);
        assert!(matches!(c.check_output(late - Duration::from_secs(1), &LIMITS), OutputCheck::Wait(_)));
        assert_eq!(c.check_output(late, &LIMITS), OutputCheck::Stalled(Stall::SendTimeout));
        assert_eq!(c.check_output(late, &StallLimits { send_timeout: None, ..LIMITS }), OutputCheck::Nothing);
        // Closed by the guest (late), it gets the linger time from then.
        c.close();
        c.flush(None).unwrap();
        assert!(matches!(c.check_output(late, &LIMITS), OutputCheck::Wait(at) if at <= late + LIMITS.linger));
        assert_eq!(c.output.stalled_since, Some(late));
        assert_eq!(c.check_output(late + LIMITS.linger, &LIMITS), OutputCheck::Stalled(Stall::Linger));
    }

    #[test]
    fn the_clock_starts_when_the_connection_wrote_not_at_its_first_look() {
        let (mut c, _peer) = stalled_pair(16 << 20);
        let wrote = Instant::now();
        assert!(c.output_to_watch());
        assert!(matches!(c.first_look(wrote, &LIMITS), OutputCheck::Wait(_)));
        let first_look = wrote + Duration::from_secs(7);
        assert!(matches!(c.check_output(first_look, &LIMITS), OutputCheck::Wait(_)));
        let timeout = LIMITS.send_timeout.unwrap();
        assert_eq!(c.check_output(wrote + timeout, &LIMITS), OutputCheck::Stalled(Stall::SendTimeout));
    }

    #[test]
    fn progress_restarts_the_clock_and_a_closed_connection_lingers_until_its_peer_has_everything() {
        let (mut c, mut peer) = stalled_pair(16 << 20);
        let mut now = Instant::now();
        c.close();
        assert!(matches!(c.check_output(now, &LIMITS), OutputCheck::Wait(_)));
        // The peer reads everything: every look sees bytes acknowledged, so
        // the linger clock keeps starting again.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got.len()
        });
        let mut progress = 0;
        while !c.finished() {
            c.flush(None).unwrap();
            now += Duration::from_millis(10);
            let before = c.output.stalled_since;
            match c.check_output(now, &LIMITS) {
                OutputCheck::Wait(_) => progress += usize::from(c.output.stalled_since != before),
                other => panic!("{other:?} while the peer reads"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(progress > 0, "no progress seen");
        // FIN sent: until the kernel has handed the peer everything, the
        // connection lingers; then it is released, never reset.
        let mut looks = 0;
        loop {
            match c.check_output(now, &LIMITS) {
                OutputCheck::Release => break,
                OutputCheck::Wait(_) => looks += 1,
                other => panic!("{other:?} after {looks} looks"),
            }
            std::thread::sleep(Duration::from_millis(5));
            assert!(looks < 1000);
        }
        assert_eq!(reader.join().unwrap(), 16 << 20, "every byte, then a clean FIN");
    }
}
