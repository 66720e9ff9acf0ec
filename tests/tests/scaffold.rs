//! The path of a policy author outside this repository, as the README
//! gives it: `hio-host new` in a temporary directory, `cargo test` there
//! (the scaffold's own tests, through `hio-test`: a swap and a crash
//! included), `hio-host build`, then serve the component and talk to it.
//! Builds go to `target/scaffold` so a warm run reuses them.

use std::process::Command;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hio_tests::{HostProcess, host_binary, root};

/// Run `cmd` to its end (at most `within`), its output in files under
/// `dir` (cargo's can pass a pipe's buffer): (success, stdout, stderr).
fn run_logged(cmd: &mut Command, dir: &Path, name: &str, within: Duration) -> (bool, String, String) {
    let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start the command");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("{name} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.success(), read(&out), read(&err))
}

#[test]
fn a_new_guest_is_tested_built_checked_and_served() {
    let dir = std::env::temp_dir().join(format!("hio-scaffold-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let crate_dir = dir.join("my-policy");
    let made = Command::new(host_binary()).arg("new").arg(&crate_dir).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // The versions this workspace is tested with.
    std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let target = root().join("target/scaffold");
    let patience = Duration::from_secs(1500);

    let mut test = Command::new("cargo");
    test.current_dir(&crate_dir).args(["test", "--quiet"]).env("CARGO_TARGET_DIR", &target);
    let (ok, text, err) = run_logged(&mut test, &dir, "cargo-test", patience);
    assert!(ok && text.contains("3 passed"), "{text}\n{err}");

    let mut build = Command::new(host_binary());
    build.arg("build").arg(&crate_dir).env("CARGO_TARGET_DIR", &target);
    let (ok, said, err) = run_logged(&mut build, &dir, "hio-host-build", patience);
    assert!(ok, "{said}\n{err}");
    let component = target.join("wasm/my-policy.wasm");
    assert!(said.contains(&format!("{} fits the hio:tcp/server world", component.display())), "{said}");

    numbers_lines(&component);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Serve `component` and check it numbers lines, partial ones included.
fn numbers_lines(component: &Path) {
    // An interpreter's first start may take more than a cycle's 100 ms.
    let mut host = HostProcess::spawn(component, &["--deadline-ms", "2000"]);
    let mut peer = host.connect();
    peer.send(b"hello\nwor");
    assert_eq!(peer.recv_line(), "1: hello\n");
    peer.send(b"ld\n");
    assert_eq!(peer.recv_line(), "2: world\n");
    host.signal("TERM");
    drop(peer);
    assert!(host.exit_within(Duration::from_secs(10)).success());
}

/// `hio-host new --lang LANG`, then `hio-host build`: the component it
/// reports fitting.
fn new_and_build(lang: &str, path: &[&Path]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("hio-scaffold-{lang}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let app = dir.join(format!("{lang}-policy"));
    let made = Command::new(host_binary()).args(["new", "--lang", lang]).arg(&app).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut dirs: Vec<PathBuf> = path.iter().map(|p| p.to_path_buf()).collect();
    dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    let mut build = Command::new(host_binary());
    build.arg("build").arg(&app).env("PATH", std::env::join_paths(dirs).unwrap());
    let (ok, said, err) = run_logged(&mut build, &dir, "hio-host-build", Duration::from_secs(600));
    assert!(ok, "{said}\n{err}");
    let component = app.join(format!("target/wasm/{lang}-policy.wasm"));
    assert!(said.contains(&format!("{} fits the hio:tcp/server world", component.display())), "{said}");
    (dir, component)
}

#[test]
fn a_new_python_guest_is_built_checked_and_served() {
    // componentize-py from the suite's venv, as from a user's PATH.
    let (dir, component) = new_and_build("python", &[&root().join("target/pyenv/bin")]);
    numbers_lines(&component);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_new_javascript_guest_is_built_checked_and_served() {
    let (dir, component) = new_and_build("js", &[]);
    numbers_lines(&component);
    std::fs::remove_dir_all(dir).unwrap();
}
