//! The REPL's commands. Each returns its output as text or a one-line error.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::arch::{reg_by_name, REGS};
use crate::vmi::{Domain, Event, GuestKind, WatchKind, WatchpointId};

use super::expr::{eval, parse_num, split_deref};
use super::session::{Bp, Session, SessionEnv, Snapshot};
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
    ("symbols", "symbols ELF: load the guest image's symbols"),
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
        "list" => {
            let doms = s.xen()?.domains()?;
            for d in doms {
                let mark = if s.dom.as_ref().is_some_and(|x| x.id() == d.domid) {
                    "*"
                } else {
                    " "
                };
                let _ = writeln!(out, "{mark}{:>4}  {:<24} {}", d.domid, d.name, d.kind);
            }
        }
        "attach" => attach(s, rest, out)?,
        "detach" => {
            detach(s)?;
            out.push_str("detached\n");
        }
        "info" => {
            let dom = s.dom()?;
            let info = dom.info()?;
            let _ = writeln!(
                out,
                "domain {} (id {}), {}, {}, vcpus 0..={}, {} KiB",
                dom.name(),
                dom.id(),
                dom.kind(),
                if dom.is_stopped() {
                    "stopped"
                } else {
                    "running"
                },
                info.max_vcpu_id,
                info.max_memkb
            );
            let _ = writeln!(out, "{}", dom.capabilities().summary(None));
        }
        "symbols" => {
            if rest.is_empty() {
                return Err(usage("symbols ELF"));
            }
            load_symbols(s, rest.into(), out)?;
        }
        "sym" => sym(s, rest, out)?,
        "pause" => {
            s.dom()?.pause()?;
            where_am_i(s, out)?;
        }
        "continue" => {
            let limit = match rest {
                "" => None,
                t => Some(Duration::from_secs_f64(
                    t.parse::<f64>().map_err(|_| usage("continue [SECONDS]"))?,
                )),
            };
            cont(s, limit, out)?;
        }
        "regs" => regs(s, rest == "all", out)?,
        "vcpu" => {
            let n = parse_num(rest).map_err(usage)? as u32;
            let max = s.dom()?.max_vcpu()?;
            if n > max {
                return Err(usage(format!("vcpu {n} does not exist (0..={max})")));
            }
            s.vcpu = n;
            let _ = writeln!(out, "vcpu {n}");
        }
        "print" => {
            let v = eval_in(s, rest)?;
            let _ = writeln!(out, "{v:#x} ({v}){}", s.symbolize(v));
        }
        "set" => set(s, rest, out)?,
        "x" => examine(s, rest, out)?,
        "write" => write_cmd(s, rest, out)?,
        "disas" => disas(s, rest, out)?,
        "break" => add_break(s, rest, out)?,
        "delete" => delete(s, rest, out)?,
        "breakpoints" => {
            if s.bps.is_empty() {
                out.push_str("no breakpoints\n");
            }
            let hits: Vec<(u32, u64)> = {
                let dom = s.dom()?;
                let all = dom.breakpoints();
                s.bps
                    .iter()
                    .map(|(&n, b)| (n, all.iter().find(|i| i.id == b.id).map_or(0, |i| i.hits)))
                    .collect()
            };
            for (n, h) in hits {
                let b = &s.bps[&n];
                let cond = b
                    .condition
                    .as_deref()
                    .map(|c| format!(" if {c}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{n}: {:#x}{}{cond} (hits {h}, stops {})",
                    b.addr,
                    s.symbolize(b.addr),
                    b.stops
                );
            }
        }
        "watch" | "rwatch" | "awatch" => watch(s, canonical(cmd), rest, out)?,
        "watchpoints" => {
            for w in s.dom()?.watchpoints() {
                let _ = writeln!(
                    out,
                    "{}: {:#x}{} len {} {} (hits {}, debug registers {:?})",
                    w.id.0,
                    w.va,
                    s.symbolize(w.va),
                    w.len,
                    kind_name(w.kind),
                    w.hits,
                    w.slots
                );
            }
        }
        "unwatch" => {
            let dom = s.dom()?;
            let ids: Vec<WatchpointId> = if rest == "all" {
                dom.watchpoints().iter().map(|w| w.id).collect()
            } else {
                let n = parse_num(rest).map_err(|_| usage("unwatch N|all"))?;
                vec![WatchpointId(n as u32)]
            };
            if !dom.is_stopped() {
                return Err(usage("the domain runs: pause first"));
            }
            for id in ids {
                dom.remove_watchpoint(id)?;
                let _ = writeln!(out, "deleted {id}");
            }
        }
        "stepi" => {
            let n = if rest.is_empty() {
                1
            } else {
                eval_in(s, rest)?
            };
            for _ in 0..n {
                step_once(s, out)?;
            }
            where_am_i(s, out)?;
        }
        "nexti" => nexti(s, out)?,
        "finish" => finish(s, out)?,
        "bt" => backtrace(s, out)?,
        "snapshot" => snapshot(s, rest, out)?,
        "quit" => {
            detach(s)?;
            return Ok(Flow::Quit);
        }
        other => return Err(usage(format!("unknown command {other:?} (try `help`)"))),
    }
    Ok(Flow::Continue)
}

