//! A GDB/LLDB remote stub for a Xen guest, on `gdbstub`.
//!
//! vCPUs are threads (thread id = vCPU + 1); registers use our own x86-64
//! layout ([`crate::arch`]: GPRs, segments, FS/GS bases, control registers),
//! served as `target.xml` (GDB) and `qRegisterInfo` (LLDB), plus `qHostInfo`
//! and `qProcessInfo`. Software breakpoints (`Z0`), single step, continue,
//! Ctrl-C; stop reasons for breakpoints, steps, guest exit (with the exit
//! code when the guest image is given), crash and shutdown. Detaching (`D`,
//! `k` or a dropped connection) removes every breakpoint and lets the guest
//! run; the stub never destroys the domain.
//!
//! The debugger loads the guest ELF itself (`file`, `target create`).
//!
//! # A session in the lab
//! ```text
//! # dom0: the guest created paused, the stub attached (it stops the guest)
//! cargo xtask lab run -- xl create -p target/guests/known-pvh.cfg
//! cargo xtask lab run -- sh -c 'setsid target/debug/xenprobe gdbserver known-pvh \
//!     --port 1234 --bind 0.0.0.0 --symbols target/guests/known-pvh >stub.log 2>&1 &'
//! cargo xtask lab run -- xl unpause known-pvh   # drop xl's own pause
//! cargo xtask lab status                        # forwarded: 127.0.0.1:PORT -> dom0:1234
//! # host:
//! lldb target/guests/known-pvh
//! (lldb) gdb-remote 127.0.0.1:PORT
//! (lldb) breakpoint set -n known_compute
//! (lldb) continue                # stop reason = breakpoint 1.1
//! (lldb) register read rdi rsi cr3 fs_base
//! (lldb) thread step-inst
//! (lldb) memory write -s 8 &known_counter 0x4e
//! (lldb) continue                # Process 1 exited with status = 25
//! # or: gdb target/guests/known-pvh -ex 'target remote 127.0.0.1:PORT'
//! ```
//! `--bind 0.0.0.0` is needed in the lab: QEMU's port forward reaches dom0's
//! 10.0.2.15, not its loopback. Without `--symbols`, LLDB needs
//! `target modules load --file IMAGE --slide 0` after connecting, and a
//! guest exit is reported when Xen sees the shutdown (exit code 0).
//!
//! Layout follows `gdbstub`'s: [`target`] is the core target, one file per
//! protocol feature ([`breakpoints`], [`resume`] (continue and step),
//! [`registers`] (single-register access), [`info`] (host/process/thread
//! info)), [`event_loop`] waits for stops, [`xen`] adapts the VMI engine,
//! [`conn`] buffers the TCP connection (one segment per reply).
//!
//! [`serve_domain`] also serves a domain the caller keeps (`&mut Domain`):
//! a failed guest test ([`crate::testing::debug`]) and the fuzzer's crash
//! replay (`cargo xtask fuzz --reproduce CRASH --debug`) use it.

pub mod backend;
pub mod breakpoints;
pub mod conn;
pub mod event_loop;
pub mod info;
pub mod registers;
pub mod resume;
pub mod target;
pub mod xen;

#[cfg(test)]
mod fuzz_tests;

use std::net::{SocketAddr, TcpListener, TcpStream};

use gdbstub::conn::ConnectionExt;
use gdbstub::stub::{DisconnectReason, GdbStub};

pub use backend::{Debuggee, Stop};
pub use target::StubTarget;
pub use xen::{Attached, XenDebuggee};

/// Errors of a stub session.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    /// Listening or accepting failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The guest went away before a debugger connected.
    #[error("the guest is gone; no debugger connected")]
    GuestGone,
    /// The protocol session failed (connection or fatal target error).
    #[error("gdb session: {0}")]
    Session(String),
    /// Cleaning up the debuggee failed.
    #[error("detach: {0}")]
    Detach(#[from] crate::vmi::Error),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The debugger detached (`D`).
    Detached,
    /// The debugger asked to kill (`k`): the guest is detached, not destroyed.
    Killed,
    /// The guest exited with a code.
    Exited(u8),
    /// The guest ended by a crash/reboot/destroy (the signal reported).
    Terminated(String),
    /// The connection dropped or broke.
    ConnectionLost(String),
}

