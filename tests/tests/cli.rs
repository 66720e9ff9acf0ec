//! The `hio-host` binary: errors are one clear line and a non-zero exit;
//! a signal drains (or closes) everything and exits 0.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use hio_tests::{Ending, HostProcess, guest, host_binary};

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(host_binary()).args(args).output().expect("run hio-host");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fails_with(args: &[&str], needle: &str) {
    let (ok, stderr) = run(args);
    assert!(!ok, "expected failure for {args:?}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hio-host:")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got: {stderr}");
    assert!(errors[0].contains(needle), "error {:?} lacks {needle:?}", errors[0]);
}

#[test]
fn missing_guest_file() {
    fails_with(&["run", "/nonexistent/guest.wasm", "--listen", "127.0.0.1:0"], "cannot read guest");
}

/// Serving a guest file with these contents fails with `needle`.
fn guest_file_fails_with(name: &str, contents: &[u8], needle: &str) {
    let path = std::env::temp_dir().join(format!("{name}-{}.wasm", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    fails_with(&["run", path.to_str().unwrap(), "--listen", "127.0.0.1:0"], needle);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_guest_path_that_is_not_a_regular_file() {
    fails_with(&["run", "/dev/zero", "--listen", "127.0.0.1:0"], "not a regular file");
    fails_with(&["run", "/tmp", "--listen", "127.0.0.1:0"], "not a regular file");
}

#[test]
fn file_that_is_not_a_component() {
    guest_file_fails_with("not-wasm", b"this is not wasm", "not a valid wasm component");
}

#[test]
fn component_without_the_guest_exports() {
    // The smallest valid component: a header and nothing in it.
    guest_file_fails_with("empty", b"\0asm\x0d\x00\x01\x00", "does not fit");
}

#[test]
fn port_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails_with(&["run", guest("echo").to_str().unwrap(), "--listen", &addr], "cannot listen on");
}

#[test]
fn malformed_address() {
    fails_with(&["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:http"], "malformed address");
    fails_with(&["run", guest("echo").to_str().unwrap(), "--listen", "1.2.3.4:99999"], "malformed address");
}

#[test]
fn bad_numbers() {
    fails_with(&["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", "--tymeout", "-1"], "tymeout");
    fails_with(&["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", "--tock", "0"], "tock");
    for (flag, value, needle) in [
        ("--send-timeout", "1e30", "send timeout"),
        ("--tock", "1e30", "tock"),
        ("--linger", "0", "linger"),
        ("--max-conns", "0", "max-conns"),
        ("--drain-timeout", "-5", "drain timeout"),
        ("--ready-fd", "999", "--ready-fd 999: no such open descriptor"),
    ] {
        fails_with(&["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", flag, value], needle);
    }
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(host_binary()).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--tymeout", "--tock", "--bs", "--bl", "--wirelog"] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}

#[test]
fn sigterm_drains_then_exits_zero() {
    let mut host = HostProcess::spawn(&guest("echo"), &[]);
    let mut c = host.connect();
    c.echo(b"before the signal");
    host.signal("TERM");
    hio_tests::eventually("the drain", || host.log().contains("draining: listener closed"));
    c.echo(b"served while draining");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let exit = host.exit_within(Duration::from_secs(10));
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(c.recv_to_end(), b"", "connection closed with a clean end");
}

#[test]
fn check_says_whether_a_guest_fits() {
    let out = Command::new(host_binary()).args(["check", guest("echo").to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("exports: hio:tcp/handover@0.2.3, hio:tcp/batch@0.2.3, hio:tcp/guest@0.2.3"), "{text}");
    assert!(text.contains("fits the hio:tcp/server world"), "{text}");
    let empty = std::env::temp_dir().join(format!("check-empty-{}.wasm", std::process::id()));
    std::fs::write(&empty, b"\0asm\x0d\x00\x01\x00").unwrap();
    let out = Command::new(host_binary()).args(["check", empty.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("problem: does not export hio:tcp/guest@0.2.3"), "{text}");
    std::fs::remove_file(empty).unwrap();
}

/// Start the host with `HIO_CACHE_DIR=dir` and return its "serving" log line.
fn serving_line(dir: &std::path::Path) -> String {
    let dir = dir.to_str().expect("UTF-8 path");
    let host = HostProcess::spawn_under(&[], &[("HIO_CACHE_DIR", dir)], &guest("lines"), &[]);
    hio_tests::eventually("the serving line", || host.log().contains("serving ha="));
    host.log().lines().find(|l| l.contains("serving ha=")).expect("the serving line").to_string()
}

#[test]
fn second_start_maps_the_compiled_guest_from_the_cache() {
    let dir = std::env::temp_dir().join(format!("hio-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(serving_line(&dir).contains("code=compiled"));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "one cache entry");
    assert!(serving_line(&dir).contains("code=cached"));
    // A damaged entry is recompiled, not trusted.
    let entry = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&entry, b"garbage").unwrap();
    assert!(serving_line(&dir).contains("code=compiled"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn without_a_drain_sigterm_resets_only_connections_with_bytes_undelivered() {
    let mut host = HostProcess::spawn(&guest("lines"), &["--drain-timeout", "0"]);
    let mut done = host.connect();
    done.send(b"complete\n");
    assert_eq!(done.recv_line(), "1 COMPLETE\n");
    let mut partial = host.connect();
    partial.send(b"half a li");
    partial.send(b"ne, never ended");
    std::thread::sleep(Duration::from_millis(200));
    host.signal("TERM");
    assert!(host.child.0.wait().unwrap().success());
    assert_eq!(done.recv_until_end(), (Vec::new(), Ending::Fin), "everything it was sent was delivered");
    assert_eq!(
        partial.recv_until_end(),
        (Vec::new(), Ending::Reset),
        "its unanswered bytes were dropped\n{}",
        host.log()
    );
    assert!(host.log().contains("reset=1"), "{}", host.log());
}

/// A config file in the temp directory, removed when dropped.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(name: &str, toml: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!("hio-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, toml).unwrap();
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_config_file_serves_beneath_flags_and_environment() {
    let toml = format!(
        "guest = {:?}\nlisten = \"127.0.0.1:0\"\ntymeout = 5\ndrain-timeout = 2\nmax-conns = 50\n",
        guest("lines").to_str().unwrap()
    );
    let file = ConfigFile::new("serve", &toml);
    let mut cmd = Command::new(host_binary());
    cmd.args(["run", "--config", file.path()]);
    let host = HostProcess::launch(cmd);
    let mut c = host.connect();
    c.send(b"from a config file\n");
    assert_eq!(c.recv_line(), "1 FROM A CONFIG FILE\n");
    // What wins: a flag over the environment over the file over the default.
    let out = Command::new(host_binary())
        .args(["run", "--config", file.path(), "--max-conns", "7", "--print-config"])
        .env("HIO_DRAIN_TIMEOUT", "3")
        .env("HIO_MAX_CONNS", "9")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "max-conns = 7    # from the command line",
        "drain-timeout = 3    # from HIO_DRAIN_TIMEOUT",
        "tymeout = 5    # from the config file",
        "# linger = 10    # default",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn a_bad_config_file_is_one_error_naming_the_key() {
    let echo = guest("echo");
    let echo = echo.to_str().unwrap();
    for (toml, needle) in [
        ("tymout = 3\n", "unknown key \"tymout\""),
        ("drain-timeout = \"soon\"\n", "key \"drain-timeout\": invalid value 'soon'"),
        ("tymeout = -1\n", "tymeout must be"),
        ("watch = \"yes\"\n", "key \"watch\": expected true or false"),
        ("listen = [\n", "line 1"),
    ] {
        let file = ConfigFile::new("bad", toml);
        fails_with(&["run", echo, "--config", file.path()], needle);
    }
    fails_with(&["run", echo, "--config", "/nonexistent/hio.toml"], "cannot read config");
    let file = ConfigFile::new("no-guest", "tymeout = 3\n");
    fails_with(&["run", "--config", file.path()], "no guest");
}

#[test]
fn settings_from_a_file_combine_with_flags_and_environment_for_tls_too() {
    let pki = hio_tests::pki::Pki::new("config-tls");
    let toml = format!(
        "tls-cert = {:?}\ntls-key = {:?}\ntls-version = \"1.3\"\n",
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap()
    );
    let file = ConfigFile::new("tls", &toml);
    let out = Command::new(host_binary())
        .args(["run", guest("echo").to_str().unwrap(), "--config", file.path(), "--certify", "none", "--print-config"])
        .env("HIO_ALPN", "h2,http/1.1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "tls-version = 1.3    # from the config file",
        "certify = \"none\"    # from the command line",
        "alpn = [\"h2\", \"http/1.1\"]    # from HIO_ALPN",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let out = Command::new(host_binary())
        .args(["run", guest("echo").to_str().unwrap()])
        .env("HIO_DRAIN_TIMEOUT", "soon")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("invalid value 'soon'") && stderr.contains("(from HIO_DRAIN_TIMEOUT)"), "{stderr}");
}

/// Nobody reads the log any more (its pipe closed): the host serves on.
#[test]
fn a_log_nobody_reads_does_not_take_the_host_down() {
    use std::io::BufRead;
    let mut child = hio_tests::KillOnDrop(
        Command::new(host_binary())
            .args(["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0", "--ready-fd", "1"])
            .env("HIO_LOG", "hio_host=debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    drop(child.0.stderr.take());
    let addr: std::net::SocketAddr =
        ready.split_whitespace().find_map(|w| w.strip_prefix("LISTEN=")).unwrap().parse().unwrap();
    let mut c = hio_tests::Client::connect(addr);
    c.echo(b"before");
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    for _ in 0..20 {
        c.echo(b"logged into a closed pipe");
        hio_tests::Client::connect(addr).echo(b"new peers are logged too");
    }
    assert!(child.0.try_wait().unwrap().is_none(), "the host died with its log");
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// `--log-format json`: every line one JSON object with the text format's
/// fields; the guest's lines keep their `guest` target.
#[test]
fn json_logs_are_one_object_per_line_with_the_same_fields() {
    let mut host = HostProcess::spawn_under(
        &[],
        &[("HIO_LOG", "info,hio_host=debug")],
        &guest("lines"),
        &["--log-format", "json", "--drain-timeout", "5"],
    );
    let mut c = host.connect();
    c.send(b"json\n");
    assert_eq!(c.recv_line(), "1 JSON\n");
    host.signal("TERM");
    hio_tests::eventually("the guest's drain line", || host.log().contains("draining: serving"));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(host.exit_within(Duration::from_secs(10)).success());
    let lines: Vec<serde_json::Value> =
        host.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(message)))
            .unwrap_or_else(|| panic!("no {message:?} in {lines:?}"))
    };
    let serving = find("serving");
    assert_eq!(serving["ha"], format!("127.0.0.1:{}", host.port));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["target"], "hio_host::server");
    let accepted = find("accepted");
    assert!(accepted["ca"].as_str().is_some_and(|ca| ca.starts_with("127.0.0.1:")) && accepted["id"].is_u64());
    assert_eq!(find("draining: serving")["target"], "guest");
}

/// The echo component renamed to speak `hio:tcp@version` (interface names
/// are length-prefixed strings: a version of the same length keeps it valid).
fn echo_speaking(version: &str) -> std::path::PathBuf {
    let mut bytes = std::fs::read(guest("echo")).unwrap();
    for iface in ["types", "host", "acceptor", "remoter", "guest", "batch", "handover"] {
        let (from, to) = (format!("hio:tcp/{iface}@0.2.3"), format!("hio:tcp/{iface}@{version}"));
        assert_eq!(from.len(), to.len());
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from.as_bytes()) {
            bytes[at + i..at + i + to.len()].copy_from_slice(to.as_bytes());
            at += i + to.len();
        }
    }
    let path = std::env::temp_dir().join(format!("echo-{version}-{}.wasm", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `check` and `run` agree on versions: a semver-compatible guest (any
/// 0.2.z) is served; another is refused by both with one line naming both.
#[test]
fn check_and_run_agree_on_wit_versions() {
    let later = echo_speaking("0.2.9");
    let out = Command::new(host_binary()).args(["check", later.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let mut host = HostProcess::spawn(&later, &[]);
    host.connect().echo(b"a 0.2.9 guest that uses nothing new is served");
    host.signal("TERM");
    assert!(host.exit_within(Duration::from_secs(10)).success());
    std::fs::remove_file(later).unwrap();

    let want = "guest speaks hio:tcp@0.3.0, this host speaks hio:tcp@0.2.x";
    let next = echo_speaking("0.3.0");
    let out = Command::new(host_binary()).args(["check", next.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert_eq!(text.lines().filter(|l| l.contains("problem")).count(), 1, "{text}");
    assert!(text.contains(want), "{text}");
    fails_with(&["run", next.to_str().unwrap(), "--listen", "127.0.0.1:0"], want);
    std::fs::remove_file(next).unwrap();
}
