//! The SDK's hot-swap state, format "hio-guest/2": per-connection
//! bookkeeping (tymers, flags, the policy's state for the connection) keyed
//! by the host's connection id, then the policy's own state tagged with its
//! kind. Bytes in flight are not here: the host holds them and hands them
//! to the successor itself.
//!
//! Layout (little-endian): u32 count, count x (u64 id, f64 tymer start,
//! f64 tymer stop, u8 flags: 1 refreshable, 2 cutoff, 4 state follows
//! [u32 length, that many bytes]), u32 kind length, kind (UTF-8), then the
//! policy's bytes to the end. "hio-guest/1" is the same without flag 4, so
//! one decoder reads both.

/// The snapshot format this SDK writes (it still reads `hio-guest/1`).
pub const FORMAT: &str = "hio-guest/2";

/// The formats [`State::decode`] reads.
pub const READS: [&str; 2] = ["hio-guest/1", FORMAT];

/// Bytes of a connection's record without its state.
const RECORD: usize = 25;

const REFRESHABLE: u8 = 1;
const CUTOFF: u8 = 2;
const HAS_CONN: u8 = 4;

/// One connection in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct IxState {
    /// The host's connection id.
    pub id: u64,
    /// Its idle tymer's start, in seconds of tyme.
    pub start: f64,
    /// Its idle tymer's stop, in seconds of tyme.
    pub stop: f64,
    /// Whether sends and receives refresh the tymer.
    pub refreshable: bool,
    /// Whether the peer had closed.
    pub cutoff: bool,
    /// What the policy's `save_conn` made of this connection's state.
    pub conn: Option<Vec<u8>>,
}

/// What a guest saves at a hot swap: its connections and the policy's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Every connection in ixes.
    pub ixes: Vec<IxState>,
    /// The policy's `kind()` (what its `restore` accepts).
    pub kind: String,
    /// The policy's `save()`.
    pub service: Vec<u8>,
}

impl State {
    /// The snapshot's bytes (little-endian, length-prefixed).
    pub fn encode(&self) -> Vec<u8> {
        let conns: usize = self.ixes.iter().filter_map(|ix| ix.conn.as_ref()).map(|c| 4 + c.len()).sum();
        let mut out = Vec::with_capacity(8 + self.ixes.len() * RECORD + conns + self.kind.len() + self.service.len());
        out.extend_from_slice(&(self.ixes.len() as u32).to_le_bytes());
        for ix in &self.ixes {
            out.extend_from_slice(&ix.id.to_le_bytes());
            out.extend_from_slice(&ix.start.to_le_bytes());
            out.extend_from_slice(&ix.stop.to_le_bytes());
            let flag = |on: bool, bit: u8| if on { bit } else { 0 };
            out.push(flag(ix.refreshable, REFRESHABLE) | flag(ix.cutoff, CUTOFF) | flag(ix.conn.is_some(), HAS_CONN));
            if let Some(conn) = &ix.conn {
                out.extend_from_slice(&(conn.len() as u32).to_le_bytes());
                out.extend_from_slice(conn);
            }
        }
        out.extend_from_slice(&(self.kind.len() as u32).to_le_bytes());
        out.extend_from_slice(self.kind.as_bytes());
        out.extend_from_slice(&self.service);
        out
    }

    /// `None` for bytes that are not a whole hio-guest/1 or /2 state.
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
        // Refuse counts the input cannot hold.
        if count > bytes.len() / RECORD {
            return None;
        }
        let mut ixes = Vec::with_capacity(count);
        for _ in 0..count {
            let id = u64_(&mut bytes)?;
            let start = f64::from_bits(u64_(&mut bytes)?);
            let stop = f64::from_bits(u64_(&mut bytes)?);
            let flags = take(&mut bytes, 1)?[0];
            let conn = match flags & HAS_CONN {
                0 => None,
                _ => {
                    let len = u32_(&mut bytes)? as usize;
                    Some(take(&mut bytes, len)?.to_vec())
                }
            };
            let (refreshable, cutoff) = (flags & REFRESHABLE != 0, flags & CUTOFF != 0);
            ixes.push(IxState { id, start, stop, refreshable, cutoff, conn });
        }
        let kind_len = u32_(&mut bytes)? as usize;
        let kind = String::from_utf8(take(&mut bytes, kind_len)?.to_vec()).ok()?;
        Some(State { ixes, kind, service: bytes.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(id: u64, conn: Option<&[u8]>) -> IxState {
        IxState {
            id,
            start: 1.5,
            stop: 31.5,
            refreshable: true,
            cutoff: id.is_multiple_of(2),
            conn: conn.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn round_trips() {
        let s = State {
            ixes: vec![ix(16, None), ix(99, Some(b"")), ix(7, Some(b"\x03\0\0\0"))],
            kind: "lines/2".into(),
            service: b"policy".to_vec(),
        };
        assert_eq!(State::decode(&s.encode()), Some(s));
        assert_eq!(State::decode(&State::default().encode()), Some(State::default()));
    }

    #[test]
    fn reads_hio_guest_1() {
        // As the first SDK wrote it: one record, flags 1|2, kind "k", policy "p".
        let mut v1 = 1u32.to_le_bytes().to_vec();
        v1.extend_from_slice(&9u64.to_le_bytes());
        v1.extend_from_slice(&2.0f64.to_le_bytes());
        v1.extend_from_slice(&5.0f64.to_le_bytes());
        v1.push(3);
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(b"kp");
        let s = State::decode(&v1).expect("hio-guest/1 decodes");
        let want = IxState { id: 9, start: 2.0, stop: 5.0, refreshable: true, cutoff: true, conn: None };
        assert_eq!(s, State { ixes: vec![want], kind: "k".into(), service: b"p".to_vec() });
    }

    #[test]
    fn rejects_truncated_or_lying_input() {
        let s = State { ixes: vec![ix(1, Some(b"abc"))], kind: "k".into(), service: vec![] };
        let bytes = s.encode();
        for cut in 0..bytes.len() - 1 {
            assert_eq!(State::decode(&bytes[..cut]), None, "accepted {cut} bytes");
        }
        assert_eq!(State::decode(&[0xff, 0xff, 0xff, 0x7f]), None, "huge count");
        assert_eq!(State::decode(b""), None);
        let mut lying = State { ixes: vec![ix(1, Some(b""))], ..State::default() }.encode();
        lying[4 + RECORD..4 + RECORD + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(State::decode(&lying), None, "state longer than the input");
    }
}
