//! The blocking event loop: wait for a stop of the debuggee while watching
//! the connection for Ctrl-C and other client data.

use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::breakpoints::WatchKind as GdbWatchKind;

use crate::vmi::{Error, WatchKind};

use super::backend::{Debuggee, Stop};
use super::target::{tid_of, StubTarget};

/// How long one wait on the debuggee lasts before the connection is polled.
const POLL: Duration = Duration::from_millis(20);

/// [`BlockingEventLoop`] for a [`StubTarget`] over connection `C`.
pub struct EventLoop<D, C>(std::marker::PhantomData<(D, C)>);

/// The protocol's view of a [`Stop`].
pub fn stop_reason(stop: Stop) -> MultiThreadStopReason<u64> {
    match stop {
        Stop::Breakpoint { vcpu } => MultiThreadStopReason::SwBreak(tid_of(vcpu)),
        Stop::Watch { vcpu, addr, kind } => MultiThreadStopReason::Watch {
            tid: tid_of(vcpu),
            kind: match kind {
                WatchKind::Write => GdbWatchKind::Write,
                WatchKind::Read => GdbWatchKind::Read,
                WatchKind::Access => GdbWatchKind::ReadWrite,
            },
            addr,
        },
        Stop::Step { vcpu } | Stop::Trap { vcpu } => MultiThreadStopReason::SignalWithThread {
            tid: tid_of(vcpu),
            signal: Signal::SIGTRAP,
        },
        Stop::Interrupted { vcpu } => MultiThreadStopReason::SignalWithThread {
            tid: tid_of(vcpu),
            signal: Signal::SIGINT,
        },
        Stop::Exited(code) => MultiThreadStopReason::Exited(code),
        Stop::Crashed => MultiThreadStopReason::Terminated(Signal::SIGSEGV),
        Stop::Rebooted => MultiThreadStopReason::Terminated(Signal::SIGABRT),
        Stop::Destroyed => MultiThreadStopReason::Terminated(Signal::SIGKILL),
    }
}

fn ends(stop: Stop) -> bool {
    matches!(
        stop,
        Stop::Exited(_) | Stop::Crashed | Stop::Rebooted | Stop::Destroyed
    )
}

impl<D, C> BlockingEventLoop for EventLoop<D, C>
where
    D: Debuggee,
    C: ConnectionExt,
{
    type Target = StubTarget<D>;
    type Connection = C;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut StubTarget<D>,
        conn: &mut C,
    ) -> Result<Event<Self::StopReason>, WaitForStopReasonError<Error, <C as Connection>::Error>>
    {
        loop {
            if let Some(stop) = target.pending.take() {
                target.finished |= ends(stop);
                return Ok(Event::TargetStopped(stop_reason(stop)));
            }
            if !target.finished {
                match target.debuggee.wait(POLL) {
                    Ok(Some(stop)) => {
                        target.pending = Some(stop);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(WaitForStopReasonError::Target(e)),
                }
            }
            if conn
                .peek()
                .map_err(WaitForStopReasonError::Connection)?
                .is_some()
            {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            if target.finished {
                // Nothing runs any more: wait for the client only.
                std::thread::sleep(POLL);
            }
        }
    }

    fn on_interrupt(target: &mut StubTarget<D>) -> Result<Option<Self::StopReason>, Error> {
        if let Some(stop) = target.pending.take() {
            target.finished |= ends(stop);
            return Ok(Some(stop_reason(stop)));
        }
        if target.finished {
            return Ok(Some(stop_reason(Stop::Destroyed)));
        }
        target.debuggee.interrupt()?;
        Ok(Some(stop_reason(Stop::Interrupted { vcpu: 0 })))
    }
}
