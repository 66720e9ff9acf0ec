//! TLS termination in the host (rustls): hio's `initServerContext`, built
//! once per server (hio rebuilds its context per connection), and what a
//! guest may learn about the peer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::{HandshakeKind, RootCertStore};
use sha2::{Digest, Sha256};

/// hio's `certify`: whether a client must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Certify {
    /// No client certificate is asked for (hio's CERT_NONE).
    None,
    /// Asked for; one that is presented must verify (CERT_OPTIONAL).
    Optional,
    /// Must be presented and verify (CERT_REQUIRED, hio's default).
    Required,
}

/// hio's `version`: one protocol version, or both when unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
}

/// Everything `initServerContext` takes; on the command line, the `--tls-*`
/// group (`--tls-cert` turns TLS on).
#[derive(Clone, Debug, clap::Args)]
#[group(requires_all = ["cert", "key"], multiple = true)]
pub struct TlsConfig {
    /// Serve TLS with this certificate chain (PEM, leaf first; hio's certpath); needs --tls-key.
    #[arg(long = "tls-cert", value_name = "PEM", required = false)]
    pub cert: PathBuf,
    /// Private key (PEM) of --tls-cert (hio's keypath).
    #[arg(long = "tls-key", value_name = "PEM", required = false)]
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to (hio's
    /// cafilepath). Without it, client certificates are checked against the
    /// system trust store (as hio).
    #[arg(long, value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates; repeat for
    /// more files. A revoked client is refused, on full handshakes and on
    /// session resumption; with CRLs, every certificate of a client's chain
    /// below the CA must be covered by one (as nginx's `ssl_crl`). Read
    /// again on SIGHUP.
    #[arg(long = "client-crl", value_name = "PEM")]
    pub client_crls: Vec<PathBuf>,
    /// Client certificates: none (not asked for), optional (checked if sent),
    /// required (hio's default).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Certify::Required)]
    pub certify: Certify,
    /// Only this TLS version (1.2 or 1.3); both by default.
    #[arg(long = "tls-version", value_name = "VERSION", value_enum)]
    pub version: Option<TlsVersion>,
    /// ALPN protocols to offer, comma-separated, in preference order.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub alpn: Vec<String>,
    /// Abort a TLS handshake not finished within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT, allow_negative_numbers = true)]
    pub handshake_timeout: f64,
}

/// Default handshake deadline: long enough for any honest client on a slow
/// link, short enough that stalled handshakes cannot pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: f64 = 10.0;

impl TlsConfig {
    /// TLS with this certificate chain and key (PEM files), hio's other
    /// defaults: client certificates required, both versions, 5 s handshakes.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            client_crls: Vec::new(),
            certify: Certify::Required,
            version: None,
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// hio's `initServerContext`: one rustls server context for every
    /// connection, and the handshake deadline.
    /// The checks [`TlsConfig::acceptor`] makes before reading any file.
    pub fn validate(&self) -> Result<()> {
        crate::tyme::seconds("handshake timeout", self.handshake_timeout, false).map(|_| ())
    }

