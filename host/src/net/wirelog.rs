//! hio's WireLog: every byte received and sent, per direction, in hio's
//! record format `\n{Rx|Tx} {who}:\n{data}\n`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;

pub struct WireLog {
    rx: BufWriter<File>,
    tx: BufWriter<File>,
}

impl WireLog {
    /// Open (appending) `rx.log` and `tx.log` in `dir`, creating it if needed.
    pub fn open(dir: &Path) -> io::Result<WireLog> {
        fs::create_dir_all(dir)?;
        let open = |name| OpenOptions::new().create(true).append(true).open(dir.join(name));
        Ok(WireLog { rx: BufWriter::new(open("rx.log")?), tx: BufWriter::new(open("tx.log")?) })
    }

    pub fn rx(&mut self, who: SocketAddr, data: &[u8]) {
        record(&mut self.rx, "Rx", who, data);
    }

    pub fn tx(&mut self, who: SocketAddr, data: &[u8]) {
        record(&mut self.tx, "Tx", who, data);
    }

    /// Called once per event-loop pass, so records reach disk promptly
    /// without a syscall per record.
    pub fn flush(&mut self) {
        for w in [&mut self.rx, &mut self.tx] {
            if let Err(e) = w.flush() {
                tracing::warn!("wirelog write failed: {e}");
            }
        }
    }
}

fn record(w: &mut BufWriter<File>, dir: &str, who: SocketAddr, data: &[u8]) {
    let who = format!("('{}', {})", who.ip(), who.port());
    let res = write!(w, "\n{dir} {who}:\n").and_then(|_| w.write_all(data)).and_then(|_| w.write_all(b"\n"));
    if let Err(e) = res {
        tracing::warn!("wirelog write failed: {e}");
    }
}

impl Drop for WireLog {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_hio_records() {
        let dir = std::env::temp_dir().join(format!("hio-wirelog-{}", std::process::id()));
        let who: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        {
            let mut wl = WireLog::open(&dir).unwrap();
            wl.rx(who, b"hello");
            wl.tx(who, b"HELLO");
        }
        let rx = fs::read_to_string(dir.join("rx.log")).unwrap();
        let tx = fs::read_to_string(dir.join("tx.log")).unwrap();
        assert_eq!(rx, "\nRx ('127.0.0.1', 4000):\nhello\n");
        assert_eq!(tx, "\nTx ('127.0.0.1', 4000):\nHELLO\n");
        fs::remove_dir_all(dir).unwrap();
    }
}
