//! A test guest that traps while starting.

use hio_guest::{Error, Remoter, Server, Service};

struct BadStart;

impl Service for BadStart {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        panic!("this guest cannot start");
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        ix.echo_rxbs()
    }
}

hio_guest::export_service!(BadStart);