    /// Read the files and make the acceptor; errors name the file and what is wrong with it.
    pub fn acceptor(&self) -> Result<TlsAcceptor> {
        let handshake_timeout = crate::tyme::seconds("handshake timeout", self.handshake_timeout, false)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.version {
            None => rustls::DEFAULT_VERSIONS,
            Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
            Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .context("TLS versions")?;
        let verifier = match self.certify {
            Certify::None => None,
            certify => {
                let roots = Arc::new(self.client_roots()?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider).with_crls(self.crls()?);
                let verifier = if certify == Certify::Optional { verifier.allow_unauthenticated() } else { verifier };
                Some(verifier.build().context("client certificate verifier")?)
            }
        };
        let builder = match &verifier {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(v.clone()),
        };
        let chain = read_certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| anyhow!("cannot read a private key from {}: {}", self.key.display(), pem_error(e)))?;
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            anyhow!("TLS key {} does not fit certificate {}: {e}", self.key.display(), self.cert.display())
        })?;
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(TlsAcceptor { config: Arc::new(config), verifier, handshake_timeout })
    }

    fn crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>> {
        let mut crls = Vec::new();
        for path in &self.client_crls {
            let found = CertificateRevocationListDer::pem_file_iter(path)
                .map_err(|e| anyhow!("cannot read CRLs from {}: {}", path.display(), pem_error(e)))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("malformed CRL in {}: {}", path.display(), pem_error(e)))?;
            if found.is_empty() {
                bail!("no CRL in {}", path.display());
            }
            crls.extend(found);
        }
        Ok(crls)
    }

    fn client_roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.client_ca {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert).with_context(|| format!("bad CA certificate in {}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // The system store holds some certificates webpki cannot use; skip them.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    bail!("no --client-ca given and no system trust store found: give --client-ca or --certify none");
                }
            }
        }
        Ok(roots)
    }
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item found".into(),
        other => format!("{other:?}"),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("cannot read certificates from {}: {}", path.display(), pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("malformed certificate in {}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// What every TLS connection of a server starts from: the rustls context
/// (built once; hio builds one per connection), the client certificate
/// verifier behind it, and how long a handshake may take.
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// How long a handshake may take before it is aborted.
    pub handshake_timeout: Duration,
}

impl TlsAcceptor {
    /// A new server session for one accepted connection.
    pub fn session(&self) -> Result<ServerConnection> {
        ServerConnection::new(self.config.clone()).context("cannot start a TLS session")
    }

    /// The same server with its files read again (certificate, key, CAs,
    /// CRLs). Sessions begun before carry over: their clients may still
    /// resume them, and their certificates are checked again, against the
    /// new files, when they do.
    pub fn reloaded(&self, config: &TlsConfig) -> Result<TlsAcceptor> {
        let mut fresh = config.acceptor()?;
        let server = Arc::make_mut(&mut fresh.config);
        server.session_storage = self.config.session_storage.clone();
        server.ticketer = self.config.ticketer.clone();
        Ok(fresh)
    }

    /// The verifier to check a resumed session's client certificate with.
    pub fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.verifier.clone()
    }
}

/// A resumed session skips the client certificate check of a full
/// handshake: rustls restores the certificate it verified when the session
/// began. Check it again now, with the same verifier (trust anchors, CRLs,
/// validity at this moment), so resumption never admits a peer that a full
/// handshake would refuse: an expired, not yet valid or revoked certificate,
/// or a CA no longer trusted. Full handshakes pass through.
pub fn check_resumed(session: &ServerConnection, verifier: &dyn ClientCertVerifier) -> Result<(), String> {
    if session.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok(());
    }
    let Some([end_entity, intermediates @ ..]) = session.peer_certificates() else {
        // Resumed without a certificate: the full handshake allowed none.
        return Ok(());
    };
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| format!("resumed session refused, its client certificate no longer verifies: {e}"))
}

/// Who is on the other end of a finished handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// IANA-style name, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher_suite: String,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<String>,
    /// The client certificate that verified, if one was sent.
    pub certificate: Option<PeerCertificate>,
}

/// The client certificate that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    /// RFC 4514 subject, e.g. "CN=alice, O=Example".
    pub subject: String,
    /// Subject alternative names as "DNS:name", "IP:addr", "EMAIL:addr", "URI:uri".
    pub sans: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
}

/// Who is on the other end of `tls`, once its handshake is done.
pub fn peer_info(tls: &ServerConnection) -> PeerInfo {
    let version = match tls.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    let cipher_suite = tls.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    let alpn = tls.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let certificate = tls.peer_certificates().and_then(|c| c.first()).map(|der| describe_certificate(der));
    PeerInfo { version, cipher_suite, alpn, certificate }
}

/// The subject, SANs, issuer and validity of a DER certificate (what a guest sees).
pub fn describe_certificate(der: &[u8]) -> PeerCertificate {
    let sha256 = Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect();
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        // rustls verified it, so this does not happen; say so rather than guess.
        return PeerCertificate { subject: "(unparsable)".into(), sans: Vec::new(), sha256 };
    };
    let subject = cert.subject().to_string();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &ext.value.general_names {
            sans.push(match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::RFC822Name(e) => format!("EMAIL:{e}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("length 4"))),
                    16 => format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("length 16"))),
                    _ => continue,
                },
                _ => continue,
            });
        }
    }
    PeerCertificate { subject, sans, sha256 }
}