fn kind_name(k: WatchKind) -> &'static str {
    match k {
        WatchKind::Write => "w",
        WatchKind::Read => "r",
        WatchKind::Access => "rw",
    }
}

/// `watch ADDR|SYMBOL [LEN] [w|rw]` (and `rwatch`/`awatch ADDR [LEN]`).
fn watch(s: &mut Session, cmd: &str, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    let mut kind = match cmd {
        "rwatch" => WatchKind::Read,
        "awatch" => WatchKind::Access,
        _ => WatchKind::Write,
    };
    if let Some(k) = words.last().and_then(|w| match *w {
        "w" => Some(WatchKind::Write),
        "r" => Some(WatchKind::Read),
        "rw" | "a" => Some(WatchKind::Access),
        _ => None,
    }) {
        kind = k;
        words.pop();
    }
    let mut len = None;
    if words.len() > 1 {
        if let Some(n) = words.last().and_then(|w| parse_num(w).ok()) {
            len = Some(n);
            words.pop();
        }
    }
    let target = words.join(" ");
    let va = eval_in(s, &target)?;
    let len = match len {
        Some(l) => l,
        None => s
            .dom()?
            .symbols()
            .ok()
            .and_then(|syms| syms.get(target.trim()))
            .map(|sym| sym.size)
            .filter(|&n| (1..=8).contains(&n))
            .unwrap_or(8),
    };
    let dom = s.dom()?;
    if !dom.is_stopped() {
        return Err(usage("the domain runs: pause first"));
    }
    let named = dom
        .symbols()
        .ok()
        .and_then(|syms| syms.get(target.trim()))
        .is_some_and(|sym| sym.addr == va);
    match dom.add_watchpoint(va, len, kind) {
        Ok(id) => {
            let label = if named {
                format!(" <{}>", target.trim())
            } else {
                s.symbolize(va)
            };
            let _ = writeln!(
                out,
                "watchpoint {}: {va:#x}{label} len {len} {}",
                id.0,
                kind_name(kind)
            );
            Ok(())
        }
        Err(crate::vmi::Error::Unsupported { why, .. }) => {
            Err(ReplError::Unsupported(format!("{cmd}: {why}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The watched bytes as a number (little endian) when they fit, else hex bytes.
fn watched_value(b: &[u8]) -> String {
    if b.len() <= 8 {
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(b);
        format!("{:#x}", u64::from_le_bytes(v))
    } else {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

fn eval_in(s: &mut Session, src: &str) -> Result<u64, ReplError> {
    if src.trim().is_empty() {
        return Err(usage("an expression is needed"));
    }
    eval(src, &mut SessionEnv::new(s)).map_err(ReplError::Expr)
}

fn attach(s: &mut Session, target: &str, out: &mut String) -> Result<(), ReplError> {
    if target.is_empty() {
        return Err(usage("attach DOMAIN"));
    }
    if s.dom.is_some() {
        detach(s)?;
    }
    let xen = s.xen()?.clone();
    let mut dom = match target.parse::<u32>() {
        Ok(id) => Domain::attach(&xen, id)?,
        Err(_) => Domain::attach(&xen, target)?,
    };
    dom.pause()?;
    let _ = writeln!(
        out,
        "attached to {} (id {}, {}), stopped",
        dom.name(),
        dom.id(),
        dom.kind()
    );
    s.dom = Some(dom);
    s.vcpu = 0;
    if let Some(elf) = s.elf.clone() {
        load_symbols(s, elf, out)?;
    }
    where_am_i(s, out)
}

fn detach(s: &mut Session) -> Result<(), ReplError> {
    s.bps.clear();
    s.snapshots.clear();
    if let Some(dom) = s.dom.take() {
        dom.detach()?;
    }
    Ok(())
}

fn load_symbols(
    s: &mut Session,
    elf: std::path::PathBuf,
    out: &mut String,
) -> Result<(), ReplError> {
    s.elf = Some(elf.clone());
    let dom = s.dom()?;
    let syms = dom.load_symbols(&elf)?;
    let names: Vec<String> = syms.iter().map(|x| x.name.clone()).collect();
    let _ = writeln!(out, "{} symbols from {}", names.len(), elf.display());
    s.symbol_names = names;
    Ok(())
}

fn sym(s: &mut Session, arg: &str, out: &mut String) -> Result<(), ReplError> {
    if arg.is_empty() {
        return Err(usage("sym NAME|EXPR"));
    }
    let dom = s.dom()?;
    let syms = dom.symbols()?;
    if let Some(sym) = syms.get(arg) {
        let _ = writeln!(
            out,
            "{} = {:#x} (size {}, {})",
            sym.name,
            sym.addr,
            sym.size,
            if sym.is_function {
                "function"
            } else {
                "object"
            }
        );
        return Ok(());
    }
    let addr = eval_in(s, arg)?;
    let dom = s.dom()?;
    let syms = dom.symbols()?;
    match syms.symbolize(addr) {
        Some((sym, off)) => {
            let line = syms
                .line(addr)
                .map(|l| format!(" at {}:{}", l.file, l.line))
                .unwrap_or_default();
            let _ = writeln!(out, "{addr:#x} = {}+{off:#x}{line}", sym.name);
        }
        None => {
            let _ = writeln!(out, "{addr:#x}: no symbol");
        }
    }
    Ok(())
}

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

/// Lets the stopped guest run. A domain that another pause still holds (it
/// was created with `xl create -p`, or `xl pause`d) would never run and the
/// command would wait forever: it is stopped again and that is said.
fn resume_running(s: &mut Session) -> Result<(), ReplError> {
    let dom = s.dom()?;
    dom.resume()?;
    if dom.info()?.paused {
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
fn cont(s: &mut Session, limit: Option<Duration>, out: &mut String) -> Result<(), ReplError> {
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

fn regs(s: &mut Session, all: bool, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let r = s.dom()?.regs(vcpu)?;
    let mut col = 0;
    for def in REGS.iter().filter(|d| d.kind.is_real()) {
        let sys = matches!(def.set, "System Registers");
        if sys && !all && !matches!(def.name, "cr0" | "cr3" | "cr4" | "efer") {
            continue;
        }
        let _ = write!(out, "{:<9} {:#018x}", def.name, def.kind.get(&r) as u64);
        col += 1;
        out.push_str(if col % 3 == 0 { "\n" } else { "   " });
    }
    if col % 3 != 0 {
        out.push('\n');
    }
    let _ = writeln!(out, "rip {:#x}{}", r.rip, s.symbolize(r.rip));
    Ok(())
}

fn set(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let (lhs, rhs) = rest
        .split_once('=')
        .ok_or_else(|| usage("set $REG = EXPR | set *(uN*)ADDR = EXPR"))?;
    let value = eval_in(s, rhs)?;
    let lhs = lhs.trim();
    if let Some((size, addr_src)) = split_deref(lhs) {
        let addr = eval_in(s, addr_src)?;
        let bytes = value.to_le_bytes();
        write_mem(s, addr, &bytes[..size])?;
        let _ = writeln!(out, "{addr:#x} <- {value:#x} ({size} bytes)");
        return Ok(());
    }
    let def = reg_by_name(lhs).ok_or_else(|| usage(format!("no register {lhs:?}")))?;
    let vcpu = s.vcpu;
    let dom = s.stopped()?;
    let mut r = dom.regs(vcpu)?;
    def.kind.set(&mut r, value.into());
    dom.set_regs(vcpu, &r)?;
    let _ = writeln!(out, "{} = {value:#x}", def.name);
    Ok(())
}

/// Writes guest memory; breakpoints under the range are lifted and planted
/// again over the new bytes.
fn write_mem(s: &mut Session, addr: u64, data: &[u8]) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let end = addr.saturating_add(data.len() as u64);
    let under: Vec<u32> = s
        .bps
        .iter()
        .filter(|(_, b)| b.addr >= addr && b.addr < end)
        .map(|(&n, _)| n)
        .collect();
    for n in &under {
        let id = s.bps[n].id;
        s.dom()?.remove_breakpoint(id)?;
    }
    let res = s.dom()?.write_virt_on(vcpu, addr, data);
    for n in under {
        let a = s.bps[&n].addr;
        let id = s.dom()?.add_breakpoint(a)?;
        if let Some(b) = s.bps.get_mut(&n) {
            b.id = id;
        }
    }
    Ok(res?)
}

/// Reads guest memory as the current vCPU sees it (the engine shows the
/// guest's own bytes under breakpoints).
fn read_mem(s: &mut Session, addr: u64, buf: &mut [u8]) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    s.dom()?.read_virt_on(vcpu, addr, buf)?;
    Ok(())
}

fn examine(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    // rest is "/NFS ADDR" or "ADDR".
    let (fmt, addr_src) = match rest.strip_prefix('/') {
        Some(r) => r.split_once(char::is_whitespace).unwrap_or((r, "")),
        None => ("", rest),
    };
    let count_len = fmt.find(|c: char| !c.is_ascii_digit()).unwrap_or(fmt.len());
    let count: usize = if count_len == 0 {
        1
    } else {
        fmt[..count_len].parse().map_err(|_| usage("bad count"))?
    };
    let count = count.clamp(1, 4096);
    let mut letter = 'x';
    let mut size = 8usize;
    for c in fmt[count_len..].chars() {
        match c {
            'x' | 'd' | 'u' | 'c' | 's' | 'i' => letter = c,
            'b' => size = 1,
            'h' => size = 2,
            'w' => size = 4,
            'g' => size = 8,
            _ => {
                return Err(usage(format!(
                    "unknown format letter {c:?} (x d u c s i, b h w g)"
                )))
            }
        }
    }
    let addr = eval_in(s, addr_src)?;
    match letter {
        'i' => return disas_at(s, addr, count, out),
        's' => {
            let mut buf = vec![0u8; 256];
            read_mem(s, addr, &mut buf)?;
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let _ = writeln!(out, "{addr:#x}: {:?}", String::from_utf8_lossy(&buf[..end]));
            return Ok(());
        }
        'c' => size = 1,
        _ => {}
    }
    let mut buf = vec![0u8; count * size];
    read_mem(s, addr, &mut buf)?;
    let per_line = (16 / size).max(1);
    for (i, chunk) in buf.chunks(size).enumerate() {
        if i % per_line == 0 {
            if i > 0 {
                out.push('\n');
            }
            let _ = write!(out, "{:#x}:", addr + (i * size) as u64);
        }
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(chunk);
        let v = u64::from_le_bytes(b);
        let _ = match letter {
            'd' => {
                let shift = 64 - 8 * size as u32;
                write!(out, " {}", ((v << shift) as i64) >> shift)
            }
            'u' => write!(out, " {v}"),
            'c' => write!(out, " {:?}", v as u8 as char),
            _ => write!(out, " {v:#0w$x}", w = 2 + 2 * size),
        };
    }
    out.push('\n');
    Ok(())
}

fn write_cmd(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let (addr_src, data_src) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| usage("write ADDR BYTE... | write ADDR \"text\""))?;
    let addr = eval_in(s, addr_src)?;
    let data_src = data_src.trim();
    let data: Vec<u8> = if let Some(t) = data_src.strip_prefix('"') {
        t.strip_suffix('"')
            .ok_or_else(|| usage("unterminated string"))?
            .as_bytes()
            .to_vec()
    } else {
        data_src
            .split_whitespace()
            .map(|b| {
                parse_num(b)
                    .ok()
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| usage(format!("not a byte: {b:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    write_mem(s, addr, &data)?;
    let _ = writeln!(out, "wrote {} bytes at {addr:#x}", data.len());
    Ok(())
}

fn disas(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let mut parts = rest.split_whitespace();
    let addr = match parts.next() {
        Some(a) => eval_in(s, a)?,
        None => {
            let vcpu = s.vcpu;
            s.dom()?.regs(vcpu)?.rip
        }
    };
    let n = match parts.next() {
        Some(n) => parse_num(n).map_err(usage)? as usize,
        None => 8,
    };
    disas_at(s, addr, n.clamp(1, 1000), out)
}

fn disas_at(s: &mut Session, addr: u64, n: usize, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let rip = s.dom()?.regs(vcpu).map(|r| r.rip).ok();
    let lines = s.dom()?.disassemble(addr, n)?;
    if lines.is_empty() {
        return Err(usage(format!("nothing readable at {addr:#x}")));
    }
    for (a, _len, text) in lines {
        let here = if Some(a) == rip { "=>" } else { "  " };
        let _ = writeln!(out, "{here} {a:#x}{}: {text}", s.symbolize(a));
    }
    Ok(())
}

fn add_break(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let (loc, cond) = match rest.split_once(" if ") {
        Some((l, c)) => (l.trim(), Some(c.trim().to_string())),
        None => (rest.trim(), None),
    };
    if loc.is_empty() {
        return Err(usage("break LOCATION [if COND]"));
    }
    let addr = eval_in(s, loc.trim_start_matches('*'))?;
    if let Some(c) = &cond {
        // Check that the condition parses now rather than at the first hit.
        super::expr::eval(c, &mut SessionEnv::new(s)).map_err(ReplError::Expr)?;
    }
    let id = s.dom()?.add_breakpoint(addr)?;
    let n = s.next_bp;
    s.next_bp += 1;
    s.bps.insert(
        n,
        Bp {
            id,
            addr,
            condition: cond,
            stops: 0,
        },
    );
    let _ = writeln!(out, "breakpoint {n} at {addr:#x}{}", s.symbolize(addr));
    Ok(())
}

fn delete(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let nums: Vec<u32> = if rest == "all" || rest.is_empty() {
        s.bps.keys().copied().collect()
    } else {
        vec![parse_num(rest).map_err(usage)? as u32]
    };
    for n in nums {
        let b = s
            .bps
            .remove(&n)
            .ok_or_else(|| usage(format!("no breakpoint {n}")))?;
        s.dom()?.remove_breakpoint(b.id)?;
        let _ = writeln!(out, "deleted breakpoint {n}");
    }
    Ok(())
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

fn nexti(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let r = s.stopped()?.regs(vcpu)?;
    let insn = s.dom()?.disassemble(r.rip, 1)?;
    match insn.first() {
        Some((a, len, text)) if text.starts_with("call") => {
            let ret = a + *len as u64;
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
        Some((_, 1)) if first[0] == 0x55 => r.rsp + 8,
        _ => r.rbp.wrapping_add(8),
    };
    let mut b = [0u8; 8];
    s.dom()?
        .read_virt_on(vcpu, slot, &mut b)
        .map_err(|e| usage(format!("no return address at {slot:#x}: {e}")))?;
    Ok((u64::from_le_bytes(b), slot + 8))
}

fn finish(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
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

fn backtrace(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    let r = s.stopped()?.regs(vcpu)?;
    let _ = writeln!(out, "#0  {:#x}{}", r.rip, s.symbolize(r.rip));
    let mut frame = 1;
    // Before the frame is set up, the caller is found from the stack.
    if let Ok((ret, sp_after)) = return_address(s) {
        if sp_after <= r.rsp + 16 && sp_after != r.rbp.wrapping_add(16) {
            let _ = writeln!(out, "#1  {ret:#x}{}", s.symbolize(ret));
            frame = 2;
        }
    }
    let mut rbp = r.rbp;
    while frame < 64 && rbp != 0 && rbp % 8 == 0 {
        let mut b = [0u8; 16];
        if s.dom()?.read_virt_on(vcpu, rbp, &mut b).is_err() {
            break;
        }
        let next = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let ret = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        if ret == 0 {
            break;
        }
        let _ = writeln!(out, "#{frame:<2} {ret:#x}{}", s.symbolize(ret));
        frame += 1;
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    Ok(())
}

fn snapshot(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let mut parts = rest.split_whitespace();
    let sub = parts.next().unwrap_or("list");
    let name = parts.next().unwrap_or("default").to_string();
    match sub {
        "list" => {
            if s.snapshots.is_empty() {
                out.push_str("no snapshots\n");
            }
            for (n, snap) in &s.snapshots {
                let _ = writeln!(out, "{n}: {}", snap.describe());
            }
        }
        "take" => {
            let dom = s.stopped()?;
            let snap = if dom.kind() == GuestKind::Pv {
                // PV memory is machine frames: the engine's PV snapshot
                // finds the domain's frames; it keeps one per domain.
                let info = dom.take_snapshot()?;
                let replaced: Vec<String> = s
                    .snapshots
                    .iter()
                    .filter(|(_, v)| matches!(v, Snapshot::Engine { .. }))
                    .map(|(k, _)| k.clone())
                    .collect();
                for old in &replaced {
                    s.snapshots.remove(old);
                    if *old != name {
                        let _ = writeln!(
                            out,
                            "(replaces snapshot {old}: a PV guest has one snapshot at a time)"
                        );
                    }
                }
                Snapshot::Engine {
                    frames: info.frames,
                }
            } else {
                let pages = dom.guest_memory_image()?;
                let info = dom.info()?;
                let regs = (0..=info.max_vcpu_id)
                    .map(|v| dom.regs(v).map(|r| (v, r)))
                    .collect::<Result<Vec<_>, _>>()?;
                Snapshot::Image { pages, regs }
            };
            let _ = writeln!(out, "snapshot {name}: {}", snap.describe());
            s.snapshots.insert(name, snap);
        }
        "restore" => {
            let snap = s
                .snapshots
                .remove(&name)
                .ok_or_else(|| usage(format!("no snapshot {name:?}")))?;
            let result = (|| -> Result<usize, ReplError> {
                let dom = s.stopped()?;
                match &snap {
                    Snapshot::Engine { .. } => Ok(dom.restore_snapshot()?.restored),
                    Snapshot::Image { pages, regs } => {
                        let written = dom.restore_memory_image(pages)?;
                        for (v, r) in regs {
                            dom.set_regs(*v, r)?;
                        }
                        Ok(written)
                    }
                }
            })();
            s.snapshots.insert(name.clone(), snap);
            let written = result?;
            let _ = writeln!(out, "restored {name}: {written} pages rewritten");
            where_am_i(s, out)?;
        }
        "drop" => {
            let snap = s
                .snapshots
                .remove(&name)
                .ok_or_else(|| usage(format!("no snapshot {name:?}")))?;
            if matches!(snap, Snapshot::Engine { .. }) {
                s.dom()?.drop_snapshot();
            }
            let _ = writeln!(out, "dropped {name}");
        }
        _ => {
            return Err(usage(
                "snapshot take NAME | restore NAME | list | drop NAME",
            ))
        }
    }
    Ok(())
}
