//! hio's Server: ixes keyed by ca, fed by the host's listener.
//!
//! Inside, connections are keyed by the host's connection id (what every
//! cycle names them by), with a ca index for hio's ca-keyed calls; each one
//! in ixes carries the policy's per-connection state `C` beside its
//! Remoter. Unlike hio, a cycle looks only at connections the host named as
//! ready and at tymers that came due, so idle connections cost nothing.
//!
//! After a swap or a restart the host hands connections over a few hundred
//! at a time (WIT `handover`): until the last comes, what the predecessor
//! saved of each waits in `owed`, and anything that needs every connection
//! at once (`ixes`, a ca not found, `close`...) takes the rest first.

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::bindings::exports::hio::tcp::batch::Cycle as BatchCycle;
use crate::bindings::exports::hio::tcp::guest::Arrival;
use crate::bindings::hio::tcp::acceptor::Listener;
use crate::bindings::hio::tcp::remoter::{Connection, TlsState};
use crate::bindings::hio::tcp::types::ShutdownHow;
use crate::snapshot::IxState;
use crate::tymers::{Due, TymerQueue};
use crate::{Ca, Error, Remoter, Tymist, log};

/// A connection in ixes and the policy's state for it: made together when
/// the connection joins, dropped together when it leaves.
struct Joined<C> {
    ix: Remoter,
    conn: C,
}

/// A hand-over under way: what the predecessor saved of each connection
/// not handed yet, and the policy's state made of it.
struct Owed<C> {
    /// Where each connection's entry is in `saved`, by id.
    at: FxHashMap<u64, usize>,
    saved: Vec<Option<(IxState, C)>>,
}

impl<C> Owed<C> {
    fn new(saved: Vec<IxState>, conn: impl Fn() -> C) -> Owed<C> {
        let at = saved.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        Owed { at, saved: saved.into_iter().map(|s| Some((s, conn()))).collect() }
    }

    fn take(&mut self, id: u64) -> Option<(IxState, C)> {
        let i = self.at.remove(&id)?;
        self.saved.get_mut(i)?.take()
    }

    fn conn(&mut self, id: u64) -> Option<&mut C> {
        let i = *self.at.get(&id)?;
        self.saved.get_mut(i)?.as_mut().map(|(_, c)| c)
    }

    fn holds(&self, id: u64) -> bool {
        self.at.contains_key(&id)
    }

    fn left(&self) -> impl Iterator<Item = &(IxState, C)> {
        self.saved.iter().flatten()
    }
}

/// hio's Server, with `C` the policy's per-connection state
/// ([`crate::Service::Conn`]; `()` for none).
pub struct Server<C = ()> {
    listener: Listener,
    /// Listen address (resolved; hio's ha).
    pub ha: Ca,
    /// The listen address as peers reach it (hio's eha).
    pub eha: Ca,
    /// Read size for each Remoter's `receive`, in bytes (hio's bs).
    pub bs: u32,
    /// Idle timeout for each connection in seconds; 0 never times out.
    pub tymeout: f64,
    /// Owner of the guest's tyme, set from the host's each cycle (hio's Tymist).
    pub tymist: Tymist,
    /// hio's ixes, by the host's connection id.
    ixes: FxHashMap<u64, Joined<C>>,
    /// hio's key for ixes: peer address to connection id.
    by_ca: FxHashMap<Ca, u64>,
    /// TLS connections still handshaking (hio's ServerTls cxes), by id.
    cxes: FxHashMap<u64, Remoter>,
    /// Accepted connections not yet made remoters (hio's axes).
    axes: VecDeque<Connection>,
    tymers: TymerQueue,
    /// Ids of connections with news this cycle, each once (`listed`).
    ready: Vec<u64>,
    /// Connections given room for answers this batch cycle.
    roomed: Vec<u64>,
    listed: FxHashSet<u64>,
    /// The host said accepted connections are waiting (cycle.accepts).
    accepts: bool,
    connected: Vec<u64>,
    removed: Vec<(Ca, C)>,
    /// The host is draining (`host.draining`); once true it stays true.
    draining: bool,
    /// A hand-over under way: what the predecessor saved of the
    /// connections not handed yet (`None` once the last came).
    owed: Option<Owed<C>>,
}

