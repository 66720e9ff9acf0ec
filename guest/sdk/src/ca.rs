use std::fmt;

use crate::bindings::hio::tcp::types::Address;

/// A peer address, hio's ca `(host, port)`: the key of ixes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ca {
    /// Host name or IP address, as text.
    pub host: String,
    /// Port number.
    pub port: u16,
}

impl Ca {
    /// The address `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Ca {
        Ca { host: host.into(), port }
    }
}

impl From<Address> for Ca {
    fn from(a: Address) -> Ca {
        Ca { host: a.host, port: a.port }
    }
}

impl fmt::Display for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_socket_addresses() {
        assert_eq!(Ca::new("127.0.0.1", 80).to_string(), "127.0.0.1:80");
        assert_eq!(Ca::new("::1", 80).to_string(), "[::1]:80");
    }
}
