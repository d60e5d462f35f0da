//! A minimal QMP (QEMU Machine Protocol) client: enough to stop, migrate to a
//! file, poll the migration, continue and quit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// A QMP session with one QEMU.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying until `timeout`, QEMU may still be creating the
    /// socket) and negotiates capabilities.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let t0 = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > timeout => {
                    return Err(e).with_context(|| format!("connecting to {}", socket.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(&line).with_context(|| format!("bad QMP line: {line}"))
    }

    /// Runs a command and returns its `return` value (events are skipped).
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let msg = json!({ "execute": cmd, "arguments": args });
        writeln!(self.writer, "{msg}")?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {cmd}: {}", e.get("desc").unwrap_or(e));
            }
        }
    }

    /// Waits until an incoming or outgoing migration is over; errors if it failed.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => bail!(
                    "migration {}: {}",
                    r["status"],
                    r.get("error-desc").and_then(Value::as_str).unwrap_or("")
                ),
                _ => {}
            }
            if t0.elapsed() > timeout {
                bail!("migration did not finish within {} s", timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
