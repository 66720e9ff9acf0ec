//! A test guest that panics on the word "panic" and echoes everything else.
//! Bytes that crash it stay unconsumed in the host, so every new instance
//! meets them again: the host must close that connection, not give up.
//!
//! It also cannot start while the host's tyme is in [100, 200): a test
//! moves virtual tyme there to make every restart fail for a while.
//!
//! Its loop is hio's own: it asks every connection for bytes each cycle
//! (`serviceReceivesAllIx`, the host's `receive`), so what the host lends
//! that way is covered by the crash tests too, not only a cycle's arrivals.

use hio_guest::{Error, Remoter, Server, Service};

struct Crashy;

impl Service for Crashy {
    type Conn = ();

    fn new(server: &mut Server) -> Self {
        if (100.0..200.0).contains(&server.tyme()) {
            panic!("cannot start at tyme {}", server.tyme());
        }
        Crashy
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        if ix.rxbs.windows(5).any(|w| w == b"panic") {
            panic!("poison message from {}", ix.ca);
        }
        ix.echo_rxbs()
    }

    fn recur(&mut self, server: &mut Server) {
        server.service_connects();
        server.take_connected();
        server.service_receives_all_ix();
        let ready = server.service_receives_ready();
        let failed: Vec<(u64, Error)> = server
            .ixes_mut()
            .filter(|(ix, _)| !ix.rxbs.is_empty())
            .filter_map(|(ix, conn)| self.received(ix, conn).err().map(|e| (ix.id, e)))
            .collect();
        for (id, e) in failed {
            server.fail_ix(id, &e);
        }
        server.service_cutoffs(&ready);
        server.service_tymeouts();
    }
}

hio_guest::export_service!(Crashy);
