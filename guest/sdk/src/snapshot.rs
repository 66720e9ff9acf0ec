//! The SDK's hot-swap state, format "hio-guest/1": per-connection
//! bookkeeping (tymers, flags) keyed by the host's connection id, then the
//! policy's own state tagged with its kind. Bytes in flight are not here:
//! the host holds them and hands them to the successor itself.
//!
//! Layout (little-endian): u32 count, count x (u64 id, f64 tymer start,
//! f64 tymer stop, u8 flags: 1 refreshable, 2 cutoff), u32 kind length,
//! kind (UTF-8), then the policy's bytes to the end.

pub const FORMAT: &str = "hio-guest/1";

#[derive(Debug, Clone, PartialEq)]
pub struct IxState {
    pub id: u64,
    pub start: f64,
    pub stop: f64,
    pub refreshable: bool,
    pub cutoff: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    pub ixes: Vec<IxState>,
    pub kind: String,
    pub service: Vec<u8>,
}

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.ixes.len() * 25 + self.kind.len() + self.service.len());
        out.extend_from_slice(&(self.ixes.len() as u32).to_le_bytes());
        for ix in &self.ixes {
            out.extend_from_slice(&ix.id.to_le_bytes());
            out.extend_from_slice(&ix.start.to_le_bytes());
            out.extend_from_slice(&ix.stop.to_le_bytes());
            out.push(u8::from(ix.refreshable) | (u8::from(ix.cutoff) << 1));
        }
        out.extend_from_slice(&(self.kind.len() as u32).to_le_bytes());
        out.extend_from_slice(self.kind.as_bytes());
        out.extend_from_slice(&self.service);
        out
    }

    /// `None` for bytes that are not a whole hio-guest/1 state.
    pub fn decode(mut bytes: &[u8]) -> Option<State> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = bytes.split_at_checked(n)?;
            *bytes = rest;
            Some(head)
        }
        fn u32_(b: &mut &[u8]) -> Option<u32> {
            Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?))
        }
        fn u64_(b: &mut &[u8]) -> Option<u64> {
            Some(u64::from_le_bytes(take(b, 8)?.try_into().ok()?))
        }
        let count = u32_(&mut bytes)? as usize;
        // Each record is 25 bytes: refuse counts the input cannot hold.
        if count > bytes.len() / 25 {
            return None;
        }
        let mut ixes = Vec::with_capacity(count);
        for _ in 0..count {
            let id = u64_(&mut bytes)?;
            let start = f64::from_bits(u64_(&mut bytes)?);
            let stop = f64::from_bits(u64_(&mut bytes)?);
            let flags = take(&mut bytes, 1)?[0];
            ixes.push(IxState { id, start, stop, refreshable: flags & 1 != 0, cutoff: flags & 2 != 0 });
        }
        let kind_len = u32_(&mut bytes)? as usize;
        let kind = String::from_utf8(take(&mut bytes, kind_len)?.to_vec()).ok()?;
        Some(State { ixes, kind, service: bytes.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = State {
            ixes: vec![
                IxState { id: 16, start: 1.5, stop: 31.5, refreshable: true, cutoff: false },
                IxState { id: 99, start: 0.0, stop: 0.0, refreshable: false, cutoff: true },
            ],
            kind: "lines/1".into(),
            service: b"127.0.0.1 4000 7\n".to_vec(),
        };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(State::decode(&State::default().encode()), Some(State::default()));
    }

    #[test]
    fn rejects_truncated_or_lying_input() {
        let s = State {
            ixes: vec![IxState { id: 1, start: 0.0, stop: 1.0, refreshable: true, cutoff: false }],
            kind: "k".into(),
            service: vec![],
        };
        let bytes = s.encode();
        for cut in 0..bytes.len() - 1 {
            assert_eq!(State::decode(&bytes[..cut]), None, "accepted {cut} bytes");
        }
        assert_eq!(State::decode(&[0xff, 0xff, 0xff, 0x7f]), None, "huge count");
        assert_eq!(State::decode(b""), None);
    }
}
