//! The host state's part of a takeover by a successor process: copies of
//! what can move (the listen sockets, every plain connection that is not
//! closing, with its bytes), letting them go once the successor has them,
//! and, in the successor, taking them in.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mio::{Interest, Registry, Token};

use super::HostState;
use crate::net::conn::{Conn, SavedConn};

/// What moves to a successor: descriptors and what goes with them. The
/// descriptors are this process's own, only named here (not duplicated: at
/// 10,000 connections duplicates would double the descriptors held, past
/// common limits); they stay valid while the worker waits, paused, for the
/// successor's verdict, and `SCM_RIGHTS` gives the successor its own.
pub struct Moving {
    pub listeners: Vec<RawFd>,
    pub conns: Vec<(SavedConn, RawFd)>,
    /// The successor's ids start here, so no id is used twice.
    pub next_id: u64,
}

impl HostState {
    /// Copies of what can move; nothing here changes. TLS connections and
    /// closing ones stay, to finish here.
    pub fn export(&self) -> Moving {
        let listeners = self.acceptor.listeners().map(|fd| fd.as_raw_fd()).collect();
        let conns = self.conns.iter().filter_map(|(&id, c)| Some((c.save(id)?, c.sock.as_raw_fd()))).collect();
        Moving { listeners, conns, next_id: self.next_id }
    }

    /// The successor has these connections (and the listen sockets): stop
    /// watching them and close this process's descriptors. The sockets stay
    /// open in the successor, so the peers see nothing; the guest is told
    /// they are gone.
    pub fn moved(&mut self, ids: &[u64], registry: &Registry) {
        self.acceptor.close(registry);
        for id in ids {
            let Some(mut c) = self.conns.remove(id) else { continue };
            self.handing.forget(*id);
            // The successor's descriptors keep the socket open; without
            // this, epoll would go on reporting its events here.
            let _ = registry.deregister(&mut c.sock);
            if c.adopted && !c.owed {
                self.gone.push(*id);
            }
        }
    }

    /// Connections a predecessor moved here join, registered under their
    /// ids, the guest's ones as adopted (its successor is handed them at
    /// start), the others in the axes; ids go on from the predecessor's.
    pub fn import(&mut self, conns: Vec<(SavedConn, OwnedFd)>, next_id: u64, registry: &Registry) -> io::Result<()> {
        self.next_id = self.next_id.max(next_id);
        for (saved, fd) in conns {
            let std_sock = std::net::TcpStream::from(fd);
            std_sock.set_nonblocking(true)?;
            let mut sock = mio::net::TcpStream::from_std(std_sock);
            let id = saved.id;
            registry.register(&mut sock, Token(id as usize), Interest::READABLE)?;
            self.next_id = self.next_id.max(id + 1);
            let conn = Conn::restore(sock, saved, self.budget.clone());
            let (adopted, flush) = (conn.adopted, conn.has_output());
            self.conns.insert(id, conn);
            if !adopted {
                self.axes.push_back(id);
            }
            if flush {
                self.mark_dirty(id);
            }
        }
        Ok(())
    }

    /// The predecessor let go: the imported sockets are this process's to
    /// use. Returns how many there are.
    pub fn committed(&mut self) -> usize {
        let mut moved = 0;
        for c in self.conns.values_mut().filter(|c| c.held()) {
            c.release_hold();
            moved += 1;
        }
        moved
    }
}
