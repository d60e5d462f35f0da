//! Hex strings to bytes.

/// Why a string is not hex bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HexError {
    #[error("odd number of hex digits")]
    Odd,
    #[error("bad hex byte {0:?}")]
    Digit(String),
}

/// Decodes hex bytes: ASCII whitespace anywhere and one leading `0x` are
/// ignored; an empty string is no bytes.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let s = s.trim_start();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(HexError::Odd);
    }
    digits
        .chunks(2)
        .map(|p| {
            let pair = String::from_utf8_lossy(p);
            // (`from_str_radix` alone would take "+1".)
            match p.iter().all(u8::is_ascii_hexdigit) {
                true => u8::from_str_radix(&pair, 16).map_err(|_| HexError::Digit(pair.into())),
                false => Err(HexError::Digit(pair.into_owned())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        assert_eq!(decode("00ff 7A\n"), Ok(vec![0, 0xff, 0x7a]));
        assert_eq!(decode(" 0x0102"), Ok(vec![1, 2]));
        assert_eq!(decode(""), Ok(vec![]));
        assert_eq!(decode("abc"), Err(HexError::Odd));
        assert_eq!(decode("zz"), Err(HexError::Digit("zz".into())));
        assert_eq!(decode("+1"), Err(HexError::Digit("+1".into())));
    }
}
