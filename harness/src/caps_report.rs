//! `xenprobe caps`: try each introspection feature for real and report,
//! per guest type, whether it works and, when it does not, why (the errno
//! and what it means, the build option or CPU feature missing).
//!
//! Without a domain, a sample `known` guest of each type is created with
//! `xl create -p` (images from `target/guests`, see
//! [`GuestImages`]), probed and destroyed. With
//! a domain, only features that leave the guest as it was are tried (no
//! breakpoints, no steps: those run guest code); the domain's pause state
//! and a hash of the frames the probe touches are compared before and after.
//!
//! Every probe undoes what it did: pauses are released, breakpoint bytes
//! removed, the monitor ring and log-dirty switched off (by the engine's
//! detach, which also runs on errors).

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::testing::{GuestImages, Mode};
use crate::vmi::{self, Domain, Event, Xen};
use crate::xen::{DirtyBitmap, MemAccess, MonitorRing, XenError};

/// How long a breakpoint probe waits for the hit.
const HIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The features, in table order.
pub const FEATURES: [&str; 15] = [
    "pause / unpause",
    "registers (read, write back)",
    "memory (read, write back)",
    "vm_event (monitor ring)",
    "debug-exception monitor",
    "int3 breakpoints",
    "ICEBP breakpoints",
    "MTF stepping",
    "trap-flag stepping",
    "log-dirty",
    "VM forks",
    "mem_access watchpoints",
    "PV debugger interface (gdbsx)",
    "software-breakpoint monitor",
    "debug-register watchpoints",
];

/// One feature on one guest type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureResult {
    /// One of [`FEATURES`].
    pub feature: String,
    /// It worked when tried.
    pub works: bool,
    /// Why not (or, for skipped probes, why it was not tried).
    pub reason: Option<String>,
}

/// All features on one guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestReport {
    /// "PV", "PVH" or "HVM".
    pub kind: String,
    /// The domain probed (a throwaway one unless named).
    pub domain: String,
    /// In [`FEATURES`] order.
    pub features: Vec<FeatureResult>,
}

/// State of a named domain before and after the probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeftAsFound {
    /// Paused (by anyone) before.
    pub paused_before: bool,
    /// Paused (by anyone) after.
    pub paused_after: bool,
    /// FNV-1a hash of the frames the probe read and wrote, before.
    pub hash_before: String,
    /// The same, after.
    pub hash_after: String,
    /// Frames hashed.
    pub frames: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapsReport {
    /// Hypervisor version.
    pub xen_version: String,
    /// CPU vendor seen in dom0.
    pub cpu_vendor: String,
    /// CPU model seen in dom0.
    pub cpu_model: String,
    /// `xc_physinfo`: nested paging.
    pub hap: bool,
    /// `xc_physinfo`: shadow paging compiled in.
    pub shadow: bool,
    /// gdbsx domctls answered.
    pub gdbsx: bool,
    /// One entry per guest probed.
    pub guests: Vec<GuestReport>,
    /// For a named domain: what it looked like before and after.
    pub left: Option<LeftAsFound>,
}

/// Errno name and what it means for these calls.
fn errno_text(errno: i32) -> String {
    let (name, meaning) = match errno {
        libc::EINVAL => (
            "EINVAL",
            "the hypervisor does not offer this for this guest type",
        ),
        libc::EOPNOTSUPP => (
            "EOPNOTSUPP",
            "not supported on this CPU or hypervisor build",
        ),
        libc::ENOSYS => ("ENOSYS", "not compiled into this hypervisor"),
        libc::EPERM => ("EPERM", "not permitted (XSM policy or not dom0)"),
        libc::EBUSY => ("EBUSY", "already in use (another monitor is attached)"),
        libc::ENODEV => (
            "ENODEV",
            "no such device or feature (e.g. no HAP/shadow paging)",
        ),
        libc::ESRCH => ("ESRCH", "the domain is gone"),
        libc::ENOMEM => ("ENOMEM", "out of memory"),
        libc::EFAULT => ("EFAULT", "bad address"),
        libc::EXDEV => ("EXDEV", "cross-domain operation refused"),
        libc::EACCES => ("EACCES", "access denied"),
        _ => ("errno", "unexpected"),
    };
    format!("{name} ({errno}): {meaning}")
}

