//! Opening Xen, listing domains, attaching to one, pause/resume, registers.

use std::sync::OnceLock;

use crate::xen::{DomainInfo, ForeignMemory, HostCaps, VmEventRegs, XenCtrl};

use super::breakpoint::Breakpoints;
use super::caps::{Capabilities, GuestKind};
use super::cleanup::Journal;
use super::error::{Error, Result};
use super::guest_symbols::GuestSymbols;
use super::memory::GuestMemory;
use super::platform::Platform;
use super::regs::{RegisterBackend, Registers};
use super::snapshot_state::SnapshotState;
use super::stops::Stops;
use super::symbols::Symbols;

/// Entry point: open handles to the hypervisor (libxenctrl, foreign memory).
#[derive(Clone)]
pub struct Xen {
    pub(crate) xc: XenCtrl,
    pub(crate) fmem: ForeignMemory,
    host: std::sync::Arc<OnceLock<HostCaps>>,
    settings: super::Settings,
}

impl std::fmt::Debug for Xen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xen").finish_non_exhaustive()
    }
}

/// A domain as listed by [`Xen::domains`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSummary {
    /// Domain id.
    pub domid: u32,
    /// Name from xenstore (empty if unknown).
    pub name: String,
    /// Guest type.
    pub kind: GuestKind,
    /// Raw hypervisor information.
    pub info: DomainInfo,
}

/// Names a domain: by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRef {
    /// Domain id.
    Id(u32),
    /// Domain name (xenstore `/local/domain/<id>/name`).
    Name(String),
}

impl From<u32> for DomainRef {
    fn from(id: u32) -> Self {
        Self::Id(id)
    }
}
impl From<&str> for DomainRef {
    fn from(name: &str) -> Self {
        name.parse()
            .map(Self::Id)
            .unwrap_or_else(|_| Self::Name(name.into()))
    }
}
impl From<String> for DomainRef {
    fn from(name: String) -> Self {
        Self::from(name.as_str())
    }
}

impl Xen {
    /// Opens libxenctrl and libxenforeignmemory (needs dom0 root).
    pub fn open() -> Result<Self> {
        Ok(Self {
            xc: XenCtrl::open()?,
            fmem: ForeignMemory::open()?,
            host: Default::default(),
            settings: Default::default(),
        })
    }

    /// This handle (and the domains attached through it) with `settings`.
    pub fn with_settings(mut self, settings: super::Settings) -> Self {
        self.settings = settings;
        self
    }

    /// The engine settings of this handle.
    pub fn settings(&self) -> &super::Settings {
        &self.settings
    }

    /// The raw libxenctrl handle (for calls the engine does not wrap).
    pub fn ctrl(&self) -> &XenCtrl {
        &self.xc
    }

    /// Hypervisor and CPU capabilities (probed once).
    pub fn host_caps(&self) -> Result<HostCaps> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let h = self.xc.host_caps()?;
        Ok(self.host.get_or_init(|| h).clone())
    }

    /// Name of a domain from xenstore.
    pub fn domain_name(&self, domid: u32) -> Option<String> {
        let path = format!("/local/domain/{domid}/name");
        crate::xen::XenStore::open()
            .ok()?
            .read(&path)
            .ok()
            .flatten()
    }

    /// All domains, dom0 included.
    pub fn domains(&self) -> Result<Vec<DomainSummary>> {
        let store = crate::xen::XenStore::open().ok();
        Ok(self
            .xc
            .domains()?
            .into_iter()
            .map(|info| DomainSummary {
                domid: info.domid,
                name: store
                    .as_ref()
                    .and_then(|s| {
                        s.read(&format!("/local/domain/{}/name", info.domid))
                            .ok()
                            .flatten()
                    })
                    .unwrap_or_default(),
                kind: super::platform::kind_of(&info),
                info,
            })
            .collect())
    }

    /// Finds a domain by id or name. Of several domains of one name (one
    /// being destroyed while its successor is created), a live one wins,
    /// then the newest.
    pub fn find(&self, target: impl Into<DomainRef>) -> Result<DomainSummary> {
        let target = target.into();
        let all = self.domains()?;
        all.into_iter()
            .filter(|d| match &target {
                DomainRef::Id(id) => d.domid == *id,
                DomainRef::Name(n) => &d.name == n,
            })
            .max_by_key(|d| (!d.info.dying, d.domid))
            .ok_or_else(|| {
                Error::NoDomain(match target {
                    DomainRef::Id(id) => format!("id {id}"),
                    DomainRef::Name(n) => format!("name {n:?}"),
                })
            })
    }
}

