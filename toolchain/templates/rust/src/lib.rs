//! {{name}}: an hio-host guest. Each line a peer sends comes back numbered
//! on its connection ("1: hello"); a partial line waits for its end. The
//! numbers are per-connection state ([`Service::Conn`]) and survive a hot
//! swap (`save_conn` / `restore_conn`); a crash starts them again.

use hio_guest::{Error, Remoter, Server, Service};

struct Numbered;

/// Lines answered on one connection so far.
#[derive(Default)]
struct Count(u64);

impl Service for Numbered {
    type Conn = Count;

    fn new(_: &mut Server<Count>) -> Self {
        Numbered
    }

    fn received(&mut self, ix: &mut Remoter, count: &mut Count) -> Result<(), Error> {
        let mut reply = Vec::new();
        let mut used = 0;
        while let Some(end) = ix.rxbs[used..].iter().position(|&b| b == b'\n') {
            count.0 += 1;
            reply.extend_from_slice(format!("{}: ", count.0).as_bytes());
            reply.extend_from_slice(&ix.rxbs[used..=used + end]);
            used += end + 1;
        }
        // Consumed only with the reply queued: a crash in between loses nothing.
        if used > 0 {
            ix.tx_consume(&reply, used)?;
        }
        Ok(())
    }

    fn kind(&self) -> &str {
        "{{name}}/1"
    }

    fn restore(&mut self, kind: &str, _: &[u8]) -> bool {
        kind == "{{name}}/1"
    }

    fn save_conn(&self, count: &Count) -> Vec<u8> {
        count.0.to_le_bytes().to_vec()
    }

    fn restore_conn(&mut self, saved: &[u8]) -> Option<Count> {
        Some(Count(u64::from_le_bytes(saved.try_into().ok()?)))
    }
}

hio_guest::export_service!(Numbered);
