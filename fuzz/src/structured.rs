//! Structured inputs: a target declares a Rust type deriving
//! [`arbitrary::Arbitrary`] and the guest gets that type, serialised.
//!
//! LibAFL keeps mutating plain bytes; those bytes are the stream that
//! `arbitrary` reads ([`Unstructured`]) to build a value, and the value's
//! [`StructuredInput::to_guest_bytes`] is what goes into the guest's buffer.
//! Corpus, crash and hang files therefore stay raw bytes: they replay,
//! minimise and resume like any other input, as long as the campaign is
//! run with the same input format (`--input-format NAME`, or
//! `input_format = "NAME"` in a guest config).
//!
//! A target of one's own: implement [`StructuredInput`] for a type and put
//! [`InputFormat::of::<MyType>("my-format")`](InputFormat::of) into
//! [`TargetSpec::input_format`](crate::session::TargetSpec::input_format)
//! before [`campaign::run`](crate::campaign::run). The formats selectable by
//! name from the command line are those of [`by_name`].

use std::borrow::Cow;
use std::fmt;

use arbitrary::{Arbitrary, Unstructured};

/// A value the guest receives serialised; LibAFL's bytes decide which one.
pub trait StructuredInput: for<'a> Arbitrary<'a> + fmt::Debug {
    /// The bytes written into the guest's input buffer.
    fn to_guest_bytes(&self) -> Vec<u8>;
}

/// How raw fuzzer bytes become the guest's input: raw (None) or through
/// one [`StructuredInput`] type.
#[derive(Clone, Copy)]
pub struct InputFormat {
    name: &'static str,
    encode: fn(&[u8]) -> Vec<u8>,
    describe: fn(&[u8]) -> String,
}

impl fmt::Debug for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InputFormat").field(&self.name).finish()
    }
}

impl PartialEq for InputFormat {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The value `T` built from the `arbitrary` byte stream `raw` (None when
/// `arbitrary` refuses the bytes, which it does only for types that cannot
/// be built from short input).
pub fn decode<T: StructuredInput>(raw: &[u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(raw)).ok()
}

fn encode_as<T: StructuredInput>(raw: &[u8]) -> Vec<u8> {
    decode::<T>(raw)
        .map(|v| v.to_guest_bytes())
        .unwrap_or_default()
}

fn describe_as<T: StructuredInput>(raw: &[u8]) -> String {
    match decode::<T>(raw) {
        Some(v) => format!("{v:?}"),
        None => "(no value: arbitrary refused the bytes; the guest gets an empty input)".into(),
    }
}

impl InputFormat {
    /// The format of type `T`, called `name` in reports.
    pub fn of<T: StructuredInput>(name: &'static str) -> Self {
        Self {
            name,
            encode: encode_as::<T>,
            describe: describe_as::<T>,
        }
    }

    /// The format's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The guest's bytes for the fuzzer's bytes `raw`.
    pub fn encode(&self, raw: &[u8]) -> Vec<u8> {
        (self.encode)(raw)
    }

    /// The value `raw` stands for, as Rust `Debug` text (crash reports).
    pub fn describe(&self, raw: &[u8]) -> String {
        (self.describe)(raw)
    }
}

/// The guest's bytes for `raw` in `format` (raw bytes without one).
pub fn guest_bytes<'a>(format: Option<&InputFormat>, raw: &'a [u8]) -> Cow<'a, [u8]> {
    match format {
        Some(f) => Cow::Owned(f.encode(raw)),
        None => Cow::Borrowed(raw),
    }
}

/// Names accepted by [`by_name`] (besides `raw`).
pub const FORMATS: &[&str] = &["tlv-records"];

/// A built-in format by name: `raw` (None) or one of [`FORMATS`].
pub fn by_name(name: &str) -> Result<Option<InputFormat>, String> {
    match name {
        "raw" => Ok(None),
        "tlv-records" => Ok(Some(InputFormat::of::<tlv::Records>("tlv-records"))),
        other => Err(format!(
            "unknown input format {other:?} (known: raw, {})",
            FORMATS.join(", ")
        )),
    }
}

/// The `tlv` sample guest's input as a list of records
/// (guests/tlv/src/main.rs: `type: u8, len: u8, value[len]`).
pub mod tlv {
    use arbitrary::Arbitrary;

    use super::StructuredInput;

    /// A record stream.
    #[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
    pub struct Records(pub Vec<Record>);

