//! hio's Acceptor: the listen socket(s), opened (or inherited from systemd
//! or a predecessor process) and kept by the host so that guests can come
//! and go without them ever closing; closed only when the host drains.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use anyhow::{Context, Result, anyhow, bail};
use socket2::{Domain, Protocol, Socket, Type};

/// hio's default port.
pub const DEFAULT_PORT: u16 = 56000;
/// hio's default buffer size (sic: 8096, not 8192).
pub const DEFAULT_BS: u32 = 8096;
/// hio's default listen backlog.
pub const DEFAULT_BL: u32 = 128;

/// Parse `HOST:PORT`, `[V6]:PORT`, `:PORT` or `HOST` (hio's ha). An empty host
/// means all IPv4 interfaces, as in hio.
pub fn parse_ha(text: &str) -> Result<SocketAddr> {
    let bad = || anyhow!("malformed address {text:?}: expected HOST:PORT, [IPV6]:PORT or :PORT");
    if text.parse::<u16>().is_ok() {
        bail!("malformed address {text:?}: a port alone is written :{text}");
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || (h.starts_with('[') && h.ends_with(']')) => {
            (h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().map_err(|_| bad())?)
        }
        Some(_) => return Err(bad()),
        None => (text, DEFAULT_PORT),
    };
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port).to_socket_addrs().map_err(|e| anyhow!("cannot resolve {text:?}: {e}"))?.next().ok_or_else(bad)
}

/// hio's eha: the listen address as others should dial it.
pub fn eha(ha: SocketAddr) -> SocketAddr {
    match ha.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ha.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), ha.port()),
        _ => ha,
    }
}

/// The listen sockets and what hio's Acceptor knows about them: one that
/// the host bound, or those it inherited (socket activation, a takeover),
/// served alike; none once closed for a drain.
pub struct Acceptor {
    listeners: Vec<mio::net::TcpListener>,
    /// Resolved listen address (port 0 replaced by the real port) of the
    /// first listener, the one hio's `ha` names.
    pub ha: SocketAddr,
    /// Socket buffer size to raise to, in bytes (hio's bs).
    pub bs: u32,
    /// Listen backlog (hio's bl).
    pub bl: u32,
    /// A descriptor held back for when the process runs out of them: let go
    /// to accept one pending connection and close it at once, so peers are
    /// refused cleanly instead of waiting unseen in the backlog.
    reserve: Option<std::fs::File>,
}

/// What `shed` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Shed {
    /// One pending connection was accepted and closed.
    Refused,
    /// Nothing is pending.
    Empty,
    /// Not even the reserve helped; try again later.
    Stuck,
}

/// The process (EMFILE) or the system (ENFILE) is out of file descriptors.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23))
}

fn reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

impl Acceptor {
    /// hio's `open`: SO_REUSEADDR, buffers raised to at least bs, non-blocking,
    /// bind, listen(bl).
    /// With `reuse_port` (SO_REUSEPORT) other listeners of this process's
    /// user may bind the same address and the kernel spreads connections.
    pub fn open(ha: SocketAddr, bs: u32, bl: u32, reuse_port: bool) -> Result<Acceptor> {
        let socket = Socket::new(Domain::for_address(ha), Type::STREAM, Some(Protocol::TCP))
            .context("cannot create listen socket")?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        if ha.is_ipv6() {
            // Listening on "::" should not also grab the IPv4 port: hio binds one family.
            socket.set_only_v6(true)?;
        }
        raise_buffers(&socket, bs as usize)?;
        socket.set_nonblocking(true)?;
        socket.bind(&ha.into()).map_err(|e| bind_error(ha, e))?;
        socket.listen(bl.min(i32::MAX as u32) as i32).with_context(|| format!("cannot listen on {ha}"))?;
        Acceptor::adopt(vec![socket.into()], bs, bl)
    }

