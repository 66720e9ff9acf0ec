//! TLS terminated in the host (rustls), hio's ServerTls bookkeeping in the
//! guest; real clients: rustls, openssl s_client, Python ssl, hio ClientTls.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hio_host::tls::{Certify, TlsVersion};
use hio_tests::pki::{Pki, TlsClient};
use hio_tests::{Client, KillOnDrop, TestServer, hio_python, host_binary, root};
use rustls::HandshakeKind;

fn tls_server(guest: &str, pki: &Pki, tweak: impl FnOnce(&mut hio_host::tls::TlsConfig)) -> TestServer {
    let mut t = pki.server_config();
    tweak(&mut t);
    TestServer::start_with(guest, move |c| c.tls = Some(t))
}

/// Whether the server ends this connection (clean end or reset) within 5 s;
/// a TLS alert may come first.
fn closed_by_server(c: &mut Client) -> bool {
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let mut seen = 0;
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                seen += n;
                assert!(seen < 4096, "server keeps talking to a bad client");
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The next client must still be served after a bad one.
fn still_serves(server: &TestServer, pki: &Pki) {
    let mut c = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).expect("good client connects");
    c.echo(b"still serving").expect("good client served");
}

#[test]
fn echo_over_tls_13_and_12() {
    let pki = Pki::new("versions");
    for (server_version, client_version, want) in
        [(None, Some(13), "TLSv1.3"), (None, Some(12), "TLSv1.2"), (Some(TlsVersion::Tls12), None, "TLSv1.2")]
    {
        let server = tls_server("whoami", &pki, |t| t.version = server_version);
        let mut c = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), client_version)).unwrap();
        let greeting = c.recv_line().unwrap();
        assert!(greeting.starts_with(&format!("{want}|")), "{greeting}");
        for i in 0..20 {
            c.echo(format!("tls message {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(c.finish().unwrap(), b"", "close_notify answered with a clean end");
    }
}

#[test]
fn tls_13_only_server_refuses_a_tls_12_client() {
    let pki = Pki::new("v13only");
    let server = tls_server("echo", &pki, |t| t.version = Some(TlsVersion::Tls13));
    assert!(TlsClient::connect(server.addr, pki.client(Some(&pki.alice), Some(12))).is_err());
    still_serves(&server, &pki);
}

#[test]
fn the_guest_sees_the_client_identity_and_can_refuse_it() {
    let pki = Pki::new("identity");
    let server = tls_server("whoami", &pki, |t| t.alpn = vec!["hio/1".into()]);
    let mut client = (*pki.client(Some(&pki.alice), None)).clone();
    client.alpn_protocols = vec![b"hio/1".to_vec()];
    let mut c = TlsClient::connect(server.addr, std::sync::Arc::new(client)).unwrap();
    let line = c.recv_line().unwrap();
    let f: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(f[0], "TLSv1.3");
    assert!(f[1].starts_with("TLS13_"), "cipher {}", f[1]);
    assert_eq!(f[2], "hio/1", "ALPN");
    assert_eq!(f[3], "CN=alice");
    assert_eq!(f[4], "DNS:alice.example,URI:spiffe://example/alice");
    let der = std::fs::read_to_string(&pki.alice.0).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(der.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| hio_host::tls::describe_certificate(&c).sha256);
    assert_eq!(f[5], der.unwrap(), "SHA-256 fingerprint");
    c.echo(b"authorized").unwrap();
    // The policy refuses mallory by name, though the certificate is valid.
    let mut m = TlsClient::connect(server.addr, pki.client(Some(&pki.mallory), None)).unwrap();
    assert_eq!(m.recv_line().unwrap(), "refused\n");
    assert!(m.recv_line().is_err(), "refused client is closed");
}

#[test]
fn required_client_certificate() {
    let pki = Pki::new("required");
    let server = tls_server("echo", &pki, |_| {});
    for who in [None, Some(&pki.stranger), Some(&pki.expired)] {
        // TLS 1.3 clients learn of the rejection on their first read.
        let refused = match TlsClient::connect(server.addr, pki.client(who, None)) {
            Err(_) => true,
            Ok(mut c) => c.echo(b"let me in").is_err(),
        };
        assert!(refused, "client {:?} was served", who.map(|w| &w.0));
        still_serves(&server, &pki);
    }
}

#[test]
fn optional_and_no_client_certificate() {
    let pki = Pki::new("optional");
    let server = tls_server("whoami", &pki, |t| t.certify = Certify::Optional);
    let mut anon = TlsClient::connect(server.addr, pki.client(None, None)).unwrap();
    assert!(anon.recv_line().unwrap().ends_with("|-|-|-\n"), "no certificate seen");
    anon.echo(b"anonymous").unwrap();
    let mut alice = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).unwrap();
    assert!(alice.recv_line().unwrap().contains("|CN=alice|"));
    // Optional still rejects a certificate that does not verify.
    let bad = match TlsClient::connect(server.addr, pki.client(Some(&pki.stranger), None)) {
        Err(_) => true,
        Ok(mut c) => c.recv_line().is_err(),
    };
    assert!(bad, "a foreign certificate was accepted under optional");
    drop(server);
    let server = tls_server("echo", &pki, |t| t.certify = Certify::None);
    let mut anon = TlsClient::connect(server.addr, pki.client(None, None)).unwrap();
    anon.echo(b"no certificates at all").unwrap();
}

