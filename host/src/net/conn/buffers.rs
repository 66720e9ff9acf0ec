//! A connection's two buffers: received bytes kept until the guest
//! consumes them ([`RxBuf`]), and bytes queued until the socket takes them
//! ([`TxQueue`]).

use std::io;

use mio::net::TcpStream;

/// An emptied rx buffer keeps an allocation this small for the next message
/// (saves an allocation per read) and gives a larger one back, so a
/// connection that once moved a burst does not hold its peak for the rest of
/// its life. 10,000 idle connections keep at most 160 MiB this way, which
/// the server-wide budget counts. (An emptied tx is always given back: the
/// next queue takes the guest's buffer as it is.)
const KEEP: usize = 16 << 10;

/// Received bytes the guest has not consumed. The first `handed` of them
/// have been lent to the current guest; a replacement guest is simply lent
/// them again (`rewind`).
#[derive(Debug, Default)]
pub struct RxBuf {
    bytes: Vec<u8>,
    handed: usize,
}

impl RxBuf {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Every byte held (lent or not).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes lent to the guest and not yet consumed.
    pub fn handed(&self) -> usize {
        self.handed
    }

    /// Bytes not yet lent.
    pub fn unhanded(&self) -> usize {
        self.bytes.len() - self.handed
    }

    /// Lend up to `max` bytes not yet lent, appending them to `out`.
    pub fn lend_into(&mut self, max: usize, out: &mut Vec<u8>) {
        let end = self.bytes.len().min(self.handed.saturating_add(max));
        out.extend_from_slice(&self.bytes[self.handed..end]);
        self.handed = end;
    }

    /// Drop up to `count` lent bytes; only bytes a guest has seen can be
    /// consumed. Returns how many were.
    pub fn consume(&mut self, count: u64) -> u64 {
        let n = self.handed.min(usize::try_from(count).unwrap_or(usize::MAX));
        self.bytes.drain(..n);
        self.handed -= n;
        if self.bytes.is_empty() {
            release(&mut self.bytes);
        }
        n as u64
    }

    /// A new guest takes over: everything unconsumed will be lent again.
    pub fn rewind(&mut self) {
        self.handed = 0;
    }

    /// Forget every byte (the connection is closed) and the memory.
    pub fn clear(&mut self) {
        *self = RxBuf::default();
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The last `n` bytes received.
    pub fn tail(&self, n: usize) -> &[u8] {
        &self.bytes[self.bytes.len() - n..]
    }

    /// One read from `sock` of at most `max` bytes: straight into the
    /// capacity the buffer already has, and what does not fit into
    /// `scratch`, then appended (one system call; one copy fewer for what
    /// fits). Returns how many came and how many were asked for.
    pub fn recv_from(&mut self, sock: &TcpStream, max: usize, scratch: &mut [u8]) -> io::Result<(usize, usize)> {
        use socket2::MaybeUninitSlice;
        let len = self.bytes.len();
        let spare = self.bytes.spare_capacity_mut();
        let direct = spare.len().min(max);
        let overflow = (max - direct).min(scratch.len());
        // SAFETY: viewing initialised bytes as maybe-uninitialised is sound;
        // recv only writes into them.
        let scratch = unsafe { &mut *(&mut scratch[..overflow] as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        let mut bufs = [MaybeUninitSlice::new(&mut spare[..direct]), MaybeUninitSlice::new(scratch)];
        let (n, _) = socket2::SockRef::from(sock).recv_vectored(&mut bufs)?;
        // SAFETY: recv initialised the first min(n, direct) bytes of the spare capacity.
        unsafe { self.bytes.set_len(len + n.min(direct)) };
        if n > direct {
            // SAFETY: recv initialised the first n - direct bytes of scratch.
            let more = unsafe { std::slice::from_raw_parts(scratch.as_ptr().cast::<u8>(), n - direct) };
            self.bytes.extend_from_slice(more);
        }
        Ok((n, direct + overflow))
    }
}

/// Bytes queued for the peer and not yet taken by the socket: `bytes[off..]`.
#[derive(Debug, Default)]
pub struct TxQueue {
    bytes: Vec<u8>,
    off: usize,
}

impl TxQueue {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.off
    }

    pub fn is_empty(&self) -> bool {
        self.off == self.bytes.len()
    }

    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.off..]
    }

