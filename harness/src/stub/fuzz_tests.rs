//! Packet-layer tests: a scripted session and 10,000 malformed packets
//! through the real protocol handling, against an in-memory machine (this
//! tests packet parsing and the target glue, not Xen).

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use gdbstub::conn::{Connection, ConnectionExt};

use crate::vmi::{Error, Registers, Result};

use super::backend::{Debuggee, Stop};
use super::{run_session, SessionEnd, StubTarget};

const BASE: u64 = 0x10_0000;
const SIZE: usize = 0x4000;

/// A two-vCPU machine with flat memory; "running" moves vCPU 0 to the next
/// breakpoint above its RIP, or exits with code 7.
struct Machine {
    regs: [Registers; 2],
    mem: Vec<u8>,
    bps: BTreeSet<u64>,
    running: bool,
    /// Runs forever (until interrupted) instead of exiting.
    spin: bool,
}

impl Machine {
    fn new() -> Self {
        let mut r = Registers {
            rip: BASE,
            rsp: BASE + SIZE as u64 - 8,
            rflags: 0x202,
            ..Default::default()
        };
        r.cs.selector = 0x10;
        Self {
            regs: [r; 2],
            mem: (0..SIZE).map(|i| i as u8).collect(),
            bps: BTreeSet::new(),
            running: false,
            spin: false,
        }
    }

    fn range(&self, va: u64, len: usize) -> Result<std::ops::Range<usize>> {
        let off = va.wrapping_sub(BASE) as usize;
        if va < BASE || off.checked_add(len).is_none_or(|e| e > SIZE) {
            return Err(Error::Translate {
                va,
                why: "outside the test machine".into(),
            });
        }
        Ok(off..off + len)
    }

    fn vcpu(&self, vcpu: u32) -> Result<usize> {
        if vcpu < 2 {
            Ok(vcpu as usize)
        } else {
            Err(Error::State(format!("no vcpu {vcpu}")))
        }
    }
}

