//! The baseline: a minimal native mio echo server, one thread, edge-triggered,
//! written the way the host's own loop is (shared read buffer, write at once,
//! buffer only what the socket would not take, stop reading while it waits).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use anyhow::Result;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(0);

struct Conn {
    sock: TcpStream,
    pending: Vec<u8>,
}

/// Bind, register and announce the listen socket (the bench reads the line).
fn listen(addr: SocketAddr, what: &str) -> Result<(Poll, TcpListener)> {
    let poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("{what} listening ha={}", listener.local_addr()?);
    Ok((poll, listener))
}

/// Take every waiting connection, registered with `interest` under the
/// next token, and give it to `add`.
fn accept_all(
    poll: &Poll,
    listener: &TcpListener,
    next: &mut usize,
    interest: Interest,
    mut add: impl FnMut(usize, TcpStream) -> Result<()>,
) -> Result<()> {
    while let Ok((mut sock, _)) = listener.accept() {
        sock.set_nodelay(true)?;
        poll.registry().register(&mut sock, Token(*next), interest)?;
        add(*next, sock)?;
        *next += 1;
    }
    Ok(())
}

/// Send what waited for the socket; false if it failed.
fn send_pending(sock: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
    if pending.is_empty() {
        return true;
    }
    match sock.write(pending) {
        Ok(n) => {
            pending.drain(..n);
            true
        }
        Err(e) => e.kind() == ErrorKind::WouldBlock,
    }
}

/// Write `data` at once, keeping in `pending` what the socket did not
/// take; false if it failed.
fn write_or_keep(sock: &mut TcpStream, data: &[u8], pending: &mut Vec<u8>) -> bool {
    match sock.write(data) {
        Ok(w) => pending.extend_from_slice(&data[w..]),
        Err(e) if e.kind() == ErrorKind::WouldBlock => pending.extend_from_slice(data),
        Err(_) => return false,
    }
    true
}

/// Wait for events; a signal (a profiler attaching) is not an error.
fn wait(poll: &mut Poll, events: &mut Events) -> Result<()> {
    match poll.poll(events, None) {
        Err(e) if e.kind() != ErrorKind::Interrupted => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn serve(addr: SocketAddr) -> Result<()> {
    let (mut poll, listener) = listen(addr, "native echo")?;
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 1usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        wait(&mut poll, &mut events)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&poll, &listener, &mut next, Interest::READABLE | Interest::WRITABLE, |id, sock| {
                    conns.insert(id, Conn { sock, pending: Vec::new() });
                    Ok(())
                })?;
                continue;
            }
            let id = ev.token().0;
            let Some(c) = conns.get_mut(&id) else { continue };
            let mut dead = false;
            // As the host: after a short read on an event with no end
            // pending, the socket is drained (no read just for EAGAIN).
            let short_read_drains = ev.is_readable() && !ev.is_read_closed() && !ev.is_error();
            // Send what waited, then read and echo while the socket takes it.
            dead |= !send_pending(&mut c.sock, &mut c.pending);
            while !dead && c.pending.is_empty() {
                match c.sock.read(&mut buf) {
                    Ok(0) => dead = true,
                    Ok(n) => {
                        dead = !write_or_keep(&mut c.sock, &buf[..n], &mut c.pending);
                        if short_read_drains && n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => dead = true,
                }
            }
            if dead {
                conns.remove(&id);
            }
        }
    }
}

/// One connection of the native line server.
#[derive(Default)]
struct LineConn {
    /// Lines answered so far.
    count: u64,
    /// The partial line after the last newline read.
    partial: Vec<u8>,
    /// Answers the socket did not take yet.
    pending: Vec<u8>,
}

