//! What this hypervisor, CPU and guest type allow, and why not when they don't.
//!
//! Facts behind the rules (measured in the lab, see the project notes):
//! - vm_event exists for HVM and PVH only (PV: EINVAL).
//! - QEMU TCG never reports #BP (int3) to Xen; ICEBP (0xF1) with the
//!   debug-exception monitor does work there. On real hardware int3 with
//!   the software-breakpoint monitor is the normal route.
//! - MTF single-stepping (`xc_monitor_singlestep`) exists on Intel VT-x only;
//!   elsewhere stepping uses RFLAGS.TF and the debug-exception monitor.
//! - PV debugging (int3 and TF stepping that pause the domain) needs a
//!   hypervisor built with `CONFIG_GDBSX`; PV log-dirty needs shadow paging.
//! - VM forks need Intel VT-x with HAP.
//! - Xen loads a PV kernel at its link address (no KASLR slide to find).

use crate::xen::HostCaps;

use super::error::{Error, Result};

/// Guest type (the one definition of the guest mode, shared by every crate).
pub use xenprobe_abi::GuestMode as GuestKind;

/// Which instruction marks a software breakpoint, and how hits are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointInsnKind {
    /// 0xCC. HVM/PVH: software-breakpoint monitor event, RIP = bp.
    /// PV (gdbsx): the domain pauses with RIP = bp + 1.
    Int3,
    /// 0xF1 with the debug-exception monitor (sync): event type 5, RIP = bp.
    Icebp,
}

/// `int3` or `icebp`, any case (command-line values).
impl std::str::FromStr for BreakpointInsnKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            v if v.eq_ignore_ascii_case("int3") => Ok(Self::Int3),
            v if v.eq_ignore_ascii_case("icebp") => Ok(Self::Icebp),
            v => Err(format!("{v:?}: expected int3 or icebp")),
        }
    }
}

/// How a single step is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMethod {
    /// Monitor trap flag through `xc_monitor_singlestep` (Intel VT-x).
    Mtf,
    /// RFLAGS.TF, reported by the debug-exception monitor (HVM/PVH).
    TrapFlagMonitor,
    /// RFLAGS.TF with `xc_domain_setdebugging`: the domain pauses (PV, gdbsx).
    TrapFlagGdbsx,
}

/// Capabilities for one domain on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Guest type.
    pub kind: GuestKind,
    /// Host facts.
    pub host: HostCaps,
    /// MTF worked when tried at attach (set by the engine).
    pub mtf: bool,
    /// The breakpoint instruction the settings force ([`super::Settings`]).
    pub forced_breakpoint: Option<BreakpointInsnKind>,
}

const DEBUG_HINT: &str = "run the lab with --xen debug";

impl Capabilities {
    /// Capabilities of a `kind` guest on `host` (MTF unknown until probed).
    pub fn new(kind: GuestKind, host: HostCaps) -> Self {
        Self {
            kind,
            host,
            mtf: false,
            forced_breakpoint: None,
        }
    }

    /// Ok for HVM and PVH guests; for PV, `what` is unsupported because of `why`.
    fn hvm_only(&self, what: &'static str, why: &str) -> Result<()> {
        if self.kind.is_hvm_container() {
            Ok(())
        } else {
            Err(Error::unsupported(what, why))
        }
    }

    /// vm_event (monitor ring).
    pub fn vm_event(&self) -> Result<()> {
        self.hvm_only(
            "vm_event",
            "Xen offers vm_event for HVM and PVH guests only; this guest is PV",
        )
    }

    /// PV debugging through gdbsx (int3/TF pause the domain).
    pub fn pv_debugging(&self) -> Result<()> {
        if self.kind != GuestKind::Pv {
            return Err(Error::unsupported(
                "PV debugging",
                format!("the guest is {}, not PV", self.kind),
            ));
        }
        if self.host.gdbsx {
            Ok(())
        } else {
            Err(Error::unsupported(
                "PV breakpoints and stepping",
                format!("PV breakpoints need a hypervisor built with CONFIG_GDBSX (Xen {} is not); {DEBUG_HINT}", self.host.xen_version),
            ))
        }
    }

