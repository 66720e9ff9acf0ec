//! A test guest that misbehaves on demand and echoes everything else:
//! "spin" loops forever; "hog" allocates memory without end; "flood" tries
//! to queue 100 MiB to a peer that does not read, then reports on another
//! connection ("report") how much the host took before saying full;
//! "dump" queues 4 MiB and closes the connection at once; "mixed" answers
//! "<", 20,000 "m"s and ">" in one cycle (the first and last small enough
//! to be kept for the cycle's result, the middle one too large: a host
//! call between them);
//! "forge" calls the host with a made-up remoter handle.

use std::cell::RefCell;

use hio_guest::{Error, Remoter, Server, Service};

thread_local! {
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Evil {
    flooded: Option<String>,
}

impl Service for Evil {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        Evil::default()
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        if ix.rxbs.windows(4).any(|w| w == b"spin") {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if ix.rxbs.windows(3).any(|w| w == b"hog") {
            loop {
                HOARD.with_borrow_mut(|h| h.push(std::hint::black_box(vec![1u8; 1 << 20])));
            }
        }
        if ix.rxbs.windows(5).any(|w| w == b"forge") {
            // SAFETY: deliberately unsound; the host must refuse it without harm.
            let forged = unsafe { hio_guest::bindings::hio::tcp::remoter::Remoter::from_handle(0x7fff_0001) };
            let _ = forged.tx(b"stolen");
            std::mem::forget(forged);
        }
        if ix.rxbs.windows(5).any(|w| w == b"flood") {
            ix.clear_rxbs()?;
            let chunk = vec![b'f'; 1 << 20];
            let mut queued = 0;
            let outcome = loop {
                if queued == 100 {
                    break "all 100 MiB queued".to_string();
                }
                match ix.tx(&chunk) {
                    Ok(()) => queued += 1,
                    Err(e) => break format!("{queued} MiB queued, then: {e}"),
                }
            };
            self.flooded = Some(outcome);
            return Ok(());
        }
        if ix.rxbs.windows(4).any(|w| w == b"dump") {
            ix.clear_rxbs()?;
            for i in 0..4u8 {
                ix.tx(&vec![b'a' + i; 1 << 20])?;
            }
            return ix.close();
        }
        if ix.rxbs.windows(5).any(|w| w == b"mixed") {
            ix.clear_rxbs()?;
            ix.tx(b"<")?;
            ix.tx(&[b'm'; 20_000])?;
            return ix.tx(b">");
        }
        if ix.rxbs.windows(6).any(|w| w == b"report") {
            ix.clear_rxbs()?;
            let line = format!("{}\n", self.flooded.as_deref().unwrap_or("no flood yet"));
            return ix.tx(line.as_bytes());
        }
        ix.echo_rxbs()
    }
}

hio_guest::export_service!(Evil);
