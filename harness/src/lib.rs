//! xenprobe: look at a Xen guest from the hypervisor's side.
pub mod arch;
pub mod caps_report;
pub mod logging;
pub mod repl;
pub mod stub;
pub mod testing;
pub mod vmi;
#[allow(unsafe_code)]
pub mod xen;
pub mod xl;
