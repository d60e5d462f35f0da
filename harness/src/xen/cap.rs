//! Capability probing: what this hypervisor and host CPU offer.
use xen_sys as sys;

use super::ctrl::XenCtrl;
use super::domctl::Domctl;
use super::error::{check, Result};

/// Host/hypervisor capabilities, probed once.
/// See docs/xen-vmi.md#host-capabilities
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCaps {
    /// "4.17.x" from `xc_version`.
    pub xen_version: String,
    /// `XEN_SYSCTL_PHYSCAP_hvm`.
    pub hvm: bool,
    /// `XEN_SYSCTL_PHYSCAP_pv`.
    pub pv: bool,
    /// `XEN_SYSCTL_PHYSCAP_hap` (nested paging).
    pub hap: bool,
    /// `XEN_SYSCTL_PHYSCAP_shadow`: shadow paging compiled in (PV log-dirty).
    pub shadow: bool,
    /// The hypervisor answers gdbsx domctls (`CONFIG_GDBSX`): PV int3 and
    /// trap-flag stepping pause the domain for a debugger.
    pub gdbsx: bool,
    /// CPU brand string seen in dom0 (`/proc/cpuinfo` model name).
    pub cpu_model: String,
    /// CPU vendor seen in dom0.
    pub cpu_vendor: String,
}

impl HostCaps {
    /// Intel VT-x: MTF single-stepping and VM forks exist only there.
    pub fn is_intel(&self) -> bool {
        self.cpu_vendor == "GenuineIntel"
    }

    /// The CPU is emulated by QEMU TCG: #BP (int3) is never reported to Xen.
    pub fn cpu_emulated(&self) -> bool {
        self.cpu_model.contains("QEMU")
    }
}

/// Monitor (vm_event) capabilities of one domain (`xc_monitor_get_capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonitorCaps(pub u32);

impl MonitorCaps {
    fn has(self, ev: u32) -> bool {
        self.0 & (1 << ev) != 0
    }
    /// Software breakpoint (int3) interception.
    pub fn software_breakpoint(self) -> bool {
        self.has(sys::XEN_DOMCTL_MONITOR_EVENT_SOFTWARE_BREAKPOINT)
    }
    /// Debug exception (#DB, ICEBP) interception.
    pub fn debug_exception(self) -> bool {
        self.has(sys::XEN_DOMCTL_MONITOR_EVENT_DEBUG_EXCEPTION)
    }
    /// MTF single-step events (advertised; may still fail on AMD).
    pub fn singlestep(self) -> bool {
        self.has(sys::XEN_DOMCTL_MONITOR_EVENT_SINGLESTEP)
    }
}

fn cpuinfo_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

impl XenCtrl {
    /// `xc_physinfo` capabilities, `xc_version` and the gdbsx probe.
    /// See docs/xen-vmi.md#host-capabilities
    pub fn host_caps(&self) -> Result<HostCaps> {
        let mut pi = sys::xc_physinfo_t::default();
        // SAFETY: out pointer to a local.
        check("xc_physinfo", unsafe {
            sys::xc_physinfo(self.raw(), &mut pi)
        })?;
        // SAFETY: XENVER_version takes no argument and returns major<<16|minor.
        let v = unsafe {
            sys::xc_version(self.raw(), sys::XENVER_version as i32, std::ptr::null_mut())
        };
        let v = check("xc_version", v)?;
        let mut extra: sys::xen_extraversion_t = [0; 16];
        // SAFETY: XENVER_extraversion fills a 16-byte buffer.
        let rc = unsafe {
            sys::xc_version(
                self.raw(),
                sys::XENVER_extraversion as i32,
                extra.as_mut_ptr().cast(),
            )
        };
        check("xc_version", rc)?;
        let extra: String = extra
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let caps = pi.capabilities;
        Ok(HostCaps {
            xen_version: format!("{}.{}{}", v >> 16, v & 0xffff, extra),
            hvm: caps & sys::XEN_SYSCTL_PHYSCAP_hvm != 0,
            pv: caps & sys::XEN_SYSCTL_PHYSCAP_pv != 0,
            hap: caps & sys::XEN_SYSCTL_PHYSCAP_hap != 0,
            shadow: caps & sys::XEN_SYSCTL_PHYSCAP_shadow != 0,
            gdbsx: self.probe_gdbsx()?,
            cpu_model: cpuinfo_field(&cpuinfo, "model name"),
            cpu_vendor: cpuinfo_field(&cpuinfo, "vendor_id"),
        })
    }

    /// `xc_monitor_get_capabilities` for a domain (0 for PV guests).
    /// See docs/xen-vmi.md#host-capabilities
    pub fn monitor_caps(&self, domid: u32) -> Result<MonitorCaps> {
        let mut caps = 0u32;
        // SAFETY: out pointer to a local.
        let rc = unsafe { sys::xc_monitor_get_capabilities(self.raw(), domid, &mut caps) };
        check("xc_monitor_get_capabilities", rc)?;
        Ok(MonitorCaps(caps))
    }

    /// Issues `XEN_DOMCTL_gdbsx_domstatus` on dom0 through privcmd: a
    /// hypervisor without `CONFIG_GDBSX` answers ENOSYS/EOPNOTSUPP.
    /// See docs/xen-vmi.md#host-capabilities
    fn probe_gdbsx(&self) -> Result<bool> {
        let mut domctl = Domctl::new(self)?;
        match domctl.call(
            "domctl(gdbsx_domstatus)",
            0,
            sys::XEN_DOMCTL_gdbsx_domstatus,
            |_| {},
        ) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_errno(), Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpuinfo() {
        let text =
            "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU TCG CPU version 2.5+\n";
        assert_eq!(cpuinfo_field(text, "vendor_id"), "AuthenticAMD");
        let caps = HostCaps {
            xen_version: String::new(),
            hvm: true,
            pv: true,
            hap: true,
            shadow: false,
            gdbsx: false,
            cpu_model: cpuinfo_field(text, "model name"),
            cpu_vendor: cpuinfo_field(text, "vendor_id"),
        };
        assert!(caps.cpu_emulated());
        assert!(!caps.is_intel());
        assert_eq!(cpuinfo_field(text, "flags"), "");
    }

    #[test]
    fn monitor_caps_bits() {
        let c = MonitorCaps(1 << sys::XEN_DOMCTL_MONITOR_EVENT_DEBUG_EXCEPTION);
        assert!(c.debug_exception());
        assert!(!c.software_breakpoint());
        assert!(!c.singlestep());
    }
}
