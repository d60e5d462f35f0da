//! The VMI engine: attach to a Xen guest and inspect, change and debug it
//! from dom0.
//!
//! ```no_run
//! use std::time::Duration;
//! use xenprobe::vmi::{Domain, Event, Xen};
//!
//! # fn main() -> xenprobe::vmi::Result<()> {
//! let xen = Xen::open()?;
//! for d in xen.domains()? {
//!     println!("{} {} {}", d.domid, d.name, d.kind);
//! }
//! let mut dom = Domain::attach(&xen, "known-hvm")?; // or a domid
//! dom.load_symbols("target/guests/known-hvm")?;
//! let bp = dom.add_breakpoint_at("known_tick")?;
//! if let Event::Breakpoint { vcpu, .. } = dom.wait_event(Duration::from_secs(5))? {
//!     let regs = dom.regs(vcpu)?; // the domain is stopped here
//!     println!("rdi = {}", regs.rdi);
//!     dom.step(vcpu)?; // one instruction
//!     dom.resume()?;
//! }
//! println!("hits: {}", dom.breakpoint_hits(bp)?);
//! dom.detach()?; // also on drop
//! # Ok(()) }
//! ```
//!
//! # API
//! - [`Xen::open`], [`Xen::domains`], [`Xen::find`], [`Xen::host_caps`].
//! - [`Domain::attach`] (by name or id), [`Domain::kind`] (PV/PVH/HVM),
//!   [`Domain::capabilities`], [`Domain::pause`], [`Domain::resume`],
//!   [`Domain::detach`] (also on drop).
//! - Registers: [`Domain::regs`] / [`Domain::set_regs`] with one
//!   [`Registers`] type for all guest types.
//! - Memory: [`Domain::read_phys`], [`Domain::write_phys`],
//!   [`Domain::read_virt`], [`Domain::write_virt`] (any length, across
//!   pages; virtual addresses are translated by walking the guest's page
//!   tables, cached while stopped), [`Domain::translate`],
//!   [`Domain::disassemble`].
//! - Symbols: [`Domain::load_symbols`], [`Domain::symbols`],
//!   [`Domain::symbol`] ([`Symbols`]: name -> address, address ->
//!   function+offset and file:line).
//! - Breakpoints: [`Domain::add_breakpoint`], [`Domain::add_breakpoint_at`]
//!   (symbol), [`Domain::add_breakpoint_if`] (condition closure),
//!   [`Domain::remove_breakpoint`], [`Domain::breakpoint_hits`]; what the
//!   guest did to them (bytes it overwrote, copies of them it ran, vCPUs it
//!   brought up after a snapshot): [`Domain::take_notices`] ([`Notice`]).
//! - Events: [`Domain::wait_event`] (blocking, with timeout), [`Domain::cont`]
//!   (resume + wait), [`Domain::step`].
//! - Log-dirty: [`Domain::track_dirty`] ([`DirtyTracking`]: clean/peek).
//! - Snapshots: [`Domain::take_snapshot`], [`Domain::restore_snapshot`]
//!   (copies back only frames log-dirty reports plus frames xenprobe wrote;
//!   [`RestoreOptions`]: CLEAN every run or PEEK with CLEAN every N, registers
//!   in the vm_event reply);
//!   [`Domain::save_snapshot_file`] / [`Domain::load_snapshot_file`] (to a
//!   file and into a fresh domain of the same config);
//!   [`Domain::memory_image`] (a copy of all guest memory, to compare).
//! - VM forks where Xen has them: [`fork::VmForkBackend`].
//! - What differs between PV and HVM/PVH guests is chosen once at attach
//!   (`platform.rs`); features one type lacks are asked for:
//!   [`Domain::support_guest_frames`].
//! - Watchpoints on debug registers: [`Domain::add_watchpoint`],
//!   [`Domain::remove_watchpoint`], [`Domain::watchpoints`], hits as
//!   [`Event::Watchpoint`] (see [`watchpoint`]); [`Domain::mem_access_support`]
//!   probes the other route (Intel only).
//! - Stacks: [`Domain::backtrace`] / [`Domain::backtrace_from`] (ORC
//!   unwinding of Linux kernel code, [`unwind`]; else the saved frame
//!   pointers, [`Domain::frame_pointer_walk`]).
//! - Linux kernels: [`Domain::load_kernel_symbols`] ([`KernelSymbols`]: a
//!   stripped vmlinux, `System.map` or `/proc/kallsyms`, plus `.ko`
//!   modules found in the guest's module list; the KASLR slide is found
//!   and checked, see [`kernel`]); [`Domain::set_cpuid_marker`] (harness
//!   markers such as KF/x's `cpuid` 0x13371337, as [`Event::Cpuid`]).
//! - Cleanup: [`cleanup::restore_on_ctrl_c`]; stale state from a killed
//!   process is repaired by the next [`Domain::attach`].
//!
//! # Stop model
//! A domain is either running or stopped. [`Domain::pause`] and every
//! event except `Timeout`/`Shutdown` stop the whole domain; [`Domain::resume`]
//! steps vCPUs that sit on a breakpoint over it, answers vm_event requests
//! and unpauses.
//!
//! # Breakpoint instruction and stepping
//! See [`caps`]: int3 on real hardware and for PV guests (gdbsx hypervisor),
//! ICEBP (0xF1) for HVM/PVH guests when the CPU is emulated by QEMU TCG
//! (detected from the dom0 CPU model string, which TCG reports as "QEMU ...";
//! override with `XENPROBE_BREAKPOINT=int3|icebp`). Steps use MTF on Intel,
//! else RFLAGS.TF with the debug-exception monitor (HVM/PVH) or the gdbsx
//! debugger pause (PV).
//!
//! # Limits
//! - Stepping runs the whole domain; on multi-vCPU guests other vCPUs move
//!   during a step and may briefly run over a breakpoint being stepped over.
//!   Events of other vCPUs seen during a step are queued for `wait_event`.
//! - A debug event that is not xenprobe's (the guest's own ICEBP or #DB,
//!   or int3 on the int3 route) is reported as [`Event::Debug`] and not
//!   re-injected on resume (a foreign int3 would be reported again).
//! - TF is hidden from `pushf` during a step; an interrupt taken during a
//!   step still sees TF in its frame.
//! - "Physical" addresses of PV guests are machine addresses.
//! - Snapshots of HVM/PVH guests: the frame scan follows libxl's x86
//!   layout. PV snapshots are kept by machine frame (`snapshot_pv.rs` says
//!   what they leave out). Snapshot files: HVM/PVH only, and they load
//!   into a domain made from the same xl config only.
//! - Guest memory mappings are cached (512 frames) across runs; a guest
//!   that balloons pages out would leave stale mappings.
//! - Not verified in the lab (no hardware for it): int3 with the HVM
//!   software-breakpoint monitor, MTF stepping, VM forks (Intel only).
//!
//! # Settings
//! [`Settings`], given to [`Xen::with_settings`] by the programs: the
//! breakpoint instruction forced (`xenprobe --breakpoint int3|icebp`, or
//! `XENPROBE_BREAKPOINT` read by the binaries and the test API's entry
//! point), slow step-over with full context loads (`--slow-step`,
//! `XENPROBE_SLOW_STEP`), the state directory for journals and parked
//! guests (`--state-dir`, `XENPROBE_STATE_DIR`; default `/run/xenprobe`).

