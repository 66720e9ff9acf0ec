//! Sockets and TLS: the listen socket (hio's Acceptor), each accepted
//! connection with its buffers and transport, TLS configuration and peer
//! identity, the bounds on what connections hold, the PROXY protocol, and
//! wire logs.

pub mod acceptor;
pub mod backpressure;
pub mod conn;
pub mod proxy;
pub mod tls;
pub mod wirelog;
