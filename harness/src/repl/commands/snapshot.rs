//! `snapshot take|restore|list|drop`: named snapshots of the attached guest.

use std::fmt::Write as _;

use crate::repl::session::{Session, Snapshot};
use crate::repl::ReplError;

use super::{usage, where_am_i};

/// `snapshot take|restore|list|drop NAME`: HVM/PVH as memory images held here,
/// PV through the engine's one snapshot per domain.
pub(super) fn snapshot(s: &mut Session, rest: &str, out: &mut String) -> Result<(), ReplError> {
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
            let snap = if let Some(frames) = dom.support_guest_frames() {
                let pages = frames.memory_image()?;
                let info = dom.info()?;
                let regs = (0..=info.max_vcpu_id)
                    .map(|v| dom.regs(v).map(|r| (v, r)))
                    .collect::<Result<Vec<_>, _>>()?;
                Snapshot::Image { pages, regs }
            } else {
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
