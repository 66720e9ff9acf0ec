//! A line protocol with per-connection state. Each complete line (ending in
//! "\n") is answered with "<n> <LINE>\n": its number on this connection and
//! the line upper-cased. A partial line waits in rxbs (and in the host's
//! buffer) until its end arrives. The line "quit" is answered "bye" and the
//! connection closed. Line counts survive a hot swap (kind "lines/1").

use std::collections::HashMap;

use hio_guest::{Ca, Error, Remoter, Server, Service};

#[derive(Default)]
struct Lines {
    counts: HashMap<Ca, u64>,
}

impl Service for Lines {
    fn new(_: &mut Server) -> Self {
        Lines::default()
    }

    fn received(&mut self, ix: &mut Remoter) -> Result<(), Error> {
        let count = self.counts.entry(ix.ca.clone()).or_default();
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
            *count += 1;
            reply.extend_from_slice(format!("{count} ").as_bytes());
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

    fn removed(&mut self, ca: &Ca) {
        self.counts.remove(ca);
    }

    fn kind(&self) -> &str {
        "lines/1"
    }

    /// One "host port count" line per connection.
    fn save(&self) -> Vec<u8> {
        self.counts.iter().map(|(ca, n)| format!("{} {} {n}\n", ca.host, ca.port)).collect::<String>().into_bytes()
    }

    fn restore(&mut self, kind: &str, state: &[u8]) -> bool {
        if kind != "lines/1" {
            return false;
        }
        let Ok(text) = std::str::from_utf8(state) else { return false };
        for line in text.lines() {
            let mut f = line.split(' ');
            match (f.next(), f.next().and_then(|p| p.parse().ok()), f.next().and_then(|n| n.parse().ok())) {
                (Some(host), Some(port), Some(n)) => {
                    self.counts.insert(Ca::new(host, port), n);
                }
                _ => return false,
            }
        }
        true
    }
}

hio_guest::export_service!(Lines);
