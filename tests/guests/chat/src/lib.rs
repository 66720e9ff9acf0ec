//! A test guest whose policy looks at every connection: each complete line
//! from one peer goes to every peer in ixes. A guest that took over from a
//! chat predecessor first tells every peer "* new guest: N here\n", N the
//! connections in its ixes: with a lazy hand-over under way, looking at
//! ixes must take the rest over first, so N is every connection held.

use hio_guest::{Server, Service};

#[derive(Default)]
struct Chat {
    /// Taken over from a predecessor: announce it in the first cycle.
    announce: bool,
}

impl Service for Chat {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        Chat::default()
    }

    fn received(&mut self, _: &mut hio_guest::Remoter, _: &mut ()) -> Result<(), hio_guest::Error> {
        Ok(())
    }

    fn kind(&self) -> &str {
        "chat/1"
    }

    fn restore(&mut self, kind: &str, _: &[u8]) -> bool {
        self.announce = kind == "chat/1";
        self.announce
    }

    fn recur(&mut self, server: &mut Server) {
        server.service_connects();
        server.take_connected();
        if std::mem::take(&mut self.announce) {
            let line = format!("* new guest: {} here\n", server.ixes().count());
            broadcast(server, line.as_bytes());
        }
        let mut said = Vec::new();
        for id in server.service_receives_ready() {
            let Some(ix) = server.ix_by_id(id) else { continue };
            if let Some(end) = ix.rxbs.iter().rposition(|&b| b == b'\n') {
                said.extend_from_slice(&ix.rxbs[..=end]);
                let _ = ix.consume_rxbs(end + 1);
            }
            server.service_cutoff(id);
        }
        if !said.is_empty() {
            broadcast(server, &said);
        }
        server.service_tymeouts();
    }
}

fn broadcast(server: &mut Server, line: &[u8]) {
    for (ix, _) in server.ixes_mut() {
        let _ = ix.tx(line);
    }
}

hio_guest::export_service!(Chat);
