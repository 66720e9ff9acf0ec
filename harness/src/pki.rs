//! Certificates made fresh by each test with rcgen, written as PEM files
//! in a temporary directory (removed on drop), and a blocking rustls client.
//!
//! ```no_run
//! use hio_test::{TestHost, pki::Pki};
//!
//! let pki = Pki::new("my-test");
//! let host = TestHost::start_with("target/wasm/echo.wasm", |c| c.tls = Some(pki.server_config()));
//! let mut peer = host.connect_tls(pki.client(Some(&pki.alice), None));
//! peer.send(b"hello");
//! peer.expect(b"hello");
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

use crate::PATIENCE;

/// A CA and the files of a server certificate and client certificates it
/// signed, plus a client certificate from another CA, an expired one, and
/// a revoked one with the CA's revocation list.
pub struct Pki {
    /// Where the files are.
    pub dir: PathBuf,
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM), for `localhost` and 127.0.0.1.
    pub server_cert: PathBuf,
    /// Its private key (PEM).
    pub server_key: PathBuf,
    /// CN=alice, SAN DNS:alice.example and URI spiffe://example/alice.
    pub alice: (PathBuf, PathBuf),
    /// CN=mallory, signed by the same CA (the whoami guest refuses it).
    pub mallory: (PathBuf, PathBuf),
    /// Signed by an unrelated CA.
    pub stranger: (PathBuf, PathBuf),
    /// Signed by the CA, but expired in 2001.
    pub expired: (PathBuf, PathBuf),
    /// CN=revoked, signed by the CA and listed in `crl`.
    pub revoked: (PathBuf, PathBuf),
    /// The CA's certificate revocation list (PEM), revoking `revoked`.
    pub crl: PathBuf,
    root: Ca,
}

/// When a leaf certificate is valid.
#[derive(Clone, Copy)]
enum Validity {
    /// rcgen's default: from 1975 to 4096.
    Always,
    /// 2000 to 2001.
    Expired,
    /// From a minute ago until this moment.
    Until(OffsetDateTime),
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    Ca { cert: p.self_signed(&key).unwrap(), key }
}

fn leaf(dir: &Path, name: &str, sans: &[&str], client: bool, signer: &Ca, validity: Validity) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = sans
        .iter()
        .map(|s| {
            if let Ok(ip) = s.parse() {
                SanType::IpAddress(ip)
            } else if s.contains("://") {
                SanType::URI(s.to_string().try_into().unwrap())
            } else {
                SanType::DnsName(s.to_string().try_into().unwrap())
            }
        })
        .collect();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages =
        vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
    // Serial numbers name certificates in revocation lists.
    p.serial_number = Some(serial(name));
    match validity {
        Validity::Always => {}
        Validity::Expired => {
            p.not_before = date_time_ymd(2000, 1, 1);
            p.not_after = date_time_ymd(2001, 1, 1);
        }
        Validity::Until(end) => {
            p.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
            p.not_after = end;
        }
    }
    let cert = p.signed_by(&key, &signer.cert, &signer.key).unwrap();
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// A certificate's serial number, derived from its name (8 bytes, positive).
fn serial(name: &str) -> SerialNumber {
    let mut serial = [0u8; 8];
    for (i, b) in name.bytes().enumerate() {
        serial[i % 8] = serial[i % 8].wrapping_mul(31).wrapping_add(b);
    }
    serial[0] = (serial[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&serial)
}

/// A revocation list signed by `signer`, revoking the certificates named.
fn crl(path: &Path, signer: &Ca, revoked: &[&str]) {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|name| RevokedCertParams {
                serial_number: serial(name),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    std::fs::write(path, params.signed_by(&signer.cert, &signer.key).unwrap().pem().unwrap()).unwrap();
}

impl Pki {
    /// A fresh PKI in a temporary directory named after `tag` (and the
    /// process), removed when dropped.
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("hio-pki-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = ca("hio test CA");
        let other = ca("some other CA");
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, root.cert.pem()).unwrap();
        let (server_cert, server_key) =
            leaf(&dir, "server", &["localhost", "127.0.0.1"], false, &root, Validity::Always);
        let crl_path = dir.join("ca.crl");
        crl(&crl_path, &root, &["revoked"]);
        Pki {
            alice: leaf(&dir, "alice", &["alice.example", "spiffe://example/alice"], true, &root, Validity::Always),
            mallory: leaf(&dir, "mallory", &["mallory.example"], true, &root, Validity::Always),
            stranger: leaf(&dir, "stranger", &["stranger.example"], true, &other, Validity::Always),
            expired: leaf(&dir, "expired", &["expired.example"], true, &root, Validity::Expired),
            revoked: leaf(&dir, "revoked", &["revoked.example"], true, &root, Validity::Always),
            crl: crl_path,
            root,
            dir,
            ca: ca_path,
            server_cert,
            server_key,
        }
    }

    /// Write a revocation list from the CA to `path`, revoking the client
    /// certificates named (by CN).
    pub fn write_crl(&self, path: &Path, revoked: &[&str]) {
        crl(path, &self.root, revoked);
    }

    /// A client certificate from the CA (CN=`name`) that expires `secs`
    /// seconds from now.
    pub fn expiring(&self, name: &str, secs: i64) -> (PathBuf, PathBuf) {
        let end = OffsetDateTime::now_utc() + time::Duration::seconds(secs);
        leaf(&self.dir, name, &[&format!("{name}.example")], true, &self.root, Validity::Until(end))
    }

    /// A TLS config for the host: this PKI's server certificate, clients checked against its CA.
    pub fn server_config(&self) -> hio_host::tls::TlsConfig {
        let mut t = hio_host::tls::TlsConfig::new(&self.server_cert, &self.server_key);
        t.client_ca = Some(self.ca.clone());
        t
    }

    /// A rustls client trusting this PKI's CA, with an optional client certificate.
    pub fn client(&self, identity: Option<&(PathBuf, PathBuf)>, versions: Option<u16>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match versions {
            Some(12) => &[&rustls::version::TLS12],
            Some(13) => &[&rustls::version::TLS13],
            _ => rustls::DEFAULT_VERSIONS,
        };
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            None => b.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
                b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
            }
        };
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking TLS client over real TCP.
pub struct TlsClient {
    /// The session over its socket.
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connect and finish the handshake, or say why it failed.
    pub fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<TlsClient, String> {
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(PATIENCE)).unwrap();
        let conn = rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
        }
        // In TLS 1.3 the server judges the client's certificate after the
        // client thinks it is done: a rejection shows on the first read.
        Ok(TlsClient { tls })
    }

    /// Send `data` (all of it).
    pub fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.tls.write_all(data).and_then(|_| self.tls.flush()).map_err(|e| e.to_string())
    }

    /// Receive exactly `n` bytes.
    pub fn recv_exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; n];
        self.tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }

    /// Receive up to and including the next `\n`.
    pub fn recv_line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match self.tls.read(&mut b) {
                Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&line))),
                Ok(_) => line.push(b[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Send `data` and expect it back.
    pub fn echo(&mut self, data: &[u8]) -> Result<(), String> {
        self.send(data)?;
        let got = self.recv_exact(data.len())?;
        if got != data {
            return Err("echo mismatch".into());
        }
        Ok(())
    }

    /// Send close_notify and read to the server's clean end.
    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        self.tls.conn.send_close_notify();
        self.tls.flush().map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        self.tls.read_to_end(&mut rest).map_err(|e| e.to_string())?;
        Ok(rest)
    }
}
