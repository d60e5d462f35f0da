//! Stack walks by frame pointer (the sample guests, and most kernels built
//! with frame pointers, keep `rbp` chained).

use super::domain::Domain;

impl Domain {
    /// Return addresses found by following the saved-RBP chain from `rbp`,
    /// reading memory as `vcpu` sees it: at each frame `[rbp]` holds the
    /// caller's RBP and `[rbp+8]` the return address. Stops after `max`
    /// addresses, at a misaligned or unreadable frame, at a zero return
    /// address, or where the chain does not go up the stack (so a corrupt
    /// stack cannot loop).
    pub fn frame_pointer_walk(&mut self, vcpu: u32, mut rbp: u64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < max && rbp != 0 && rbp % 8 == 0 {
            let mut b = [0u8; 16];
            if self.read_virt_on(vcpu, rbp, &mut b).is_err() {
                break;
            }
            let (next, ret) = b.split_at(8);
            let next = u64::from_le_bytes(next.try_into().unwrap_or_default());
            let ret = u64::from_le_bytes(ret.try_into().unwrap_or_default());
            if ret == 0 {
                break;
            }
            out.push(ret);
            if next <= rbp {
                break;
            }
            rbp = next;
        }
        out
    }
}
