//! The REPL's commands. Each returns its output as text or a one-line error.
//! This module parses a line and dispatches; the commands live by topic:
//! [`domain`] (attach, symbols), [`run`] (continue, stepping, backtrace),
//! [`inspect`] (registers, memory, disassembly), [`breaks`] (breakpoints and
//! watchpoints) and [`snapshot`].

use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

mod breaks;
mod domain;
mod inspect;
mod run;
mod snapshot;

use super::expr::eval;
use super::session::{Session, SessionEnv};
use super::ReplError;

/// Set by Ctrl-C while the guest runs under `continue`.
pub static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Command names (for completion and help).
pub const COMMANDS: &[(&str, &str)] = &[
    ("help", "this list"),
    ("list", "list domains"),
    ("attach", "attach DOMAIN: attach by name or id (stops it)"),
    ("detach", "remove breakpoints, let the guest run, detach"),
    ("info", "domain, capabilities and state"),
    (
        "symbols",
        "symbols FILE: the guest's symbols (an ELF image; a Linux vmlinux, System.map or kallsyms, \
         slid by KASLR)",
    ),
    (
        "module",
        "module KO: a Linux module's symbols and lines where the kernel loaded it",
    ),
    (
        "sym",
        "sym NAME|EXPR: symbol lookup (name -> address, address -> name+off, file:line)",
    ),
    ("pause", "stop the domain"),
    (
        "continue",
        "continue [SECONDS]: run until an event (Ctrl-C stops)",
    ),
    ("regs", "regs [all]: registers of the current vCPU"),
    ("vcpu", "vcpu N: select a vCPU"),
    (
        "print",
        "print EXPR: evaluate (`*(u64*)(rsp+8)`, `&sym+0x10`, `$rax*2`)",
    ),
    ("set", "set $REG = EXPR | set *(uN*)ADDR = EXPR"),
    (
        "x",
        "x/NF ADDR: examine memory; F = x d u c s i, size b h w g (x/4xg $rsp)",
    ),
    ("write", "write ADDR BYTE... | write ADDR \"text\""),
    ("disas", "disas [ADDR] [N]: disassemble"),
    ("break", "break LOCATION [if COND]"),
    ("delete", "delete N|all"),
    ("breakpoints", "list breakpoints"),
    (
        "watch",
        "watch ADDR|SYMBOL [LEN] [w|rw]: watchpoint (debug registers; LEN default: the \
         symbol's size, else 8)",
    ),
    (
        "rwatch",
        "rwatch ADDR: read watchpoint (x86 cannot: says why)",
    ),
    (
        "awatch",
        "awatch ADDR [LEN]: read/write watchpoint (= watch ADDR LEN rw)",
    ),
    ("watchpoints", "list watchpoints"),
    ("unwatch", "unwatch N|all: delete watchpoints"),
    ("stepi", "stepi [N]: one instruction"),
    ("nexti", "nexti: one instruction, calls run to their return"),
    ("finish", "run until the current function returns"),
    ("bt", "backtrace by frame pointers"),
    (
        "snapshot",
        "snapshot take NAME | restore NAME | list | drop NAME",
    ),
    ("quit", "detach and leave"),
];

/// Aliases of commands.
fn canonical(cmd: &str) -> &str {
    match cmd {
        "c" | "cont" => "continue",
        "p" => "print",
        "b" | "br" => "break",
        "d" | "del" => "delete",
        "si" | "step" | "s" => "stepi",
        "ni" | "next" | "n" => "nexti",
        "registers" | "r" | "reg" => "regs",
        "backtrace" | "where" => "bt",
        "domains" | "ls" => "list",
        "q" | "exit" => "quit",
        "interrupt" | "stop" => "pause",
        "disassemble" => "disas",
        "snap" => "snapshot",
        "lookup" => "sym",
        other => other,
    }
}

/// What the loop should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading commands.
    Continue,
    /// Leave the REPL.
    Quit,
}

