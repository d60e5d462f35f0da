//! The lab's dom0 agent: listens on a TCP port, runs one command per
//! connection and streams its output back (see `proto.rs` for the frames).
//!
//! It runs as a child of dom0's init. It starts a process only for real
//! commands (each fork+exec costs about 15 ms under emulation); `xenlab:ping`
//! is answered directly.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use xenlab_proto::{builtin, decode_i32, read_frame, tag, write_frame, Request};

/// How long output may still arrive after the command exits (a background
/// grandchild holding the pipes open must not hold the answer back forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How long a command whose client went away has to end after SIGTERM
/// before the agent sends SIGKILL: above the 20 s that xenprobe's own
/// signal handler gives a program stopping in order (a fuzz campaign writes
/// its last report and restores its guest) before it repairs what is left.
const TERM_GRACE: Duration = Duration::from_secs(30);

fn main() {
    let port = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(7000);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("xenlab-agent: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("xenlab-agent: listening on port {port}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    if let Err(e) = serve(stream) {
                        eprintln!("xenlab-agent: connection ended: {e}");
                    }
                });
            }
            Err(e) => eprintln!("xenlab-agent: accept failed: {e}"),
        }
    }
}

/// Whether xenstored runs: without it every Xen tool hangs, so a lab whose
/// xenstored died counts as broken (and the host restarts it).
fn xenstored_alive() -> bool {
    let Ok(pid) = std::fs::read_to_string("/run/xenstored.pid") else {
        return false;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

type Shared = Arc<Mutex<TcpStream>>;

fn send(out: &Shared, t: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *s, t, payload)
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = stream.try_clone()?;
    let out: Shared = Arc::new(Mutex::new(stream));
    let req = match read_frame(&mut input)? {
        Some((tag::REQUEST, p)) => Request::decode(&p),
        _ => None,
    };
    let Some(req) = req else {
        send(&out, tag::START_FAILED, b"malformed request")?;
        return send(&out, tag::EXIT, &2i32.to_le_bytes());
    };
    if req.argv.first().map(String::as_str) == Some(builtin::PING) {
        let code: i32 = if xenstored_alive() { 0 } else { 1 };
        return send(&out, tag::EXIT, &code.to_le_bytes());
    }
    let mut child = match spawn(&req) {
        Ok(c) => c,
        Err((code, msg)) => {
            send(&out, tag::START_FAILED, msg.as_bytes())?;
            return send(&out, tag::EXIT, &code.to_le_bytes());
        }
    };
    let pgid = child.id() as i32;
    let finished = Arc::new(AtomicBool::new(false));

    let (done_tx, done_rx) = mpsc::channel();
    let mut pumps = 0;
    if let Some(o) = child.stdout.take() {
        pumps += 1;
        pump(o, tag::STDOUT, out.clone(), done_tx.clone());
    }
    if let Some(e) = child.stderr.take() {
        pumps += 1;
        pump(e, tag::STDERR, out.clone(), done_tx.clone());
    }
    drop(done_tx);

    let stdin = child.stdin.take();
    {
        let finished = finished.clone();
        thread::spawn(move || forward_input(input, stdin, pgid, &finished));
    }

    let status = child.wait()?;
    finished.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + DRAIN_AFTER_EXIT;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    send(&out, tag::EXIT, &code.to_le_bytes())?;
    let s = out.lock().unwrap_or_else(|p| p.into_inner());
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn spawn(req: &Request) -> Result<Child, (i32, String)> {
    let argv = match req.argv.split_first() {
        Some((first, rest)) if first == builtin::FROM_RAM => rest,
        _ => &req.argv[..],
    };
    let Some((prog, args)) = argv.split_first() else {
        return Err((2, "empty command".into()));
    };
    let from_ram = argv.len() < req.argv.len();
    if from_ram {
        let path = std::path::Path::new(&req.cwd).join(prog);
        match ram_copy(&path) {
            Ok(copy) => {
                if let Ok(child) = command(req, &copy, args).spawn() {
                    return Ok(child);
                }
            }
            Err(e) => eprintln!("xenlab-agent: {prog} runs from the share: {e}"),
        }
    }
    command(req, prog, args).spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        let place = if req.cwd.is_empty() {
            String::new()
        } else {
            format!(" (in {})", req.cwd)
        };
        (code, format!("dom0: cannot run `{prog}`{place}: {e}"))
    })
}

