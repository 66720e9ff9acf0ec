//! `hio:tcp/acceptor`: the guest's view of the host's listen socket.

use wasmtime::component::Resource;

use super::hio::tcp::acceptor::{Host, HostListener};
use super::hio::tcp::remoter::Connection;
use super::hio::tcp::types::{Address, Error};
use super::{ListenerRef, StoreData, address};

impl StoreData {
    /// Take the next accepted connection the guest has not been given.
    fn take_axe(&mut self) -> Result<Option<Connection>, Error> {
        let Some(id) = self.host_mut().take_axe() else { return Ok(None) };
        self.give_connection(id, true).map(Some).map_err(|e| Error::Io(e.to_string()))
    }
}

impl HostListener for StoreData {
    fn ha(&mut self, _: Resource<ListenerRef>) -> Address {
        address(self.host_ref().acceptor().ha)
    }

    fn eha(&mut self, _: Resource<ListenerRef>) -> Address {
        address(self.host_ref().acceptor().eha())
    }

    fn bs(&mut self, _: Resource<ListenerRef>) -> u32 {
        self.host_ref().acceptor().bs
    }

    fn bl(&mut self, _: Resource<ListenerRef>) -> u32 {
        self.host_ref().acceptor().bl
    }

    /// The host opens the listener before any guest runs; it is closed
    /// when the host begins to drain.
    fn opened(&mut self, _: Resource<ListenerRef>) -> bool {
        self.host_ref().acceptor().is_open()
    }

    fn actual_buf_sizes(&mut self, _: Resource<ListenerRef>) -> Result<(u32, u32), Error> {
        Ok(self.host_ref().acceptor().actual_buf_sizes()?)
    }

    fn accept(&mut self, _: Resource<ListenerRef>) -> Result<Option<Connection>, Error> {
        self.take_axe()
    }

    fn accept_all(&mut self, _: Resource<ListenerRef>) -> Result<Vec<Connection>, Error> {
        let mut all = Vec::with_capacity(self.host_ref().axes_len());
        while let Some(r) = self.take_axe()? {
            all.push(r);
        }
        Ok(all)
    }

    /// A lazy hand-over's rest, at once (WIT 0.2.3).
    fn take_over(&mut self, _: Resource<ListenerRef>) -> Result<Vec<Connection>, Error> {
        let owed = self.host_mut().take_owed();
        owed.into_iter().map(|id| self.give_connection(id, false).map_err(|e| Error::Io(e.to_string()))).collect()
    }

    fn drop(&mut self, rep: Resource<ListenerRef>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl Host for StoreData {}