    /// The breakpoint instruction: the one forced by the settings if any,
    /// else int3 for PV and on real CPUs, ICEBP for HVM/PVH on an emulated
    /// CPU (QEMU TCG never reports #BP).
    pub fn breakpoint_insn(&self) -> Result<BreakpointInsnKind> {
        let forced = self.forced_breakpoint;
        match self.kind {
            GuestKind::Pv => {
                self.pv_debugging()?;
                if forced == Some(BreakpointInsnKind::Icebp) {
                    return Err(Error::unsupported(
                        "ICEBP breakpoints",
                        "ICEBP needs the debug-exception monitor (vm_event), which PV guests lack; use int3",
                    ));
                }
                Ok(BreakpointInsnKind::Int3)
            }
            GuestKind::Pvh | GuestKind::Hvm => Ok(forced.unwrap_or(if self.host.cpu_emulated() {
                BreakpointInsnKind::Icebp
            } else {
                BreakpointInsnKind::Int3
            })),
        }
    }

    /// How single steps are done.
    pub fn step_method(&self) -> Result<StepMethod> {
        match self.kind {
            GuestKind::Pv => {
                self.pv_debugging()?;
                Ok(StepMethod::TrapFlagGdbsx)
            }
            _ if self.mtf => Ok(StepMethod::Mtf),
            _ => Ok(StepMethod::TrapFlagMonitor),
        }
    }

    /// Log-dirty tracking.
    pub fn log_dirty(&self) -> Result<()> {
        if self.kind == GuestKind::Pv && !self.host.shadow {
            return Err(Error::unsupported(
                "log-dirty",
                format!("PV log-dirty needs shadow paging, which Xen {} was built without; {DEBUG_HINT}", self.host.xen_version),
            ));
        }
        if self.kind != GuestKind::Pv && !self.host.hap && !self.host.shadow {
            return Err(Error::unsupported(
                "log-dirty",
                "the hypervisor has neither HAP nor shadow paging",
            ));
        }
        Ok(())
    }

    /// Debug-register watchpoints: hits reported by the debug-exception
    /// monitor (HVM/PVH) or by the gdbsx debugger pause (PV).
    pub fn watchpoints(&self) -> Result<()> {
        if self.kind.is_hvm_container() {
            Ok(())
        } else {
            self.pv_debugging()
        }
    }

    /// Xen's mem_access (p2m access types), as far as the guest type goes
    /// (whether the host has it shows only when tried).
    pub fn mem_access(&self) -> Result<()> {
        self.hvm_only(
            "mem_access",
            "Xen's mem_access (p2m access types) exists for HVM and PVH guests only; this \
             guest is PV",
        )
    }

