//! hio's Server: ixes keyed by ca, fed by the host's listener.
//!
//! Unlike hio, a cycle looks only at connections the host named as ready
//! and at tymers that came due, so idle connections cost nothing.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::bindings::exports::hio::tcp::guest::Arrival;
use crate::bindings::hio::tcp::acceptor::Listener;
use crate::bindings::hio::tcp::remoter::{Connection, TlsState};
use crate::bindings::hio::tcp::types::ShutdownHow;
use crate::snapshot::IxState;
use crate::tymers::{Due, TymerQueue};
use crate::{Ca, Error, Remoter, Tymist, log};

pub struct Server {
    listener: Listener,
    /// Listen address (resolved) and its external form.
    pub ha: Ca,
    pub eha: Ca,
    pub bs: u32,
    /// Idle timeout for each connection in seconds; 0 never times out.
    pub tymeout: f64,
    pub tymist: Tymist,
    /// Connections keyed by peer address.
    pub ixes: FxHashMap<Ca, Remoter>,
    /// TLS connections still handshaking (hio's ServerTls cxes).
    pub cxes: FxHashMap<Ca, Remoter>,
    /// Accepted connections not yet made remoters.
    pub axes: VecDeque<Connection>,
    /// The host's connection ids to peer addresses.
    ids: FxHashMap<u64, Ca>,
    tymers: TymerQueue,
    /// Ids of connections with news this cycle.
    ready: Vec<u64>,
    /// The host said accepted connections are waiting (cycle.accepts).
    accepts: bool,
    connected: Vec<Ca>,
    removed: Vec<Ca>,
}

impl Server {
    pub(crate) fn new(tymeout: f64, bs: u32, listener: Listener, tyme: f64) -> Server {
        Server {
            ha: listener.ha().into(),
            eha: listener.eha().into(),
            listener,
            bs,
            tymeout,
            tymist: Tymist::new(tyme),
            ixes: FxHashMap::default(),
            cxes: FxHashMap::default(),
            axes: VecDeque::new(),
            ids: FxHashMap::default(),
            tymers: TymerQueue::default(),
            ready: Vec::new(),
            accepts: true,
            connected: Vec::new(),
            removed: Vec::new(),
        }
    }

    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    pub fn tyme(&self) -> f64 {
        self.tymist.tyme()
    }

    /// A cycle's news: each arrival's bytes join its connection's rxbs.
    pub(crate) fn begin_cycle(&mut self, tyme: f64, accepts: bool, ready: Vec<Arrival>) {
        self.tymist.set(tyme);
        self.accepts = accepts;
        for Arrival { id, data, cutoff } in ready {
            let Some(ca) = self.ids.get(&id) else { continue };
            let Some(ix) = self.ixes.get_mut(ca).or_else(|| self.cxes.get_mut(ca)) else { continue };
            ix.arrived(data, cutoff);
            self.ready.push(id);
        }
    }

    /// Connections taken over from a previous guest: straight into ixes.
    /// Their unconsumed bytes are handed again in the first cycle.
    pub(crate) fn adopt(&mut self, conn: Connection) {
        self.add_connection(conn, false);
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
                self.ids.insert(ix.id, ix.ca.clone());
                self.ready.push(ix.id);
                self.cxes.insert(ix.ca.clone(), ix);
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
        let candidates: Vec<Ca> = self
            .ready
            .iter()
            .filter_map(|id| self.ids.get(id))
            .filter(|ca| self.cxes.contains_key(*ca))
            .cloned()
            .collect();
        for ca in candidates {
            let Some(cx) = self.cxes.get(&ca) else { continue };
            match cx.handle().tls() {
                TlsState::Handshaking => {}
                TlsState::Connected(info) => {
                    let mut ix = self.cxes.remove(&ca).expect("checked above");
                    ix.tls = Some(info);
                    ix.refresh();
                    self.admit(ix, true);
                }
                TlsState::Aborted(why) => {
                    if let Some(cx) = self.cxes.remove(&ca) {
                        self.ids.remove(&cx.id);
                    }
                    log::debug(&format!("{ca}: TLS handshake aborted: {why}"));
                }
                TlsState::Plain => {}
            }
        }
    }

