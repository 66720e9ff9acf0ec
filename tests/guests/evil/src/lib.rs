//! A test guest that misbehaves on demand and echoes everything else:
//! "spin" loops forever; "hog" allocates memory without end.

use std::cell::RefCell;

use hio_guest::{Error, Remoter, Server, Service};

thread_local! {
    static HOARD: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

struct Evil;

impl Service for Evil {
    fn new(_: &mut Server) -> Self {
        Evil
    }

    fn received(&mut self, ix: &mut Remoter) -> Result<(), Error> {
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
        ix.echo_rxbs()
    }
}

hio_guest::export_service!(Evil);