/// A usage error (wrong arguments).
fn usage(s: impl Into<String>) -> ReplError {
    ReplError::Usage(s.into())
}

/// Runs one command line.
pub fn execute(s: &mut Session, line: &str, out: &mut String) -> Result<Flow, ReplError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Flow::Continue);
    }
    // `x/4xg ADDR`: the format is glued to the command.
    let (cmd, rest) = match line.find(|c: char| c.is_whitespace() || c == '/') {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    };
    match canonical(cmd) {
        "help" => {
            for (c, h) in COMMANDS {
                let _ = writeln!(out, "  {c:<12} {h}");
            }
        }
        "list" => domain::list(s, out)?,
        "attach" => domain::attach(s, rest, out)?,
        "detach" => {
            domain::detach(s)?;
            out.push_str("detached\n");
        }
        "info" => domain::info(s, out)?,
        "symbols" => {
            if rest.is_empty() {
                return Err(usage("symbols FILE"));
            }
            domain::load_symbols(s, rest.into(), out)?;
        }
        "sym" => domain::sym(s, rest, out)?,
        "module" => {
            if rest.is_empty() {
                return Err(usage("module KO"));
            }
            domain::load_module(s, rest.into(), out)?;
        }
        "pause" => {
            s.dom()?.pause()?;
            where_am_i(s, out)?;
        }
        "continue" => {
            let limit = match rest {
                "" => None,
                t => Some(
                    t.parse::<f64>()
                        .ok()
                        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
                        .ok_or_else(|| usage("continue [SECONDS]"))?,
                ),
            };
            run::cont(s, limit, out)?;
        }
        "regs" => inspect::regs(s, rest == "all", out)?,
        "vcpu" => inspect::vcpu(s, rest, out)?,
        "print" => {
            let v = eval_in(s, rest)?;
            let _ = writeln!(out, "{v:#x} ({v}){}", s.symbolize(v));
        }
        "set" => inspect::set(s, rest, out)?,
        "x" => inspect::examine(s, rest, out)?,
        "write" => inspect::write_cmd(s, rest, out)?,
        "disas" => inspect::disas(s, rest, out)?,
        "break" => breaks::add_break(s, rest, out)?,
        "delete" => breaks::delete(s, rest, out)?,
        "breakpoints" => breaks::list_breakpoints(s, out)?,
        "watch" | "rwatch" | "awatch" => breaks::watch(s, canonical(cmd), rest, out)?,
        "watchpoints" => breaks::list_watchpoints(s, out)?,
        "unwatch" => breaks::unwatch(s, rest, out)?,
        "stepi" => run::stepi(s, rest, out)?,
        "nexti" => run::nexti(s, out)?,
        "finish" => run::finish(s, out)?,
        "bt" => run::backtrace(s, out)?,
        "snapshot" => snapshot::snapshot(s, rest, out)?,
        "quit" => {
            domain::detach(s)?;
            return Ok(Flow::Quit);
        }
        other => return Err(usage(format!("unknown command {other:?} (try `help`)"))),
    }
    Ok(Flow::Continue)
}

/// Evaluates a REPL expression (registers, symbols, memory) on the session.
fn eval_in(s: &mut Session, src: &str) -> Result<u64, ReplError> {
    if src.trim().is_empty() {
        return Err(usage("an expression is needed"));
    }
    eval(src, &mut SessionEnv::new(s)).map_err(ReplError::Expr)
}

/// One line: the current vCPU, its RIP with symbol, and the instruction there.
fn where_am_i(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let dom = s.dom()?;
    if !dom.is_stopped() {
        out.push_str("running\n");
        return Ok(());
    }
    let rip = dom.regs(vcpu)?.rip;
    let insn = dom
        .disassemble(rip, 1)
        .ok()
        .and_then(|v| v.into_iter().next())
        .map(|(_, _, t)| t)
        .unwrap_or_else(|| "??".into());
    let _ = writeln!(out, "vcpu {vcpu} rip {rip:#x}{}: {insn}", s.symbolize(rip));
    Ok(())
}