impl Debuggee for Machine {
    fn vcpus(&mut self) -> Result<Vec<u32>> {
        Ok(vec![0, 1])
    }
    fn regs(&mut self, vcpu: u32) -> Result<Registers> {
        Ok(self.regs[self.vcpu(vcpu)?])
    }
    fn set_regs(&mut self, vcpu: u32, regs: &Registers) -> Result<()> {
        let v = self.vcpu(vcpu)?;
        self.regs[v] = *regs;
        Ok(())
    }
    fn read_mem(&mut self, _vcpu: u32, va: u64, buf: &mut [u8]) -> Result<usize> {
        let r = self.range(va, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(buf.len())
    }
    fn write_mem(&mut self, _vcpu: u32, va: u64, data: &[u8]) -> Result<()> {
        let r = self.range(va, data.len())?;
        self.mem[r].copy_from_slice(data);
        Ok(())
    }
    fn insert_breakpoint(&mut self, va: u64) -> Result<bool> {
        self.range(va, 1)?;
        Ok(self.bps.insert(va))
    }
    fn remove_breakpoint(&mut self, va: u64) -> Result<bool> {
        Ok(self.bps.remove(&va))
    }
    fn resume(&mut self) -> Result<()> {
        self.running = true;
        Ok(())
    }
    fn step(&mut self, vcpu: u32) -> Result<Stop> {
        let v = self.vcpu(vcpu)?;
        self.regs[v].rip += 1;
        Ok(Stop::Step { vcpu })
    }
    fn wait(&mut self, _timeout: Duration) -> Result<Option<Stop>> {
        if !self.running || self.spin {
            return Ok(None);
        }
        self.running = false;
        let rip = self.regs[0].rip;
        Ok(Some(match self.bps.range(rip + 1..).next() {
            Some(&bp) => {
                self.regs[0].rip = bp;
                Stop::Breakpoint { vcpu: 0 }
            }
            None => Stop::Exited(7),
        }))
    }
    fn interrupt(&mut self) -> Result<()> {
        self.running = false;
        Ok(())
    }
    fn detach(&mut self) -> Result<()> {
        self.bps.clear();
        Ok(())
    }
    fn pid(&self) -> u32 {
        3
    }
}

/// A connection that reads from a script and records what the stub writes;
/// the end of the script is the client hanging up.
struct Script {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Connection for Script {
    type Error = &'static str;
    fn write(&mut self, byte: u8) -> std::result::Result<(), Self::Error> {
        self.output.push(byte);
        Ok(())
    }
    fn flush(&mut self) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
}

impl ConnectionExt for Script {
    fn read(&mut self) -> std::result::Result<u8, Self::Error> {
        self.input.pop_front().ok_or("client hung up")
    }
    fn peek(&mut self) -> std::result::Result<Option<u8>, Self::Error> {
        self.input
            .front()
            .copied()
            .map(Some)
            .ok_or("client hung up")
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    let mut v = vec![b'$'];
    v.extend_from_slice(body);
    v.extend_from_slice(format!("#{sum:02x}").as_bytes());
    v
}

/// Replies in the stub's output: every `$...#cc` must carry a valid checksum.
fn replies(out: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < out.len() {
        match out[i] {
            b'+' | b'-' => i += 1,
            b'$' => {
                let end = out[i..]
                    .iter()
                    .position(|&b| b == b'#')
                    .map(|p| i + p)
                    .unwrap_or_else(|| {
                        panic!("unterminated reply in {:?}", String::from_utf8_lossy(out))
                    });
                let body = &out[i + 1..end];
                let sum = body.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                let cc = std::str::from_utf8(&out[end + 1..end + 3]).expect("checksum");
                assert_eq!(u8::from_str_radix(cc, 16).ok(), Some(sum), "bad checksum");
                v.push(unrle(&String::from_utf8_lossy(body)));
                i = end + 3;
            }
            other => panic!("stray byte {other:#x} in the stub's output"),
        }
    }
    v
}

/// Expands run-length encoding (`X*N`: N - 29 more copies of X).
fn unrle(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '*' {
            if let (Some(prev), Some(n)) = (out.chars().last(), chars.next()) {
                for _ in 0..(n as u32).saturating_sub(29) {
                    out.push(prev);
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn session(packets: &[Vec<u8>]) -> (SessionEnd, Vec<u8>, Machine) {
    session_on(Machine::new(), packets)
}

fn session_on(machine: Machine, packets: &[Vec<u8>]) -> (SessionEnd, Vec<u8>, Machine) {
    let conn = Script {
        input: packets.iter().flatten().copied().collect(),
        output: Vec::new(),
    };
    let mut conn = conn;
    let mut target = StubTarget::new(machine);
    let end = run_session(
        &mut target,
        &mut conn as &mut dyn ConnectionExt<Error = &'static str>,
    );
    (end, conn.output, target.into_inner())
}

#[test]
fn scripted_session_reads_breaks_steps_and_exits() {
    let p = |s: &str| frame(s.as_bytes());
    let bp = BASE + 0x40;
    let packets = vec![
        p("qSupported:multiprocess+;swbreak+;xmlRegisters=i386"),
        p("QStartNoAckMode"),
        p("?"),
        p("qXfer:features:read:target.xml:0,ffff"),
        p("qHostInfo"),
        p("qProcessInfo"),
        p("qRegisterInfo10"),
        p("qfThreadInfo"),
        p("g"),
        p(&format!("m{BASE:x},4")),
        p(&format!("M{:x},2:beef", BASE + 8)),
        p(&format!("m{:x},2", BASE + 8)),
        p(&format!("Z0,{bp:x},1")),
        p("vCont;c"),
        p("p10"),
        p("vCont;s:1"),
        p("p10"),
        p("vCont;c"),
    ];
    let (end, out, m) = session(&packets);
    let r = replies(&out);
    assert_eq!(end, SessionEnd::Exited(7), "replies: {r:?}");
    let find = |pre: &str| {
        r.iter()
            .find(|x| x.starts_with(pre))
            .unwrap_or_else(|| panic!("no reply starting with {pre:?} in {r:?}"))
            .clone()
    };
    assert!(
        r.iter().any(|x| x.contains("org.gnu.gdb.i386.core")),
        "{r:?}"
    );
    assert!(find("endian:").contains("ptrsize:8"));
    assert!(r.iter().any(|x| x.contains("pid:1;")), "{r:?}");
    assert!(find("name:rip;").contains("offset:128"));
    assert!(r.iter().any(|x| x == "00010203"), "memory read: {r:?}");
    assert!(
        r.iter().any(|x| x == "beef"),
        "memory write then read: {r:?}"
    );
    assert!(r.iter().any(|x| x.contains("swbreak")), "{r:?}");
    // rip after the breakpoint, then one step further.
    assert!(r.iter().any(|x| *x == le_hex(bp)), "{r:?}");
    assert!(r.iter().any(|x| *x == le_hex(bp + 1)), "{r:?}");
    assert_eq!(find("W"), "W07");
    assert_eq!(m.regs[0].rip, bp + 1);
}

#[test]
fn ctrl_c_stops_a_running_guest_and_detach_ends() {
    let mut m = Machine::new();
    m.spin = true;
    let packets = vec![
        frame(b"QStartNoAckMode"),
        frame(b"vCont;c"),
        vec![0x03],
        frame(b"p10"),
        frame(b"D"),
    ];
    let (end, out, m) = session_on(m, &packets);
    let r = replies(&out);
    assert!(
        r.iter().any(|x| x.starts_with("T02")),
        "SIGINT stop after Ctrl-C: {r:?}"
    );
    assert!(!m.running, "the machine was interrupted");
    assert_eq!(end, SessionEnd::Detached, "{r:?}");
}

fn le_hex(v: u64) -> String {
    v.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// xorshift64*: a reproducible stream of test inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn hex(&mut self) -> String {
        match self.below(6) {
            0 => String::new(),
            1 => "ffffffffffffffff".into(),
            2 => format!("{:x}", BASE + self.below(SIZE + 64) as u64),
            3 => "-1".into(),
            4 => "1".repeat(self.below(40)),
            _ => format!("{:x}", self.next()),
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const COMMANDS: &[&str] = &[
    "?",
    "g",
    "G",
    "m",
    "M",
    "X",
    "p",
    "P",
    "Z0,",
    "z0,",
    "Z1,",
    "Z2,",
    "vCont;c",
    "vCont;s:",
    "vCont;s",
    "vCont?",
    "vCont;t",
    "c",
    "s",
    "qSupported:",
    "qXfer:features:read:target.xml:",
    "qXfer:features:read:",
    "qRegisterInfo",
    "qHostInfo",
    "qProcessInfo",
    "qfThreadInfo",
    "qsThreadInfo",
    "Hg",
    "Hc",
    "T",
    "qThreadExtraInfo,",
    "QStartNoAckMode",
    "qC",
    "qAttached",
    "vMustReplyEmpty",
    "qOffsets",
    "qSymbol::",
    "jThreadsInfo",
    "QThreadSuffixSupported",
    "qMemoryRegionInfo:",
    "vKill;",
    "D;",
    "x",
    "bc",
    "qRcmd,",
];

/// One malformed (or occasionally well-formed) packet.
fn packet(rng: &mut Rng) -> Vec<u8> {
    let cmd = COMMANDS[rng.below(COMMANDS.len())];
    let mut body = cmd.as_bytes().to_vec();
    for _ in 0..rng.below(4) {
        body.extend_from_slice(rng.hex().as_bytes());
        body.push([b',', b':', b';', b'=', b'#', b'$', b'}', b'*'][rng.below(8)]);
    }
    if rng.below(3) == 0 {
        let n = rng.below(64);
        body.extend(rng.bytes(n));
    }
    if rng.below(8) == 0 {
        let n = rng.below(5000);
        body.extend(std::iter::repeat_n(b'a', n));
    }
    let mut p = frame(&body);
    match rng.below(10) {
        0 => {
            let n = p.len();
            p[n - 1] ^= 0x5a; // bad checksum
        }
        1 => p.truncate(rng.below(p.len())), // cut short
        2 => {
            let n = 1 + rng.below(32);
            p = rng.bytes(n); // line noise
        }
        3 => p.insert(0, [0x03, b'+', b'-', b'#'][rng.below(4)]),
        _ => {}
    }
    p
}

#[test]
fn ten_thousand_malformed_packets_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sent = 0;
    let mut answered = 0;
    let mut sessions = 0;
    let mut ends = std::collections::BTreeMap::new();
    while sent < 10_000 {
        let n = 1 + rng.below(40);
        let mut packets: Vec<Vec<u8>> = (0..n).map(|_| packet(&mut rng)).collect();
        packets.retain(|p| !p.starts_with(b"$D;") && !p.starts_with(b"$vKill"));
        sent += packets.len();
        let dump = packets.clone();
        let result = std::panic::catch_unwind(move || session(&packets));
        let (end, out, _) = result.unwrap_or_else(|_| {
            panic!(
                "stub panicked on: {:?}",
                dump.iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect::<Vec<_>>()
            )
        });
        if !out.is_empty() {
            answered += 1;
        }
        *ends
            .entry(format!("{end:?}").chars().take(60).collect::<String>())
            .or_insert(0) += 1;
        sessions += 1;
    }
    println!("{sessions} sessions, {answered} answered; ends: {ends:#?}");
    assert!(sent >= 10_000);
    // gdbstub closes the session on a framing or parse error: "answered or
    // closed cleanly". Enough sessions must get far enough to be answered.
    assert!(
        answered * 5 > sessions,
        "too few sessions answered ({answered}/{sessions})"
    );
    assert!(ends.keys().any(|k| k.starts_with("Exited")), "{ends:?}");
}
