//! Running the guest: `continue`, stepping, `finish` and the backtrace.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::vmi::Event;

use super::breaks::watched_value;
use super::inspect::read_mem;
use super::{eval, eval_in, usage, where_am_i, INTERRUPT};
use crate::repl::session::{Session, SessionEnv};
use crate::repl::ReplError;

/// `stepi [N]`: N single instructions, then where the vCPU is.
pub(super) fn stepi(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let n = if rest.is_empty() {
        1
    } else {
        eval_in(s, rest)?
    };
    INTERRUPT.store(false, Ordering::SeqCst);
    for _ in 0..n {
        if INTERRUPT.swap(false, Ordering::SeqCst) {
            out.push_str("interrupted\n");
            break;
        }
        step_once(s, out)?;
    }
    where_am_i(s, out)
}

/// Lets the stopped guest run. A domain that another pause still holds (it
/// was created with `xl create -p`, or `xl pause`d) would never run and the
/// command would wait forever: it is stopped again and that is said.
fn resume_running(s: &mut Session) -> Result<(), ReplError> {
    let dom = s.dom()?;
    dom.resume()?;
    if dom.paused_elsewhere()? {
        dom.pause()?;
        return Err(ReplError::Usage(format!(
            "{} is still paused by a pause of its own (created with `xl create -p`, or \
             `xl pause`d): run `xl unpause {}` in dom0, then continue",
            dom.name(),
            dom.name()
        )));
    }
    Ok(())
}

/// Runs until an event worth reporting (conditions false: keep going).
pub(super) fn cont(
    s: &mut Session,
    limit: Option<Duration>,
    out: &mut String,
) -> Result<(), ReplError> {
    INTERRUPT.store(false, Ordering::SeqCst);
    let start = Instant::now();
    // Like gdb: a breakpoint under the current instruction does not stop
    // the continue that starts on it.
    let vcpu = s.vcpu;
    let dom = s.dom()?;
    if dom.is_stopped() {
        let rip = dom.regs(vcpu)?.rip;
        if s.bps.values().any(|b| b.addr == rip) {
            step_once(s, out)?;
        }
    }
    resume_running(s)?;
    loop {
        if INTERRUPT.swap(false, Ordering::SeqCst) {
            s.dom()?.pause()?;
            out.push_str("interrupted\n");
            return where_am_i(s, out);
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            s.dom()?.pause()?;
            out.push_str("time limit reached: stopped\n");
            return where_am_i(s, out);
        }
        match s.dom()?.wait_event(Duration::from_millis(100))? {
            Event::Timeout => continue,
            Event::Breakpoint {
                vcpu,
                id,
                addr,
                hits,
            } => {
                let num = s.bps.iter().find(|(_, b)| b.id == id).map(|(&n, _)| n);
                s.vcpu = vcpu;
                if let Some(n) = num {
                    if let Some(cond) = s.bps[&n].condition.clone() {
                        match eval(&cond, &mut SessionEnv::new(s)) {
                            Ok(0) => {
                                s.dom()?.resume()?;
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                let _ = writeln!(out, "condition {cond:?}: {e} (stopping)");
                            }
                        }
                    }
                    if let Some(b) = s.bps.get_mut(&n) {
                        b.stops += 1;
                    }
                }
                let label = num.map_or_else(|| format!("{id}"), |n| n.to_string());
                let _ = writeln!(
                    out,
                    "breakpoint {label} at {addr:#x}{} (vcpu {vcpu}, hit {hits})",
                    s.symbolize(addr)
                );
                return where_am_i(s, out);
            }
            Event::Watchpoint {
                vcpu,
                id,
                addr,
                hits,
                old,
                new,
            } => {
                s.vcpu = vcpu;
                let _ = writeln!(
                    out,
                    "watchpoint {} at {addr:#x}{} (vcpu {vcpu}, hit {hits}): old {} new {}",
                    id.0,
                    s.symbolize(addr),
                    watched_value(&old),
                    watched_value(&new)
                );
                return where_am_i(s, out);
            }
            Event::Step { vcpu, .. } | Event::Debug { vcpu, .. } => {
                s.vcpu = vcpu;
                out.push_str("debug event\n");
                return where_am_i(s, out);
            }
            Event::Cpuid {
                vcpu,
                leaf,
                subleaf,
                ..
            } => {
                s.vcpu = vcpu;
                let _ = writeln!(out, "cpuid marker {leaf:#x} (ecx {subleaf:#x})");
                return where_am_i(s, out);
            }
            Event::Shutdown { reason } => {
                let _ = writeln!(out, "the guest shut down: {reason:?}; detached");
                s.bps.clear();
                s.snapshots.clear();
                if let Some(dom) = s.dom.take() {
                    let _ = dom.detach();
                }
                return Ok(());
            }
        }
    }
}

