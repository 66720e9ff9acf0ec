//! Untrusted guests: one that loops forever or allocates without end is
//! stopped by its limits and restarted; the host, the other connections and
//! their bytes are untouched.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hio_host::stats::Stats;
use hio_tests::{Ending, TestServer};

fn misbehaves_on(word: &[u8]) -> Arc<Stats> {
    misbehaves_within(word, |_| {})
}

fn misbehaves_within(word: &[u8], limits: impl FnOnce(&mut hio_host::Limits)) -> Arc<Stats> {
    misbehaves_after(Duration::ZERO, word, limits)
}

/// `idle`: how long the host sits with nothing to do before the word.
/// Returns the host's counters.
fn misbehaves_after(idle: Duration, word: &[u8], limits: impl FnOnce(&mut hio_host::Limits)) -> Arc<Stats> {
    let server = TestServer::start_with("evil", |c| {
        c.limits.deadline = Duration::from_millis(50);
        c.limits.memory = 16 << 20;
        limits(&mut c.limits);
    });
    let mut a = server.connect();
    a.echo(b"before");
    // Bytes in flight on a bystander while the guest misbehaves.
    let mut b = server.connect();
    b.echo(b"b before");
    let mut bad = server.connect();
    bad.echo(b"harmless");
    std::thread::sleep(idle);
    let start = Instant::now();
    bad.send(word);
    b.stream.write_all(b"b during").unwrap();
    assert_eq!(bad.recv_until_end(), (Vec::new(), Ending::Reset), "the offending connection is reset");
    assert!(start.elapsed() < Duration::from_secs(5), "the guest stalled the host for {:?}", start.elapsed());
    assert_eq!(b.recv_exact(8), b"b during", "a bystander's bytes survived");
    for i in 0..10 {
        a.echo(format!("a after {i}").as_bytes());
    }
    server.connect().echo(b"new connections too");
    server.stats.clone()
}

#[test]
fn a_guest_that_loops_forever_is_stopped_at_its_deadline() {
    assert!(misbehaves_on(b"spin").traps_deadline.get() >= 1);
}

#[test]
fn a_guest_that_loops_after_the_host_sat_idle_is_still_stopped_at_its_deadline() {
    // Long enough for the epoch clock to go to sleep (it does when no guest
    // call has run for 100 ms); the looping call must wake it.
    misbehaves_after(Duration::from_millis(600), b"spin", |_| {});
}

#[test]
fn a_guest_that_loops_forever_is_stopped_when_its_fuel_runs_out() {
    // A deadline far away: only fuel can stop it in time.
    let stats = misbehaves_within(b"spin", |l| {
        l.deadline = Duration::from_secs(60);
        l.fuel = Some(50_000_000);
    });
    assert!(stats.traps_fuel.get() >= 1);
}

#[test]
fn a_guest_that_allocates_without_end_is_stopped_at_its_memory_limit() {
    assert!(misbehaves_on(b"hog").traps_memory.get() >= 1);
}

#[test]
fn a_guest_cannot_queue_without_end_to_a_peer_that_does_not_read() {
    let server = TestServer::start("evil");
    let mut a = server.connect();
    a.echo(b"before");
    let mut flooded = server.connect();
    flooded.send(b"flood");
    let mut reporter = server.connect();
    hio_tests::eventually("the flood to be refused", || {
        reporter.send(b"report");
        let line = reporter.recv_line();
        line != "no flood yet\n"
    });
    reporter.send(b"report");
    assert_eq!(reporter.recv_line(), "8 MiB queued, then: send queue full\n");
    a.echo(b"others are still served");
    // What was queued is delivered whole once the peer reads.
    let got = flooded.recv_exact(8 << 20);
    assert!(got.iter().all(|&b| b == b'f'));
}

#[test]
fn a_guest_that_forges_handles_is_refused_without_harm() {
    let stats = misbehaves_on(b"forge");
    assert!(stats.traps_forged_handle.get() >= 1);
    assert_eq!(stats.traps_other.get(), 0);
}

#[test]
fn a_guest_that_traps_in_start_never_replaces_a_working_one() {
    // As the first guest: a clear startup error, no server.
    let mut config = hio_tests::Config::new(hio_tests::guest("badstart"));
    config.ha = "127.0.0.1:0".parse().unwrap();
    let err = match TestServer::try_start(config) {
        Ok(_) => panic!("a guest that traps in start was served"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("panicked (trapped on unreachable code) in start"), "{err}");
    // As a swap: refused, the old guest keeps serving.
    let server = TestServer::start("echo");
    let mut c = server.connect();
    c.echo(b"before");
    let outcome = server.swapper().swap(Some(hio_tests::guest("badstart"))).recv_timeout(hio_tests::PATIENCE).unwrap();
    assert!(
        outcome
            .expect_err("swapped to a guest that cannot start")
            .contains("panicked (trapped on unreachable code) in start")
    );
    c.echo(b"old guest still serving");
}

/// The host's own log names why each misbehaving guest was stopped.
#[test]
fn the_log_names_each_cause() {
    let cases: [(&[&str], &[u8], &str); 5] = [
        (&["--deadline-ms", "50"], b"spin", "ran past its 50 ms deadline in service"),
        (
            &["--deadline-ms", "60000", "--fuel", "50000000"],
            b"spin",
            "burnt all its fuel (50000000 per call) in service",
        ),
        (&["--guest-memory-mib", "16"], b"hog", "hit its memory limit of 16 MiB in service"),
        (&[], b"forge", "unknown handle index"),
        (&[], b"panic", "guest panicked"),
    ];
    for (flags, word, cause) in cases {
        let name = if word == b"panic" { "crashy" } else { "evil" };
        let host = hio_tests::HostProcess::spawn(&hio_tests::guest(name), flags);
        let mut bystander = host.connect();
        bystander.echo(b"before");
        let mut bad = host.connect();
        bad.send(word);
        assert!(bad.closed_by_server(Duration::from_secs(5)), "{name} on {word:?} was not stopped\n{}", host.log());
        bystander.echo(b"after");
        hio_tests::eventually("the cause in the log", || host.log().contains(cause));
    }
}

#[test]
fn out_of_file_descriptors_new_peers_are_refused_cleanly_and_served_again_later() {
    // 48 descriptors: some for the host itself, the rest for connections.
    let host = hio_tests::HostProcess::spawn_under(&["prlimit", "--nofile=48:48"], &[], &hio_tests::guest("echo"), &[]);
    let mut served = Vec::new();
    let mut refused = 0;
    for i in 0..80 {
        let mut c = host.connect();
        c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.stream.write_all(b"hi");
        let mut got = [0u8; 2];
        match c.stream.read(&mut got) {
            Ok(2) => served.push(c),
            Ok(0) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            other => panic!("connection {i} neither served nor refused: {other:?}\n{}", host.log()),
        }
    }
    eprintln!("{} served, {refused} refused", served.len());
    assert!(served.len() >= 10 && refused >= 10, "{} served, {refused} refused\n{}", served.len(), host.log());
    assert!(host.log().contains("out of file descriptors"), "{}", host.log());
    for c in &mut served {
        c.echo(b"still served");
    }
    // Descriptors freed: new peers are served again.
    served.clear();
    hio_tests::eventually("a new connection served", || {
        let mut c = host.connect();
        c.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut got = [0u8; 2];
        c.stream.write_all(b"hi").is_ok() && matches!(c.stream.read(&mut got), Ok(2))
    });
}