#[test]
fn garbage_and_truncated_hellos_close_only_that_connection() {
    let pki = Pki::new("garbage");
    let server = tls_server("echo", &pki, |_| {});
    let mut good = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).unwrap();
    good.echo(b"before").unwrap();
    // Not TLS at all.
    let mut g = Client::connect(server.addr);
    g.send(b"GET / HTTP/1.0\r\n\r\nthis is not a ClientHello");
    assert!(closed_by_server(&mut g), "garbage connection left open");
    // The first bytes of a real ClientHello, then the client closes.
    let mut t = Client::connect(server.addr);
    t.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);
    t.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut t));
    // An alert instead of a handshake message.
    let mut a = Client::connect(server.addr);
    a.send(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    assert!(closed_by_server(&mut a));
    good.echo(b"after").unwrap();
    still_serves(&server, &pki);
}

#[test]
fn a_stalled_handshake_is_timed_out() {
    let pki = Pki::new("stall");
    let server = tls_server("echo", &pki, |t| t.handshake_timeout = 0.5);
    let mut stalled = Client::connect(server.addr);
    stalled.send(&[0x16, 0x03, 0x01]); // and then nothing
    let start = Instant::now();
    assert!(closed_by_server(&mut stalled), "stalled handshake never aborted");
    assert!(start.elapsed() >= Duration::from_millis(300), "aborted before its time");
    still_serves(&server, &pki);
}