    /// What to add to Xen's own answer when turning log-dirty on fails.
    pub fn log_dirty_hint(&self) -> Option<&'static str> {
        (self.kind == GuestKind::Pv && !self.host.shadow)
            .then_some(" (PV log-dirty needs shadow paging: CONFIG_SHADOW_PAGING)")
    }

    /// A KASLR slide to find (HVM/PVH); Xen loads a PV kernel at its link
    /// address.
    pub fn kaslr(&self) -> Result<()> {
        self.hvm_only("KASLR", "Xen loads a PV kernel at its link address")
    }

    /// VM forks (`xc_memshr_fork`).
    pub fn vm_forks(&self) -> Result<()> {
        self.hvm_only(
            "VM forks",
            "Xen forks HVM/PVH guests only; this guest is PV",
        )?;
        if !self.host.is_intel() || !self.host.hap {
            return Err(Error::unsupported(
                "VM forks",
                format!(
                    "Xen forks VMs on Intel VT-x with HAP only; this CPU is {:?} ({})",
                    self.host.cpu_vendor, self.host.cpu_model
                ),
            ));
        }
        Ok(())
    }

    /// A human-readable summary, one feature per line.
    pub fn summary(&self) -> String {
        let show = |r: Result<String>| match r {
            Ok(s) => s,
            Err(e) => format!("no ({e})"),
        };
        [
            format!(
                "guest: {}, Xen {}, CPU {} ({})",
                self.kind, self.host.xen_version, self.host.cpu_model, self.host.cpu_vendor
            ),
            format!("vm_event: {}", show(self.vm_event().map(|_| "yes".into()))),
            format!(
                "breakpoints: {}",
                show(self.breakpoint_insn().map(|k| format!("{k:?}")))
            ),
            format!(
                "stepping: {}",
                show(self.step_method().map(|k| format!("{k:?}")))
            ),
            format!(
                "log-dirty: {}",
                show(self.log_dirty().map(|_| "yes".into()))
            ),
            format!("VM forks: {}", show(self.vm_forks().map(|_| "yes".into()))),
        ]
        .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(gdbsx: bool, shadow: bool, model: &str, vendor: &str) -> HostCaps {
        HostCaps {
            xen_version: "4.17.5".into(),
            hvm: true,
            pv: true,
            hap: true,
            shadow,
            gdbsx,
            cpu_model: model.into(),
            cpu_vendor: vendor.into(),
        }
    }

    fn lab_stock() -> HostCaps {
        host(false, false, "QEMU TCG CPU version 2.5+", "AuthenticAMD")
    }

    #[test]
    fn pv_on_stock_hypervisor_names_gdbsx_and_the_fix() {
        let c = Capabilities::new(GuestKind::Pv, lab_stock());
        let e = c.breakpoint_insn().unwrap_err().to_string();
        assert!(e.contains("CONFIG_GDBSX"), "{e}");
        assert!(e.contains("--xen debug"), "{e}");
        assert!(c.step_method().is_err());
        assert!(c.vm_event().unwrap_err().to_string().contains("PV"));
        assert!(c.log_dirty().unwrap_err().to_string().contains("shadow"));
        assert!(c.log_dirty_hint().is_some_and(|h| h.contains("SHADOW")));
        assert!(c.kaslr().is_err(), "loaded at its link address");
        assert!(c
            .watchpoints()
            .unwrap_err()
            .to_string()
            .contains("CONFIG_GDBSX"));
        assert!(c.mem_access().unwrap_err().to_string().contains("PV"));
    }

    #[test]
    fn pv_on_debug_hypervisor_uses_int3_and_gdbsx_stepping() {
        let c = Capabilities::new(
            GuestKind::Pv,
            host(true, true, "QEMU TCG CPU", "AuthenticAMD"),
        );
        assert_eq!(c.breakpoint_insn().ok(), Some(BreakpointInsnKind::Int3));
        let mut forced = c.clone();
        forced.forced_breakpoint = Some(BreakpointInsnKind::Icebp);
        assert!(forced.breakpoint_insn().is_err());
        assert_eq!(c.step_method().ok(), Some(StepMethod::TrapFlagGdbsx));
        assert!(c.log_dirty().is_ok());
        assert_eq!(c.log_dirty_hint(), None);
    }

    #[test]
    fn hvm_under_tcg_defaults_to_icebp_and_tf_stepping() {
        for kind in [GuestKind::Hvm, GuestKind::Pvh] {
            let c = Capabilities::new(kind, lab_stock());
            assert_eq!(c.breakpoint_insn().ok(), Some(BreakpointInsnKind::Icebp));
            let mut forced = c.clone();
            forced.forced_breakpoint = Some(BreakpointInsnKind::Int3);
            assert_eq!(
                forced.breakpoint_insn().ok(),
                Some(BreakpointInsnKind::Int3)
            );
            assert_eq!("INT3".parse(), Ok(BreakpointInsnKind::Int3));
            assert!("hlt".parse::<BreakpointInsnKind>().is_err());
            assert_eq!(c.step_method().ok(), Some(StepMethod::TrapFlagMonitor));
            assert!(c.vm_event().is_ok());
            assert!(c.log_dirty().is_ok());
            assert_eq!(c.log_dirty_hint(), None);
            assert!(c.kaslr().is_ok());
            assert!(c.watchpoints().is_ok() && c.mem_access().is_ok());
            assert!(c.vm_forks().unwrap_err().to_string().contains("Intel"));
        }
    }

    #[test]
    fn hvm_on_real_intel_uses_int3_mtf_and_forks() {
        let mut c = Capabilities::new(
            GuestKind::Hvm,
            host(false, true, "Intel(R) Xeon(R)", "GenuineIntel"),
        );
        assert_eq!(c.breakpoint_insn().ok(), Some(BreakpointInsnKind::Int3));
        c.mtf = true;
        assert_eq!(c.step_method().ok(), Some(StepMethod::Mtf));
        assert!(c.vm_forks().is_ok());
        assert!(c.summary().contains("VM forks: yes"));
    }
}
