//! A cycle in one crossing (WIT 0.2.2 `batch`): the SDK keeps small answers
//! for the cycle's result and sends the rest by host calls; the peer sees
//! them in the order the policy gave them, on plain TCP and TLS.

use hio_tests::pki::{Pki, TlsClient};
use hio_tests::{Client, TestServer};

/// What the `evil` guest answers to "mixed": a small answer (kept for the
/// result), one too large to keep (a host call, which must send the kept
/// one first), and a small one again.
fn mixed() -> Vec<u8> {
    let mut want = b"<".to_vec();
    want.extend_from_slice(&[b'm'; 20_000]);
    want.push(b'>');
    want
}

#[test]
fn kept_answers_and_host_calls_reach_the_peer_in_the_order_given() {
    let server = TestServer::start("evil");
    let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for round in 0..5 {
        // Several connections in the same cycles, each with its own order.
        for c in &mut clients {
            c.send(b"mixed");
        }
        for c in &mut clients {
            assert!(c.recv_exact(mixed().len()) == mixed(), "round {round}: answers out of order");
            c.echo(format!("echo after round {round}").as_bytes());
        }
    }
}

#[test]
fn kept_answers_keep_their_order_over_tls() {
    let pki = Pki::new("batch-order");
    let tls = pki.server_config();
    let server = TestServer::start_with("evil", move |c| c.tls = Some(tls));
    let mut c = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).expect("connects");
    for round in 0..5 {
        c.send(b"mixed").unwrap();
        assert!(c.recv_exact(mixed().len()).unwrap() == mixed(), "round {round}: answers out of order");
        c.echo(format!("echo after round {round}").as_bytes()).unwrap();
    }
}