#[test]
fn one_mebibyte_over_tls() {
    let pki = Pki::new("big");
    let server = tls_server("echo", &pki, |_| {});
    let c = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let mut tls = c.tls;
    tls.sock.set_nonblocking(true).unwrap();
    let (mut sent, mut got) = (0, Vec::with_capacity(data.len()));
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while got.len() < data.len() {
        assert!(start.elapsed() < Duration::from_secs(20), "stalled at {} bytes", got.len());
        if sent < data.len() {
            let n = tls.conn.writer().write(&data[sent..(sent + 16384).min(data.len())]).unwrap();
            sent += n;
        }
        while tls.conn.wants_write() {
            match tls.conn.write_tls(&mut tls.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        match tls.conn.read_tls(&mut tls.sock) {
            Ok(0) => panic!("server closed"),
            Ok(_) => {
                tls.conn.process_new_packets().unwrap();
                while let Ok(n) = tls.conn.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got == data, "1 MiB came back altered over TLS");
}

#[test]
fn a_hundred_concurrent_tls_clients() {
    let pki = Pki::new("hundred");
    let server = tls_server("echo", &pki, |_| {});
    let config = pki.client(Some(&pki.alice), None);
    let addr = server.addr;
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut c = TlsClient::connect(addr, config).expect("connect");
                for j in 0..5 {
                    c.echo(format!("client {i} message {j}\n").as_bytes()).expect("echo");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("TLS client thread");
    }
}

#[test]
fn openssl_s_client_interoperates() {
    let pki = Pki::new("openssl");
    let server = tls_server("echo", &pki, |_| {});
    let mut child = KillOnDrop(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
            .arg(server.addr.to_string())
            .args(["-servername", "localhost", "-verify_hostname", "localhost", "-CAfile"])
            .arg(&pki.ca)
            .arg("-cert")
            .arg(&pki.alice.0)
            .arg("-key")
            .arg(&pki.alice.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed"),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"hello from openssl\n").unwrap();
    stdin.flush().unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let mut got = vec![0u8; 19];
    let reader = std::thread::spawn(move || stdout.read_exact(&mut got).map(|_| got));
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(10), "no echo from openssl s_client");
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = reader.join().unwrap();
    drop(stdin);
    drop(child);
    assert_eq!(got.expect("read echo"), b"hello from openssl\n");
}

fn python_peer(mode: &str) {
    let pki = Pki::new(mode);
    let server = tls_server("echo", &pki, |_| {});
    let out = Command::new(hio_python())
        .arg(root().join("tests/py/tls_client.py"))
        .arg(mode)
        .arg(server.addr.port().to_string())
        .args([&pki.ca, &pki.alice.0, &pki.alice.1])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim_end().ends_with("ok"), "{mode} client failed: {text}");
    still_serves(&server, &pki);
}

#[test]
fn python_ssl_interoperates() {
    python_peer("ssl");
}

#[test]
fn hio_client_tls_interoperates() {
    python_peer("hio");
}

#[test]
fn bad_key_files_are_one_clear_startup_error() {
    let pki = Pki::new("badkeys");
    let garbage = pki.dir.join("garbage.key");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n").unwrap();
    let unreadable = pki.dir.join("missing.key");
    for (key, needle) in [
        (&pki.alice.1, "does not fit certificate"),
        (&garbage, "cannot read a private key"),
        (&unreadable, "cannot read a private key"),
    ] {
        let out = Command::new(host_binary())
            .args(["run", hio_tests::guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&pki.server_cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--client-ca")
            .arg(&pki.ca)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hio-host:")).collect();
        assert!(!out.status.success());
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(needle), "{}", errors[0]);
    }
    // Plain TCP to a TLS port is just another bad client.
    let server = tls_server("echo", &pki, |_| {});
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"hello?\n").unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    // Whatever came back (a TLS alert at most) is not our plaintext.
    assert!(!buf[..n].starts_with(b"hello"));
    still_serves(&server, &pki);
}

#[test]
fn tls_connections_survive_hot_swaps_with_their_identity() {
    let pki = Pki::new("swap");
    let server = tls_server("whoami", &pki, |_| {});
    let mut c = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).unwrap();
    assert!(c.recv_line().unwrap().contains("|CN=alice|"));
    c.echo(b"before\n").unwrap();
    for guest in ["upper", "whoami"] {
        let report =
            server.swapper().swap(Some(hio_tests::guest(guest))).recv_timeout(hio_tests::PATIENCE).unwrap().unwrap();
        assert_eq!(report.connections, 1);
    }
    // whoami again: the same session, still echoing; upper answered in between.
    c.echo(b"after two swaps\n").unwrap();
    // A new client after the swaps is greeted with its identity.
    let mut d = TlsClient::connect(server.addr, pki.client(Some(&pki.alice), None)).unwrap();
    assert!(d.recv_line().unwrap().contains("|CN=alice|"));
    assert_eq!(c.finish().unwrap(), b"");
}

/// Connect with `config` (whose session cache it shares with earlier
/// connections) and echo once; the handshake's kind and whether the echo
/// came back.
fn connect_and_echo(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> (Option<HandshakeKind>, bool) {
    match TlsClient::connect(addr, config.clone()) {
        Err(_) => (None, false),
        Ok(mut c) => {
            let kind = c.tls.conn.handshake_kind();
            (kind, c.echo(b"who goes there").is_ok())
        }
    }
}

#[test]
fn session_resumption_never_admits_a_client_a_full_handshake_would_refuse() {
    let pki = Pki::new("resume");
    let server = tls_server("echo", &pki, |_| {});
    let brief = pki.expiring("brief", 3);
    let valid_until = Instant::now() + Duration::from_secs(3);
    let sessions: Vec<_> = [12, 13].map(|v| pki.client(Some(&brief), Some(v))).into();
    for config in &sessions {
        assert_eq!(connect_and_echo(server.addr, config), (Some(HandshakeKind::Full), true));
        // Resumption works (and saves the full handshake) while the certificate is valid.
        assert_eq!(connect_and_echo(server.addr, config), (Some(HandshakeKind::Resumed), true));
    }
    std::thread::sleep(valid_until.saturating_duration_since(Instant::now()) + Duration::from_millis(1500));
    for (config, version) in sessions.iter().zip([12, 13]) {
        let full = connect_and_echo(server.addr, &pki.client(Some(&brief), Some(version)));
        assert!(!full.1, "TLS 1.{version}: a full handshake admitted an expired certificate");
        let (kind, served) = connect_and_echo(server.addr, config);
        assert_eq!(kind, Some(HandshakeKind::Resumed), "TLS 1.{version}: the client did not try to resume");
        assert!(!served, "TLS 1.{version}: a resumed session admitted an expired certificate");
    }
    still_serves(&server, &pki);
}

#[test]
fn a_revoked_client_certificate_is_refused() {
    let pki = Pki::new("crl");
    let server = tls_server("echo", &pki, |t| t.client_crls = vec![pki.crl.clone()]);
    for version in [12, 13] {
        let (_, served) = connect_and_echo(server.addr, &pki.client(Some(&pki.revoked), Some(version)));
        assert!(!served, "TLS 1.{version}: a revoked certificate was admitted");
        let alice = pki.client(Some(&pki.alice), Some(version));
        assert_eq!(connect_and_echo(server.addr, &alice), (Some(HandshakeKind::Full), true));
        assert_eq!(connect_and_echo(server.addr, &alice), (Some(HandshakeKind::Resumed), true));
    }
    // A CRL file that holds none is one clear startup error.
    let out = Command::new(host_binary())
        .args(["run", hio_tests::guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.server_cert)
        .args([std::ffi::OsStr::new("--tls-key"), pki.server_key.as_os_str()])
        .args([std::ffi::OsStr::new("--client-ca"), pki.ca.as_os_str()])
        .args([std::ffi::OsStr::new("--client-crl"), pki.ca.as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hio-host:")).collect();
    assert!(errors.len() == 1 && errors[0].contains("no CRL in"), "{stderr}");
}

#[test]
fn a_revocation_takes_effect_on_sighup_even_for_resumed_sessions() {
    let pki = Pki::new("reload");
    let crl = pki.dir.join("live.crl");
    pki.write_crl(&crl, &[]);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (cert, key, ca, crl_arg) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca), path(&crl));
    let flags = ["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca, "--client-crl", &crl_arg];
    let host = hio_tests::HostProcess::spawn(&hio_tests::guest("echo"), &flags);
    let sessions: Vec<_> = [12, 13].map(|v| pki.client(Some(&pki.alice), Some(v))).into();
    for config in &sessions {
        assert_eq!(connect_and_echo(host.addr(), config), (Some(HandshakeKind::Full), true));
        assert_eq!(connect_and_echo(host.addr(), config), (Some(HandshakeKind::Resumed), true));
    }
    // Alice is revoked while the host runs; SIGHUP reads the files again.
    pki.write_crl(&crl, &["alice"]);
    host.signal("HUP");
    hio_tests::eventually("the reload", || host.log().contains("CRLs reloaded"));
    for (config, version) in sessions.iter().zip([12, 13]) {
        let (kind, served) = connect_and_echo(host.addr(), config);
        assert_eq!(kind, Some(HandshakeKind::Resumed), "TLS 1.{version}: sessions carry over a reload");
        assert!(!served, "TLS 1.{version}: a revoked client resumed its session\n{}", host.log());
        let full = connect_and_echo(host.addr(), &pki.client(Some(&pki.alice), Some(version)));
        assert!(!full.1, "TLS 1.{version}: a revoked client was admitted");
    }
    assert!(connect_and_echo(host.addr(), &pki.client(Some(&pki.mallory), None)).1, "others still are");
    // A file that does not load keeps the old ones.
    std::fs::write(&crl, "not a CRL").unwrap();
    host.signal("HUP");
    hio_tests::eventually("the refusal", || host.log().contains("TLS files not reloaded"));
    assert!(connect_and_echo(host.addr(), &pki.client(Some(&pki.mallory), None)).1);
    assert!(!connect_and_echo(host.addr(), &pki.client(Some(&pki.alice), None)).1);
}

#[test]
fn a_tls_stream_cut_at_shutdown_ends_with_a_reset_not_a_fin() {
    let pki = Pki::new("cut");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (cert, key) = (path(&pki.server_cert), path(&pki.server_key));
    let mut host = hio_tests::HostProcess::spawn(
        &hio_tests::guest("echo"),
        &["--tls-cert", &cert, "--tls-key", &key, "--certify", "none", "--drain-timeout", "0"],
    );
    let sock = Client::connect_with(host.addr(), Some(4096)).stream;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::StreamOwned::new(rustls::ClientConnection::new(pki.client(None, None), name).unwrap(), sock);
    // Write without reading until the host's kernel send queue stops
    // growing, then a little more: its echo is left as TLS records in
    // rustls, none of it in the host's plaintext queue.
    let send_queue = || -> u64 {
        let out = Command::new("ss").args(["-tnH", "state", "established"]).output().unwrap();
        let port = format!(":{}", host.port);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].ends_with(&port))
            .and_then(|f| f[1].parse().ok())
            .unwrap_or(0)
    };
    let (start, mut last) = (Instant::now(), u64::MAX);
    loop {
        tls.write_all(&[b'z'; 8 << 10]).and_then(|_| tls.flush()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let now = send_queue();
        if now == last {
            break;
        }
        last = now;
        assert!(start.elapsed() < Duration::from_secs(30), "the host's send queue never filled");
    }
    for _ in 0..2 {
        tls.write_all(&[b'z'; 8 << 10]).and_then(|_| tls.flush()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    host.signal("TERM");
    assert!(host.child.0.wait().unwrap().success());
    // How the TCP stream ended, under the TLS records.
    let mut raw = Client { stream: tls.sock };
    raw.stream.set_read_timeout(Some(hio_tests::PATIENCE)).unwrap();
    let (_, ending) = raw.recv_until_end();
    assert_eq!(ending, hio_tests::Ending::Reset, "a cut TLS stream ended with a FIN\n{}", host.log());
}
