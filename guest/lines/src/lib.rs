//! A line protocol with per-connection state. Each complete line (ending in
//! "\n") is answered with "<n> <LINE>\n": its number on this connection and
//! the line upper-cased. A partial line waits in rxbs (and in the host's
//! buffer) until its end arrives. The line "quit" is answered "bye" and the
//! connection closed. Line counts survive a hot swap (kind "lines/2").
//! When the host drains, every connection is served to its end: a peer
//! mid-way through an exchange gets every answer.

use hio_guest::{Error, Remoter, Server, Service};

struct Lines;

/// Lines answered on one connection so far.
#[derive(Default)]
struct Count(u64);

impl Service for Lines {
    type Conn = Count;

    fn new(_: &mut Server<Count>) -> Self {
        Lines
    }

    fn received(&mut self, ix: &mut Remoter, count: &mut Count) -> Result<(), Error> {
        let mut reply = Vec::new();
        let mut used = 0;
        let mut quit = false;
        while let Some(end) = ix.rxbs[used..].iter().position(|&b| b == b'\n') {
            let line = &ix.rxbs[used..used + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            used += end + 1;
            if line == b"quit" {
                reply.extend_from_slice(b"bye\n");
                quit = true;
                break;
            }
            count.0 += 1;
            reply.extend_from_slice(format!("{} ", count.0).as_bytes());
            reply.extend(line.iter().map(u8::to_ascii_uppercase));
            reply.push(b'\n');
        }
        if used > 0 {
            ix.tx_consume(&reply, used)?;
        }
        if quit {
            ix.close()?;
        }
        Ok(())
    }

    fn draining(&mut self, server: &mut Server<Count>) {
        let open = server.ixes().count();
        hio_guest::log::info(&format!("draining: serving {open} connections to their end"));
    }

    fn kind(&self) -> &str {
        "lines/2"
    }

    fn restore(&mut self, kind: &str, _: &[u8]) -> bool {
        kind == "lines/2"
    }

    /// The count, as 8 little-endian bytes.
    fn save_conn(&self, count: &Count) -> Vec<u8> {
        count.0.to_le_bytes().to_vec()
    }

    fn restore_conn(&mut self, saved: &[u8]) -> Option<Count> {
        Some(Count(u64::from_le_bytes(saved.try_into().ok()?)))
    }
}

hio_guest::export_service!(Lines);
