//! A test guest that panics on the word "panic" and echoes everything else.
//! Bytes that crash it stay unconsumed in the host, so every new instance
//! meets them again: the host must close that connection, not give up.
//!
//! It also cannot start while the host's tyme is in [100, 200): a test
//! moves virtual tyme there to make every restart fail for a while.

use hio_guest::{Error, Remoter, Server, Service};

struct Crashy;

impl Service for Crashy {
    fn new(server: &mut Server) -> Self {
        if (100.0..200.0).contains(&server.tyme()) {
            panic!("cannot start at tyme {}", server.tyme());
        }
        Crashy
    }

    fn received(&mut self, ix: &mut Remoter) -> Result<(), Error> {
        if ix.rxbs.windows(5).any(|w| w == b"panic") {
            panic!("poison message from {}", ix.ca);
        }
        ix.echo_rxbs()
    }
}

hio_guest::export_service!(Crashy);