    /// Serve listen sockets opened by someone else (systemd's `LISTEN_FDS`,
    /// a predecessor's hand-over): made non-blocking, nothing else changed.
    /// Errors if there is none or one is not a listening TCP socket.
    pub fn adopt(listeners: Vec<std::net::TcpListener>, bs: u32, bl: u32) -> Result<Acceptor> {
        let first = listeners.first().ok_or_else(|| anyhow!("no listen socket to serve"))?;
        let ha = first.local_addr().context("an inherited socket is not a TCP socket")?;
        let mut adopted = Vec::with_capacity(listeners.len());
        for l in listeners {
            let sock = socket2::SockRef::from(&l);
            if !sock.is_listener().unwrap_or(false) || sock.r#type()? != Type::STREAM {
                bail!("inherited descriptor {} is not a listening TCP socket", l.as_raw_fd());
            }
            l.set_nonblocking(true)?;
            adopted.push(mio::net::TcpListener::from_std(l));
        }
        Ok(Acceptor { listeners: adopted, ha, bs, bl, reserve: reserve() })
    }

    /// Have `registry` report pending connections on every listener as `token`.
    pub fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        for l in &mut self.listeners {
            registry.register(l, token, mio::Interest::READABLE)?;
        }
        Ok(())
    }

    /// Take one pending connection from whichever listener has one;
    /// `WouldBlock` once none has, or once closed.
    pub fn accept(&self) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        for l in &self.listeners {
            match l.accept() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Close every listen socket: peers connecting from now on are refused
    /// by the kernel, and those still in a backlog are reset (nobody will
    /// serve them). Sockets shared with systemd or another process stay
    /// open there.
    pub fn close(&mut self, registry: &mio::Registry) {
        for mut l in self.listeners.drain(..) {
            let _ = registry.deregister(&mut l);
        }
    }

    /// Where each listener listens.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Whether it still listens (false once a drain closed it).
    pub fn is_open(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// The listen sockets, for handing them to a successor process.
    pub fn listeners(&self) -> impl Iterator<Item = std::os::fd::BorrowedFd<'_>> {
        self.listeners.iter().map(|l| l.as_fd())
    }

    /// Out of descriptors: refuse one pending connection with the reserve.
    pub fn shed(&mut self) -> Shed {
        if self.reserve.take().is_none() {
            self.reserve = reserve();
            return Shed::Stuck;
        }
        let shed = loop {
            match self.accept() {
                // Dropped at once: the peer sees its connection closed.
                Ok(_) => break Shed::Refused,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Shed::Empty,
                Err(_) => break Shed::Stuck,
            }
        };
        self.reserve = reserve();
        shed
    }

    /// The first address it listens on (hio's eha: port 0 resolved).
    pub fn eha(&self) -> SocketAddr {
        eha(self.ha)
    }

    /// The kernel's (send, receive) buffer sizes of the first listener
    /// (Linux reports double what was set).
    pub fn actual_buf_sizes(&self) -> io::Result<(u32, u32)> {
        let first = self.listeners.first().ok_or(io::ErrorKind::NotConnected)?;
        let sock = socket2::SockRef::from(first);
        Ok((sock.send_buffer_size()? as u32, sock.recv_buffer_size()? as u32))
    }
}

/// Make sure no other socket listens on `ha` before this process's workers
/// share it with SO_REUSEPORT (which any process of the same user could
/// join, splitting the connections between two servers without a word).
/// Binds `ha` without SO_REUSEPORT, which the kernel refuses while anyone
/// listens there; this process's workers may bind beside that socket while
/// it lives, another process's check may not bind beside them once they
/// listen. Two hosts starting at the same moment could both bind before
/// either listens, so the claim also holds, for as long as it is kept, a
/// lock on the port: an abstract Unix socket named for the port's family
/// and number (one per network namespace, gone with the process, no file).
pub fn claim(ha: SocketAddr) -> Result<Claim> {
    let lock = lock_port(ha)?;
    let socket = Socket::new(Domain::for_address(ha), Type::STREAM, Some(Protocol::TCP))
        .context("cannot create listen socket")?;
    socket.set_reuse_address(true)?;
    if ha.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&ha.into()).map_err(|e| bind_error(ha, e))?;
    Ok(Claim { _socket: socket, _lock: lock })
}

/// See [`claim`]; dropping it lets go of the address.
#[derive(Debug)]
pub struct Claim {
    _socket: Socket,
    _lock: Option<UnixListener>,
}

/// The port's lock, or an error if another host of this user holds it. One
/// held by another user (anyone may bind an abstract name) is not trusted:
/// the bind check alone then guards the port.
fn lock_port(ha: SocketAddr) -> Result<Option<UnixListener>> {
    use std::os::linux::net::SocketAddrExt;
    let family = if ha.is_ipv6() { 6 } else { 4 };
    let name = format!("hio-host/tcp{family}/{}", ha.port());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    match UnixListener::bind_addr(&addr) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // SAFETY: getuid cannot fail and touches no memory.
            let me = unsafe { libc::getuid() };
            match holder_uid(&addr) {
                Some(uid) if uid == me => {
                    Err(anyhow!("cannot listen on {ha}: another hio-host is serving or starting on port {}", ha.port()))
                }
                holder => {
                    tracing::warn!(lock = %name, ?holder, "the port's lock is held by another user; relying on the bind check alone");
                    Ok(None)
                }
            }
        }
        Err(e) => {
            tracing::debug!(lock = %name, "cannot take the port's lock: {e}");
            Ok(None)
        }
    }
}

