//! Fuzz target `imghdr`: a decoder for "XIMG" image headers and pixels.
//!
//! Header (16 bytes, little-endian): magic "XIMG", version (1 or 2), flags
//! (bit 0 PALETTE, bit 7 EXT), width u16, height u16, bpp (8), reserved u8,
//! checksum u16 (version 2: sum of all bytes after the header), reserved u16.
//! Version 2 with EXT: an 8-byte extension follows, a signed data offset
//! (relative to the start of the file) of the pixel data. With PALETTE, the
//! payload starts with a count byte and count 4-byte entries.
//! Version 1 pixels are grey levels; version 2 pixels index the palette.
//! Planted bugs: see guests/BUGS.md (IMG-1 .. IMG-3).
#![no_std]
#![no_main]

use xenprobe_rt::println;

const MAX_PIXELS: u16 = 4096;
static mut FRAME: [u32; MAX_PIXELS as usize] = [0; MAX_PIXELS as usize];

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn decode(input: &[u8]) -> Result<u32, &'static str> {
    if input.len() < 16 || &input[..4] != b"XIMG" {
        return Err("not an XIMG file");
    }
    let version = input[4];
    let flags = input[5];
    let width = le16(input, 6);
    let height = le16(input, 8);
    if input[10] != 8 {
        return Err("unsupported bpp");
    }
    if version != 1 && version != 2 {
        return Err("unsupported version");
    }
    let mut payload = &input[16..];
    if version == 2 {
        let sum = payload.iter().fold(0u16, |a, &b| a.wrapping_add(b as u16));
        if sum != le16(input, 12) {
            return Err("bad checksum");
        }
    }
    // Planted bug IMG-2: the pixel count is computed in 16 bits and wraps.
    let pixels = width.wrapping_mul(height);
    if pixels > MAX_PIXELS {
        return Err("image too large");
    }
    // Palette (C style: a NULL pointer when absent).
    let mut palette: *const u32 = core::ptr::null();
    if flags & 1 != 0 {
        let count = *payload.first().ok_or("missing palette")? as usize;
        let bytes = payload.get(1..1 + 4 * count).ok_or("short palette")?;
        palette = bytes.as_ptr() as *const u32;
        payload = &payload[1 + 4 * count..];
    }
    let mut data = payload.as_ptr();
    let mut data_len = payload.len();
    if version == 2 && flags & 0x80 != 0 {
        let ext = payload.get(..8).ok_or("short extension")?;
        let offset = i64::from_le_bytes([
            ext[0], ext[1], ext[2], ext[3], ext[4], ext[5], ext[6], ext[7],
        ]);
        // Planted bug IMG-3: signed comparison; a negative offset passes.
        if offset >= input.len() as i64 {
            return Err("data offset past end");
        }
        data = input.as_ptr().wrapping_offset(offset as isize);
        data_len = (input.len() as i64 - offset) as usize;
    }
    let frame = unsafe { &mut *core::ptr::addr_of_mut!(FRAME) };
    let mut checksum = 0u32;
    for y in 0..height as usize {
        for x in 0..width as usize {
            let i = y * width as usize + x;
            let v = if i < data_len {
                unsafe { data.wrapping_add(i).read_volatile() }
            } else {
                0
            };
            let rgb = if version == 1 {
                (v as u32) * 0x010101
            } else {
                // Planted bug IMG-1: indexed pixels read the palette even when
                // there is none (NULL + index).
                unsafe { palette.wrapping_add(v as usize).read_unaligned() }
            };
            frame[i] = rgb;
            checksum = checksum.wrapping_mul(31).wrapping_add(rgb);
        }
    }
    Ok(checksum)
}

fn parse(input: &[u8]) {
    match decode(input) {
        Ok(sum) => println!("imghdr: decoded, pixel hash {:#x}", sum),
        Err(e) => println!("imghdr: rejected: {}", e),
    }
}

xenprobe_rt::fuzz_main!("imghdr", parse);