/// Where [`builtin::FROM_RAM`] keeps its copies.
const RAM_BIN: &str = "/run/xenlab-bin";

/// A copy of program `prog` in dom0's RAM (`RAM_BIN/NAME/SIZE-MTIME/NAME`),
/// made unless it is there; older copies of the same name are removed.
fn ram_copy(src: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let meta = std::fs::metadata(src)?;
    let name = src
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let dir = std::path::Path::new(RAM_BIN).join(name);
    let key = format!("{}-{}.{}", meta.len(), meta.mtime(), meta.mtime_nsec());
    let copy = dir.join(&key).join(name);
    if copy.is_file() {
        return Ok(copy);
    }
    if let Ok(old) = std::fs::read_dir(&dir) {
        for e in old.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let parent = dir.join(&key);
    std::fs::create_dir_all(&parent)?;
    let tmp = parent.join(format!(".tmp-{}", COPIES.fetch_add(1, Ordering::Relaxed)));
    std::fs::copy(src, &tmp)?;
    std::fs::rename(&tmp, &copy)?;
    Ok(copy)
}

fn command(req: &Request, prog: impl AsRef<std::ffi::OsStr>, args: &[String]) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !req.cwd.is_empty() {
        cmd.current_dir(&req.cwd);
    }
    cmd
}

/// Streams one of the command's outputs to the client. Once the client is
/// gone the output is still read and dropped: a closed pipe would kill the
/// command with EPIPE while it cleans up after its SIGTERM.
fn pump(mut from: impl Read + Send + 'static, t: u8, out: Shared, done: mpsc::Sender<()>) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut client = true;
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if client && send(&out, t, &buf[..n]).is_err() {
                        client = false;
                    }
                }
            }
        }
        let _ = done.send(());
    });
}

/// Feeds stdin frames to the command; a closed connection stops it
/// (see [`stop_group`]).
fn forward_input(
    mut input: TcpStream,
    mut stdin: Option<std::process::ChildStdin>,
    pgid: i32,
    finished: &AtomicBool,
) {
    loop {
        match read_frame(&mut input) {
            Ok(Some((tag::STDIN, data))) => {
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&data).is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(Some((tag::STDIN_EOF, _))) => stdin = None,
            Ok(Some((tag::SIGNAL, p))) => {
                if let Some(sig) = decode_i32(&p) {
                    if !finished.load(Ordering::SeqCst) {
                        // SAFETY: kill(2) on our own child's process group.
                        unsafe { libc::kill(-pgid, sig) };
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                stop_group(pgid, finished);
                return;
            }
        }
    }
}

/// Stops the command of a client that went away (killed, or its connection
/// lost): SIGTERM to its process group first, so that a harness or a fuzz
/// campaign cleans its guest up (unpaused, breakpoints removed, vm_event off)
/// as it does on Ctrl-C; SIGKILL only if it is still running
/// [`TERM_GRACE`] later.
fn stop_group(pgid: i32, finished: &AtomicBool) {
    if finished.load(Ordering::SeqCst) {
        return;
    }
    eprintln!("xenlab-agent: client went away; SIGTERM to process group {pgid}");
    // SAFETY: kill(2) on our own child's process group.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if finished.load(Ordering::SeqCst) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("xenlab-agent: process group {pgid} outlived SIGTERM by {TERM_GRACE:?}; SIGKILL");
    // SAFETY: as above (`finished` is still false: the leader has not been
    // reaped, so the group id is still ours).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}
