//! The symbols a domain has loaded: an image's, or a Linux kernel's with
//! its modules and the kernel state that goes with them ([`Kernel`]).
//!
//! Loading (which reads the guest: the KASLR slide, the module list) is
//! `Domain`'s, in `domain.rs` and `kernel.rs`.

use std::path::Path;

use super::error::{Error, Result};
use super::kernel::{Kernel, KernelInfo};
use super::symbols::{ModuleLayout, Symbols};

/// A domain's loaded symbols.
#[derive(Default)]
pub(crate) struct GuestSymbols {
    symbols: Option<Symbols>,
    /// A Linux guest's kernel (see `Domain::load_kernel_symbols`).
    kernel: Option<Kernel>,
}

impl GuestSymbols {
    /// The loaded symbols.
    pub(crate) fn get(&self) -> Option<&Symbols> {
        self.symbols.as_ref()
    }

    /// The loaded symbols, when they are a Linux kernel's.
    pub(crate) fn kernel_symbols(&self) -> Option<&Symbols> {
        self.kernel.as_ref().and(self.symbols.as_ref())
    }

    /// What was found about the Linux kernel, if its symbols are loaded.
    pub(crate) fn kernel_info(&self) -> Option<&KernelInfo> {
        self.kernel.as_ref().map(|k| &k.info)
    }

    /// The Linux kernel, if its symbols are loaded.
    pub(crate) fn kernel_mut(&mut self) -> Option<&mut Kernel> {
        self.kernel.as_mut()
    }

    /// Takes the kernel out (for a walk that reads memory through the
    /// domain meanwhile); put it back with [`GuestSymbols::put_kernel`].
    pub(crate) fn take_kernel(&mut self) -> Option<Kernel> {
        self.kernel.take()
    }

    /// Puts back what [`GuestSymbols::take_kernel`] took.
    pub(crate) fn put_kernel(&mut self, kernel: Option<Kernel>) {
        self.kernel = kernel;
    }

    /// Forgets the kernel (the symbols stay until replaced).
    pub(crate) fn forget_kernel(&mut self) {
        self.kernel = None;
    }

    /// Keeps an image's symbols.
    pub(crate) fn set(&mut self, syms: Symbols) -> &Symbols {
        self.symbols.insert(syms)
    }

    /// Keeps a Linux kernel's symbols and what was found about it.
    pub(crate) fn set_kernel(&mut self, syms: Symbols, kernel: Kernel) {
        self.symbols = Some(syms);
        self.kernel = Some(kernel);
    }

    /// Adds a module's symbols, line tables and ORC table at `layout`,
    /// after the kernel's.
    pub(crate) fn add_module(&mut self, ko: &Path, layout: &ModuleLayout) -> Result<()> {
        let (Some(syms), Some(kernel)) = (self.symbols.as_mut(), self.kernel.as_mut()) else {
            return Err(Error::Symbol(
                "load the kernel's symbols before a module's".into(),
            ));
        };
        syms.add_module(ko, layout)?;
        kernel.add_module(ko, layout);
        Ok(())
    }
}
