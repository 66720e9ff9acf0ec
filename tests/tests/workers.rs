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
    // SIGTERM drains every worker: each keeps serving its connections
    // until their peers are done, then the process exits.
    host.signal("TERM");
    hio_tests::eventually("both workers draining", || host.log().matches("draining: listener closed").count() == 2);
    for c in &mut clients {
        c.echo(b"while draining");
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut host = host;
    let status = host.child.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    for c in &mut clients {
        assert_eq!(c.recv_until_end(), (Vec::new(), hio_tests::Ending::Fin), "a connection cut at exit");
    }
}

#[test]
fn a_second_process_cannot_share_the_port_whatever_the_workers() {
    for (first, second) in [("2", "2"), ("2", "1"), ("1", "2")] {
        let host = HostProcess::spawn(&guest("echo"), &["--workers", first]);
        hio_tests::eventually("the first host serving", || {
            host.log().matches("serving").count() == first.parse::<usize>().unwrap()
        });
        let listen = format!("127.0.0.1:{}", host.port);
        let mut second_host = std::process::Command::new(hio_tests::host_binary());
        second_host.args(["run", guest("upper").to_str().unwrap(), "--listen", &listen, "--workers", second]);
        let out = hio_tests::output_within(&mut second_host, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("a second host (--workers {second}) serves beside --workers {first}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a second host (--workers {second}) started beside --workers {first}: {stderr}"
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hio-host:")).collect();
        assert!(errors.len() == 1 && errors[0].contains("cannot listen on"), "{stderr}");
        // Every connection still reaches the first host.
        for _ in 0..20 {
            host.connect().echo(b"only the echo host answers");
        }
    }
}

#[test]
fn of_two_hosts_started_at_once_on_one_port_only_one_serves() {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        // Each with a temporary directory of its own, as under systemd's
        // PrivateTmp: the port's lock must not live there.
        let start = |tmp: &str| {
            let tmp = std::env::temp_dir().join(format!("hio-race-{tmp}-{}", std::process::id()));
            std::fs::create_dir_all(&tmp).unwrap();
            let mut cmd = std::process::Command::new(hio_tests::host_binary());
            cmd.env("TMPDIR", tmp);
            cmd.args(["run", guest("echo").to_str().unwrap(), "--listen", &listen, "--workers", "2"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            hio_tests::KillOnDrop(cmd.spawn().unwrap())
        };
        let mut hosts = [start("a"), start("b")];
        // One of them exits 1; the other serves until killed.
        let mut exited = Vec::new();
        hio_tests::eventually("one host to give up", || {
            exited = hosts.iter_mut().filter_map(|h| h.0.try_wait().unwrap()).collect();
            !exited.is_empty()
        });
        std::thread::sleep(Duration::from_millis(300));
        exited = hosts.iter_mut().filter_map(|h| h.0.try_wait().unwrap()).collect();
        assert_eq!(exited.len(), 1, "both exited, or both serve: {exited:?}");
        assert_eq!(exited[0].code(), Some(1));
    }
}
