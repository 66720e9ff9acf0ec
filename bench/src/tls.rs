//! (f) TLS: echo and handshakes/s, hio-host against a native rustls server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::load::cpu_seconds;
use crate::{Host, root};

/// A CA and a server certificate for "localhost", as PEM files.
pub struct Certs {
    /// Made here and removed on drop, if any.
    dir: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    ca: Option<CertificateDer<'static>>,
}

impl Certs {
    /// Existing files (the native server is handed the bench's paths).
    pub fn from_files(cert: PathBuf, key: PathBuf) -> Certs {
        Certs { dir: None, cert, key, ca: None }
    }

    pub fn new() -> Result<Certs> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("hio-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "bench CA");
        let ca = p.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca, &ca_key)?;
        let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert_path, leaf.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(Certs { dir: Some(dir), cert: cert_path, key: key_path, ca: Some(ca.der().clone()) })
    }

    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_file_iter(&self.cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)?;
        Ok(Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?,
        ))
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone().context("no CA for a client")?)?;
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn servers(certs: &Certs) -> Result<[(&'static str, Host); 2]> {
    let native = {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(["native-echo", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key);
        Host::start(cmd)?
    };
    let hio = {
        let mut cmd = std::process::Command::new(root().join("target/release/hio-host"));
        cmd.arg("run")
            .arg(root().join("target/wasm/echo.wasm"))
            .args(["--listen", "127.0.0.1:0", "--tymeout", "0", "--certify", "none", "--tls-cert"])
            .arg(&certs.cert)
            .arg("--tls-key")
            .arg(&certs.key);
        Host::start(cmd)?
    };
    Ok([("native mio+rustls", native), ("hio-host echo.wasm", hio)])
}

fn connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let sock = TcpStream::connect(addr).ok()?;
    sock.set_nodelay(true).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let conn = rustls::ClientConnection::new(config.clone(), ServerName::try_from("localhost").ok()?).ok()?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).ok()?;
    }
    Some(s)
}

fn echo(s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>, msg: &[u8], buf: &mut [u8]) -> bool {
    s.write_all(msg).is_ok()
        && s.flush().is_ok()
        && s.read_exact(&mut buf[..msg.len()]).is_ok()
        && &buf[..msg.len()] == msg
}

/// Run `work` on `threads` threads for `duration`; returns (done, failed, server CPU s, seconds).
fn drive(
    host: &Host,
    threads: usize,
    duration: Duration,
    work: impl Fn(&AtomicBool, &AtomicU64, &AtomicU64) + Send + Sync + 'static,
) -> (u64, u64, f64, f64) {
    let work = Arc::new(work);
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cpu0 = cpu_seconds(Some(host.child.id()));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, stop, ok, failed) = (work.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || work(&stop, &ok, &failed))
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let secs = start.elapsed().as_secs_f64();
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), cpu_seconds(Some(host.child.id())) - cpu0, secs)
}

pub fn run(seconds: f64) -> Result<()> {
    let certs = Certs::new()?;
    let client = certs.client_config()?;
    let duration = Duration::from_secs_f64(seconds);
    println!("\n### (f) TLS 1.3: echo 1 KiB request/response on 16 connections (one thread each), {seconds}s\n");
    println!("| server | msgs/s | failed | server CPU s per M msgs |");
    println!("| --- | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for (name, host) in servers(&certs)? {
        let (addr, client) = (host.addr, client.clone());
        let (n, failed, cpu, secs) = drive(&host, 16, duration, move |stop, ok, failed| {
            let Some(mut s) = connect(addr, &client) else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let msg = vec![b'm'; 1024];
            let mut buf = vec![0u8; 1024];
            while !stop.load(Ordering::Relaxed) {
                if echo(&mut s, &msg, &mut buf) { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
            }
        });
        rates.push((n as f64 / secs, cpu / n.max(1) as f64));
        println!("| {name} | {:.0} | {failed} | {:.2} |", n as f64 / secs, cpu / (n as f64 / 1e6));
    }
    println!("| **ratio hio/native** | **{:.2}x** | | **{:.2}x** |", rates[1].0 / rates[0].0, rates[1].1 / rates[0].1);

    println!("\n### (f) TLS 1.3 handshakes: connect, handshake, echo 64 B, close; 4 client threads, {seconds}s\n");
    println!("| server | handshakes/s | failed | server CPU ms per 1000 handshakes |");
    println!("| --- | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for (name, host) in servers(&certs)? {
        let (addr, client) = (host.addr, client.clone());
        let (n, failed, cpu, secs) = drive(&host, 4, duration, move |stop, ok, failed| {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let good = connect(addr, &client).is_some_and(|mut s| {
                    let good = echo(&mut s, &[7u8; 64], &mut buf);
                    s.conn.send_close_notify();
                    let _ = s.flush();
                    good
                });
                if good { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
            }
        });
        rates.push(n as f64 / secs);
        println!("| {name} | {:.0} | {failed} | {:.1} |", n as f64 / secs, cpu * 1000.0 / (n as f64 / 1000.0));
    }
    println!("| **ratio hio/native** | **{:.2}x** | | |", rates[1] / rates[0]);
    Ok(())
}
