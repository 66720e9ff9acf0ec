//! Answers kept for the end of a batch cycle (WIT 0.2.2 `batch`): an
//! answer that fits the room the host set aside for its connection goes
//! back in the cycle's result instead of a host call of its own. The one
//! place they are kept; a [`crate::Remoter`] decides what goes here.
//!
//! Order is kept per connection: the host applies these after everything
//! done by host calls in the cycle, so before any other operation on a
//! connection that has answers here, the Remoter sends them by host call
//! first ([`take`]).

use std::cell::RefCell;

use crate::bindings::exports::hio::tcp::batch::Answer;

#[derive(Default)]
struct Kept {
    answers: Vec<Answer>,
    bytes: Vec<u8>,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::default();
}

/// Most bytes kept for one result: a crossing saved matters for small
/// answers, and a bound keeps a burst from growing the guest's memory (which
/// never shrinks) by a second copy of everything it was handed.
const MOST: usize = 256 << 10;

/// The largest answer kept: a larger one goes by host call, whose cost is
/// small beside its bytes' copies, and saves the copy into the result.
const LARGEST: usize = 16 << 10;

/// Whether an answer of `len` bytes may be kept for this cycle's result.
pub(crate) fn fits(len: usize) -> bool {
    len <= LARGEST && KEPT.with_borrow(|kept| kept.bytes.len() + len <= MOST)
}

/// Keep `tx-consume(data, consume)` on connection `id` for the result.
pub(crate) fn keep(id: u64, data: &[u8], consume: u64) {
    KEPT.with_borrow_mut(|kept| {
        // Within the host's lending bound and a connection's room: far below 4 GiB.
        let start = kept.bytes.len() as u32;
        kept.bytes.extend_from_slice(data);
        kept.answers.push(Answer { id, start, len: data.len() as u32, consume });
    });
}

/// Take back the answers kept for connection `id`, in order, giving each
/// to `send` (which makes it a host call); at the first refusal, the
/// rest stay kept.
pub(crate) fn take<E>(id: u64, mut send: impl FnMut(&[u8], u64) -> Result<(), E>) -> Result<(), E> {
    KEPT.with_borrow_mut(|kept| {
        let Kept { answers, bytes } = kept;
        let mut outcome = Ok(());
        answers.retain(|a| {
            if a.id != id {
                return true;
            }
            if outcome.is_err() {
                // Kept, not lost: the host applies it, or refuses it.
                return true;
            }
            let (start, len) = (a.start as usize, a.len as usize);
            outcome = send(&bytes[start..start + len], a.consume);
            false
        });
        outcome
    })
}

/// Everything kept this cycle, for its result; empty again after, with
/// room for as much as this cycle kept.
///
/// The result's lists are the guest's to give away (the host frees them
/// after the call), so each cycle needs new ones; sized like the last,
/// they are one allocation each instead of a doubling and a copy per
/// power of two (10 % of the guest's time in an echo at 1 KiB).
pub(crate) fn finish() -> (Vec<Answer>, Vec<u8>) {
    KEPT.with_borrow_mut(|kept| {
        let next =
            Kept { answers: Vec::with_capacity(kept.answers.len()), bytes: Vec::with_capacity(kept.bytes.len()) };
        let Kept { answers, bytes } = std::mem::replace(kept, next);
        (answers, bytes)
    })
}
