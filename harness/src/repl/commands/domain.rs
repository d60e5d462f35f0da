//! Attaching to a domain, listing domains, and the guest's symbols (an
//! image, or a Linux kernel's with its modules).

use std::fmt::Write as _;

use crate::vmi::Domain;

use super::{eval_in, usage, where_am_i};
use crate::repl::session::Session;
use crate::repl::ReplError;

/// `list`: the host's domains, the attached one marked.
pub(super) fn list(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
    let doms = s.xen()?.domains()?;
    for d in doms {
        let mark = if s.dom.as_ref().is_some_and(|x| x.id() == d.domid) {
            "*"
        } else {
            " "
        };
        let _ = writeln!(out, "{mark}{:>4}  {:<24} {}", d.domid, d.name, d.kind);
    }
    Ok(())
}

/// `info`: the attached domain, its state and what the hypervisor allows.
pub(super) fn info(s: &mut Session, out: &mut String) -> Result<(), ReplError> {
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
    let _ = writeln!(out, "{}", dom.capabilities().summary());
    Ok(())
}

/// `attach DOMAIN` (name or id): stops it and loads symbols already named.
pub(super) fn attach(s: &mut Session, target: &str, out: &mut String) -> Result<(), ReplError> {
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

/// Drops breakpoints and snapshots, lets the guest run, detaches.
pub(super) fn detach(s: &mut Session) -> Result<(), ReplError> {
    s.bps.clear();
    s.snapshots.clear();
    if let Some(dom) = s.dom.take() {
        dom.detach()?;
    }
    Ok(())
}

/// `symbols ELF`: the guest image's symbols (kept for later attaches).
pub(super) fn load_symbols(
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
    if let Some(k) = s.dom()?.kernel_info() {
        let _ = writeln!(
            out,
            "{}\nKASLR slide {:#x} ({})",
            k.banner, k.slide, k.slide_from
        );
    }
    for ko in s.modules.clone() {
        load_module(s, ko, out)?;
    }
    Ok(())
}

/// `module KO`: a kernel module's symbols and line tables, at the address
/// the running kernel loaded it (found in its module list by name; kept for
/// later attaches).
pub(super) fn load_module(
    s: &mut Session,
    ko: std::path::PathBuf,
    out: &mut String,
) -> Result<(), ReplError> {
    if !s.modules.contains(&ko) {
        s.modules.push(ko.clone());
    }
    let layout = s.dom()?.load_module(&ko)?;
    let names: Vec<String> = s.dom()?.symbols()?.iter().map(|x| x.name.clone()).collect();
    s.symbol_names = names;
    let text = layout
        .sections
        .get(".text")
        .map_or_else(|| "?".to_string(), |a| format!("{a:#x}"));
    let _ = writeln!(
        out,
        "module {} from {}: .text at {text}, {} sections",
        layout.name,
        ko.display(),
        layout.sections.len()
    );
    Ok(())
}

/// `sym NAME|EXPR`: name -> address, or address -> symbol+offset and source line.
pub(super) fn sym(s: &mut Session, arg: &str, out: &mut String) -> Result<(), ReplError> {
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
