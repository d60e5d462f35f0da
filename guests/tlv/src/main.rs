//! Fuzz target `tlv`: a session protocol decoder for a stream of
//! type-length-value records (`type: u8, len: u8, value[len]`).
//!
//! Records: 0x01 HELLO, 0x02 AUTH (4-byte key), 0x03 DATA, 0x04 RESET,
//! 0x05 SKIP (u32 LE distance, then peeks the byte there), 0x06 STATS,
//! 0x07 END, 0xEE VENDOR (vendor id, then vendor data); other types are ignored.
//! Test-only (booted with `xenprobe.test=1`): 0x08 FILL writes one byte into
//! each of `2 * value[0]` distinct pages, up to 510 dirty pages per run.
//! Planted bugs: see guests/BUGS.md (TLV-1 .. TLV-3).
#![no_std]
#![no_main]

use xenprobe_rt::{hw, println};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Idle,
    Greeted,
    Authed,
    Closed,
}

struct Session {
    state: State,
    data_msgs: u64,
    data_bytes: u64,
}

const AUTH_KEY: &[u8; 4] = b"xp!k";

/// Pages written by FILL records.
const FILL_PAGES: usize = 510;
static mut FILL: [u8; FILL_PAGES * 4096] = [0; FILL_PAGES * 4096];
const VENDORS: [&str; 4] = ["none", "xen", "qemu", "xenprobe"];

fn record(
    s: &mut Session,
    input: &[u8],
    pos: usize,
    ty: u8,
    value: &[u8],
) -> Result<(), &'static str> {
    match (ty, s.state) {
        (0x01, State::Idle) => s.state = State::Greeted,
        (0x02, State::Greeted) => {
            if value != AUTH_KEY {
                return Err("bad key");
            }
            s.state = State::Authed;
        }
        (0x03, State::Authed) => {
            s.data_msgs += 1;
            s.data_bytes += value.len() as u64;
        }
        (0x04, State::Authed) => {
            // Planted bug TLV-3: resets the message count but not the byte count.
            s.data_msgs = 0;
        }
        (0x05, _) => {
            if value.len() != 4 {
                return Err("short skip");
            }
            let skip = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
            let base = input.as_ptr();
            let cur = base.wrapping_add(pos);
            let p = cur.wrapping_add(skip as usize);
            // Planted bug TLV-2: the bounds check is done on a 32-bit offset, which
            // wraps; the pointer itself is 64-bit.
            let off = (p as usize).wrapping_sub(base as usize) as u32;
            if off as usize >= input.len() {
                return Err("skip past end");
            }
            let peek = unsafe { p.read_volatile() };
            println!("tlv: skip {} -> byte {:#04x}", skip, peek);
        }
        (0x06, State::Authed) => {
            if s.data_bytes > 0 {
                // C-style division: traps when data_msgs is 0 (see TLV-3).
                let avg = hw::udiv(s.data_bytes, s.data_msgs);
                println!(
                    "tlv: stats msgs={} bytes={} avg={}",
                    s.data_msgs, s.data_bytes, avg
                );
            } else {
                println!("tlv: stats (no data)");
            }
        }
        (0x07, _) => s.state = State::Closed,
        (0x08, _) if xenprobe_rt::fuzz::test_paths() => {
            let pages = (value.first().copied().unwrap_or(0) as usize * 2).min(FILL_PAGES);
            let fill = core::ptr::addr_of_mut!(FILL) as *mut u8;
            for i in 0..pages {
                // SAFETY: i < FILL_PAGES; the buffer is FILL_PAGES pages long.
                unsafe { fill.add(i * 4096 + pos % 4096).write_volatile(ty ^ i as u8) };
            }
        }
        (0xee, _) => {
            // Planted bug TLV-1: the vendor id indexes the table unchecked (and an
            // empty value indexes past it too).
            let vendor = VENDORS[value[0] as usize];
            println!("tlv: vendor record from {}", vendor);
        }
        (0x01..=0x07, st) => {
            println!("tlv: record {:#04x} not allowed in state {:?}", ty, st);
            return Err("protocol violation");
        }
        _ => {}
    }
    Ok(())
}

fn parse(input: &[u8]) {
    let mut s = Session {
        state: State::Idle,
        data_msgs: 0,
        data_bytes: 0,
    };
    let mut pos = 0;
    let mut n = 0;
    while pos + 2 <= input.len() && s.state != State::Closed {
        let ty = input[pos];
        let len = input[pos + 1] as usize;
        let Some(value) = input.get(pos + 2..pos + 2 + len) else {
            println!("tlv: truncated record at {}", pos);
            return;
        };
        if let Err(e) = record(&mut s, input, pos + 2, ty, value) {
            println!("tlv: record {} rejected: {}", n, e);
            return;
        }
        pos += 2 + len;
        n += 1;
    }
    println!("tlv: {} records, state {:?}", n, s.state);
}

xenprobe_rt::fuzz_main!("tlv", parse);