    fn admit(&mut self, ix: Remoter, new: bool) {
        let ca = ix.ca.clone();
        if self.ixes.contains_key(&ca) {
            log::warn(&format!("{ca} connected again; closing its old connection"));
            let _ = self.remove_ix(&ca, true);
        }
        if self.tymeout > 0.0 {
            self.tymers.push(ix.id, ix.tymer.stop_tyme());
        }
        self.ids.insert(ix.id, ca.clone());
        self.ready.push(ix.id);
        self.ixes.insert(ca.clone(), ix);
        if new {
            self.connected.push(ca);
        }
    }

    /// hio's `serviceConnects` (with ServerTls's `serviceCxes`).
    pub fn service_connects(&mut self) {
        self.service_accepts();
        self.service_axes();
        self.service_cxes();
    }

    /// Connections that joined ixes since last asked.
    pub fn take_connected(&mut self) -> Vec<Ca> {
        std::mem::take(&mut self.connected)
    }

    /// Connections that left ixes since last asked.
    pub fn take_removed(&mut self) -> Vec<Ca> {
        std::mem::take(&mut self.removed)
    }

    /// The connection in ixes with this host id.
    pub fn ix_by_id(&mut self, id: u64) -> Option<&mut Remoter> {
        self.ids.get(&id).and_then(|ca| self.ixes.get_mut(ca))
    }

    fn ix(&mut self, ca: &Ca) -> Result<&mut Remoter, Error> {
        self.ixes.get_mut(ca).ok_or_else(|| Error::InvalidCa(ca.clone()))
    }

    pub fn shutdown_ix(&mut self, ca: &Ca, how: ShutdownHow) -> Result<(), Error> {
        self.ix(ca)?.shutdown(how)
    }

    pub fn shutdown_send_ix(&mut self, ca: &Ca) -> Result<(), Error> {
        self.ix(ca)?.shutdown_send()
    }

    pub fn shutdown_receive_ix(&mut self, ca: &Ca) -> Result<(), Error> {
        self.ix(ca)?.shutdown_receive()
    }

    /// Close one connection (it stays in ixes until removed, as in hio).
    pub fn close_ix(&mut self, ca: &Ca) -> Result<(), Error> {
        self.ix(ca)?.close()
    }

    pub fn close_all_ix(&mut self) {
        for ix in self.ixes.values_mut() {
            let _ = ix.close();
        }
    }

    /// hio's `close`: every connection closes. The listen socket is the
    /// host's and stays open for the next guest.
    pub fn close(&mut self) {
        for (_, mut cx) in self.cxes.drain() {
            self.ids.remove(&cx.id);
            let _ = cx.close();
        }
        let all: Vec<Ca> = self.ixes.keys().cloned().collect();
        for ca in all {
            let _ = self.remove_ix(&ca, true);
        }
    }

    /// Forget a connection, closing it first unless `close` is false (then
    /// the host closes it once the handle is dropped here).
    pub fn remove_ix(&mut self, ca: &Ca, close: bool) -> Result<(), Error> {
        let mut ix = self.ixes.remove(ca).ok_or_else(|| Error::InvalidCa(ca.clone()))?;
        self.ids.remove(&ix.id);
        self.removed.push(ca.clone());
        if close {
            ix.close()?;
        }
        Ok(())
    }

    pub fn service_receives_ix(&mut self, ca: &Ca) -> Result<usize, Error> {
        self.ix(ca)?.service_receives()
    }

    /// hio's `serviceReceivesAllIx`: every connection, ready or not. A
    /// failing one is logged and removed; the rest carry on.
    pub fn service_receives_all_ix(&mut self) {
        let all: Vec<Ca> = self.ixes.keys().cloned().collect();
        for ca in all {
            let Some(ix) = self.ixes.get_mut(&ca) else { continue };
            if let Err(e) = ix.service_receives() {
                log::warn(&format!("receive from {ca} failed: {e}"));
                let _ = self.remove_ix(&ca, true);
            }
        }
    }

    /// Ids of the connections the host named ready this cycle (their bytes
    /// came with it, into rxbs) and of the new ones, for [`Server::ix_by_id`]
    /// (which skips any that are not, or no longer, in ixes).
    pub fn service_receives_ready(&mut self) -> Vec<u64> {
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        ready.dedup();
        ready
    }

