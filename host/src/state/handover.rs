//! A lazy hand-over (WIT 0.2.3 `handover`): which connections a starting
//! guest is still owed, and which it is handed next. Handing a connection
//! over costs a few microseconds (its record, its handle, the guest taking
//! it into its tables); handed all at once, 10,000 of them stopped the
//! loop for 15 ms at a swap. Handed at most `PER_PASS` per pass of the
//! loop, each pass stays short and the loop serves I/O in between. A
//! connection's news is lent only once it is handed, so those with news go
//! first.

use std::collections::VecDeque;

use super::HostState;

/// Most connections handed in one guest call of a hand-over (`start`, or
/// one `adopt`): about half a millisecond of the loop's time each.
pub const PER_PASS: usize = 256;

impl HostState {
    /// A guest starts: the connections `start` hands it. When `lazy` (it
    /// exports `handover`), only those with news (bytes a predecessor left
    /// unconsumed), at most `PER_PASS`: `start` already has the snapshot
    /// to read. The rest are owed to it (`next_owed`, `take_owed`), those
    /// with news first. Else all of them, in id order.
    pub fn starting_ids(&mut self, lazy: bool) -> Vec<u64> {
        if !lazy {
            self.owed = None;
            return self.adopted_ids();
        }
        // One pass over the connections, no sort: 10,000 took 0.4 ms to
        // collect, sort by id and sort again by news.
        let (mut news, mut rest) = (VecDeque::new(), Vec::new());
        for (&id, c) in self.conns.iter_mut().filter(|(_, c)| c.adopted && !c.closing) {
            c.owed = true;
            if c.has_news() { news.push_back(id) } else { rest.push(id) }
        }
        let first = news.len().min(PER_PASS);
        news.extend(rest);
        self.owed = Some(news);
        self.pick_owed(first)
    }

    /// Whether a hand-over is under way: an `adopt` (at least the one that
    /// says it is complete) is still due.
    pub fn handing_over(&self) -> bool {
        self.owed.is_some()
    }

    /// The next `most` connections of a hand-over under way (those with
    /// news first), and whether it is complete after them; `None` when no
    /// hand-over is under way.
    pub fn next_owed(&mut self, most: usize) -> Option<(Vec<u64>, bool)> {
        self.owed.as_ref()?;
        let next = self.pick_owed(most);
        // Entries handed early (they had news) or ended are skipped here.
        let conns = &self.conns;
        let complete = self.owed.as_mut().is_none_or(|q| {
            while q.front().is_some_and(|id| !conns.get(id).is_some_and(|c| c.owed)) {
                q.pop_front();
            }
            q.is_empty()
        });
        if complete {
            self.owed = None;
        }
        Some((next, complete))
    }

    /// Every connection still owed, at once (`listener.take-over`): the
    /// hand-over is over.
    pub fn take_owed(&mut self) -> Vec<u64> {
        let rest = self.pick_owed(usize::MAX);
        self.owed = None;
        rest
    }

    /// Up to `most` owed connections: those the loop found ready first,
    /// then in id order. Each is no longer owed from here on (it is handed).
    fn pick_owed(&mut self, most: usize) -> Vec<u64> {
        let Some(queue) = self.owed.as_mut() else { return Vec::new() };
        let conns = &mut self.conns;
        let mut picked = Vec::new();
        let mut take = |id: &u64| match conns.get_mut(id) {
            Some(c) if c.owed => {
                c.owed = false;
                true
            }
            _ => false,
        };
        for id in &self.ready {
            if picked.len() == most {
                return picked;
            }
            if take(id) {
                picked.push(*id);
            }
        }
        while picked.len() < most {
            let Some(id) = queue.pop_front() else { break };
            if take(&id) {
                picked.push(id);
            }
        }
        picked
    }
}
