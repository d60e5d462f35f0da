//! The REPL's state: the attached domain, the selected vCPU, breakpoints
//! with conditions, snapshots.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::arch::reg_by_name;
use crate::vmi::{BreakpointId, Domain, MemoryImage, Registers, Xen};

use super::expr::Env;
use super::ReplError;

/// A breakpoint as the REPL numbers it.
#[derive(Debug, Clone)]
pub struct Bp {
    /// Engine id.
    pub id: BreakpointId,
    /// Address.
    pub addr: u64,
    /// Condition source (evaluated at every hit; false hits continue).
    pub condition: Option<String>,
    /// Stops reported (condition true).
    pub stops: u64,
}

/// A memory and vCPU snapshot.
#[derive(Debug)]
pub enum Snapshot {
    /// HVM/PVH: the guest's memory (breakpoint bytes as the guest's own)
    /// and every vCPU's registers.
    Image {
        /// All guest frames.
        pages: MemoryImage,
        /// Registers of every vCPU.
        regs: Vec<(u32, Registers)>,
    },
    /// PV: the domain's engine snapshot (`Domain::take_snapshot`; one per
    /// domain, by machine frame).
    Engine {
        /// Frames saved.
        frames: usize,
    },
}

impl Snapshot {
    /// `N pages, M vcpus` (or what the engine saved).
    pub fn describe(&self) -> String {
        match self {
            Self::Image { pages, regs } => {
                format!("{} pages, {} vcpus", pages.frames(), regs.len())
            }
            Self::Engine { frames } => format!("{frames} pages (PV, with every vcpu)"),
        }
    }
}

/// Everything the REPL keeps between commands.
pub struct Session {
    /// Connection to the hypervisor (opened lazily).
    pub xen: Option<Xen>,
    /// The engine settings the connection is opened with.
    pub settings: crate::vmi::Settings,
    /// The attached domain.
    pub dom: Option<Domain>,
    /// The vCPU commands refer to.
    pub vcpu: u32,
    /// Breakpoints by REPL number.
    pub bps: BTreeMap<u32, Bp>,
    /// Next breakpoint number.
    pub next_bp: u32,
    /// Snapshots by name.
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Guest image for symbols (reloaded at attach).
    pub elf: Option<PathBuf>,
    /// Linux modules (`.ko`) loaded after the kernel's symbols.
    pub modules: Vec<PathBuf>,
    /// Symbol names for completion.
    pub symbol_names: Vec<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("dom", &self.dom)
            .field("vcpu", &self.vcpu)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// An empty session.
    pub fn new(elf: Option<PathBuf>, modules: Vec<PathBuf>) -> Self {
        Self {
            xen: None,
            settings: Default::default(),
            dom: None,
            vcpu: 0,
            bps: BTreeMap::new(),
            next_bp: 1,
            snapshots: BTreeMap::new(),
            elf,
            modules,
            symbol_names: Vec::new(),
        }
    }

    /// The hypervisor connection.
    pub fn xen(&mut self) -> Result<&Xen, ReplError> {
        if self.xen.is_none() {
            self.xen = Some(Xen::open()?.with_settings(self.settings.clone()));
        }
        self.xen
            .as_ref()
            .ok_or_else(|| ReplError::Usage("cannot open Xen".into()))
    }

    /// The attached domain.
    pub fn dom(&mut self) -> Result<&mut Domain, ReplError> {
        self.dom
            .as_mut()
            .ok_or_else(|| ReplError::Usage("not attached (use `attach DOMAIN`)".into()))
    }

    /// The attached domain, stopped.
    pub fn stopped(&mut self) -> Result<&mut Domain, ReplError> {
        let dom = self.dom()?;
        if !dom.is_stopped() {
            return Err(ReplError::Usage(
                "the domain is running (use `pause` first)".into(),
            ));
        }
        Ok(dom)
    }

    /// `name+0x12` for an address when symbols are loaded.
    pub fn symbolize(&self, addr: u64) -> String {
        let Some(dom) = self.dom.as_ref() else {
            return String::new();
        };
        match dom.symbols().ok().and_then(|s| s.symbolize(addr)) {
            Some((sym, 0)) => format!(" <{}>", sym.name),
            Some((sym, off)) => format!(" <{}+{off:#x}>", sym.name),
            None => String::new(),
        }
    }
}

/// Expression environment over the session (registers of the selected vCPU).
pub struct SessionEnv<'a> {
    /// The session.
    pub s: &'a mut Session,
    regs: Option<Registers>,
}

impl<'a> SessionEnv<'a> {
    /// Wraps a session.
    pub fn new(s: &'a mut Session) -> Self {
        Self { s, regs: None }
    }
}

impl Env for SessionEnv<'_> {
    fn register(&mut self, name: &str) -> Option<u64> {
        let def = reg_by_name(name)?;
        if self.regs.is_none() {
            let vcpu = self.s.vcpu;
            self.regs = self.s.dom.as_ref()?.regs(vcpu).ok();
        }
        self.regs.as_ref().map(|r| def.kind.get(r) as u64)
    }

    fn symbol(&mut self, name: &str) -> Option<u64> {
        self.s.dom.as_ref()?.symbols().ok()?.lookup(name)
    }

    fn read(&mut self, addr: u64, size: usize) -> Result<u64, String> {
        let vcpu = self.s.vcpu;
        let dom = self.s.dom.as_mut().ok_or("not attached")?;
        let mut b = [0u8; 8];
        dom.read_virt_on(vcpu, addr, &mut b[..size.min(8)])
            .map_err(|e| e.to_string())?;
        Ok(u64::from_le_bytes(b))
    }
}
