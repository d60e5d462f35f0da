//! The wire protocol between `cargo xtask lab` (on the host) and the dom0 agent.
//!
//! One TCP connection carries one command. Every message is a frame: a tag byte,
//! a little-endian `u32` payload length, then the payload.
//!
//! Host to agent: one [`Request`] frame, then any number of stdin frames, an
//! end-of-stdin frame and kill frames. Closing the connection kills the command.
//! Agent to host: stdout and stderr frames, then a start-failure frame (if the
//! command could not be started) and finally one exit frame.

use std::io::{self, Read, Write};

/// Frame tags.
pub mod tag {
    /// Host: the request (argv, env, cwd, flags).
    pub const REQUEST: u8 = b'R';
    /// Host: bytes for the command's stdin.
    pub const STDIN: u8 = b'I';
    /// Host: end of stdin.
    pub const STDIN_EOF: u8 = b'E';
    /// Host: send a signal (payload: one `i32`) to the command's process group.
    pub const SIGNAL: u8 = b'K';
    /// Agent: bytes the command wrote to stdout.
    pub const STDOUT: u8 = b'O';
    /// Agent: bytes the command wrote to stderr.
    pub const STDERR: u8 = b'2';
    /// Agent: the command could not be started (payload: a message).
    pub const START_FAILED: u8 = b'F';
    /// Agent: the command ended (payload: one `i32`, the exit status; 128+N for signal N).
    pub const EXIT: u8 = b'X';
}

/// Largest payload a frame may carry (both sides refuse larger ones).
pub const MAX_FRAME: u32 = 16 << 20;

/// Commands the agent answers itself, without starting a process.
pub mod builtin {
    /// Answers exit status 0 if the agent is up and xenstored runs, 1 otherwise.
    pub const PING: &str = "xenlab:ping";
    /// Mounts the host share and starts the console daemon. Arguments: the
    /// workspace path (mount point, identical to the host's) and the console log directory.
    pub const ATTACH_SHARE: &str = "xenlab:attach-share";
    /// Syncs and powers dom0 off.
    pub const POWEROFF: &str = "xenlab:poweroff";
    /// Prefix: runs the command that follows from a copy of its program in
    /// dom0's RAM, kept while the program's size and modification time stay
    /// the same. A program on the host share is paged in over 9p (no cache)
    /// at every start: about a second of an emulated dom0's time for the
    /// fuzzer.
    pub const FROM_RAM: &str = "xenlab:from-ram";
}

/// What the host asks the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables, on top of the agent's own.
    pub env: Vec<(String, String)>,
    /// Working directory (empty: the agent's).
    pub cwd: String,
    /// Whether stdin frames follow (otherwise the command's stdin is empty).
    pub stdin: bool,
}

impl Request {
    /// Serialises the request into a frame payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(&mut out, self.argv.len() as u32);
        for a in &self.argv {
            put_str(&mut out, a);
        }
        put_u32(&mut out, self.env.len() as u32);
        for (k, v) in &self.env {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        put_str(&mut out, &self.cwd);
        out.push(u8::from(self.stdin));
        out
    }

    /// Parses a frame payload; `None` if it is malformed.
    pub fn decode(mut buf: &[u8]) -> Option<Request> {
        let n = get_u32(&mut buf)? as usize;
        let mut argv = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            argv.push(get_str(&mut buf)?);
        }
        let n = get_u32(&mut buf)? as usize;
        let mut env = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let k = get_str(&mut buf)?;
            env.push((k, get_str(&mut buf)?));
        }
        let cwd = get_str(&mut buf)?;
        let stdin = *buf.first()? != 0;
        Some(Request {
            argv,
            env,
            cwd,
            stdin,
        })
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn get_u32(buf: &mut &[u8]) -> Option<u32> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    *buf = rest;
    Some(u32::from_le_bytes(*head))
}

fn get_str(buf: &mut &[u8]) -> Option<String> {
    let n = get_u32(buf)? as usize;
    if buf.len() < n {
        return None;
    }
    let (s, rest) = buf.split_at(n);
    *buf = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Decodes the `i32` payload of an exit or signal frame.
pub fn decode_i32(payload: &[u8]) -> Option<i32> {
    Some(i32::from_le_bytes(payload.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = Request {
            argv: vec!["xl".into(), "info".into(), "".into()],
            env: vec![("RUST_LOG".into(), "debug=1".into())],
            cwd: "/work/main".into(),
            stdin: true,
        };
        assert_eq!(Request::decode(&r.encode()), Some(r));
    }

    #[test]
    fn truncated_requests_are_rejected() {
        let r = Request {
            argv: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        let bytes = r.encode();
        for cut in 0..bytes.len() {
            assert_eq!(Request::decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn frames_round_trip_and_oversized_frames_fail() {
        let mut buf = Vec::new();
        write_frame(&mut buf, tag::STDOUT, b"hello").unwrap();
        write_frame(&mut buf, tag::EXIT, &3i32.to_le_bytes()).unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((tag::STDOUT, b"hello".to_vec()))
        );
        let (t, p) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((t, decode_i32(&p)), (tag::EXIT, Some(3)));
        assert_eq!(read_frame(&mut r).unwrap(), None);

        let mut big = vec![tag::STDOUT];
        big.extend_from_slice(&(MAX_FRAME + 1).to_le_bytes());
        assert!(read_frame(&mut &big[..]).is_err());
    }
}