/// An attached domain. Dropping it detaches cleanly (see [`Domain::detach`]).
///
/// Its identity (handles, id, name, guest type, capabilities, journal) and
/// parts that own their state, each in its file: memory (`GuestMemory`),
/// registers, the stop state (`Stops`), breakpoints, watchpoints, symbols
/// (`GuestSymbols`), the snapshot (`SnapshotState`) and notices. `Domain`'s
/// methods combine them (resume: step over breakpoints, answer events,
/// unpause; restore: memory, registers, breakpoints).
pub struct Domain {
    pub(crate) xen: Xen,
    pub(crate) domid: u32,
    pub(crate) name: String,
    pub(crate) kind: GuestKind,
    /// How the engine reaches this guest type (see [`super::platform`]).
    pub(crate) platform: Platform,
    pub(crate) caps: Capabilities,
    pub(crate) regs_backend: Box<dyn RegisterBackend>,
    pub(crate) mem: GuestMemory,
    /// Pauses, stopped vCPUs, queued events, event delivery.
    pub(crate) stops: Stops,
    pub(crate) bps: Breakpoints,
    pub(crate) watches: super::watchpoint::Watchpoints,
    pub(crate) journal: Journal,
    /// Loaded symbols (an image's, or a Linux kernel's and its modules).
    pub(crate) symbols: GuestSymbols,
    /// The snapshot, how it is restored.
    pub(crate) snapshot: SnapshotState,
    /// What the guest did that the engine noticed ([`Domain::take_notices`]).
    pub(crate) notices: super::notice::Notices,
    pub(crate) detached: bool,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("domid", &self.domid)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// Attaches to a domain by id or name. A domain left dirty by a killed
    /// xenprobe (journal of planted breakpoints, stale vm_event ring, stale
    /// pauses) is repaired first.
    pub fn attach(xen: &Xen, target: impl Into<DomainRef>) -> Result<Self> {
        let summary = xen.find(target)?;
        if summary.domid == 0 {
            return Err(Error::State("refusing to attach to dom0".into()));
        }
        let domid = summary.domid;
        let kind = summary.kind;
        super::cleanup::recover(xen, domid, &summary.name)?;
        let mut caps = Capabilities::new(kind, xen.host_caps()?);
        caps.forced_breakpoint = xen.settings.breakpoint;
        let platform = Platform::of(kind);
        let regs_backend = platform.registers(&xen.xc, domid)?;
        tracing::debug!(domid, %kind, "attached");
        let mut dom = Self {
            mem: GuestMemory::new(xen.fmem.clone(), domid),
            journal: Journal::new(&xen.settings.state_dir(), domid, &summary.name),
            xen: xen.clone(),
            domid,
            name: summary.name,
            kind,
            platform,
            caps,
            regs_backend,
            stops: Stops::new(platform.events(), summary.info.max_vcpu_id == 0),
            bps: Breakpoints::default(),
            watches: Default::default(),
            symbols: GuestSymbols::default(),
            snapshot: SnapshotState::default(),
            notices: Default::default(),
            detached: false,
        };
        dom.journal.mark_attached()?;
        super::cleanup::register(domid, &dom.name);
        Ok(dom)
    }

    /// Domain id.
    pub fn id(&self) -> u32 {
        self.domid
    }

    /// Domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Guest type.
    pub fn kind(&self) -> GuestKind {
        self.kind
    }

    /// What this hypervisor and guest type allow.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Current hypervisor view of the domain.
    pub fn info(&self) -> Result<DomainInfo> {
        Ok(self.xen.xc.domain_info(self.domid)?)
    }

    /// The time `vcpu` has run so far.
    pub fn vcpu_time(&self, vcpu: u32) -> Result<std::time::Duration> {
        let ns = self.xen.xc.vcpu_state(self.domid, vcpu)?.cpu_time;
        Ok(std::time::Duration::from_nanos(ns))
    }

    /// Highest vCPU id.
    pub fn max_vcpu(&self) -> Result<u32> {
        Ok(self.info()?.max_vcpu_id)
    }

    /// True while the domain is stopped by us (pause or an event).
    pub fn is_stopped(&self) -> bool {
        self.stops.is_stopped()
    }

    /// Stops the whole domain (nested calls are counted once: a stopped
    /// domain stays stopped until [`Domain::resume`]).
    pub fn pause(&mut self) -> Result<()> {
        self.stops.pause(&self.xen.xc, self.domid)
    }