    /// Queue `data` behind what waits; an empty queue takes the buffer as
    /// it is, no copy.
    pub fn push(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if self.is_empty() {
            self.bytes = data;
            self.off = 0;
            return;
        }
        if self.off > self.bytes.len() / 2 {
            self.bytes.drain(..self.off);
            self.off = 0;
        }
        self.bytes.extend_from_slice(&data);
    }

    /// Queue a copy of `data` behind what waits.
    pub fn push_slice(&mut self, data: &[u8]) {
        if self.is_empty() {
            self.bytes.clear();
            self.off = 0;
        } else if self.off > self.bytes.len() / 2 {
            self.bytes.drain(..self.off);
            self.off = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// The socket took `n` more bytes; an emptied queue gives its memory back.
    pub fn advance(&mut self, n: usize) {
        self.off += n;
        if self.is_empty() {
            self.clear();
        }
    }

    /// Drop every byte waiting, and the memory.
    pub fn clear(&mut self) {
        *self = TxQueue::default();
    }
}

fn release(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair of sockets on loopback, the server end as mio's.
    fn pair() -> (std::net::TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, TcpStream::from_std(server))
    }

    #[test]
    fn one_read_fills_the_spare_capacity_then_the_scratch() {
        use std::io::Write;
        let (mut peer, sock) = pair();
        let sent: Vec<u8> = (0..100u8).collect();
        peer.write_all(&sent).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut rx = RxBuf { bytes: Vec::with_capacity(16), handed: 0 };
        rx.extend(b"old");
        let mut scratch = [0u8; 64];
        // 13 bytes of spare room, then 64 of scratch: 77 asked, 77 come.
        assert_eq!(rx.recv_from(&sock, usize::MAX, &mut scratch).unwrap(), (77, 77));
        // A short read: the 23 left, of 64 asked (the buffer grew, its spare
        // room is what the extend left).
        let (n, asked) = rx.recv_from(&sock, usize::MAX, &mut scratch).unwrap();
        assert!(n == 23 && asked > n, "{n} of {asked}");
        assert_eq!(&rx.bytes()[..3], b"old");
        assert_eq!(&rx.bytes()[3..], &sent[..]);
        // `max` bounds the read.
        peer.write_all(b"abcdef").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(rx.recv_from(&sock, 2, &mut scratch).unwrap(), (2, 2));
        assert_eq!(rx.tail(2), b"ab");
    }

    #[test]
    fn lent_bytes_stay_until_consumed_and_rewind_lends_them_again() {
        let mut rx = RxBuf::default();
        rx.extend(b"hello world");
        let mut out = Vec::new();
        rx.lend_into(5, &mut out);
        assert_eq!((out.as_slice(), rx.handed(), rx.unhanded()), (&b"hello"[..], 5, 6));
        assert_eq!(rx.consume(100), 5, "only lent bytes can be consumed");
        rx.rewind();
        out.clear();
        rx.lend_into(usize::MAX, &mut out);
        assert_eq!(out, b" world");
        assert_eq!(rx.consume(u64::MAX), 6);
        assert!(rx.is_empty());
    }

    #[test]
    fn a_queue_takes_the_first_buffer_as_is_and_compacts_behind_what_was_sent() {
        let mut tx = TxQueue::default();
        tx.push(b"one ".to_vec());
        tx.push(b"two".to_vec());
        assert_eq!(tx.pending(), b"one two");
        tx.advance(4);
        tx.push(b"!".to_vec());
        assert_eq!((tx.pending(), tx.len()), (&b"two!"[..], 4));
        tx.advance(4);
        assert!(tx.is_empty() && tx.capacity() == 0, "an emptied queue gives its memory back");
    }
}