    /// One record; the protocol's types by name, anything else as `Other`.
    #[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
    pub enum Record {
        /// 0x01 HELLO.
        Hello,
        /// 0x02 AUTH with a 4-byte key.
        Auth([u8; 4]),
        /// 0x03 DATA.
        Data(Vec<u8>),
        /// 0x04 RESET.
        Reset,
        /// 0x05 SKIP by a u32 distance (little-endian).
        Skip(u32),
        /// 0x06 STATS.
        Stats,
        /// 0x07 END.
        End,
        /// 0xEE VENDOR: vendor id, then vendor data.
        Vendor {
            /// Vendor id.
            id: u8,
            /// Vendor data.
            data: Vec<u8>,
        },
        /// Any type byte with any value (lengths over 255 are cut).
        Other {
            /// Record type.
            ty: u8,
            /// Value.
            value: Vec<u8>,
        },
    }

    impl Record {
        /// Type byte and value.
        fn parts(&self) -> (u8, Vec<u8>) {
            match self {
                Record::Hello => (0x01, Vec::new()),
                Record::Auth(k) => (0x02, k.to_vec()),
                Record::Data(d) => (0x03, d.clone()),
                Record::Reset => (0x04, Vec::new()),
                Record::Skip(n) => (0x05, n.to_le_bytes().to_vec()),
                Record::Stats => (0x06, Vec::new()),
                Record::End => (0x07, Vec::new()),
                Record::Vendor { id, data } => {
                    let mut v = vec![*id];
                    v.extend_from_slice(data);
                    (0xee, v)
                }
                Record::Other { ty, value } => (*ty, value.clone()),
            }
        }
    }

    impl StructuredInput for Records {
        fn to_guest_bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for r in &self.0 {
                let (ty, mut value) = r.parts();
                value.truncate(255);
                out.push(ty);
                out.push(value.len() as u8);
                out.extend_from_slice(&value);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tlv::{Record, Records};
    use super::*;

    #[test]
    fn tlv_records_serialise_as_type_length_value() {
        let r = Records(vec![
            Record::Hello,
            Record::Auth(*b"xp!k"),
            Record::Skip(0xffff_ffff),
            Record::Vendor {
                id: 0xff,
                data: vec![],
            },
            Record::Other {
                ty: 9,
                value: vec![7; 300],
            },
        ]);
        let b = r.to_guest_bytes();
        assert_eq!(
            &b[..18],
            &[1, 0, 2, 4, b'x', b'p', b'!', b'k', 5, 4, 0xff, 0xff, 0xff, 0xff, 0xee, 1, 0xff, 9]
        );
        assert_eq!(b[18], 255, "values over 255 bytes are cut");
        assert_eq!(b.len(), 19 + 255);
    }

    #[test]
    fn the_same_raw_bytes_always_give_the_same_guest_bytes() {
        let f = by_name("tlv-records").expect("known").expect("structured");
        // (`arbitrary` reads a "one more element" flag, the low bit of a byte,
        // before each record: odd bytes keep the list going.)
        let raw: Vec<u8> = (1u8..=255).cycle().take(1000).collect();
        let a = f.encode(&raw);
        assert_eq!(a, f.encode(&raw));
        assert!(!a.is_empty());
        // Every output is a well-formed record stream.
        let mut pos = 0;
        while pos < a.len() {
            assert!(pos + 2 <= a.len(), "truncated header at {pos}");
            pos += 2 + a[pos + 1] as usize;
        }
        assert_eq!(pos, a.len());
        assert!(f.describe(&raw).starts_with("Records(["));
    }

    #[test]
    fn raw_is_no_format_and_unknown_names_are_refused() {
        assert_eq!(by_name("raw"), Ok(None));
        let e = by_name("json").expect_err("unknown");
        assert!(e.contains("tlv-records"), "{e}");
        assert_eq!(guest_bytes(None, b"ab").as_ref(), b"ab");
    }

    #[test]
    fn short_raw_bytes_reach_the_vendor_record() {
        // The shallowest tlv bug needs a VENDOR record with id >= 4: six raw
        // bytes make one (go-on flag, variant as a u32, vendor id).
        let f = by_name("tlv-records").expect("known").expect("structured");
        let raw = [1, 0, 0, 0, 0xd0, 9];
        assert_eq!(f.encode(&raw), vec![0xee, 1, 9]);
        assert!(f.describe(&raw).contains("Vendor { id: 9"));
        // Even first byte: no record at all.
        assert!(f.encode(&[0, 1, 2, 3]).is_empty());
    }
}
