//! What the guest is lent, and whose bytes are suspected when it fails:
//! the host state's side of `guest::handing`, the one place the hand-out
//! bookkeeping is touched. Received bytes are lent (in a cycle's arrivals,
//! with an accepted connection, on a `receive`) and stay in the host until
//! the guest consumes them.

use super::HostState;
use super::ending::GiveUp;
use crate::net::backpressure;
use crate::state::handing::Verdict;

impl HostState {
    /// A guest call begins: set what it may be lent. A suspect whose turn
    /// it is goes into the ready list, so its bytes are lent this call.
    pub fn guest_call_begins(&mut self) {
        let conns = &self.conns;
        let turn = self.handing.begin_call(|id| conns.get(&id).is_some_and(|c| c.held_by_guest() && c.has_news()));
        if let Some(id) = turn {
            self.mark_ready(id);
        }
    }

    /// Lend a connection's bytes the guest has not been given, within what
    /// this call may be lent (`most` caps it further, for a `receive`): the
    /// bytes and whether the stream ended after them, or `None` if they must
    /// wait (the connection is then ready again, for the next cycle).
    pub fn lend(&mut self, id: u64, most: usize) -> Option<(Vec<u8>, bool)> {
        let mut data = self.handing.buffer(self.conns.get(&id)?.unhanded_len().min(most));
        match self.lend_into(id, most, &mut data) {
            Some((_, cutoff)) => Some((data, cutoff)),
            None => {
                self.handing.recycle(data);
                None
            }
        }
    }

    /// `lend`, appending the bytes to `out` (a batch cycle's one buffer):
    /// how many were lent and whether the stream ended after them.
    pub fn lend_into(&mut self, id: u64, most: usize, out: &mut Vec<u8>) -> Option<(usize, bool)> {
        let c = self.conns.get_mut(&id)?;
        let Some(max) = self.handing.allowance(id, c.has_news()) else {
            self.mark_ready(id);
            return None;
        };
        let before = out.len();
        let cutoff = c.hand_into(max.min(most), out);
        let lent = out.len() - before;
        self.handing.handed(id, lent, cutoff);
        if c.unhanded() {
            self.mark_ready(id);
        }
        Some((lent, cutoff))
    }

    /// A guest takes a connection over: it holds a handle to it from now
    /// on. With `lend`, it is lent its bytes at once; else they come in the
    /// next cycle (a guest that is starting is lent nothing, so a guest
    /// that cannot start is never blamed on a peer).
    pub fn adopt(&mut self, id: u64, lend: bool) -> Option<(Vec<u8>, bool)> {
        let c = self.conns.get_mut(&id)?;
        c.adopted = true;
        c.owed = false;
        if lend {
            return Some(self.lend(id, usize::MAX).unwrap_or_default());
        }
        if c.has_news() {
            self.mark_ready(id);
        }
        Some((Vec::new(), false))
    }

    /// A new guest takes over every connection the last one held: each
    /// unconsumed byte will be lent again, and the connections the host
    /// reset in between were never this guest's.
    pub fn guest_replaced(&mut self) {
        self.gone.clear();
        self.owed = None;
        for c in self.conns.values_mut() {
            c.rewind();
            c.owed = false;
        }
    }

    /// The news for one guest cycle, each given to `arrive` as (id, bytes,
    /// cutoff): see `each_news`.
    pub fn take_arrivals(&mut self, mut arrive: impl FnMut(u64, Vec<u8>, bool)) {
        self.each_news(|host, id, gone| match gone {
            true => arrive(id, Vec::new(), true),
            false => {
                if let Some((data, cutoff)) = host.lend(id, usize::MAX) {
                    arrive(id, data, cutoff);
                }
            }
        });
    }

    /// The news for one batch cycle (WIT `batch.cycle`): each connection's
    /// bytes appended to `bytes`, and `news` given (id, length, cutoff,
    /// room), the room set aside for its answers until `withdraw_room`.
    pub fn take_news(&mut self, bytes: &mut Vec<u8>, mut news: impl FnMut(u64, usize, bool, usize)) {
        let among = self.ready.len() + self.gone.len();
        self.each_news(|host, id, gone| {
            if gone {
                return news(id, 0, true, 0);
            }
            let Some((lent, cutoff)) = host.lend_into(id, usize::MAX, bytes) else { return };
            let Some(c) = host.conns.get_mut(&id) else { return };
            c.promised =
                if c.accepts_tx() { backpressure::answer_room(c.queued() as usize, &host.budget, among) } else { 0 };
            news(id, lent, cutoff, c.promised);
        });
    }

    /// A batch cycle is over: the room set aside for `id`'s answers is gone.
    pub fn withdraw_room(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.promised = 0;
        }
    }

    /// The news for one guest cycle, each given to `visit` with whether
    /// the connection is gone: every ready connection the guest holds (to
    /// be lent its bytes, as far as this call may be lent them; the rest
    /// waits for the next cycle), and every one the host reset (a cutoff).
    /// Connections the guest has not taken yet are left out: `accept`
    /// lends them with their bytes.
    fn each_news(&mut self, mut visit: impl FnMut(&mut HostState, u64, bool)) {
        self.guest_call_begins();
        self.new_axes = false;
        let mut gone = std::mem::take(&mut self.gone);
        for &id in &gone {
            visit(self, id, true);
        }
        gone.clear();
        self.gone = gone;
        let mut ready = std::mem::take(&mut self.ready);
        for &id in &ready {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            c.in_ready = false;
            if !c.held_by_guest() {
                continue;
            }
            visit(self, id, false);
        }
        // Keep the list's allocation for the next cycle.
        if self.ready.is_empty() {
            ready.clear();
            self.ready = ready;
        }
    }

    /// The guest finished a cycle: what it was lent did not crash it. The
    /// buffers it was lent come back for the next cycle.
    pub fn guest_succeeded(&mut self, lent: impl Iterator<Item = Vec<u8>>) {
        self.handing.succeeded();
        for data in lent {
            self.handing.recycle(data);
        }
    }

    /// The guest failed. Connections that held bytes they were lent and had
    /// not consumed are suspects: each is lent its bytes alone from now on.
    /// A suspect that holds them again at a failure crashed the guest twice:
    /// the host resets it, so one peer cannot keep the guest down for
    /// everyone. Returns whether it found such a culprit.
    pub fn guest_failed(&mut self) -> bool {
        let conns = &self.conns;
        match self.handing.failed(|id| conns.get(&id).is_some_and(|c| c.owes_guest())) {
            Verdict::NoneHeld => false,
            Verdict::Culprit(id) => {
                self.give_up(id, GiveUp::Poison);
                true
            }
            Verdict::Isolated(n) => {
                tracing::warn!(
                    suspects = n,
                    "guest failed holding these connections' bytes: each is now lent its bytes alone"
                );
                false
            }
        }
    }

    /// A guest that failed is thrown away without a verdict (a new guest
    /// that could not take over at a swap: its failure says nothing of the
    /// peers, whose bytes go back to the old guest).
    pub fn guest_discarded(&mut self) {
        self.handing.discard_lent();
    }
}
