//! Single-register access (`p`/`P`), which LLDB prefers over `g`/`G`.

use gdbstub::common::Tid;
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccess;
use gdbstub::target::TargetResult;

use crate::arch::{le_value, RegNum, REGS};

use super::backend::Debuggee;
use super::target::{non_fatal, vcpu_of, StubTarget};

impl<D: Debuggee> SingleRegisterAccess<Tid> for StubTarget<D> {
    fn read_register(
        &mut self,
        tid: Tid,
        reg: RegNum,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let Some(def) = REGS.get(reg.0) else {
            return Ok(0);
        };
        let regs = self.debuggee.regs(vcpu_of(tid)).map_err(non_fatal)?;
        let bytes = def.kind.get(&regs).to_le_bytes();
        let n = (def.bits / 8).min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn write_register(&mut self, tid: Tid, reg: RegNum, val: &[u8]) -> TargetResult<(), Self> {
        let Some(def) = REGS.get(reg.0) else {
            return Ok(());
        };
        let vcpu = vcpu_of(tid);
        let mut regs = self.debuggee.regs(vcpu).map_err(non_fatal)?;
        def.kind.set(&mut regs, le_value(val));
        self.debuggee.set_regs(vcpu, &regs).map_err(non_fatal)
    }
}
