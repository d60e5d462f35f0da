//! Breakpoints (with conditions) and watchpoints.

use std::fmt::Write as _;

use crate::repl::expr::parse_num;
use crate::repl::session::{Bp, Session, SessionEnv};
use crate::repl::ReplError;
use crate::vmi::{WatchKind, WatchpointId};

use super::{eval_in, usage};

/// `breakpoints`: each with its condition, hits and stops.
pub(super) fn list_breakpoints(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
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
    Ok(())
}

/// `watchpoints`: each with its kind, hits and debug registers.
pub(super) fn list_watchpoints(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
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
    Ok(())
}

/// `unwatch N|all`.
pub(super) fn unwatch(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let dom = s.dom()?;
    let ids: Vec<WatchpointId> = if rest == "all" {
        dom.watchpoints().iter().map(|w| w.id).collect()
    } else {
        let n = parse_num(rest).map_err(|_| usage("unwatch N|all"))?;
        vec![WatchpointId(
            u32::try_from(n).map_err(|_| usage(format!("no watchpoint {n}")))?,
        )]
    };
    if !dom.is_stopped() {
        return Err(usage("the domain runs: pause first"));
    }
    for id in ids {
        dom.remove_watchpoint(id)?;
        let _ = writeln!(out, "deleted {id}");
    }
    Ok(())
}

/// `break LOCATION [if COND]`: the condition is checked to parse now.
pub(super) fn add_break(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
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
        crate::repl::expr::eval(c, &mut SessionEnv::new(s)).map_err(ReplError::Expr)?;
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

/// `delete N|all`.
pub(super) fn delete(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let nums: Vec<u32> = if rest == "all" || rest.is_empty() {
        s.bps.keys().copied().collect()
    } else {
        let n = parse_num(rest).map_err(usage)?;
        vec![u32::try_from(n).map_err(|_| usage(format!("no breakpoint {n}")))?]
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

fn kind_name(k: WatchKind) -> &'static str {
    match k {
        WatchKind::Write => "w",
        WatchKind::Read => "r",
        WatchKind::Access => "rw",
    }
}

/// `watch ADDR|SYMBOL [LEN] [w|rw]` (and `rwatch`/`awatch ADDR [LEN]`).
pub(super) fn watch(
    s: &mut Session,
    cmd: &str,
    rest: &str,
    out: &mut String,
) -> Result<(), ReplError> {
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
pub(super) fn watched_value(b: &[u8]) -> String {
    if b.len() <= 8 {
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(b);
        format!("{:#x}", u64::from_le_bytes(v))
    } else {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
