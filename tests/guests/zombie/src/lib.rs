//! A misbehaving test guest: it keeps using connections after closing them.
//!
//! "zombie\n": close this connection, then keep its raw handle and call
//! tx, receive, close and queued on it again; what the host answered is
//! recorded. "report\n": answer with those answers. "ghost\n": answer with
//! what the SDK said about an unknown ca. Anything else is echoed.

use hio_guest::bindings::hio::tcp::types::Error as WitError;
use hio_guest::{Ca, Error, Remoter, Server, Service};

#[derive(Default)]
struct Zombie {
    answers: Vec<String>,
    ghost: Option<String>,
}

fn describe<T: std::fmt::Debug>(r: Result<T, WitError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {}", Error::from(e)),
    }
}

impl Service for Zombie {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        Zombie::default()
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        match ix.rxbs.as_slice() {
            b"zombie\n" => {
                ix.clear_rxbs()?;
                ix.close()?;
                // Go around the SDK's own guard, straight to the host.
                let h = ix.handle();
                self.answers = vec![
                    describe(h.tx(b"brains")),
                    describe(h.tx_consume(b"brains", 1)),
                    describe(h.receive(10).map(|r| r.data.len())),
                    describe(h.close()),
                    describe(h.queued()),
                ];
                Ok(())
            }
            b"report\n" => {
                let text = format!("{}\n", self.answers.join("; "));
                ix.tx(text.as_bytes())?;
                ix.clear_rxbs()
            }
            b"ghost\n" => {
                ix.tx(format!("{}\n", self.ghost.as_deref().unwrap_or("none")).as_bytes())?;
                ix.clear_rxbs()
            }
            _ => ix.echo_rxbs(),
        }
    }

    fn recur(&mut self, server: &mut Server) {
        if self.ghost.is_none() {
            let ghost = Ca::new("203.0.113.9", 9);
            self.ghost = server.transmit_ix(b"boo", &ghost).err().map(|e| e.to_string());
        }
        server.service_connects();
        let ready = server.service_receives_ready();
        for &id in &ready {
            if let Some((ix, conn)) = server.ix_with_conn(id)
                && let Err(e) = self.received(ix, conn)
            {
                hio_guest::log::warn(&format!("{}: {e}", ix.ca));
            }
        }
        server.service_cutoffs(&ready);
        server.service_tymeouts();
    }
}

hio_guest::export_service!(Zombie);