impl LineConn {
    /// Answer every whole line in `partial` + `data` the `lines` guest's way
    /// ("N LINE" upper-cased; "quit" says bye and ends), appending to
    /// `reply`; keep what follows the last newline. Returns whether to close.
    fn answer(&mut self, data: &[u8], reply: &mut Vec<u8>) -> bool {
        let joined;
        let input = if self.partial.is_empty() {
            data
        } else {
            self.partial.extend_from_slice(data);
            joined = std::mem::take(&mut self.partial);
            &joined[..]
        };
        let mut used = 0;
        while let Some(end) = input[used..].iter().position(|&b| b == b'\n') {
            let line = &input[used..used + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            used += end + 1;
            if line == b"quit" {
                reply.extend_from_slice(b"bye\n");
                return true;
            }
            self.count += 1;
            let _ = write!(reply, "{} ", self.count);
            reply.extend(line.iter().map(u8::to_ascii_uppercase));
            reply.push(b'\n');
        }
        self.partial.extend_from_slice(&input[used..]);
        false
    }
}

/// The baseline for a policy that works: the echo loop, with the `lines`
/// guest's policy in native code (count lines, upper-case them, keep
/// partial lines).
pub fn serve_lines(addr: SocketAddr) -> Result<()> {
    let (mut poll, listener) = listen(addr, "native lines")?;
    let mut conns: HashMap<usize, (TcpStream, LineConn)> = HashMap::new();
    let mut next = 1usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut reply = Vec::new();
    loop {
        wait(&mut poll, &mut events)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&poll, &listener, &mut next, Interest::READABLE | Interest::WRITABLE, |id, sock| {
                    conns.insert(id, (sock, LineConn::default()));
                    Ok(())
                })?;
                continue;
            }
            let id = ev.token().0;
            let Some((sock, c)) = conns.get_mut(&id) else { continue };
            let mut dead = false;
            let short_read_drains = ev.is_readable() && !ev.is_read_closed() && !ev.is_error();
            dead |= !send_pending(sock, &mut c.pending);
            while !dead && c.pending.is_empty() {
                match sock.read(&mut buf) {
                    Ok(0) => dead = true,
                    Ok(n) => {
                        reply.clear();
                        let quit = c.answer(&buf[..n], &mut reply);
                        dead = !write_or_keep(sock, &reply, &mut c.pending) || quit;
                        if short_read_drains && n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => dead = true,
                }
            }
            if dead {
                conns.remove(&id);
            }
        }
    }
}

/// The TLS baseline: the same loop with a rustls session per connection
/// (one context for all, as the host builds it), like rustls' tlsserver-mio.
pub fn serve_tls(addr: SocketAddr, config: std::sync::Arc<rustls::ServerConfig>) -> Result<()> {
    let (mut poll, listener) = listen(addr, "native TLS echo")?;
    let mut conns: HashMap<usize, (TcpStream, rustls::ServerConnection, Interest)> = HashMap::new();
    let mut next = 1usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        wait(&mut poll, &mut events)?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&poll, &listener, &mut next, Interest::READABLE, |id, sock| {
                    conns.insert(id, (sock, rustls::ServerConnection::new(config.clone())?, Interest::READABLE));
                    Ok(())
                })?;
                continue;
            }
            let id = ev.token().0;
            let Some((sock, tls, interest)) = conns.get_mut(&id) else { continue };
            let mut dead = false;
            loop {
                match tls.read_tls(sock) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
                if tls.process_new_packets().is_err() {
                    dead = true;
                    break;
                }
                while let Ok(n) = tls.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = tls.writer().write_all(&buf[..n]);
                }
            }
            while tls.wants_write() {
                match tls.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            let want = if tls.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if !dead && want != *interest {
                poll.registry().reregister(sock, Token(id), want)?;
                *interest = want;
            }
            if dead {
                // RFC 8446 6.1: close_notify before closing the write side,
                // as hio-host sends it (without it the baseline skipped a
                // write per connection that a TLS server owes its peer).
                tls.send_close_notify();
                let _ = tls.write_tls(sock);
                conns.remove(&id);
            }
        }
    }
}
