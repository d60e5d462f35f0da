//! The fuzz-target ABI's input length (guests/README.md): an unsigned
//! little-endian integer as wide as its symbol (1, 2, 4 or 8 bytes), or as a
//! config's `input_len_size` says.

/// Widths the input length may have, in bytes.
pub const LEN_WIDTHS: [usize; 4] = [1, 2, 4, 8];

/// The width in bytes of the input length variable `sym`: `configured` (a
/// config's `input_len_size`) if given, else the symbol's ELF size
/// `sym_size`. Refuses widths other than 1, 2, 4, 8, and a configured width
/// larger than a symbol that has a size (it would overwrite its neighbour).
pub fn len_width(sym: &str, sym_size: u64, configured: Option<usize>) -> Result<usize, String> {
    match configured {
        Some(w) if !LEN_WIDTHS.contains(&w) => Err(format!(
            "input_len_size {w}: the input length is 1, 2, 4 or 8 bytes wide"
        )),
        Some(w) if sym_size != 0 && w as u64 > sym_size => Err(format!(
            "input_len_size {w} is wider than {sym} ({sym_size} bytes): writing it would \
             overwrite the bytes after it"
        )),
        Some(w) => Ok(w),
        None if LEN_WIDTHS.iter().any(|&w| w as u64 == sym_size) => Ok(sym_size as usize),
        None => Err(format!(
            "{sym} is {sym_size} bytes (its ELF symbol size): the input length must be an \
             unsigned integer of 1, 2, 4 or 8 bytes (set input_len_size in the config if the \
             symbol has no size)"
        )),
    }
}

/// The largest length a `width`-byte length variable holds.
pub fn len_max(width: usize) -> usize {
    match width {
        w if w >= std::mem::size_of::<usize>() => usize::MAX,
        w => (1usize << (8 * w)) - 1,
    }
}

/// `len` as `width` little-endian bytes, clamped to [`len_max`] of the width
/// (on the stack: written on every run).
pub fn len_bytes(len: usize, width: usize) -> LenBytes {
    LenBytes {
        bytes: (len.min(len_max(width)) as u64).to_le_bytes(),
        width: width.min(8),
    }
}

/// A length variable's bytes (see [`len_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LenBytes {
    bytes: [u8; 8],
    width: usize,
}

impl std::ops::Deref for LenBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.width]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_width_follows_the_symbol_or_the_config() {
        assert_eq!(len_width("n", 4, None), Ok(4));
        assert_eq!(len_width("n", 8, None), Ok(8));
        assert_eq!(len_width("n", 1, None), Ok(1));
        assert_eq!(len_width("n", 2, None), Ok(2));
        // The config wins; a symbol without a size needs it.
        assert_eq!(len_width("n", 8, Some(4)), Ok(4));
        assert_eq!(len_width("n", 0, Some(2)), Ok(2));
    }

    #[test]
    fn odd_widths_are_refused_naming_the_symbol() {
        for size in [0, 3, 5, 16] {
            let e = len_width("my_len", size, None).expect_err("refused");
            assert!(
                e.contains("my_len") && e.contains(&format!("{size} bytes")),
                "{e}"
            );
        }
        assert!(len_width("n", 8, Some(3))
            .expect_err("3")
            .contains("input_len_size 3"));
        // Wider than the symbol: would clobber its neighbour.
        let e = len_width("my_len", 4, Some(8)).expect_err("8 > 4");
        assert!(e.contains("my_len") && e.contains("overwrite"), "{e}");
    }

    #[test]
    fn lengths_are_written_with_their_width_and_clamped() {
        assert_eq!(*len_bytes(0x0102, 4), [2, 1, 0, 0]);
        assert_eq!(*len_bytes(5, 8), [5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(*len_bytes(300, 1), [0xff]);
        assert_eq!(*len_bytes(70_000, 2), [0xff, 0xff]);
        assert_eq!(*len_bytes(4096, 2), [0x00, 0x10]);
        assert_eq!(len_max(1), 255);
        assert_eq!(len_max(2), 65_535);
        assert_eq!(len_max(4), 0xffff_ffff);
        assert_eq!(len_max(8), usize::MAX);
    }
}
