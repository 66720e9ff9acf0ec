//! The PROXY protocol (HAProxy's `send-proxy`, v1 text, and
//! `send-proxy-v2`, binary; <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>):
//! a balancer in front says, before anything else on a connection, whom it
//! is from. Read only with `--proxy-protocol` (never trusted otherwise);
//! parsed by the `ppp` crate.

use std::io::{self, ErrorKind, Read};
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::TcpStream;
use ppp::{HeaderResult, PartialResult, v1, v2};

/// The longest header taken: a v1 line is at most 107 bytes; a v2 header
/// is 16 bytes, the addresses and the TLVs a balancer adds (HAProxy's
/// unique id, ALPN, SSL details fit well within it).
pub const MAX_HEADER: usize = 1024;
/// How long a connection may take to send its header (when no TLS
/// handshake timeout says otherwise): a balancer sends it at once.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How every v2 header begins.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Where reading a connection's header stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// Not all there yet.
    Waiting,
    /// Read and taken off the socket: the client's address, if the header
    /// names one (`LOCAL`, `UNKNOWN`: a balancer's own check; keep the peer).
    Read(Option<SocketAddr>),
    /// Not a PROXY header, or one too long: the connection is refused.
    Bad(String),
    /// The peer closed or reset before sending a whole header.
    Closed,
}

/// Look at what arrived without taking it; once a whole header is there,
/// take exactly it off the socket, leaving what follows (the client's own
/// bytes, a TLS ClientHello) for the connection's reader.
pub fn take(sock: &mut TcpStream) -> Header {
    let mut buf = [0u8; MAX_HEADER];
    let n = match sock.peek(&mut buf) {
        Ok(0) => return Header::Closed,
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return Header::Waiting,
        Err(_) => return Header::Closed,
    };
    let (len, source) = match parse(&buf[..n]) {
        Ok(Some(found)) => found,
        Ok(None) if n < MAX_HEADER => return Header::Waiting,
        Ok(None) => return Header::Bad(format!("no whole PROXY header in its first {MAX_HEADER} bytes")),
        Err(why) => return Header::Bad(why),
    };
    match consume(sock, len) {
        Ok(()) => Header::Read(source),
        Err(_) => Header::Closed,
    }
}

/// A header at the start of `bytes`: its length and the client's address;
/// `None` while incomplete.
fn parse(bytes: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, String> {
    // A v2 header says its length in its 15th and 16th bytes: one longer
    // than the bound is refused now, not waited for.
    if bytes.len() >= 16 && bytes.starts_with(V2_SIGNATURE) {
        let declared = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if declared > MAX_HEADER {
            return Err(format!("a PROXY v2 header of {declared} bytes, over the {MAX_HEADER} taken"));
        }
    }
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Ok(None);
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), source)))
        }
        HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok(Some((h.len(), source)))
        }
        HeaderResult::V1(Err(e)) => Err(format!("bad PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("bad PROXY v2 header: {e}")),
    }
}

/// Take `len` bytes the peek saw off the socket.
fn consume(sock: &mut TcpStream, mut len: usize) -> io::Result<()> {
    let mut buf = [0u8; MAX_HEADER];
    while len > 0 {
        match sock.read(&mut buf[..len]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => len -= n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_name_the_client() {
        let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\nGET";
        assert_eq!(parse(v1), Ok(Some((44, Some("192.0.2.7:4242".parse().unwrap())))));
        let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n";
        assert_eq!(parse(v1_6).unwrap().unwrap().1, Some("[2001:db8::7]:4242".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((15, None))));
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1, 0x10, 0x92, 1, 187]);
        v2.extend_from_slice(b"hello");
        assert_eq!(parse(&v2), Ok(Some((28, Some("192.0.2.7:4242".parse().unwrap())))));
        // LOCAL: the balancer's own health check.
        let local = [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x20, 0x00, 0, 0]].concat();
        assert_eq!(parse(&local), Ok(Some((16, None))));
    }

    #[test]
    fn a_v2_header_longer_than_the_bound_is_refused_from_its_length() {
        let long = [V2_SIGNATURE, &[0x21, 0x11, 0x07, 0xD0]].concat();
        assert!(parse(&long).is_err_and(|e| e.contains("2016 bytes")));
    }

    #[test]
    fn partial_headers_wait_and_others_are_refused() {
        assert_eq!(parse(b"PROXY TCP4 192.0.2.7"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0\r\n"), Ok(None));
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"PROXY TCP4 banana 198.51.100.1 1 2\r\n").is_err());
    }
}