/// A deterministic one-line reason for a failed call (no domain ids).
fn xen_reason(e: &XenError) -> String {
    match e.raw_errno() {
        Some(n) => format!("{} failed: {}", e.call(), errno_text(n)),
        None => e.to_string(),
    }
}

fn vmi_reason(e: &vmi::Error) -> String {
    match e {
        vmi::Error::Xen(x) => xen_reason(x),
        vmi::Error::Unsupported { why, .. } => why.clone(),
        other => other.to_string(),
    }
}

fn ok(feature: &str) -> FeatureResult {
    FeatureResult {
        feature: feature.into(),
        works: true,
        reason: None,
    }
}

fn no(feature: &str, reason: impl Into<String>) -> FeatureResult {
    FeatureResult {
        feature: feature.into(),
        works: false,
        reason: Some(reason.into()),
    }
}

fn from_result(feature: &str, r: vmi::Result<()>) -> FeatureResult {
    match r {
        Ok(()) => ok(feature),
        Err(e) => no(feature, vmi_reason(&e)),
    }
}

/// Frame of vCPU 0's RIP (the memory probe's target) and of its stack.
fn probe_frames(dom: &mut Domain) -> vmi::Result<Vec<u64>> {
    let r = dom.regs(0)?;
    let mut frames = Vec::new();
    for va in [r.rip, r.rsp] {
        if let Ok(t) = dom.translate(0, va) {
            let f = t.pa & !0xfff;
            if !frames.contains(&f) {
                frames.push(f);
            }
        }
    }
    Ok(frames)
}

fn hash_frames(dom: &Domain, frames: &[u64]) -> vmi::Result<String> {
    let mut h = xenprobe_abi::Fnv1a::new();
    let mut page = vec![0u8; 4096];
    for &f in frames {
        dom.read_phys(f, &mut page)?;
        h.update(&page);
    }
    Ok(format!("{:016x}", h.finish()))
}

/// Pause, registers and memory: the domain stays stopped between calls and
/// everything written is what was read.
fn probe_basics(dom: &mut Domain, out: &mut Vec<FeatureResult>) {
    out.push(from_result(
        FEATURES[0],
        dom.pause().and_then(|()| {
            if dom.info()?.paused {
                Ok(())
            } else {
                Err(vmi::Error::State(
                    "xc_domain_pause returned but the domain is not paused".into(),
                ))
            }
        }),
    ));
    out.push(from_result(
        FEATURES[1],
        dom.regs(0).and_then(|r| {
            dom.set_regs(0, &r)?;
            let again = dom.regs(0)?;
            if again.rip == r.rip && again.rsp == r.rsp {
                Ok(())
            } else {
                Err(vmi::Error::State(
                    "registers differ after write-back".into(),
                ))
            }
        }),
    ));
    out.push(from_result(
        FEATURES[2],
        (|| {
            let rip = dom.regs(0)?.rip;
            let pa = dom.translate(0, rip)?.pa & !0xfff;
            let mut page = vec![0u8; 4096];
            dom.read_phys(pa, &mut page)?;
            dom.write_phys(pa, &page)?;
            let mut again = vec![0u8; 4096];
            dom.read_phys(pa, &mut again)?;
            if again == page {
                Ok(())
            } else {
                Err(vmi::Error::State("memory differs after write-back".into()))
            }
        })(),
    ));
    if let Err(e) = dom.resume() {
        tracing::warn!("resume after the basic probes: {e}");
    }
}

