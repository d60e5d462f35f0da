//! VM forks, the other way to bring a workload back to a saved state than
//! the domain's own snapshot ([`Domain::take_snapshot`] /
//! [`Domain::restore_snapshot`], where the workload runs in the
//! snapshotted domain itself).
//!
//! [`VmForkBackend`]: `xc_memshr_fork` makes a child domain that shares
//! the paused parent's memory copy-on-write; `xc_memshr_fork_reset` throws
//! the child's private pages and vCPU state away. The workload runs in the
//! child (attach to it by id); the parent stays paused. Xen 4.17 forks
//! HVM/PVH guests on Intel VT-x with HAP only (not in the QEMU lab, which
//! emulates an AMD CPU): [`VmForkBackend::probe`] says why not.

use crate::xen::XenCtrl;

use super::domain::{Domain, Xen};
use super::error::{Error, Result};

/// VM forks (`xc_memshr_fork` / `xc_memshr_fork_reset`); the child is
/// destroyed on drop.
#[derive(Debug)]
pub struct VmForkBackend {
    xc: XenCtrl,
    child: Option<u32>,
}

impl VmForkBackend {
    /// A backend that has not forked yet.
    pub fn new(xen: &Xen) -> Self {
        Self {
            xc: xen.xc.clone(),
            child: None,
        }
    }

    /// Whether `dom` can be forked here. When the rules say no (PV, not
    /// Intel VT-x with HAP) the hypervisor is asked anyway, and the error
    /// names both the rule and what Xen answered. `dom` is paused for the
    /// try and left as it was.
    pub fn probe(xen: &Xen, dom: &Domain) -> Result<()> {
        let rule = match dom.capabilities().vm_forks() {
            Ok(()) => return Ok(()),
            Err(Error::Unsupported { why, .. }) => why,
            Err(e) => return Err(e),
        };
        if !dom.kind().is_hvm_container() {
            return Err(Error::unsupported("VM forks", rule));
        }
        let answer = match try_fork(&xen.xc, dom.id()) {
            Ok(()) => "yet a fork succeeded: the rule is out of date".to_string(),
            Err(e) => format!("Xen answered: {e}"),
        };
        Err(Error::unsupported("VM forks", format!("{rule}; {answer}")))
    }

    /// The fork, once taken.
    pub fn child(&self) -> Option<u32> {
        self.child
    }
}

/// Forks `parent` into a throwaway shell and destroys it again.
fn try_fork(xc: &XenCtrl, parent: u32) -> Result<()> {
    xc.domain_pause(parent)?;
    let result = (|| -> Result<()> {
        let info = xc.domain_info(parent)?;
        let child = xc.fork_shell_create(&info)?;
        let forked = xc.memshr_fork(parent, child);
        if let Err(e) = xc.domain_destroy(child) {
            tracing::warn!(child, "destroying the fork probe's shell: {e}");
        }
        Ok(forked?)
    })();
    xc.domain_unpause(parent)?;
    result
}

impl VmForkBackend {
    /// Forks the stopped `dom` (a fork taken earlier is destroyed); returns
    /// the child's id, the domain to attach to and run the workload in.
    pub fn take(&mut self, dom: &mut Domain) -> Result<u32> {
        dom.capabilities().vm_forks()?;
        if !dom.is_stopped() {
            return Err(Error::State(
                "forking needs a stopped domain: pause() first".into(),
            ));
        }
        if let Some(old) = self.child.take() {
            let _ = self.xc.domain_destroy(old);
        }
        let info = dom.info()?;
        let child = self.xc.fork_shell_create(&info)?;
        if let Err(e) = self.xc.memshr_fork(dom.id(), child) {
            let _ = self.xc.domain_destroy(child);
            return Err(e.into());
        }
        self.child = Some(child);
        tracing::debug!(parent = dom.id(), child, "forked");
        Ok(child)
    }

    /// Brings `workload` (the fork [`VmForkBackend::take`] made) back to the
    /// parent's memory and vCPU state; it is left stopped.
    pub fn restore(&mut self, workload: &mut Domain) -> Result<()> {
        match self.child {
            Some(c) if c == workload.id() => {}
            _ => {
                return Err(Error::State(format!(
                    "domain {} is not this backend's fork",
                    workload.id()
                )))
            }
        }
        workload.pause()?;
        self.xc.memshr_fork_reset(workload.id())?;
        // Every vCPU and page is the parent's again.
        workload.stops.all_regs_written();
        workload.mem.invalidate();
        workload.regs_backend.forget();
        workload.mem.forget_writes();
        Ok(())
    }
}

impl Drop for VmForkBackend {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            if let Err(e) = self.xc.domain_destroy(c) {
                tracing::warn!(child = c, "destroying the fork: {e}");
            }
        }
    }
}