/// Packet buffer size: a 4 KiB memory read fits one packet.
pub const PACKET_BUFFER: usize = 0x2000 + 64;

/// Runs one protocol session on `conn`; the debuggee is *not* detached.
pub fn run_session<D, C>(target: &mut StubTarget<D>, conn: C) -> SessionEnd
where
    D: Debuggee,
    C: ConnectionExt,
    C::Error: std::fmt::Debug,
{
    // Room for a 4 KiB `m` reply (hex: 8 KiB) and its framing.
    let stub = match GdbStub::builder(conn)
        .packet_buffer_size(PACKET_BUFFER)
        .build()
    {
        Ok(s) => s,
        Err(e) => return SessionEnd::ConnectionLost(format!("gdbstub setup: {e:?}")),
    };
    match stub.run_blocking::<event_loop::EventLoop<D, C>>(target) {
        Ok(DisconnectReason::Disconnect) => SessionEnd::Detached,
        Ok(DisconnectReason::Kill) => SessionEnd::Killed,
        Ok(DisconnectReason::TargetExited(c)) => SessionEnd::Exited(c),
        Ok(DisconnectReason::TargetTerminated(s)) => SessionEnd::Terminated(format!("{s}")),
        Err(e) => SessionEnd::ConnectionLost(format!("{e:?}")),
    }
}

/// Binds the stub's listening socket.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, StubError> {
    TcpListener::bind(addr).map_err(|source| StubError::Io {
        what: format!("bind {addr}"),
        source,
    })
}

/// Serves an attached domain to one debugger: stops it, binds `addr`,
/// calls `on_listen` with the bound address, serves the session, then
/// detaches (breakpoints removed, guest running). This is what
/// `xenprobe gdbserver` runs, and what a "debug this crash" mode calls once
/// it has brought the guest to the interesting instruction. `elf` (the guest
/// image) lets the stub report the guest's exit code and crashes, and LLDB
/// place the image. `dom` is a [`crate::vmi::Domain`] (detached at the end)
/// or a `&mut Domain` (breakpoints removed, guest left running).
pub fn serve_domain<A: Attached>(
    dom: A,
    addr: SocketAddr,
    elf: Option<&std::path::Path>,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<SessionEnd, StubError> {
    let debuggee = XenDebuggee::new(dom, elf)?;
    let listener = listen(addr)?;
    on_listen(listener.local_addr().unwrap_or(addr));
    serve_one(&listener, debuggee)
}

/// Accepts a connection, giving up when the guest disappears meanwhile.
fn accept_while_alive<D: Debuggee>(
    listener: &TcpListener,
    debuggee: &mut D,
) -> Result<(TcpStream, SocketAddr), StubError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| StubError::Io { what, source }
    };
    listener.set_nonblocking(true).map_err(io("listen"))?;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).map_err(io("accept"))?;
                return Ok((stream, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if debuggee.gone() {
                    return Err(StubError::GuestGone);
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) => return Err(io("accept")(e)),
        }
    }
}

/// Accepts one debugger on `listener`, serves it until it detaches or the
/// guest ends, then detaches from the guest (breakpoints removed, guest
/// running).
pub fn serve_one<D: Debuggee>(
    listener: &TcpListener,
    debuggee: D,
) -> Result<SessionEnd, StubError> {
    let mut debuggee = debuggee;
    let (stream, peer) = accept_while_alive(listener, &mut debuggee)?;
    tracing::info!(%peer, "debugger connected");
    let mut target = StubTarget::new(debuggee);
    let end = run_session(&mut target, conn::BufferedConn::new(stream));
    tracing::info!(?end, "session ended");
    target.into_inner().detach()?;
    Ok(end)
}
