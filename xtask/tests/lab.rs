//! Live tests of the lab: each runs real commands in the lab's dom0 (booting
//! the shared stock lab if it is not up).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn dom0_reports_hvm_and_hap() {
    let out = in_dom0(&["xl", "info"]);
    assert!(out.status.success());
    let info = text(&out.stdout);
    let caps = info
        .lines()
        .find_map(|l| l.strip_prefix("virt_caps"))
        .expect("xl info prints virt_caps");
    let caps: Vec<&str> = caps
        .trim_start_matches([' ', ':'])
        .split_whitespace()
        .collect();
    assert!(caps.contains(&"hvm"), "virt_caps {caps:?}");
    assert!(caps.contains(&"hap"), "virt_caps {caps:?}");
}

#[test]
fn stdout_stderr_and_exit_status_come_back() {
    let out = in_dom0(&["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert!(text(&out.stderr).contains("to-stderr\n"));
}

#[test]
fn large_output_arrives_whole() {
    let out = in_dom0(&["sh", "-c", "seq 1 200000"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert_eq!(s.lines().count(), 200_000);
    assert_eq!(s.lines().last(), Some("200000"));
}

#[test]
fn a_missing_dom0_command_is_reported() {
    let out = in_dom0(&["no-such-command-xyz", "--flag"]);
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot run `no-such-command-xyz`"),
        "stderr: {err}"
    );
}

#[test]
fn the_command_runs_in_the_same_directory_with_the_workspace_shared() {
    let here = std::env::current_dir().unwrap();
    let out = in_dom0(&["sh", "-c", "pwd; cat Cargo.toml | head -n 3"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert_eq!(s.lines().next(), Some(here.to_str().unwrap()));
    let local = std::fs::read_to_string("Cargo.toml").unwrap();
    let first3: Vec<&str> = local.lines().take(3).collect();
    assert_eq!(s.lines().skip(1).collect::<Vec<_>>(), first3);
}

#[test]
fn the_forwarded_port_carries_bytes_both_ways() {
    // Make sure the lab is up, then find its forwarded port.
    assert!(in_dom0(&["true"]).status.success());
    let fwd = status_field("forwarded:").expect("lab status shows the forwarded port");
    // "127.0.0.1:HOST -> dom0:GUEST"
    let (host, guest) = fwd.split_once(" -> dom0:").expect("forward format");
    let host_port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    let guest_port = guest.trim();

    let mut server = xtask(&[
        "lab",
        "run",
        "--interactive",
        "--",
        "nc",
        "-l",
        "-p",
        guest_port,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("start nc in dom0");
    // nc sends its stdin to the first connection it accepts.
    let mut to_dom0 = server.stdin.take().unwrap();
    to_dom0.write_all(b"hello from dom0\n").unwrap();
    to_dom0.flush().unwrap();
    // Connect until dom0's listener answers: the host side of a forward accepts
    // at once, and drops the connection when nothing listens in dom0.
    let t0 = Instant::now();
    let mut conn = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no listener in dom0"
        );
        if let Ok(c) = TcpStream::connect(("127.0.0.1", host_port)) {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut got = String::new();
            if BufReader::new(&c).read_line(&mut got).is_ok() && !got.is_empty() {
                assert_eq!(got, "hello from dom0\n");
                break c;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    conn.write_all(b"hello from the host\n").unwrap();
    let mut from_dom0 = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    from_dom0.read_line(&mut line).unwrap();
    assert_eq!(line, "hello from the host\n");
    drop(conn);
    drop(to_dom0);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_guest_started_with_xl_runs_and_its_console_reaches_the_host() {
    let cfg =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/known-pvh.cfg");
    assert!(
        cfg.exists(),
        "no sample guest at {}: run `cargo xtask guests build`",
        cfg.display()
    );
    let name = format!("labtest-{}", std::process::id());
    let out = in_dom0(&[
        "xl",
        "create",
        &cfg.to_string_lossy(),
        &format!("name=\"{name}\""),
    ]);
    assert!(out.status.success(), "xl create: {}", text(&out.stderr));
    // The console log is written by xenconsoled in dom0 onto the shared
    // workspace: read it on the host.
    let dir = status_field("guest consoles:").expect("lab status shows the console directory");
    let log = std::path::Path::new(&dir).join(format!("guest-{name}.log"));
    let t0 = Instant::now();
    let console = loop {
        let c = std::fs::read_to_string(&log).unwrap_or_default();
        if c.contains("EXIT 25") || t0.elapsed() > Duration::from_secs(60) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = in_dom0(&["xl", "destroy", &name]);
    let _ = std::fs::remove_file(&log);
    assert!(
        console.contains("xenprobe guest known mode=pvh"),
        "console: {console}"
    );
    assert!(console.contains("EXIT 25"), "console: {console}");
}

/// A client that goes away (killed, or its connection lost) stops its dom0
/// command with SIGTERM first, so that a harness or a campaign can clean its
/// guest up as on Ctrl-C; a command that ignores SIGTERM gets SIGKILL after
/// the agent's grace period. What the command prints meanwhile is read and
/// dropped.
#[test]
fn a_killed_client_stops_its_command_with_sigterm_then_sigkill() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/labtest-term")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let polite = dir.join("polite");
    let stubborn = dir.join("stubborn");
    let p = polite.display();
    let s = stubborn.display();
    let scripts = [
        // Cleaning up prints more than a pipe holds: the output of a command
        // whose client is gone must still be drained, without EPIPE.
        format!("trap 'seq 1 30000; echo TERM > {p}.term; exit 3' TERM; echo $$ > {p}.pid; while :; do sleep 0.2; done"),
        format!("trap '' TERM; echo $$ > {s}.pid; while :; do sleep 0.2; done"),
    ];
    let mut clients: Vec<_> = scripts
        .iter()
        .map(|script| {
            xtask(&["lab", "run", "--", "sh", "-c", script])
                .stdout(Stdio::null())
                .spawn()
                .expect("start a command in dom0")
        })
        .collect();
    let pid_of = |f: &std::path::Path| {
        let t0 = Instant::now();
        loop {
            let pid = std::fs::read_to_string(f.with_extension("pid")).unwrap_or_default();
            if !pid.trim().is_empty() {
                return pid.trim().to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{} did not start",
                f.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let _ = pid_of(&polite);
    let stubborn_pid = pid_of(&stubborn);
    for c in &mut clients {
        c.kill().expect("SIGKILL the client");
        let _ = c.wait();
    }
    let killed = Instant::now();
    let alive = |pid: &str| {
        in_dom0(&["sh", "-c", &format!("kill -0 {pid}")])
            .status
            .success()
    };

    // The polite command ran its SIGTERM handler.
    loop {
        // `echo TERM > FILE` creates the file before it writes: an empty
        // read is the handler still running.
        if let Ok(t) = std::fs::read_to_string(polite.with_extension("term")) {
            if !t.is_empty() {
                assert_eq!(t.trim(), "TERM");
                break;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the command of a killed client got no SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The stubborn one outlives SIGTERM, then is killed.
    assert!(
        alive(&stubborn_pid),
        "a command ignoring SIGTERM was killed at once"
    );
    while alive(&stubborn_pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "a command ignoring SIGTERM is still running 60 s after its client was killed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C on the client is sent to the command in dom0 as SIGINT; the
/// command's last output and its exit status still come back.
#[test]
fn ctrl_c_reaches_the_command_and_its_last_output_comes_back() {
    let mut client = xtask(&[
        "lab",
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo got SIGINT; exit 5' INT; echo ready; while :; do sleep 0.2; done",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("start a command in dom0");
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let sent = std::process::Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "got SIGINT\n");
    let status = client.wait().unwrap();
    assert_eq!(status.code(), Some(5), "{status:?}");
}