fn step_once(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    match s.stopped()?.step(vcpu)? {
        Event::Step { .. } => Ok(()),
        Event::Shutdown { reason } => {
            let _ = writeln!(out, "the guest shut down: {reason:?}");
            Ok(())
        }
        other => {
            let _ = writeln!(out, "stopped by {other:?}");
            Ok(())
        }
    }
}

/// Runs to `addr` with a temporary breakpoint (unless one is there), until
/// `done` holds for the registers there.
fn run_to(
    s: &mut Session,
    addr: u64,
    done: impl Fn(&crate::vmi::Registers) -> bool,
    out: &mut String,
) -> Result<(), ReplError> {
    let existing = s.dom()?.breakpoints().into_iter().find(|b| b.addr == addr);
    let temp = match existing {
        Some(_) => None,
        None => Some(s.dom()?.add_breakpoint(addr)?),
    };
    let result = (|| -> Result<(), ReplError> {
        resume_running(s)?;
        loop {
            if INTERRUPT.swap(false, Ordering::SeqCst) {
                s.dom()?.pause()?;
                out.push_str("interrupted\n");
                return Ok(());
            }
            match s.dom()?.wait_event(Duration::from_millis(100))? {
                Event::Timeout => continue,
                Event::Breakpoint { vcpu, addr: a, .. } if a == addr => {
                    let r = s.dom()?.regs(vcpu)?;
                    if done(&r) {
                        s.vcpu = vcpu;
                        return Ok(());
                    }
                    s.dom()?.resume()?;
                }
                Event::Shutdown { reason } => {
                    let _ = writeln!(out, "the guest shut down: {reason:?}");
                    return Ok(());
                }
                other => {
                    let _ = writeln!(out, "stopped by {other:?}");
                    return Ok(());
                }
            }
        }
    })();
    if let Some(id) = temp {
        if let Some(dom) = s.dom.as_mut() {
            let _ = dom.remove_breakpoint(id);
        }
    }
    result
}

/// `nexti`: one instruction; a call runs to its return.
pub(super) fn nexti(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let r = s.stopped()?.regs(vcpu)?;
    let insn = s.dom()?.disassemble(r.rip, 1)?;
    match insn.first() {
        Some((a, len, text)) if text.starts_with("call") => {
            let ret = a.wrapping_add(*len as u64);
            let sp = r.rsp;
            run_to(s, ret, move |x| x.rsp >= sp, out)?;
        }
        _ => step_once(s, out)?,
    }
    if s.dom.is_some() {
        where_am_i(s, out)?;
    }
    Ok(())
}

/// The return address of the current function and the stack pointer after
/// the return: at the entry `[rsp]`, right after `push rbp` `[rsp+8]`, else
/// (frame set up) `[rbp+8]`.
fn return_address(s: &mut Session) -> Result<(u64, u64), ReplError> {
    let vcpu = s.vcpu;
    let r = s.stopped()?.regs(vcpu)?;
    let func = s
        .dom()?
        .symbols()
        .ok()
        .and_then(|y| y.symbolize(r.rip))
        .map(|(sym, off)| (sym.addr, off));
    let mut first = [0u8; 1];
    if let Some((start, _)) = func {
        let _ = read_mem(s, start, &mut first);
    }
    let slot = match func {
        Some((_, 0)) => r.rsp,
        Some((_, 1)) if first[0] == 0x55 => r.rsp.wrapping_add(8),
        _ => r.rbp.wrapping_add(8),
    };
    let ret = s
        .dom()?
        .read_u64_on(vcpu, slot)
        .map_err(|e| usage(format!("no return address at {slot:#x}: {e}")))?;
    Ok((ret, slot.wrapping_add(8)))
}

/// `finish`: runs until the current function returns, then prints RAX.
pub(super) fn finish(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let (ret, sp_after) = return_address(s)?;
    let _ = writeln!(out, "run till exit to {ret:#x}{}", s.symbolize(ret));
    run_to(s, ret, move |x| x.rsp >= sp_after, out)?;
    if s.dom.is_some() {
        let vcpu = s.vcpu;
        let rax = s.dom()?.regs(vcpu)?.rax;
        let _ = writeln!(out, "value returned: rax = {rax:#x} ({rax})");
        where_am_i(s, out)?;
    }
    Ok(())
}

/// `bt`: the frames of the current vCPU (ORC unwinding in a Linux kernel
/// whose symbols came from its image, else frame pointers), with source
/// lines where known.
pub(super) fn backtrace(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let frames = s.stopped()?.backtrace(vcpu, 64)?;
    for (i, f) in frames.iter().enumerate() {
        let at = f.lookup_pc();
        let name = s.symbolize(f.pc);
        let line = s
            .dom
            .as_ref()
            .and_then(|d| d.symbols().ok())
            .and_then(|syms| syms.line(at))
            .map(|l| format!(" at {}:{}", l.file, l.line))
            .unwrap_or_default();
        let _ = writeln!(out, "#{i:<2} {:#x}{name}{line}", f.pc);
    }
    Ok(())
}
