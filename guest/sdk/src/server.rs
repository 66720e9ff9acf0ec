//! hio's Server: ixes keyed by ca, fed by the host's listener.
//!
//! Unlike hio, a cycle looks only at connections the host named as ready
//! and at tymers that came due, so idle connections cost nothing.

use std::collections::{HashMap, VecDeque};

use crate::bindings::hio::tcp::acceptor::Listener;
use crate::bindings::hio::tcp::remoter::{Remoter as Handle, TlsState};
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
    pub ixes: HashMap<Ca, Remoter>,
    /// TLS connections still handshaking (hio's ServerTls cxes).
    pub cxes: HashMap<Ca, Remoter>,
    /// Accepted connections not yet made remoters.
    pub axes: VecDeque<Handle>,
    ids: HashMap<u64, Ca>,
    tymers: TymerQueue,
    ready: Vec<Ca>,
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
            ixes: HashMap::new(),
            cxes: HashMap::new(),
            axes: VecDeque::new(),
            ids: HashMap::new(),
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

    pub(crate) fn begin_cycle(&mut self, tyme: f64, accepts: bool, ready: Vec<u64>) {
        self.tymist.set(tyme);
        self.accepts = accepts;
        for id in ready {
            if let Some(ca) = self.ids.get(&id) {
                self.ready.push(ca.clone());
            }
        }
    }

    /// Connections taken over from a previous guest: straight into ixes,
    /// ready, so their unconsumed bytes are received again.
    pub(crate) fn adopt(&mut self, handle: Handle) {
        self.add_handle(handle, false);
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
        while let Some(handle) = self.axes.pop_front() {
            self.add_handle(handle, true);
        }
    }

    /// Plain and connected TLS connections join ixes; handshaking ones wait
    /// in cxes; aborted ones are dropped (the host has closed them).
    /// `new` is false for connections handed over from a previous guest:
    /// they are not announced to the policy as connected again.
    fn add_handle(&mut self, handle: Handle, new: bool) {
        let state = handle.tls();
        let mut ix = Remoter::new(handle, self.bs, self.tymist.tymen(), self.tymeout);
        match state {
            TlsState::Plain => self.admit(ix, new),
            TlsState::Connected(info) => {
                ix.tls = Some(info);
                self.admit(ix, new);
            }
            TlsState::Handshaking => {
                self.ids.insert(ix.id, ix.ca.clone());
                self.ready.push(ix.ca.clone());
                self.cxes.insert(ix.ca.clone(), ix);
            }
            TlsState::Aborted(why) => log::debug(&format!("{}: TLS aborted before service: {why}", ix.ca)),
        }
    }

    /// hio's `serviceCxes`: promote handshaked connections to ixes, drop
    /// aborted ones. Only connections the host named ready (their handshake
    /// moved) or that just arrived are looked at.
    pub fn service_cxes(&mut self) {
        let candidates: Vec<Ca> = self.ready.iter().filter(|ca| self.cxes.contains_key(*ca)).cloned().collect();
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
        self.ixes.insert(ca.clone(), ix);
        self.ready.push(ca.clone());
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
        self.receive_each(all);
    }

    /// Receive on the connections the host named ready this cycle (and new
    /// ones); returns them.
    pub fn service_receives_ready(&mut self) -> Vec<Ca> {
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        ready.dedup();
        self.receive_each(ready)
    }

    fn receive_each(&mut self, cas: Vec<Ca>) -> Vec<Ca> {
        let mut ok = Vec::with_capacity(cas.len());
        for ca in cas {
            let Some(ix) = self.ixes.get_mut(&ca) else {
                continue;
            };
            match ix.service_receives() {
                Ok(_) => ok.push(ca),
                Err(e) => {
                    log::warn(&format!("receive from {ca} failed: {e}"));
                    let _ = self.remove_ix(&ca, true);
                }
            }
        }
        ok
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
    pub fn service(&mut self) -> Vec<Ca> {
        self.service_connects();
        let ready = self.service_receives_ready();
        self.service_sends_all_ix();
        ready
    }

    /// Close and remove those of `cas` that are cut off or were closed by
    /// the policy. The host sends what is queued first, so a half-closed
    /// peer still gets its every byte before the FIN.
    pub fn service_cutoffs(&mut self, cas: &[Ca]) {
        for ca in cas {
            if self.ixes.get(ca).is_some_and(|ix| ix.cutoff || ix.closed()) {
                let _ = self.remove_ix(ca, true);
            }
        }
    }

    /// Close and remove connections idle past the tymeout. Only tymers that
    /// came due are looked at.
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
            if let Some(ca) = self.ids.get(&id).cloned() {
                log::info(&format!("{ca} idle for {}s: closing", self.tymeout));
                let _ = self.remove_ix(&ca, true);
            }
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