    /// hio's `transmitIx`: queue bytes to one connection.
    pub fn transmit_ix(&mut self, data: &[u8], ca: &Ca) -> Result<(), Error> {
        self.ix(ca)?.tx(data)
    }

    /// hio's `serviceSendsAllIx`, for connections that queued bytes since
    /// their last send. (The host sends after every cycle anyway.)
    pub fn service_sends_all_ix(&mut self) {
        let failed: Vec<Ca> = self
            .ixes
            .values_mut()
            .filter(|ix| ix.txed)
            .filter_map(|ix| ix.service_sends().err().map(|e| (ix.ca.clone(), e)))
            .map(|(ca, e)| {
                log::warn(&format!("send to {ca} failed: {e}"));
                ca
            })
            .collect();
        for ca in failed {
            let _ = self.remove_ix(&ca, true);
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

    /// Close and remove those of the connections `ids` that are cut off or
    /// were closed by the policy. The host sends what is queued first, so a
    /// half-closed peer still gets its every byte before the FIN.
    pub fn service_cutoffs(&mut self, ids: &[u64]) {
        for &id in ids {
            if let Some(ix) = self.ix_by_id(id)
                && (ix.cutoff || ix.closed())
            {
                let ca = ix.ca.clone();
                let _ = self.remove_ix(&ca, true);
            }
        }
    }

    /// Close and remove connections idle past the tymeout. Only tymers that
    /// came due are looked at. A connection whose output its peer has not
    /// yet taken is not idle: its peer is only slow to read it (the host
    /// bounds that with its send timeout), so its tymer starts again.
    pub fn service_tymeouts(&mut self) {
        let tyme = self.tyme();
        let Server { tymers, ids, ixes, .. } = self;
        let expired = tymers.expire(tyme, |id| {
            let Some(ix) = ids.get(&id).and_then(|ca| ixes.get(ca)) else {
                return Due::Gone;
            };
            if ix.tymer.expired() { Due::Expired } else { Due::Later(ix.tymer.stop_tyme()) }
        });
        for id in expired {
            let Some(ca) = self.ids.get(&id).cloned() else { continue };
            if let Some(ix) = self.ixes.get_mut(&ca)
                && ix.queued().unwrap_or(0) > 0
            {
                ix.refresh();
                self.tymers.push(id, ix.tymer.stop_tyme());
                continue;
            }
            log::info(&format!("{ca} idle for {}s: closing", self.tymeout));
            let _ = self.remove_ix(&ca, true);
        }
    }

    /// When the next tymer comes due, for the host to wake this guest.
    pub fn next_wake(&self) -> Option<f64> {
        self.tymers.next()
    }

    /// Each connection's bookkeeping, for a successor.
    pub(crate) fn save_ixes(&self) -> Vec<IxState> {
        self.ixes
            .values()
            .map(|ix| IxState {
                id: ix.id,
                start: ix.tymer.start_tyme(),
                stop: ix.tymer.stop_tyme(),
                refreshable: ix.refreshable,
                cutoff: ix.cutoff,
            })
            .collect()
    }

    /// Take over a predecessor's bookkeeping for the connections adopted.
    pub(crate) fn restore_ixes(&mut self, saved: &[IxState]) {
        for s in saved {
            let Some(ix) = self.ids.get(&s.id).and_then(|ca| self.ixes.get_mut(ca)) else { continue };
            ix.tymer.start(Some(s.stop - s.start), Some(s.start));
            ix.refreshable = s.refreshable;
            ix.cutoff |= s.cutoff;
            if self.tymeout > 0.0 {
                self.tymers.push(s.id, s.stop);
            }
        }
    }

    /// hio's `wind`: measure tyme on another Tymist from now on.
    pub fn wind(&mut self, tymist: Tymist) {
        self.tymist = tymist;
        for ix in self.ixes.values_mut() {
            ix.tymer.wind(self.tymist.tymen());
        }
        self.tymers = TymerQueue::default();
        if self.tymeout > 0.0 {
            for ix in self.ixes.values() {
                self.tymers.push(ix.id, ix.tymer.stop_tyme());
            }
        }
    }
}
