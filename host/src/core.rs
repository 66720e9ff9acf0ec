//! Everything the host holds across guest generations: the listener, the
//! connections with their bytes, and the lists that tell the event loop and
//! the guest what changed. Guest calls mutate it; only the event loop does
//! readiness bookkeeping with the poller.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::acceptor::Acceptor;
use crate::budget::Budget;
use crate::conn::Conn;
use crate::handing::Handing;
use crate::tyme::Clock;
use crate::wirelog::WireLog;

pub struct Core {
    pub acceptor: Acceptor,
    /// Keyed by the host's own ids (never a peer's input), so a fast
    /// unkeyed hash is safe.
    pub conns: FxHashMap<u64, Conn>,
    /// Accepted by the host, not yet taken by the guest (hio's axes).
    pub axes: VecDeque<u64>,
    /// Connections with news for the guest's next cycle.
    pub ready: Vec<u64>,
    /// Connections whose queue, shutdown or close the loop must act on.
    pub dirty: Vec<u64>,
    pub clock: Clock,
    pub wirelog: Option<WireLog>,
    pub next_id: u64,
    /// TLS context (built once) and handshake time limit, for a TLS server.
    pub tls: Option<(Arc<rustls::ServerConfig>, Duration)>,
    /// Handshake deadlines in accept order, which is deadline order.
    pub handshakes: VecDeque<(Instant, u64)>,
    /// The bound on bytes held across connections.
    pub budget: Budget,
    /// Connections whose reading waits for the budget to drain, longest
    /// waiting first (served round-robin as room appears).
    pub starved: VecDeque<u64>,
    /// What the current guest call may be handed, and the suspects.
    pub handing: Handing,
}

impl Core {
    pub fn new(acceptor: Acceptor, clock: Clock, wirelog: Option<WireLog>, budget: Budget) -> Core {
        Core {
            acceptor,
            conns: FxHashMap::default(),
            axes: VecDeque::new(),
            ready: Vec::new(),
            dirty: Vec::new(),
            clock,
            wirelog,
            // Ids are mio tokens too; 0 is the listener's.
            next_id: crate::server::FIRST_CONN_TOKEN,
            tls: None,
            handshakes: VecDeque::new(),
            budget,
            starved: VecDeque::new(),
            handing: Handing::default(),
        }
    }

    pub fn mark_ready(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.in_ready
        {
            c.in_ready = true;
            self.ready.push(id);
        }
    }

    pub fn mark_dirty(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.in_dirty
        {
            c.in_dirty = true;
            self.dirty.push(id);
        }
    }

    /// Hand a connection's bytes the guest has not been given, within what
    /// this call may be handed: the bytes and whether the stream ended after
    /// them, or `None` if they must wait (the connection is then ready
    /// again, for the next cycle).
    pub fn hand(&mut self, id: u64) -> Option<(Vec<u8>, bool)> {
        let c = self.conns.get_mut(&id)?;
        let Some(max) = self.handing.allowance(id, c.has_news()) else {
            self.mark_ready(id);
            return None;
        };
        let mut data = self.handing.buffer(c.unhanded_len().min(max));
        let cutoff = c.hand_into(max, &mut data);
        self.handing.handed(id, data.len(), cutoff);
        if c.unhanded() {
            self.mark_ready(id);
        }
        Some((data, cutoff))
    }
}