impl<C: Default> Server<C> {
    pub(crate) fn new(tymeout: f64, bs: u32, listener: Listener, tyme: f64) -> Self {
        Server {
            ha: listener.ha().into(),
            eha: listener.eha().into(),
            listener,
            bs,
            tymeout,
            tymist: Tymist::new(tyme),
            ixes: FxHashMap::default(),
            by_ca: FxHashMap::default(),
            cxes: FxHashMap::default(),
            axes: VecDeque::new(),
            tymers: TymerQueue::default(),
            ready: Vec::new(),
            roomed: Vec::new(),
            listed: FxHashSet::default(),
            accepts: true,
            connected: Vec::new(),
            removed: Vec::new(),
            draining: false,
            owed: Some(Owed::new(Vec::new(), C::default)),
        }
    }

    /// The host's listener, as the guest sees it.
    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// The tyme now, in seconds (the host's clock, real or virtual).
    pub fn tyme(&self) -> f64 {
        self.tymist.tyme()
    }

    /// Whether the host is draining: its listener is closed (no connection
    /// will join again) and those in ixes are served until they end or the
    /// host's drain timeout resets them. A policy may close connections at a
    /// clean point of its protocol to let the host finish sooner.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// A cycle's news: each arrival's bytes join its connection's rxbs.
    /// Returns whether the host began draining since the last cycle.
    pub(crate) fn begin_cycle(&mut self, tyme: f64, accepts: bool, ready: Vec<Arrival>) -> bool {
        let began_draining = self.begin(tyme, accepts, crate::bindings::hio::tcp::host::draining());
        for Arrival { id, data, cutoff } in ready {
            if let Some(ix) = self.news_for(id) {
                ix.arrived(data, cutoff);
            }
        }
        began_draining
    }

    /// A batch cycle's news (WIT 0.2.2): each connection's slice of the
    /// one buffer joins its rxbs, and its answers may be kept for the
    /// cycle's result up to the room the host set aside.
    pub(crate) fn begin_batch(&mut self, cycle: BatchCycle) -> bool {
        let began_draining = self.begin(cycle.tyme, cycle.accepts, cycle.draining);
        let BatchCycle { news, mut bytes, .. } = cycle;
        // One connection's news: its bytes are the whole buffer, moved
        // into rxbs rather than copied.
        let whole = news.len() == 1;
        let mut at = 0usize;
        for news in &news {
            let (from, to) = (at, at + news.len as usize);
            at = to;
            let Some(ix) = self.news_for(news.id) else { continue };
            if whole {
                ix.arrived(std::mem::take(&mut bytes), news.cutoff);
            } else {
                ix.arrived_from(bytes.get(from..to).unwrap_or_default(), news.cutoff);
            }
            ix.room = news.room;
            self.roomed.push(news.id);
        }
        began_draining
    }

    /// The batch cycle is over: rooms are gone, answers not kept by now go
    /// by host calls.
    pub(crate) fn end_batch(&mut self) {
        // Taken and put back: its memory serves every cycle.
        let mut roomed = std::mem::take(&mut self.roomed);
        for &id in &roomed {
            if let Some(ix) = self.held(id) {
                ix.cycle_over();
            }
        }
        roomed.clear();
        self.roomed = roomed;
    }

    fn begin(&mut self, tyme: f64, accepts: bool, draining: bool) -> bool {
        self.tymist.set(tyme);
        let began_draining = !self.draining && draining;
        self.draining |= began_draining;
        self.accepts = accepts;
        began_draining
    }

    /// The connection named by a cycle's news, listed for this cycle.
    fn news_for(&mut self, id: u64) -> Option<&mut Remoter> {
        if !self.ixes.contains_key(&id) && !self.cxes.contains_key(&id) {
            return None;
        }
        self.list(id);
        self.held(id)
    }

    /// The connection `id`, in ixes or (handshaking) in cxes.
    fn held(&mut self, id: u64) -> Option<&mut Remoter> {
        match self.ixes.get_mut(&id) {
            Some(joined) => Some(&mut joined.ix),
            None => self.cxes.get_mut(&id),
        }
    }

    fn list(&mut self, id: u64) {
        if self.listed.insert(id) {
            self.ready.push(id);
        }
    }

    /// What the predecessor saved of its connections: each one's
    /// bookkeeping is taken up when the host hands it over.
    pub(crate) fn expect(&mut self, saved: Vec<IxState>) {
        // Sized once: grown by doubling while 10,000 connections were handed
        // over, ixes was rehashed three times, each a pass of up to 2 ms.
        // (Boxing the Remoters to keep entries small made `save` 4x slower.)
        self.by_ca.reserve(saved.len());
        self.ixes.reserve(saved.len());
        self.owed = Some(Owed::new(saved, C::default));
    }

