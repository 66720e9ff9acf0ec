//! A test guest that authorizes by TLS identity: each connection is greeted
//! with what the host told it about the peer, then echoed. A client whose
//! certificate subject contains "CN=mallory" is refused and closed. A plain
//! connection that came through a balancer speaking the PROXY protocol is
//! greeted "plain ca=CLIENT via=BALANCER".

use hio_guest::{Error, Remoter, Server, Service};

struct Whoami;

impl Service for Whoami {
    type Conn = ();

    fn new(_: &mut Server) -> Self {
        Whoami
    }

    fn connected(&mut self, ix: &mut Remoter, _: &mut ()) {
        let greeting = match &ix.tls {
            None => match ix.proxied_by() {
                Some(via) => format!("plain ca={} via={via}\n", ix.ca),
                None => "plain\n".to_string(),
            },
            Some(t) => {
                let (subject, sans, sha) = match &t.peer_certificate {
                    Some(c) => (c.subject.clone(), c.sans.join(","), c.sha256.clone()),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                format!(
                    "{}|{}|{}|{subject}|{sans}|{sha}\n",
                    t.version,
                    t.cipher_suite,
                    t.alpn.as_deref().unwrap_or("-")
                )
            }
        };
        let refused = greeting.contains("CN=mallory");
        let _ = ix.tx(if refused { b"refused\n" } else { greeting.as_bytes() });
        if refused {
            let _ = ix.close();
        }
    }

    fn received(&mut self, ix: &mut Remoter, _: &mut ()) -> Result<(), Error> {
        ix.echo_rxbs()
    }
}

hio_guest::export_service!(Whoami);
