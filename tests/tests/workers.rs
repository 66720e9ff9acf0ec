//! `--workers N`: several event loops share one address; each has its own
//! guest instance and connections; signals reach them all.

use std::time::Duration;

use hio_tests::{Client, HostProcess, guest};

#[test]
fn two_workers_share_the_port_serve_swap_and_stop_together() {
    let host = HostProcess::spawn_under(&[], &[("HIO_LOG", "hio_host=debug")], &guest("echo"), &["--workers", "2"]);
    hio_tests::eventually("both workers serving", || host.log().matches("serving").count() == 2);
    let port = format!("serving ha=127.0.0.1:{} ", host.port);
    assert_eq!(host.log().matches(&port).count(), 2, "both on one port:\n{}", host.log());
    let mut clients: Vec<Client> = (0..40).map(|_| host.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.echo(format!("client {i}").as_bytes());
    }
    // The kernel spread the connections over both loops.
    let log = host.log();
    let accepted_by =
        |n: usize| log.lines().filter(|l| l.contains(&format!("worker{{n={n}}}")) && l.contains("accepted")).count();
    assert!(accepted_by(0) > 0 && accepted_by(1) > 0, "one worker took every connection:\n{log}");
    assert_eq!(accepted_by(0) + accepted_by(1), 40);
    // SIGHUP swaps every worker's guest.
    host.signal("HUP");
    hio_tests::eventually("both workers swapped", || host.log().matches("swapped guest").count() == 2);
    for c in &mut clients {
        c.echo(b"after the swap");
    }
    host.signal("TERM");
    let mut host = host;
    let status = host.child.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    for c in &mut clients {
        assert!(c.closed_by_server(Duration::from_secs(5)), "a connection left open at exit");
    }
}
