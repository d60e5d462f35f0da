//! The parts of Xen's public ABI that the runtime uses (numbers from
//! `xen/include/public/*.h`, Xen 4.17).

/// Hypercall numbers.
pub mod hc {
    pub const SET_TRAP_TABLE: usize = 0;
    pub const UPDATE_VA_MAPPING: usize = 14;
    pub const CONSOLE_IO: usize = 18;
    pub const SCHED_OP: usize = 29;
    pub const EVENT_CHANNEL_OP: usize = 32;
    pub const HVM_OP: usize = 34;
}

pub const CONSOLEIO_WRITE: usize = 0;
pub const SCHEDOP_YIELD: usize = 0;
pub const SCHEDOP_SHUTDOWN: usize = 2;
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_CRASH: u32 = 3;
pub const EVTCHNOP_SEND: usize = 4;
pub const HVMOP_GET_PARAM: usize = 1;
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
pub const DOMID_SELF: u16 = 0x7ff0;
pub const UVMF_INVLPG: usize = 2;
/// `FLAT_KERNEL_CS64`: the code selector of a 64-bit PV kernel.
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
/// Base of the read-only machine-to-physical table in a 64-bit PV guest.
pub const MACH2PHYS_VIRT_START: usize = 0xffff_8000_0000_0000;
/// `XEN_HVM_START_MAGIC_VALUE` at the start of `hvm_start_info`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Physical address of libxc's `hvm_info_table` (present only with a device model).
pub const HVM_INFO_PADDR: usize = 0x9f800;

/// `struct start_info` (64-bit PV), the fields the runtime reads.
#[repr(C)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    pub shared_info: u64,
    pub flags: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; 1024],
}

/// `struct hvm_start_info` (PVH and HVM), version 1.
#[repr(C)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// `struct xencons_interface`: the PV console ring page.
#[repr(C)]
pub struct XenconsInterface {
    pub input: [u8; 1024],
    pub output: [u8; 2048],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}

/// `struct xen_hvm_param`.
#[repr(C)]
pub struct HvmParam {
    pub domid: u16,
    pub pad: u16,
    pub index: u32,
    pub value: u64,
}

/// `struct trap_info` (PV trap table entry).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TrapInfo {
    pub vector: u8,
    pub flags: u8,
    pub cs: u16,
    pub address: u64,
}
