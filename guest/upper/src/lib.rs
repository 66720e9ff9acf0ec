//! Echo, upper-cased: every byte received is sent back with ASCII letters
//! in upper case. Visibly different from `echo`, for hot-swap demos.

use hio_guest::{Error, Remoter, Server, Service};

struct Upper;

impl Service for Upper {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        Upper
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        let upper = ix.rxbs.to_ascii_uppercase();
        let n = upper.len();
        ix.tx_consume(&upper, n)
    }
}

hio_guest::export_service!(Upper);
