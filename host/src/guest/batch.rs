//! `hio:tcp/batch` (WIT 0.2.2): a cycle in one crossing. Every
//! connection's news goes in one buffer (one guest allocation per cycle,
//! not one per arrival) and the answers come back in the call's result
//! (no host call per connection), applied here once the call returned.
//!
//! The export is optional (`optional::find`), so its types are declared
//! here, not by `bindgen!`.

use std::time::Instant;

use anyhow::{Result, anyhow};
use wasmtime::component::{ComponentType, Lift, Lower};

use super::StoreData;
use super::hio::tcp::types::Error as WitError;

/// WIT `batch.news`.
#[derive(ComponentType, Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct News {
    pub id: u64,
    pub len: u32,
    pub cutoff: bool,
    pub room: u32,
}

/// WIT `batch.cycle`; kept between cycles for its buffers' memory.
#[derive(ComponentType, Lower, Default, Debug)]
#[component(record)]
pub struct BatchCycle {
    pub tyme: f64,
    pub accepts: bool,
    pub draining: bool,
    pub news: Vec<News>,
    pub bytes: Vec<u8>,
}

/// WIT `batch.answer`.
#[derive(ComponentType, Lift, Clone, Copy, Debug)]
#[component(record)]
pub struct Answer {
    pub id: u64,
    pub start: u32,
    pub len: u32,
    pub consume: u64,
}

/// WIT `batch.answers`.
#[derive(ComponentType, Lift, Debug)]
#[component(record)]
pub struct Answers {
    pub wake: Option<f64>,
    pub answers: Vec<Answer>,
    pub bytes: Vec<u8>,
}

impl StoreData {
    /// Apply a batch cycle's answers, in order. An answer the host cannot
    /// apply is the guest's fault (the SDK never gives one): the answers
    /// before it stand, and the guest fails as by a trap.
    ///
    /// Applying them counts against the call's deadline (`by`): a result of
    /// millions of answers must not hold the loop longer than a guest call
    /// may. Past it, the rest is not applied and the guest fails.
    pub fn apply_answers(&mut self, answers: &Answers, by: Instant) -> Result<()> {
        for (i, a) in answers.answers.iter().enumerate() {
            if i % 1024 == 1023 && Instant::now() > by {
                anyhow::bail!(
                    "guest's {} answers ran past its deadline after {i} were applied: the rest not applied",
                    answers.answers.len()
                );
            }
            let data = usize::try_from(a.start)
                .ok()
                .zip(usize::try_from(a.len).ok())
                .and_then(|(start, len)| answers.bytes.get(start..start.checked_add(len)?))
                .ok_or_else(|| anyhow!("guest answered connection {} with bytes out of its result's range", a.id))?;
            self.answer(a.id, data, a.consume).map_err(|e| {
                anyhow!(
                    "guest answered connection {} beyond what it may ({}): nothing more applied",
                    a.id,
                    describe(&e)
                )
            })?;
        }
        Ok(())
    }

    fn answer(&mut self, id: u64, data: &[u8], consume: u64) -> Result<(), WitError> {
        let sent = self.on_open(id, |c, wl| c.guest_answer(data, consume, wl))??;
        self.host_ref().stats().bytes_sent.add(sent);
        Ok(())
    }
}

fn describe(e: &WitError) -> &'static str {
    match e {
        WitError::Closed => "it does not hold it open",
        WitError::Full => "more than its room",
        WitError::Io(_) => "the socket failed",
    }
}
