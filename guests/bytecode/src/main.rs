//! Fuzz target `bytecode`: a small stack-machine interpreter.
//!
//! A program is the magic "XBC1" followed by code. Opcodes:
//! 0x00 HALT, 0x01 PUSH imm8, 0x02 ADD, 0x03 SUB, 0x04 MUL, 0x05 DIV, 0x06 DUP,
//! 0x07 DROP, 0x08 JMP rel8, 0x09 JZ rel8 (relative to the next instruction),
//! 0x0A CALL abs8 (offset into code), 0x0B RET, 0x0C PRIV imm32 (LE key),
//! 0x0D SYS imm8 (1: print top; 0x1D: privileged, drop exception handlers),
//! 0x0E PRINT. The interpreter has fuel (an instruction budget) and a value
//! stack of 64 entries. Planted bugs: see guests/BUGS.md (BC-1 .. BC-5).
#![no_std]
#![no_main]

use xenprobe_rt::{hw, println, traps};

const MAGIC: &[u8; 4] = b"XBC1";
/// Magic of the (planted) debug format.
const DEBUG_MAGIC: &[u8; 4] = b"XBCD";
const PRIV_KEY: u32 = 0xc0de_f00d;

struct Vm<'a> {
    code: &'a [u8],
    stack: [u64; 64],
    sp: usize,
    fuel: u32,
    privileged: bool,
}

#[derive(Debug)]
#[allow(dead_code)] // the message is read through Debug
enum Stop {
    Halt,
    Ret,
    Error(&'static str),
}

impl Vm<'_> {
    fn push(&mut self, v: u64) -> Result<(), Stop> {
        if self.sp == self.stack.len() {
            return Err(Stop::Error("stack overflow (vm)"));
        }
        self.stack[self.sp] = v;
        self.sp += 1;
        Ok(())
    }

    fn pop(&mut self) -> Result<u64, Stop> {
        if self.sp == 0 {
            return Err(Stop::Error("stack underflow"));
        }
        self.sp -= 1;
        Ok(self.stack[self.sp])
    }

    fn byte(&self, pc: usize) -> Result<u8, Stop> {
        self.code
            .get(pc)
            .copied()
            .ok_or(Stop::Error("truncated instruction"))
    }

    /// Runs from `pc` until HALT, RET or an error. CALL recurses natively.
    #[inline(never)]
    fn exec(&mut self, mut pc: usize) -> Result<Stop, Stop> {
        loop {
            let op = self.byte(pc)?;
            pc += 1;
            if op == 0x08 {
                // Planted bug BC-3: jumps do not consume fuel.
                let rel = self.byte(pc)? as i8;
                pc = (pc + 1).wrapping_add(rel as isize as usize);
                continue;
            }
            if self.fuel == 0 {
                return Err(Stop::Error("out of fuel"));
            }
            self.fuel -= 1;
            match op {
                0x00 => return Ok(Stop::Halt),
                0x01 => {
                    let v = self.byte(pc)?;
                    pc += 1;
                    self.push(v as u64)?;
                }
                0x02..=0x05 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    let r = match op {
                        0x02 => a.wrapping_add(b),
                        0x03 => a.wrapping_sub(b),
                        0x04 => a.wrapping_mul(b),
                        // Planted bug BC-2: C-style division, no zero check.
                        _ => hw::udiv(a, b),
                    };
                    self.push(r)?;
                }
                0x06 => {
                    let v = self.pop()?;
                    self.push(v)?;
                    self.push(v)?;
                }
                0x07 => {
                    self.pop()?;
                }
                0x09 => {
                    let rel = self.byte(pc)? as i8;
                    pc += 1;
                    if self.pop()? == 0 {
                        pc = pc.wrapping_add(rel as isize as usize);
                    }
                }
                0x0a => {
                    let target = self.byte(pc)? as usize;
                    pc += 1;
                    // Planted bug BC-4: no call-depth limit; each CALL is a native
                    // recursion, so a self-call exhausts the guest's stack long
                    // before the fuel runs out.
                    if let Stop::Halt = self.exec(target)? {
                        return Ok(Stop::Halt);
                    }
                }
                0x0b => return Ok(Stop::Ret),
                0x0c => {
                    let k = self
                        .code
                        .get(pc..pc + 4)
                        .ok_or(Stop::Error("truncated PRIV"))?;
                    pc += 4;
                    self.privileged = u32::from_le_bytes([k[0], k[1], k[2], k[3]]) == PRIV_KEY;
                }
                0x0d => {
                    let n = self.byte(pc)?;
                    pc += 1;
                    match n {
                        1 => {
                            let v = self.pop()?;
                            println!("bytecode: sys print {}", v);
                            self.push(v)?;
                        }
                        // Planted bug BC-5: a privileged program may drop the guest's
                        // exception handlers; the next CPU exception then ends the
                        // domain without a report (triple fault).
                        0x1d if self.privileged => traps::drop_exception_handlers(),
                        _ => return Err(Stop::Error("bad syscall")),
                    }
                }
                0x0e => {
                    let v = self.pop()?;
                    println!("bytecode: {}", v);
                }
                _ => return Err(Stop::Error("bad opcode")),
            }
        }
    }
}

fn parse(input: &[u8]) {
    if input.len() < 4 {
        println!("bytecode: too short");
        return;
    }
    let magic = &input[..4];
    if magic == DEBUG_MAGIC {
        // Planted bug BC-1: the debug format was never finished; it traps like
        // C's __builtin_trap().
        hw::trap();
    }
    if magic != MAGIC {
        println!("bytecode: bad magic");
        return;
    }
    let mut vm = Vm {
        code: &input[4..],
        stack: [0; 64],
        sp: 0,
        fuel: 100_000,
        privileged: false,
    };
    match vm.exec(0) {
        Ok(stop) => println!("bytecode: stopped ({:?}), stack depth {}", stop, vm.sp),
        Err(Stop::Error(e)) => println!("bytecode: error: {}", e),
        Err(stop) => println!("bytecode: stopped ({:?})", stop),
    }
}

xenprobe_rt::fuzz_main!("bytecode", parse);