/// vm_event, debug exceptions, MTF, software-breakpoint monitor: each
/// switched on and off on a ring of our own.
fn probe_monitor(xen: &Xen, dom: &Domain, out: &mut Vec<FeatureResult>) {
    let ring = MonitorRing::enable(xen.ctrl(), dom.id());
    let mut ring = match ring {
        Ok(r) => {
            out.push(ok(FEATURES[3]));
            r
        }
        Err(e) => {
            let why = xen_reason(&e);
            out.push(no(FEATURES[3], why.clone()));
            for f in [FEATURES[4], FEATURES[7], FEATURES[11], FEATURES[13]] {
                out.push(no(f, format!("needs vm_event: {why}")));
            }
            return;
        }
    };
    let toggle = |f: &str, r: crate::xen::Result<()>| match r {
        Ok(()) => ok(f),
        Err(e) => no(f, xen_reason(&e)),
    };
    let dbg = ring
        .set_debug_exceptions(true, true)
        .and_then(|()| ring.set_debug_exceptions(false, false));
    out.push(toggle(FEATURES[4], dbg));
    let mtf = ring
        .set_singlestep(true)
        .and_then(|()| ring.set_singlestep(false));
    let mut mtf = toggle(FEATURES[7], mtf);
    if let (false, Some(r)) = (mtf.works, mtf.reason.as_mut()) {
        let host = dom.capabilities().host.clone();
        if !host.is_intel() {
            r.push_str(&format!(
                " (MTF is an Intel VT-x feature; this CPU is {})",
                host.cpu_vendor
            ));
        }
    }
    out.push(mtf);
    let sw = ring
        .set_software_breakpoint(true)
        .and_then(|()| ring.set_software_breakpoint(false));
    out.push(toggle(FEATURES[13], sw));
    out.push(probe_mem_access(xen, dom));
    drop(ring); // xc_monitor_disable
}

/// mem_access (the watchpoints' route): sets frame 0 to the default access
/// (rwx), which changes nothing but goes through Xen's checks.
fn probe_mem_access(xen: &Xen, dom: &Domain) -> FeatureResult {
    match xen.ctrl().set_mem_access(dom.id(), MemAccess::Rwx, 0, 1) {
        Ok(()) => ok(FEATURES[11]),
        Err(e) => {
            let mut why = xen_reason(&e);
            let host = &dom.capabilities().host;
            if !host.is_intel() {
                why.push_str(&format!(
                    " (Xen's x86 mem_access needs Intel VT-x with EPT; this CPU is {})",
                    host.cpu_vendor
                ));
            }
            no(FEATURES[11], why)
        }
    }
}

/// Log-dirty: the raw call first (its errno is the reason), then the
/// engine's tracker with one CLEAN.
fn probe_log_dirty(xen: &Xen, dom: &mut Domain) -> FeatureResult {
    let xc = xen.ctrl();
    let raw = xc.logdirty_enable(dom.id()).and_then(|()| {
        let peek = DirtyBitmap::new(xc, dom.id(), 1).and_then(|mut b| b.peek().map(|_| ()));
        let off = xc.logdirty_off(dom.id());
        peek.and(off)
    });
    if let Err(e) = raw {
        let mut why = xen_reason(&e);
        if let Some(hint) = dom.capabilities().log_dirty_hint() {
            why.push_str(hint);
        }
        return no(FEATURES[9], why);
    }
    from_result(
        FEATURES[9],
        dom.track_dirty().and_then(|mut t| t.clean().map(|_| ())),
    )
}

/// Host-level and not-implemented rows.
fn static_rows(dom: &Domain) -> [FeatureResult; 2] {
    let caps = dom.capabilities();
    [
        from_result(FEATURES[10], caps.vm_forks()),
        if caps.host.gdbsx {
            ok(FEATURES[12])
        } else {
            no(
                FEATURES[12],
                format!(
                    "XEN_DOMCTL_gdbsx_domstatus refused (ENOSYS/EOPNOTSUPP): Xen {} was built without CONFIG_GDBSX",
                    caps.host.xen_version
                ),
            )
        },
    ]
}

