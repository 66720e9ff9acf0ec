//! hio's EchoServerDoer: every byte received is sent back.

use hio_guest::{Error, Remoter, Server, Service};

struct Echo;

impl Service for Echo {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        Echo
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        ix.echo_rxbs()
    }
}

hio_guest::export_service!(Echo);