    /// The policy's state for connection `id`, handed over or still owed
    /// (for restoring it).
    pub(crate) fn conn_state(&mut self, id: u64) -> Option<&mut C> {
        match self.ixes.get_mut(&id) {
            Some(joined) => Some(&mut joined.conn),
            None => self.owed.as_mut()?.conn(id),
        }
    }

    /// Connections taken over from a previous guest: straight into ixes,
    /// with what the predecessor saved of them. Their unconsumed bytes are
    /// handed again in the next cycle. `complete`: the host hands no more;
    /// saved state of any not handed belongs to connections that ended.
    pub(crate) fn adopt(&mut self, conns: Vec<Connection>, complete: bool) {
        for conn in conns {
            let id = conn.id;
            self.add_connection(conn, false);
            let Some((s, conn)) = self.owed.as_mut().and_then(|o| o.take(id)) else { continue };
            if let Some(joined) = self.ixes.get_mut(&id) {
                joined.conn = conn;
                joined.ix.tymer.start(Some(s.stop - s.start), Some(s.start));
                joined.ix.refreshable = s.refreshable;
                joined.ix.cutoff |= s.cutoff;
                if self.tymeout > 0.0 {
                    self.tymers.push(id, s.stop);
                }
            }
        }
        if complete {
            self.owed = None;
        }
    }

    /// Every connection the host still owes this guest, now: for whatever
    /// needs them all.
    fn take_over(&mut self) {
        if self.owed.is_none() {
            return;
        }
        match self.listener.take_over() {
            Ok(all) => self.adopt(all, true),
            Err(e) => log::error(&format!("taking over the rest of the connections failed: {}", Error::from(e))),
        }
    }

    /// hio's `serviceAccepts`: take every connection the host accepted.
    /// Costs no crossing in a cycle where the host said none are waiting.
    pub fn service_accepts(&mut self) -> usize {
        if !self.accepts {
            return 0;
        }
        self.accepts = false;
        match self.listener.accept_all() {
            Ok(all) => {
                let n = all.len();
                self.axes.extend(all);
                n
            }
            Err(e) => {
                log::error(&format!("accept failed: {}", Error::from(e)));
                0
            }
        }
    }

    /// hio's `serviceAxes`: make a Remoter of each accepted connection. A
    /// new connection from a ca already in ixes replaces the old one, which
    /// is closed.
    pub fn service_axes(&mut self) {
        while let Some(conn) = self.axes.pop_front() {
            self.add_connection(conn, true);
        }
    }

    /// Plain and connected TLS connections join ixes; handshaking ones wait
    /// in cxes; aborted ones are dropped (the host has closed them).
    /// `new` is false for connections handed over from a previous guest:
    /// they are not announced to the policy as connected again.
    fn add_connection(&mut self, mut conn: Connection, new: bool) {
        let state = std::mem::replace(&mut conn.tls, TlsState::Plain);
        let mut ix = Remoter::new(conn, self.bs, self.tymist.tymen(), self.tymeout);
        match state {
            TlsState::Plain => self.admit(ix, new),
            TlsState::Connected(info) => {
                ix.tls = Some(info);
                self.admit(ix, new);
            }
            TlsState::Handshaking => {
                self.list(ix.id);
                self.cxes.insert(ix.id, ix);
            }
            TlsState::Aborted(why) => log::debug(&format!("{}: TLS aborted before service: {why}", ix.ca)),
        }
    }

    /// hio's `serviceCxes`: promote handshaked connections to ixes, drop
    /// aborted ones. Only connections the host named ready (their handshake
    /// moved) or that just arrived are looked at.
    pub fn service_cxes(&mut self) {
        if self.cxes.is_empty() {
            return;
        }
        let candidates: Vec<u64> = self.ready.iter().copied().filter(|id| self.cxes.contains_key(id)).collect();
        for id in candidates {
            let Some(cx) = self.cxes.get(&id) else { continue };
            match cx.handle().tls() {
                TlsState::Handshaking | TlsState::Plain => {}
                TlsState::Connected(info) => {
                    let Some(mut ix) = self.cxes.remove(&id) else { continue };
                    ix.tls = Some(info);
                    ix.refresh();
                    self.admit(ix, true);
                }
                TlsState::Aborted(why) => {
                    if let Some(cx) = self.cxes.remove(&id) {
                        log::debug(&format!("{}: TLS handshake aborted: {why}", cx.ca));
                    }
                }
            }
        }
    }