fn xl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("xl")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running xl {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        anyhow::bail!(
            "xl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// A throwaway `known` guest, destroyed on drop.
struct Throwaway {
    name: String,
}

impl Throwaway {
    fn create(images: &GuestImages, mode: Mode, tag: &str) -> anyhow::Result<Self> {
        let cfg = images.config("known", mode);
        if !cfg.exists() {
            anyhow::bail!(
                "no guest config {}: build the sample guests with `cargo xtask guests build`",
                cfg.display()
            );
        }
        let name = format!("caps-{}-{}-{tag}", std::process::id(), mode.name());
        let cfg = cfg.to_string_lossy().into_owned();
        xl(&["create", "-p", &cfg, &format!("name=\"{name}\"")])?;
        Ok(Self { name })
    }
}

impl Throwaway {
    fn exists(&self) -> bool {
        Command::new("xl")
            .args(["domid", &self.name])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        if !self.exists() {
            return; // ran to its end (on_poweroff="destroy")
        }
        // A guest that crashed may be going away on its own meanwhile
        // (on_crash="destroy"; Xen 4.20's xl then fails to destroy it).
        if let Err(e) = xl(&["destroy", &self.name]) {
            if self.exists() {
                tracing::warn!("{e:#}");
            }
        }
    }
}

/// Plants a breakpoint at `known_tick` with the given instruction, lets the
/// guest run and waits for the hit; on a hit also single-steps once.
/// Returns (breakpoint result, step result if tried).
fn probe_breakpoint(
    xen: &Xen,
    images: &GuestImages,
    mode: Mode,
    insn: Option<&str>,
    feature: &str,
) -> anyhow::Result<(FeatureResult, Option<FeatureResult>)> {
    // The route is a setting of the handle the domain is attached through.
    let breakpoint = insn
        .map(str::parse::<vmi::BreakpointInsnKind>)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let xen = xen.clone().with_settings(vmi::Settings {
        breakpoint,
        ..xen.settings().clone()
    });
    let guest = Throwaway::create(images, mode, insn.unwrap_or("bp"))?;
    let mut dom = Domain::attach(&xen, guest.name.as_str())?;
    dom.load_symbols(images.image("known", mode))?;
    let bp = match dom.add_breakpoint_at("known_tick") {
        Ok(bp) => bp,
        Err(e) => return Ok((no(feature, vmi_reason(&e)), None)),
    };
    xl(&["unpause", &guest.name])?;
    let ev = dom.wait_event(HIT_TIMEOUT)?;
    let hint = if insn == Some("int3") && dom.capabilities().host.cpu_emulated() {
        "; QEMU TCG does not report #BP (int3) to Xen"
    } else {
        ""
    };
    let result = match ev {
        Event::Breakpoint { vcpu, id, .. } if id == bp => {
            let step = match dom.step(vcpu) {
                Ok(Event::Step { .. }) => ok(FEATURES[8]),
                Ok(other) => no(FEATURES[8], format!("the step ended with {other:?}")),
                Err(e) => no(FEATURES[8], vmi_reason(&e)),
            };
            (ok(feature), Some(step))
        }
        Event::Timeout => (
            no(
                feature,
                format!("the hit never reached xenprobe (no event within 10 s){hint}"),
            ),
            None,
        ),
        Event::Shutdown { reason } => (
            no(
                feature,
                format!("the hit never reached xenprobe: the guest took the exception itself and shut down ({reason:?}){hint}"),
            ),
            None,
        ),
        Event::Debug { detail, .. } => (
            no(feature, format!("reported as a foreign debug event: {detail}")),
            None,
        ),
        other => (no(feature, format!("unexpected event {other:?}")), None),
    };
    let _ = dom.remove_breakpoint(bp);
    dom.detach()?;
    drop(guest);
    Ok(result)
}

/// A write watchpoint (debug registers) on `known_counter`, armed at the
/// first `known_tick`: works when the next tick's write is reported as a
/// watchpoint hit with the counter going from 0 to 1.
fn probe_watchpoint(xen: &Xen, images: &GuestImages, mode: Mode) -> anyhow::Result<FeatureResult> {
    let feature = FEATURES[14];
    let guest = Throwaway::create(images, mode, "watch")?;
    let mut dom = Domain::attach(xen, guest.name.as_str())?;
    dom.load_symbols(images.image("known", mode))?;
    if let Err(e) = dom.watchpoint_support() {
        return Ok(no(feature, vmi_reason(&e)));
    }
    let bp = match dom.add_breakpoint_at("known_tick") {
        Ok(bp) => bp,
        Err(e) => {
            return Ok(no(
                feature,
                format!("needs a breakpoint first: {}", vmi_reason(&e)),
            ))
        }
    };
    xl(&["unpause", &guest.name])?;
    let result = match dom.wait_event(HIT_TIMEOUT)? {
        Event::Breakpoint { id, .. } if id == bp => {
            dom.remove_breakpoint(bp)?;
            let counter = dom.symbol("known_counter")?;
            match dom.add_watchpoint(counter, 8, vmi::WatchKind::Write) {
                Err(e) => no(feature, vmi_reason(&e)),
                Ok(w) => match dom.cont(HIT_TIMEOUT)? {
                    Event::Watchpoint { id, old, new, .. }
                        if id == w && old == 0u64.to_le_bytes() && new == 1u64.to_le_bytes() =>
                    {
                        ok(feature)
                    }
                    Event::Timeout => no(
                        feature,
                        "the hit never reached xenprobe (no event within 10 s)",
                    ),
                    other => no(feature, format!("unexpected event {other:?}")),
                },
            }
        }
        other => no(
            feature,
            format!("needs a breakpoint hit first, got {other:?}"),
        ),
    };
    dom.detach()?;
    drop(guest);
    Ok(result)
}

fn probe_throwaway(xen: &Xen, images: &GuestImages, mode: Mode) -> anyhow::Result<GuestReport> {
    let mut features = Vec::new();
    let guest = Throwaway::create(images, mode, "basic")?;
    {
        let mut dom = Domain::attach(xen, guest.name.as_str())?;
        probe_basics(&mut dom, &mut features);
        probe_monitor(xen, &dom, &mut features);
        features.push(probe_log_dirty(xen, &mut dom));
        features.extend(static_rows(&dom));
        dom.detach()?;
    }
    drop(guest);
    let kind = mode;
    let (int3, int3_step, icebp, icebp_step) = if kind.is_hvm_container() {
        let (i, is) = probe_breakpoint(xen, images, mode, Some("int3"), FEATURES[5])?;
        let (c, cs) = probe_breakpoint(xen, images, mode, Some("icebp"), FEATURES[6])?;
        (i, is, c, cs)
    } else {
        let (i, is) = probe_breakpoint(xen, images, mode, None, FEATURES[5])?;
        let c = no(
            FEATURES[6],
            "ICEBP needs the debug-exception monitor (vm_event), which PV guests lack",
        );
        (i, is, c, None)
    };
    let step = icebp_step.or(int3_step).unwrap_or_else(|| {
        let routes = if kind.is_hvm_container() {
            [&icebp, &int3]
        } else {
            [&int3, &icebp]
        };
        let why = routes
            .iter()
            .find_map(|f| f.reason.clone())
            .unwrap_or_default();
        no(FEATURES[8], format!("needs a breakpoint hit first: {why}"))
    });
    features.extend([int3, icebp, step]);
    features.push(probe_watchpoint(xen, images, mode)?);
    Ok(GuestReport {
        kind: kind.to_string(),
        domain: format!("known-{}", mode.name()),
        features: order(features),
    })
}

fn order(mut features: Vec<FeatureResult>) -> Vec<FeatureResult> {
    features.sort_by_key(|f| FEATURES.iter().position(|n| *n == f.feature));
    features
}

fn probe_named(xen: &Xen, target: &str) -> anyhow::Result<(GuestReport, LeftAsFound)> {
    let mut dom = match target.parse::<u32>() {
        Ok(id) => Domain::attach(xen, id)?,
        Err(_) => Domain::attach(xen, target)?,
    };
    let paused_before = dom.info()?.paused;
    dom.pause()?;
    let frames = probe_frames(&mut dom)?;
    let hash_before = hash_frames(&dom, &frames)?;
    dom.resume()?;
    let mut features = Vec::new();
    probe_basics(&mut dom, &mut features);
    probe_monitor(xen, &dom, &mut features);
    features.push(probe_log_dirty(xen, &mut dom));
    features.extend(static_rows(&dom));
    let skipped = "not tried on a named domain (it would run guest code under a breakpoint); run `xenprobe caps` without a domain";
    for f in [FEATURES[5], FEATURES[6], FEATURES[8], FEATURES[14]] {
        features.push(no(f, skipped));
    }
    dom.pause()?;
    let hash_after = hash_frames(&dom, &frames)?;
    dom.resume()?;
    let kind = dom.kind().to_string();
    let name = dom.name().to_string();
    dom.detach()?;
    let paused_after = xen
        .ctrl()
        .domain_info(xen.find(name.as_str())?.domid)?
        .paused;
    Ok((
        GuestReport {
            kind,
            domain: name,
            features: order(features),
        },
        LeftAsFound {
            paused_before,
            paused_after,
            hash_before,
            hash_after,
            frames: frames.len(),
        },
    ))
}

/// Probes this hypervisor: a throwaway `known` guest of each type, or only
/// `domain` (left as found).
pub fn probe(domain: Option<&str>) -> anyhow::Result<CapsReport> {
    let xen = Xen::open()?;
    let host = xen.host_caps()?;
    let mut report = CapsReport {
        xen_version: host.xen_version.clone(),
        cpu_vendor: host.cpu_vendor.clone(),
        cpu_model: host.cpu_model.clone(),
        hap: host.hap,
        shadow: host.shadow,
        gdbsx: host.gdbsx,
        guests: Vec::new(),
        left: None,
    };
    match domain {
        Some(d) => {
            let (g, left) = probe_named(&xen, d)?;
            report.guests.push(g);
            report.left = Some(left);
        }
        None => {
            let images = GuestImages::locate()?;
            for mode in Mode::ALL {
                report.guests.push(probe_throwaway(&xen, &images, mode)?);
            }
        }
    }
    Ok(report)
}

impl CapsReport {
    /// A plain-text table for people: one line per feature and guest type.
    pub fn text(&self) -> String {
        let mut s = format!(
            "Xen {}, CPU {} ({}), HAP {}, shadow paging {}, gdbsx {}\n",
            self.xen_version,
            self.cpu_model,
            self.cpu_vendor,
            yn(self.hap),
            yn(self.shadow),
            yn(self.gdbsx)
        );
        for g in &self.guests {
            s.push_str(&format!("\n{} ({}):\n", g.kind, g.domain));
            for f in &g.features {
                match &f.reason {
                    None => s.push_str(&format!("  {:<32} works\n", f.feature)),
                    Some(r) => s.push_str(&format!(
                        "  {:<32} {}: {r}\n",
                        f.feature,
                        if f.works { "works" } else { "not available" }
                    )),
                }
            }
        }
        if let Some(l) = &self.left {
            s.push_str(&format!(
                "\nleft as found: paused {} -> {}, hash of {} frames {} -> {}\n",
                l.paused_before, l.paused_after, l.frames, l.hash_before, l.hash_after
            ));
        }
        s
    }
}

fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_reasons_name_the_errno_and_its_meaning() {
        let e = XenError::errno("xc_monitor_enable", libc::EINVAL);
        let r = xen_reason(&e);
        assert!(
            r.starts_with("xc_monitor_enable failed: EINVAL (22)"),
            "{r}"
        );
        assert!(errno_text(libc::EOPNOTSUPP).contains("EOPNOTSUPP"));
    }

    #[test]
    fn features_come_out_in_table_order() {
        let f = order(vec![no(FEATURES[9], "x"), ok(FEATURES[0]), ok(FEATURES[3])]);
        let names: Vec<_> = f.iter().map(|f| f.feature.as_str()).collect();
        assert_eq!(names, [FEATURES[0], FEATURES[3], FEATURES[9]]);
    }
}