mod breakpoint;
pub mod caps;
pub mod cleanup;
mod domain;
mod error;
mod events;
pub mod fork;
mod frame_slots;
mod guest_symbols;
pub mod kernel;
mod memory;
mod notice;
pub mod pagewalk;
mod platform;
mod regs;
mod settings;
pub mod snapshot;
pub mod snapshot_file;
mod snapshot_pv;
mod snapshot_state;
mod stack;
mod step;
mod stops;
pub mod symbols;
pub mod unwind;
mod vcpumap;
pub mod watchpoint;
mod window;

pub use breakpoint::{BreakpointId, BreakpointInfo, Condition};
pub use caps::{BreakpointInsnKind, Capabilities, GuestKind, StepMethod};
pub use domain::{Domain, DomainRef, DomainSummary, Xen};
pub use error::{Error, Result};
pub use events::{Event, ShutdownReason};
pub use kernel::{KernelInfo, KernelSymbols};
pub use memory::{DirtyTracking, MemoryImage};
pub use notice::Notice;
pub use pagewalk::{PagingMode, Translation};
pub use platform::GuestFrames;
pub use regs::{Registers, Segment, RFLAGS_TF};
pub use settings::{Settings, SettingsArgs};
pub use snapshot::{
    RegisterReset, RestoreOptions, RestoreStats, RestoreStrategy, SnapshotCheck, SnapshotInfo,
};
pub use snapshot_file::SnapshotFileMeta;
pub use stack::CodeFrame;
pub use symbols::{ModuleLayout, Origin, SourceLine, Symbol, Symbols};
pub use watchpoint::{WatchKind, WatchRoute, WatchpointId, WatchpointInfo};
pub use window::Window;