    /// The one way into ixes: the connection's state is made here.
    /// A new connection from a ca already in ixes replaces the older one,
    /// which is closed.
    fn admit(&mut self, mut ix: Remoter, new: bool) {
        let (id, ca) = (ix.id, ix.ca.clone());
        if let Some(&other) = self.by_ca.get(&ca) {
            log::warn(&format!("{ca} connected again; closing its old connection"));
            // The host's ids grow with time: one handed over late may be
            // the older. It is closed without joining, so the policy, which
            // has already met the newer one, hears of neither leaving.
            if other > id {
                let _ = ix.close();
                return;
            }
            let _ = self.remove(other, true);
        }
        if self.tymeout > 0.0 {
            self.tymers.push(id, ix.tymer.stop_tyme());
        }
        self.by_ca.insert(ca, id);
        self.ixes.insert(id, Joined { ix, conn: C::default() });
        self.list(id);
        if new {
            self.connected.push(id);
        }
    }

    /// hio's `serviceConnects` (with ServerTls's `serviceCxes`).
    pub fn service_connects(&mut self) {
        self.service_accepts();
        self.service_axes();
        self.service_cxes();
    }

    /// Ids of the connections that joined ixes since last asked.
    pub fn take_connected(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.connected)
    }

    /// Connections that left ixes since last asked, with their state.
    pub(crate) fn take_removed(&mut self) -> Vec<(Ca, C)> {
        std::mem::take(&mut self.removed)
    }

    /// The id of the connection in ixes from `ca`. One not found may be
    /// still to come by a hand-over: the rest are taken over first.
    fn find_ca(&mut self, ca: &Ca) -> Option<u64> {
        if !self.by_ca.contains_key(ca) {
            self.take_over();
        }
        self.by_ca.get(ca).copied()
    }

    /// The connection `id` in ixes; one still owed by a hand-over is taken
    /// over first (with the rest).
    fn joined(&mut self, id: u64) -> Option<&mut Joined<C>> {
        if self.owed.as_ref().is_some_and(|o| o.holds(id)) {
            self.take_over();
        }
        self.ixes.get_mut(&id)
    }

    /// The connection in ixes from this peer address (one not found is
    /// looked for again once a hand-over under way is complete).
    pub fn ix(&mut self, ca: &Ca) -> Option<&Remoter> {
        self.ix_mut(ca).map(|ix| &*ix)
    }

    /// The Remoter of `ca`, to change it.
    pub fn ix_mut(&mut self, ca: &Ca) -> Option<&mut Remoter> {
        let id = self.find_ca(ca)?;
        self.ixes.get_mut(&id).map(|j| &mut j.ix)
    }

    /// The connection in ixes with this host id.
    pub fn ix_by_id(&mut self, id: u64) -> Option<&mut Remoter> {
        self.joined(id).map(|j| &mut j.ix)
    }

    /// The connection in ixes with this host id, and the policy's state for it.
    pub fn ix_with_conn(&mut self, id: u64) -> Option<(&mut Remoter, &mut C)> {
        self.joined(id).map(|j| (&mut j.ix, &mut j.conn))
    }

    /// Every connection in ixes, in no particular order. During a hand-over
    /// (after a swap or a restart) the connections not yet handed are taken
    /// first, so none is missing; hence `&mut`.
    pub fn ixes(&mut self) -> impl Iterator<Item = &Remoter> {
        self.take_over();
        self.ixes.values().map(|j| &j.ix)
    }

    /// Every connection in ixes with the policy's state for it (all of
    /// them, as [`Server::ixes`]).
    pub fn ixes_mut(&mut self) -> impl Iterator<Item = (&mut Remoter, &mut C)> {
        self.take_over();
        self.ixes.values_mut().map(|j| (&mut j.ix, &mut j.conn))
    }

    /// TLS connections still handshaking (hio's cxes).
    pub fn cxes(&mut self) -> impl Iterator<Item = &Remoter> {
        self.take_over();
        self.cxes.values()
    }

    fn id_of(&mut self, ca: &Ca) -> Result<u64, Error> {
        self.find_ca(ca).ok_or_else(|| Error::InvalidCa(ca.clone()))
    }

    /// hio's ValueError for a ca that is not in ixes.
    fn ix_at(&mut self, ca: &Ca) -> Result<&mut Remoter, Error> {
        self.ix_mut(ca).ok_or_else(|| Error::InvalidCa(ca.clone()))
    }

    /// Shut down the socket of `ca` in one or both directions.
    pub fn shutdown_ix(&mut self, ca: &Ca, how: ShutdownHow) -> Result<(), Error> {
        self.ix_at(ca)?.shutdown(how)
    }

    /// No more sending on `ca`: queued bytes, then FIN.
    pub fn shutdown_send_ix(&mut self, ca: &Ca) -> Result<(), Error> {
        self.ix_at(ca)?.shutdown_send()
    }

    /// No more receiving on `ca`.
    pub fn shutdown_receive_ix(&mut self, ca: &Ca) -> Result<(), Error> {
        self.ix_at(ca)?.shutdown_receive()
    }

    /// Close one connection (it stays in ixes until removed, as in hio).
    pub fn close_ix(&mut self, ca: &Ca) -> Result<(), Error> {
        self.ix_at(ca)?.close()
    }

    /// Close every connection in ixes.
    pub fn close_all_ix(&mut self) {
        self.take_over();
        for joined in self.ixes.values_mut() {
            let _ = joined.ix.close();
        }
    }

    /// hio's `close`: every connection closes. The listen socket is the
    /// host's and stays open for the next guest.
    pub fn close(&mut self) {
        self.take_over();
        for (_, mut cx) in self.cxes.drain() {
            let _ = cx.close();
        }
        let all: Vec<u64> = self.ixes.keys().copied().collect();
        for id in all {
            let _ = self.remove(id, true);
        }
    }

    /// hio's `removeIx`: forget a connection, closing it first unless
    /// `close` is false (then the host closes it once the handle is dropped
    /// here). Its state goes with it.
    pub fn remove_ix(&mut self, ca: &Ca, close: bool) -> Result<(), Error> {
        let id = self.id_of(ca)?;
        self.remove(id, close)
    }

    /// The one way out of ixes.
    fn remove(&mut self, id: u64, close: bool) -> Result<(), Error> {
        let Some(Joined { mut ix, conn }) = self.ixes.remove(&id) else { return Ok(()) };
        if self.by_ca.get(&ix.ca) == Some(&id) {
            self.by_ca.remove(&ix.ca);
        }
        let closed = if close { ix.close() } else { Ok(()) };
        self.removed.push((ix.ca.clone(), conn));
        closed
    }

    /// Receive on `ca` into its rxbs (hio's `serviceReceivesIx`); returns the bytes added.
    pub fn service_receives_ix(&mut self, ca: &Ca) -> Result<usize, Error> {
        self.ix_at(ca)?.service_receives()
    }

    /// hio's `serviceReceivesAllIx`: every connection, ready or not. A
    /// failing one is logged and removed; the rest carry on.
    pub fn service_receives_all_ix(&mut self) {
        let failed: Vec<u64> = self
            .ixes
            .iter_mut()
            .filter_map(|(&id, j)| j.ix.service_receives().err().map(|e| (id, &j.ix.ca, e)))
            .map(|(id, ca, e)| {
                log::warn(&format!("receive from {ca} failed: {e}"));
                id
            })
            .collect();
        for id in failed {
            let _ = self.remove(id, true);
        }
    }

    /// Ids of the connections the host named ready this cycle (their bytes
    /// came with it, into rxbs) and of the new ones, each once, for
    /// [`Server::ix_with_conn`] (which skips any that are not, or no longer,
    /// in ixes).
    pub fn service_receives_ready(&mut self) -> Vec<u64> {
        self.listed.clear();
        // The caller keeps the list; the next one is sized like it, so it
        // is one allocation a cycle, not one per power of two.
        let next = Vec::with_capacity(self.ready.len());
        std::mem::replace(&mut self.ready, next)
    }

    /// hio's `transmitIx`: queue bytes to one connection.
    pub fn transmit_ix(&mut self, data: &[u8], ca: &Ca) -> Result<(), Error> {
        self.ix_at(ca)?.tx(data)
    }

    /// hio's `serviceSendsAllIx`, for connections that queued bytes since
    /// their last send. (The host sends after every cycle anyway.)
    pub fn service_sends_all_ix(&mut self) {
        let failed: Vec<u64> = self
            .ixes
            .iter_mut()
            .filter(|(_, j)| j.ix.txed)
            .filter_map(|(&id, j)| j.ix.service_sends().err().map(|e| (id, &j.ix.ca, e)))
            .map(|(id, ca, e)| {
                log::warn(&format!("send to {ca} failed: {e}"));
                id
            })
            .collect();
        for id in failed {
            let _ = self.remove(id, true);
        }
    }

    /// hio's `service`: connects, receives on ready connections, sends.
    /// Returns the ids of the ready ones.
    pub fn service(&mut self) -> Vec<u64> {
        self.service_connects();
        let ready = self.service_receives_ready();
        self.service_sends_all_ix();
        ready
    }

    /// Close and remove this connection if it is cut off or was closed by
    /// the policy (hio's serviceCutoffs, for one). The host sends what is
    /// queued first, so a half-closed peer still gets its every byte before
    /// the FIN. Returns whether it left ixes.
    pub fn service_cutoff(&mut self, id: u64) -> bool {
        let ended = self.ixes.get(&id).is_some_and(|j| j.ix.cutoff || j.ix.closed());
        if ended {
            let _ = self.remove(id, true);
        }
        ended
    }

    /// [`Server::service_cutoff`] for each of the connections `ids`.
    pub fn service_cutoffs(&mut self, ids: &[u64]) {
        for &id in ids {
            self.service_cutoff(id);
        }
    }

    /// Close and remove a connection whose service failed, saying why.
    pub fn fail_ix(&mut self, id: u64, e: &Error) {
        if let Some(j) = self.ixes.get(&id) {
            log::warn(&format!("service of {} failed, closing it: {e}", j.ix.ca));
            let _ = self.remove(id, true);
        }
    }

    /// Close and remove connections idle past the tymeout. Only tymers that
    /// came due are looked at. A connection whose output its peer has not
    /// yet taken is not idle: its peer is only slow to read it (the host
    /// bounds that with its send timeout), so its tymer starts again.
    pub fn service_tymeouts(&mut self) {
        let tyme = self.tyme();
        let Server { tymers, ixes, .. } = self;
        let expired = tymers.expire(tyme, |id| {
            let Some(j) = ixes.get(&id) else { return Due::Gone };
            if j.ix.tymer.expired() { Due::Expired } else { Due::Later(j.ix.tymer.stop_tyme()) }
        });
        for id in expired {
            let Some(j) = self.ixes.get_mut(&id) else { continue };
            if j.ix.queued().unwrap_or(0) > 0 {
                j.ix.refresh();
                self.tymers.push(id, j.ix.tymer.stop_tyme());
                continue;
            }
            log::info(&format!("{} idle for {}s: closing", j.ix.ca, self.tymeout));
            let _ = self.remove(id, true);
        }
    }

    /// When the next tymer comes due, for the host to wake this guest.
    pub fn next_wake(&self) -> Option<f64> {
        self.tymers.next()
    }

    /// Each connection's bookkeeping, for a successor, with what `save`
    /// makes of its state; those a hand-over has not brought yet as the
    /// predecessor left them.
    pub(crate) fn save_ixes(&self, save: impl Fn(&C) -> Option<Vec<u8>>) -> Vec<IxState> {
        let held = self.ixes.iter().map(|(&id, Joined { ix, conn })| IxState {
            id,
            start: ix.tymer.start_tyme(),
            stop: ix.tymer.stop_tyme(),
            refreshable: ix.refreshable,
            cutoff: ix.cutoff,
            conn: save(conn),
        });
        let owed = self.owed.iter().flat_map(Owed::left).map(|(s, conn)| IxState { conn: save(conn), ..s.clone() });
        held.chain(owed).collect()
    }

    /// hio's `wind`: measure tyme on another Tymist from now on.
    pub fn wind(&mut self, tymist: Tymist) {
        self.take_over();
        self.tymist = tymist;
        self.tymers = TymerQueue::default();
        for (&id, Joined { ix, .. }) in &mut self.ixes {
            ix.tymer.wind(self.tymist.tymen());
            if self.tymeout > 0.0 {
                self.tymers.push(id, ix.tymer.stop_tyme());
            }
        }
    }
}
