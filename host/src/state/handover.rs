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
        for (&id, c) in self.conns.iter_mut().filter(|(_, c)| c.for_a_new_guest()) {
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

    /// Whether a hand-over under way has connections in it (counting those
    /// `start` took), not only its closing `adopt` because there were none.
    pub fn handing_over_connections(&self) -> bool {
        self.owed.as_ref().is_some_and(|q| !q.is_empty())
    }

    /// The next `most` connections of a hand-over under way (those with
    /// news first), and whether it is complete after them; `None` when no
    /// hand-over is under way.
    pub fn next_owed(&mut self, most: usize) -> Option<(Vec<u64>, bool)> {
        let next = self.pick_owed(most);
        let (queue, conns) = (self.owed.as_mut()?, &self.conns);
        // Entries handed early (they had news) or ended are skipped here.
        while queue.front().is_some_and(|id| !conns.get(id).is_some_and(|c| c.owed)) {
            queue.pop_front();
        }
        let complete = queue.is_empty();
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
    /// then in the order `starting_ids` listed them (news first). Each is
    /// no longer owed from here on (it is handed).
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use mio::Poll;

    use super::*;
    use crate::state::tests::{connect, core_with};

    /// Connections 1..=n, each adopted by a guest; their peers.
    fn adopted(core: &mut HostState, poll: &Poll, n: u64) -> Vec<std::net::TcpStream> {
        (1..=n)
            .map(|id| {
                let peer = connect(core, poll, id);
                core.conns.get_mut(&id).unwrap().adopted = true;
                peer
            })
            .collect()
    }

    /// `id` has bytes the guest has not been lent.
    fn give_news(core: &mut HostState, peer: &mut std::net::TcpStream, id: u64) {
        peer.write_all(b"news").unwrap();
        let mut scratch = vec![0; 1024];
        let start = std::time::Instant::now();
        while !core.conns[&id].has_news() && start.elapsed() < std::time::Duration::from_secs(5) {
            core.conns.get_mut(&id).unwrap().read(&mut scratch, None, false);
        }
        assert!(core.conns[&id].has_news());
    }

    #[test]
    fn start_hands_only_news_and_the_rest_comes_news_first_until_complete() {
        let poll = Poll::new().unwrap();
        let mut core = core_with(1 << 20);
        let mut peers = adopted(&mut core, &poll, 5);
        give_news(&mut core, &mut peers[2], 3);
        assert_eq!(core.starting_ids(true), [3], "only the connection with news");
        assert!(core.handing_over() && core.handing_over_connections());
        assert!(core.conns[&1].owed && !core.conns[&3].owed);
        // News on an owed connection moves it to the front.
        give_news(&mut core, &mut peers[4], 5);
        core.mark_ready(5);
        assert_eq!(core.next_owed(1), Some((vec![5], false)));
        // One of them ends before it is handed: skipped, never handed.
        core.conns.remove(&2);
        let (mut rest, complete) = core.next_owed(PER_PASS).unwrap();
        rest.sort_unstable();
        assert_eq!((rest, complete), (vec![1, 4], true));
        assert!(!core.handing_over());
        assert_eq!(core.next_owed(PER_PASS), None, "no hand-over under way");
        assert!(core.conns.values().all(|c| !c.owed));
    }

    #[test]
    fn take_over_hands_the_rest_at_once_and_ends_the_hand_over() {
        let poll = Poll::new().unwrap();
        let mut core = core_with(1 << 20);
        let _peers = adopted(&mut core, &poll, 4);
        assert!(core.starting_ids(true).is_empty(), "no news: start hands nothing");
        assert_eq!(core.next_owed(1).map(|(ids, complete)| (ids.len(), complete)), Some((1, false)));
        assert_eq!(core.take_owed().len(), 3);
        assert!(!core.handing_over());
        assert!(core.take_owed().is_empty());
    }

    #[test]
    fn a_guest_without_handover_is_handed_every_connection_in_id_order() {
        let poll = Poll::new().unwrap();
        let mut core = core_with(1 << 20);
        let _peers = adopted(&mut core, &poll, 3);
        assert_eq!(core.starting_ids(false), [1, 2, 3]);
        assert!(!core.handing_over());
        // With no connection at all, the hand-over is only its closing call.
        let mut empty = core_with(1 << 20);
        assert!(empty.starting_ids(true).is_empty());
        assert!(empty.handing_over() && !empty.handing_over_connections());
        assert_eq!(empty.next_owed(PER_PASS), Some((Vec::new(), true)));
        // A new guest while a hand-over is under way starts from scratch.
        core.starting_ids(true);
        core.guest_replaced();
        assert!(!core.handing_over() && core.conns.values().all(|c| !c.owed));
    }
}
