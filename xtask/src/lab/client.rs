//! The host side of the agent protocol: run a command in dom0 and stream its output.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xenlab_proto::{builtin, decode_i32, read_frame, tag, write_frame, Request};

/// The agent of a running lab.
#[derive(Clone, Copy, Debug)]
pub struct Agent {
    addr: SocketAddr,
}

/// A finished command's captured output.
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Agent {
    /// The agent reachable on the host's loopback at `port`.
    pub fn on_port(port: u16) -> Self {
        Agent {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Whether the agent answers within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        let run = || -> Result<i32> {
            let mut s = TcpStream::connect_timeout(&self.addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let req = Request {
                argv: vec![builtin::PING.into()],
                ..Default::default()
            };
            write_frame(&mut s, tag::REQUEST, &req.encode())?;
            match read_frame(&mut s)? {
                Some((tag::EXIT, p)) => decode_i32(&p).context("bad exit frame"),
                _ => bail!("no answer"),
            }
        };
        matches!(run(), Ok(0))
    }

    /// Runs `req`, copying the command's output to `out` and `err`, feeding it
    /// `stdin` if given; returns its exit status.
    pub fn run(
        &self,
        req: &Request,
        stdin: Option<Box<dyn Read + Send>>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<i32> {
        let mut s = TcpStream::connect(self.addr)
            .with_context(|| format!("connecting to the lab agent at {}", self.addr))?;
        s.set_nodelay(true)?;
        let mut req = req.clone();
        req.stdin = stdin.is_some();
        write_frame(&mut s, tag::REQUEST, &req.encode())?;
        // Frames to the agent come from the stdin thread and the Ctrl-C
        // handler: one writer, behind a lock.
        let writer = Arc::new(Mutex::new(s.try_clone()?));
        if let Some(mut input) = stdin {
            let w = writer.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = send(&w, tag::STDIN_EOF, &[]);
                            break;
                        }
                        Ok(n) => {
                            if send(&w, tag::STDIN, &buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        let _current = Current::set(writer);
        let mut failed_start = None;
        loop {
            match read_frame(&mut s).context("reading from the lab agent")? {
                Some((tag::STDOUT, d)) => {
                    out.write_all(&d)?;
                    out.flush()?;
                }
                Some((tag::STDERR, d)) => {
                    err.write_all(&d)?;
                    err.flush()?;
                }
                Some((tag::START_FAILED, d)) => {
                    failed_start = Some(String::from_utf8_lossy(&d).into_owned());
                }
                Some((tag::EXIT, p)) => {
                    let code = decode_i32(&p).context("bad exit frame from the agent")?;
                    if let Some(msg) = failed_start {
                        writeln!(err, "{msg}")?;
                    }
                    return Ok(code);
                }
                Some((t, _)) => bail!("unexpected frame {t:#x} from the lab agent"),
                None => bail!(
                    "the lab agent closed the connection before the command ended \
                     (did dom0 crash? see the serial log)"
                ),
            }
        }
    }

    /// Runs `argv` in dom0 and captures its output.
    pub fn output(&self, argv: &[&str]) -> Result<Output> {
        let req = Request {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let code = self.run(&req, None, &mut o, &mut e)?;
        Ok(Output {
            code,
            stdout: o,
            stderr: e,
        })
    }
}

fn send(w: &Mutex<TcpStream>, t: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *s, t, payload)
}

/// The connection of the command this process is running in dom0, for the
/// Ctrl-C handler of [`forward_interrupts`].
static CURRENT: Mutex<Option<Arc<Mutex<TcpStream>>>> = Mutex::new(None);
/// Ctrl-C presses in a row (none more than [`PRESS_GAP`] after the one
/// before), and when the last one came.
static PRESSES: Mutex<(u32, Option<Instant>)> = Mutex::new((0, None));
/// Presses further apart start a new count (a REPL session interrupts many
/// `cont`s, each with one press).
const PRESS_GAP: Duration = Duration::from_secs(5);

/// Registers a connection in [`CURRENT`] while a command runs.
struct Current;

impl Current {
    fn set(w: Arc<Mutex<TcpStream>>) -> Current {
        *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        Current
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// From now on Ctrl-C (and SIGTERM) is sent to the command running in dom0
/// as SIGINT, and its output keeps arriving until it ends: a fuzz campaign
/// or a harness stops in order and says so. The third in a row (each within
/// 5 s of the one before) leaves at once; the agent then stops the command
/// itself (SIGTERM, SIGKILL 30 s later).
pub fn forward_interrupts() -> Result<()> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = install_forwarding());
    result
}

fn install_forwarding() -> Result<()> {
    ctrlc::set_handler(|| {
        let n = {
            let mut p = PRESSES.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            p.0 = match p.1 {
                Some(last) if now.duration_since(last) <= PRESS_GAP => p.0 + 1,
                _ => 1,
            };
            p.1 = Some(now);
            p.0
        };
        let current = CURRENT
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        match current {
            Some(w) if n < 3 => {
                let _ = send(&w, tag::SIGNAL, &libc::SIGINT.to_le_bytes());
                if n == 2 {
                    eprintln!("lab: interrupting the command in dom0 again; once more to leave it");
                }
            }
            _ => std::process::exit(130),
        }
    })
    .context("installing the Ctrl-C handler")
}