    /// Lets the domain run again: steps vCPUs stopped on a breakpoint over
    /// it, answers pending events and undoes our pauses.
    pub fn resume(&mut self) -> Result<()> {
        self.complete_cpuid_stops()?;
        self.step_over_breakpoints()?;
        self.release()
    }

    /// Whether a pause that is not this attach's holds the domain (it was
    /// created with `xl create -p`, or `xl pause`d): Xen reports a
    /// controller pause while we hold none. A guest that has shut down does
    /// not count: xl pauses it to destroy it, and the next event wait
    /// reports the shutdown.
    pub fn paused_elsewhere(&self) -> Result<bool> {
        if self.stops.paused() {
            return Ok(false);
        }
        Ok(self.info()?.held_paused())
    }

    /// Answers pending events and unpauses, without stepping over anything.
    pub(crate) fn release(&mut self) -> Result<()> {
        self.stops.answer_pending()?;
        self.mem.invalidate();
        self.regs_backend.forget();
        self.stops.unpause(&self.xen.xc, self.domid)
    }

    /// Registers of `vcpu`. While the domain is stopped the state read is
    /// cached (until it resumes), so a following [`Domain::set_regs`] is one
    /// hypercall.
    pub fn regs(&self, vcpu: u32) -> Result<Registers> {
        self.apply_register_reset()?;
        self.regs_backend
            .get(&self.xen.xc, self.domid, vcpu, self.is_stopped())
    }

    /// The registers `vcpu`'s pending vm_event carries (general registers,
    /// RIP, RFLAGS, CR0/2/3/4, EFER), read without a hypercall; `None` when
    /// it is not stopped at an event or its registers changed since (a
    /// write, a register reset waiting). [`Domain::regs`] has the rest
    /// (segments, debug registers) for the price of a context read.
    pub fn event_regs(&self, vcpu: u32) -> Option<VmEventRegs> {
        if self.stops.regs_changed(vcpu) || self.stops.register_reset_waiting() {
            return None;
        }
        self.stops
            .pending
            .get(&vcpu)?
            .request
            .as_ref()
            .map(|r| r.regs())
    }

    /// Writes the registers of `vcpu` (the domain should be stopped).
    pub fn set_regs(&mut self, vcpu: u32, regs: &Registers) -> Result<()> {
        self.settle_register_reset()?;
        self.regs_backend
            .set(&self.xen.xc, self.domid, vcpu, regs, self.is_stopped())?;
        self.stops.regs_written(vcpu);
        self.mem.invalidate();
        Ok(())
    }

    /// Drops the vCPU state cached while the domain is stopped (the next
    /// read asks Xen). Needed only after changing a vCPU behind the engine
    /// (raw libxc calls); resuming drops it anyway.
    pub fn forget_registers(&self) {
        self.regs_backend.forget();
    }

    /// Loads the guest's symbols: an ELF image's; for a Linux kernel (its
    /// vmlinux, stripped or not, a `System.map` or `/proc/kallsyms`) slid
    /// onto the running kernel and checked against it (see
    /// [`Domain::load_kernel_symbols`], which also takes modules).
    pub fn load_symbols(&mut self, path: impl AsRef<std::path::Path>) -> Result<&Symbols> {
        let path = path.as_ref();
        // A file that does not load leaves the symbols as they were.
        let syms = Symbols::load(path)?;
        self.symbols.forget_kernel();
        if super::kernel::is_linux(&syms) {
            let spec = super::kernel::KernelSymbols {
                kernel: path.to_path_buf(),
                modules: Vec::new(),
            };
            self.adopt_kernel(syms, &spec)?;
            return self.symbols();
        }
        Ok(self.symbols.set(syms))
    }

    /// Symbols loaded by [`Domain::load_symbols`].
    pub fn symbols(&self) -> Result<&Symbols> {
        self.symbols.get().ok_or_else(|| {
            Error::Symbol("no symbols loaded (call load_symbols with the guest image)".into())
        })
    }

    /// Address of a symbol of the loaded image.
    pub fn symbol(&self, name: &str) -> Result<u64> {
        self.symbols()?.require(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Domain>();
        assert_send::<Xen>();
    }

    #[test]
    fn domain_refs_parse_ids_and_names() {
        assert_eq!(DomainRef::from("7"), DomainRef::Id(7));
        assert_eq!(
            DomainRef::from("known-hvm"),
            DomainRef::Name("known-hvm".into())
        );
        assert_eq!(DomainRef::from(3u32), DomainRef::Id(3));
    }
}