/// The user id of the process holding an abstract Unix socket.
fn holder_uid(addr: &std::os::unix::net::SocketAddr) -> Option<u32> {
    peer_uid(&UnixStream::connect_addr(addr).ok()?)
}

/// The user id of the process at the other end of a Unix socket (SO_PEERCRED).
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred into the buffer, whose size is passed.
    let ok = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    } == 0;
    ok.then_some(cred.uid)
}

fn bind_error(ha: SocketAddr, e: io::Error) -> anyhow::Error {
    match e.kind() {
        // A connection's local port blocks a bind too (a port in the
        // ephemeral range, 32768-60999 by default on Linux, may be one).
        io::ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {ha}: another process is listening there, or a connection on this machine holds \
             the port as its own ({e})"
        ),
        _ => anyhow!("cannot listen on {ha}: {e}"),
    }
}

/// hio raises SO_SNDBUF/SO_RCVBUF to bs when they are smaller, never lowers them.
pub fn raise_buffers(socket: &Socket, bs: usize) -> io::Result<()> {
    if socket.send_buffer_size()? < bs {
        socket.set_send_buffer_size(bs)?;
    }
    if socket.recv_buffer_size()? < bs {
        socket.set_recv_buffer_size(bs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hio_style_addresses() {
        assert_eq!(parse_ha("127.0.0.1:9").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(parse_ha(":7").unwrap(), "0.0.0.0:7".parse().unwrap());
        assert_eq!(parse_ha("[::1]:8").unwrap(), "[::1]:8".parse().unwrap());
        assert_eq!(parse_ha("127.0.0.1").unwrap().port(), DEFAULT_PORT);
        assert!(parse_ha("127.0.0.1:notaport").is_err());
        assert!(parse_ha("::1:80").is_err());
        assert!(parse_ha("56001").is_err(), "a bare number is a port, not the IPv4 address 0.0.218.193");
        assert!(parse_ha("1.2.3.4:70000").is_err());
    }

    #[test]
    fn eha_normalises_unspecified_hosts() {
        assert_eq!(eha("0.0.0.0:5".parse().unwrap()), "127.0.0.1:5".parse().unwrap());
        assert_eq!(eha("[::]:5".parse().unwrap()), "[::1]:5".parse().unwrap());
        assert_eq!(eha("10.1.2.3:5".parse().unwrap()), "10.1.2.3:5".parse().unwrap());
    }

    #[test]
    fn port_zero_resolves_and_buffers_are_raised() {
        let a = Acceptor::open("127.0.0.1:0".parse().unwrap(), 65536, 16, false).unwrap();
        assert_ne!(a.ha.port(), 0);
        let (s, r) = a.actual_buf_sizes().unwrap();
        assert!(s >= 65536 && r >= 65536, "({s}, {r})");
        // The same port cannot be opened twice while this one listens.
        assert!(Acceptor::open(a.ha, DEFAULT_BS, DEFAULT_BL, false).is_err());
    }

    #[test]
    fn reuse_port_lets_workers_share_an_address() {
        let a = Acceptor::open("127.0.0.1:0".parse().unwrap(), DEFAULT_BS, DEFAULT_BL, true).unwrap();
        let b = Acceptor::open(a.ha, DEFAULT_BS, DEFAULT_BL, true).unwrap();
        assert_eq!(a.ha, b.ha);
        // A listener that did not ask to share still cannot.
        assert!(Acceptor::open(a.ha, DEFAULT_BS, DEFAULT_BL, false).is_err());
    }

    #[test]
    fn workers_cannot_claim_an_address_another_process_listens_on() {
        let other = Acceptor::open("127.0.0.1:0".parse().unwrap(), DEFAULT_BS, DEFAULT_BL, true).unwrap();
        let err = claim(other.ha).expect_err("claimed an address in use").to_string();
        assert!(err.contains("another process is listening there"), "{err}");
        // A free address: claimed, and this process's workers bind beside the claim.
        let free = Acceptor::open("127.0.0.1:0".parse().unwrap(), DEFAULT_BS, DEFAULT_BL, false).unwrap().ha;
        let held = claim(free).unwrap();
        let a = Acceptor::open(free, DEFAULT_BS, DEFAULT_BL, true).unwrap();
        let b = Acceptor::open(free, DEFAULT_BS, DEFAULT_BL, true).unwrap();
        drop(held);
        assert_eq!(a.ha, b.ha);
        assert!(claim(free).is_err(), "claimed while the workers listen");
    }

    #[test]
    fn ipv6_listens() {
        let a = Acceptor::open("[::1]:0".parse().unwrap(), DEFAULT_BS, DEFAULT_BL, false).unwrap();
        assert!(a.ha.is_ipv6());
        assert_eq!(a.eha(), a.ha);
    }
}
