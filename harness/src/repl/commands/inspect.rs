//! Registers, memory and disassembly of the current vCPU.

use std::fmt::Write as _;

use crate::arch::{reg_by_name, REGS};
use crate::repl::expr::{parse_num, split_deref};
use crate::repl::session::Session;
use crate::repl::ReplError;

use super::{eval_in, usage};

/// `vcpu N`: selects the vCPU later commands act on.
pub(super) fn vcpu(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let n = parse_num(rest).map_err(usage)?;
    let n = u32::try_from(n).map_err(|_| usage(format!("vcpu {n} does not exist")))?;
    let max = s.dom()?.max_vcpu()?;
    if n > max {
        return Err(usage(format!("vcpu {n} does not exist (0..={max})")));
    }
    s.vcpu = n;
    let _ = writeln!(out, "vcpu {n}");
    Ok(())
}

/// `regs [all]`: general registers, and with `all` the system registers too.
pub(super) fn regs(s: &mut Session, all: bool, out: &mut String) -> Result<(), ReplError> {
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

/// `set $REG = EXPR` or `set *(uN*)ADDR = EXPR`.
pub(super) fn set(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
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
pub(super) fn read_mem(s: &mut Session, addr: u64, buf: &mut [u8]) -> Result<(), ReplError> {
    let vcpu = s.vcpu;
    s.dom()?.read_virt_on(vcpu, addr, buf)?;
    Ok(())
}

/// `x/NFS ADDR`: N units of size S (b h w g) in format F (x d u c s i).
pub(super) fn examine(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
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
            let _ = write!(out, "{:#x}:", addr.wrapping_add((i * size) as u64));
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

/// `write ADDR BYTE...` or `write ADDR "text"`.
pub(super) fn write_cmd(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
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

/// `disas [ADDR] [N]`: N instructions from ADDR (default: RIP, 8).
pub(super) fn disas(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
    let mut parts = rest.split_whitespace();
    let addr = match parts.next() {
        Some(a) => eval_in(s, a)?,
        None => {
            let vcpu = s.vcpu;
            s.dom()?.regs(vcpu)?.rip
        }
    };
    let n = match parts.next() {
        Some(n) => usize::try_from(parse_num(n).map_err(usage)?).unwrap_or(usize::MAX),
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
