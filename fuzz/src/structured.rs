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
pub const FORMATS: &[&str] = &["tlv-records", "ximg"];

/// A built-in format by name: `raw` (None) or one of [`FORMATS`].
pub fn by_name(name: &str) -> Result<Option<InputFormat>, String> {
    match name {
        "raw" => Ok(None),
        "tlv-records" => Ok(Some(InputFormat::of::<tlv::Records>("tlv-records"))),
        "ximg" => Ok(Some(InputFormat::of::<ximg::Image>("ximg"))),
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

/// The `imghdr` sample guest's input as an image (guests/imghdr/src/main.rs:
/// a 16-byte "XIMG" header, then palette, extension and pixels).
///
/// The flags follow the fields that are present and the version 2 checksum
/// is computed over the payload, so the fuzzer's bytes go into the values
/// the decoder reads rather than into keeping the file consistent; a given
/// checksum and extra flag bits still reach the decoder's rejections.
pub mod ximg {
    use arbitrary::{Arbitrary, Unstructured};

    use super::StructuredInput;

    /// Flags bit 0: a palette follows the header.
    pub const PALETTE: u8 = 0x01;
    /// Flags bit 7 (version 2): an 8-byte extension follows the palette.
    pub const EXT: u8 = 0x80;

    /// One image file: "XIMG", then the fields in file order.
    #[derive(Debug, Clone, PartialEq, Eq, Arbitrary)]
    pub struct Image {
        /// Byte 4.
        pub version: Version,
        /// OR'd into byte 5 after the bits of `palette` and `extension`
        /// (any bit: PALETTE or EXT without their data too).
        pub extra_flags: u8,
        /// Bytes 6..8.
        pub width: u16,
        /// Bytes 8..10.
        pub height: u16,
        /// Byte 10.
        pub bpp: Bpp,
        /// Byte 11.
        pub reserved: u8,
        /// Bytes 12..14.
        pub checksum: Checksum,
        /// Bytes 14..16.
        pub reserved2: u16,
        /// Palette entries (count byte, then 4 bytes each; over 255 are cut).
        pub palette: Option<Vec<[u8; 4]>>,
        /// The extension's signed pixel data offset (from the file's start;
        /// only version 2 reads it, version 1 takes its bytes as pixels).
        pub extension: Option<i64>,
        /// Pixel bytes: grey levels (version 1) or palette indices; the
        /// rest of the fuzzer's bytes, as they are.
        #[arbitrary(with = rest)]
        pub pixels: Vec<u8>,
    }

    /// All bytes left in `u`.
    fn rest(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
        Ok(u.bytes(u.len())?.to_vec())
    }

    /// The version byte: the two the decoder knows, or any.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
    pub enum Version {
        /// 1: grey pixels, no checksum.
        V1,
        /// 2: palette indices, checksum, extension.
        V2,
        /// Any byte.
        Other(u8),
    }

    /// Bits per pixel: 8 (the only one accepted), or any.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
    pub enum Bpp {
        /// 8.
        Eight,
        /// Any byte.
        Other(u8),
    }

    /// The checksum field.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
    pub enum Checksum {
        /// The 16-bit wrapping sum of the bytes after the header.
        Sum,
        /// This value as is (usually wrong).
        Given(u16),
    }

    /// The guest's checksum: the 16-bit wrapping sum of `payload`.
    pub fn sum(payload: &[u8]) -> u16 {
        payload
            .iter()
            .fold(0u16, |a, &b| a.wrapping_add(u16::from(b)))
    }

    impl StructuredInput for Image {
        fn to_guest_bytes(&self) -> Vec<u8> {
            let mut payload = Vec::new();
            let mut flags = self.extra_flags;
            if let Some(entries) = &self.palette {
                let entries = &entries[..entries.len().min(255)];
                flags |= PALETTE;
                payload.push(entries.len() as u8);
                entries.iter().for_each(|e| payload.extend_from_slice(e));
            }
            if let Some(offset) = self.extension {
                flags |= EXT;
                payload.extend_from_slice(&offset.to_le_bytes());
            }
            payload.extend_from_slice(&self.pixels);
            let checksum = match self.checksum {
                Checksum::Sum => sum(&payload),
                Checksum::Given(v) => v,
            };
            let mut out = b"XIMG".to_vec();
            out.push(match self.version {
                Version::V1 => 1,
                Version::V2 => 2,
                Version::Other(v) => v,
            });
            out.push(flags);
            out.extend_from_slice(&self.width.to_le_bytes());
            out.extend_from_slice(&self.height.to_le_bytes());
            out.push(match self.bpp {
                Bpp::Eight => 8,
                Bpp::Other(v) => v,
            });
            out.push(self.reserved);
            out.extend_from_slice(&checksum.to_le_bytes());
            out.extend_from_slice(&self.reserved2.to_le_bytes());
            out.extend_from_slice(&payload);
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

    /// Bytes of a hex string (test data).
    fn unhex(h: &str) -> Vec<u8> {
        xenprobe_abi::hex::decode(h).expect("hex")
    }

    /// The `arbitrary` stream of BUGS.md's IMG-3 image, field by field
    /// (enum variants are a u32 scaled to the variant count, Options a
    /// byte whose low bit says Some).
    #[rustfmt::skip]
    const IMG3_RAW: &[u8] = &[
        0, 0, 0, 0x60, // version: V2 (second of three)
        0, // extra flags
        1, 0, 1, 0, // width, height
        0, 0, 0, 0, // bpp: 8
        0, // reserved
        0, 0, 0, 0, // checksum: the sum
        0, 0, // reserved2
        0, // no palette
        1, 0, 0, 0, 0, 0, 0, 0, 0x80, // extension: i64::MIN
    ];

    fn image(version: ximg::Version, w: u16, h: u16, checksum: ximg::Checksum) -> ximg::Image {
        ximg::Image {
            version,
            extra_flags: 0,
            width: w,
            height: h,
            bpp: ximg::Bpp::Eight,
            reserved: 0,
            checksum,
            reserved2: 0,
            palette: None,
            extension: None,
            pixels: Vec::new(),
        }
    }

    #[test]
    fn ximg_images_serialise_as_the_bugs_md_inputs() {
        use ximg::{Checksum, Version};
        let ok = ximg::Image {
            pixels: vec![1, 2, 3, 4],
            ..image(Version::V1, 2, 2, Checksum::Given(0))
        };
        let ok2 = ximg::Image {
            palette: Some(vec![[0x33, 0x22, 0x11, 0], [0x66, 0x55, 0x44, 0]]),
            pixels: vec![0, 1],
            ..image(Version::V2, 2, 1, Checksum::Sum)
        };
        let img1 = ximg::Image {
            pixels: vec![5, 7],
            ..image(Version::V2, 2, 1, Checksum::Sum)
        };
        let img2 = image(Version::V1, 0x100, 0x100, Checksum::Given(0));
        let img3 = ximg::Image {
            extension: Some(i64::MIN),
            ..image(Version::V2, 1, 1, Checksum::Sum)
        };
        for (img, row) in [
            (ok, "58494d4701000200020008000000000001020304"),
            (
                ok2,
                "58494d470201020001000800680100000233221100665544000001",
            ),
            (img1, "58494d4702000200010008000c0000000507"),
            (img2, "58494d47010000010001080000000000"),
            (img3, "58494d470280010001000800800000000000000000000080"),
        ] {
            assert_eq!(img.to_guest_bytes(), unhex(row), "{img:?}");
        }
    }

    #[test]
    fn ximg_raw_bytes_reach_img3_and_describe_the_image() {
        let f = by_name("ximg").expect("known").expect("structured");
        assert_eq!(
            f.encode(IMG3_RAW),
            unhex("58494d470280010001000800800000000000000000000080")
        );
        let d = f.describe(IMG3_RAW);
        assert!(d.starts_with("Image { version: V2, "), "{d}");
        assert!(d.contains("extension: Some(-9223372036854775808)"), "{d}");
        // Bytes after the extension are the pixels, as they are.
        let mut more = IMG3_RAW.to_vec();
        more.extend([5, 7]);
        let g = f.encode(&more);
        assert_eq!(g[24..], [5, 7]);
        assert_eq!(u16::from_le_bytes([g[12], g[13]]), 0x80 + 12);
        // Bytes running out read as zeros: variant 0 everywhere (version 1,
        // checksum computed), no palette, no extension, no pixels.
        assert_eq!(f.encode(&[]), unhex("58494d47010000000000080000000000"));
        assert!(f.describe(&[]).contains("checksum: Sum"));
    }

    #[test]
    fn ximg_checksums_are_the_guests_sum_for_random_streams() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut summed, mut wrong_v2, mut with_ext) = (0, 0, 0);
        for _ in 0..3000 {
            let len = (next() % 160) as usize;
            let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let img = decode::<ximg::Image>(&raw).expect("any bytes decode");
            let b = img.to_guest_bytes();
            assert_eq!(&b[..4], b"XIMG");
            let field = u16::from_le_bytes([b[12], b[13]]);
            // The guest's way: a u16 wrapping sum of every byte after the header.
            let guest_sum = b[16..].iter().fold(0u16, |a, &x| a.wrapping_add(x as u16));
            match img.checksum {
                ximg::Checksum::Sum => {
                    assert_eq!(field, guest_sum, "{img:?}");
                    summed += 1;
                }
                ximg::Checksum::Given(v) => {
                    assert_eq!(field, v);
                    if b[4] == 2 && v != guest_sum {
                        wrong_v2 += 1;
                    }
                }
            }
            if let Some(p) = &img.palette {
                assert_eq!(b[5] & ximg::PALETTE, ximg::PALETTE);
                assert_eq!(b[16] as usize, p.len().min(255));
            }
            if let Some(off) = img.extension {
                assert_eq!(b[5] & ximg::EXT, ximg::EXT);
                let at = 16 + img.palette.as_ref().map_or(0, |p| 1 + 4 * p.len().min(255));
                assert_eq!(b[at..at + 8], off.to_le_bytes());
                with_ext += 1;
            }
        }
        // Both checksum kinds and the extension come up often.
        assert!(summed > 1000, "{summed}");
        assert!(wrong_v2 > 100, "{wrong_v2}");
        assert!(with_ext > 500, "{with_ext}");
    }

    #[test]
    fn raw_is_no_format_and_unknown_names_are_refused() {
        assert_eq!(by_name("raw"), Ok(None));
        let e = by_name("json").expect_err("unknown");
        assert!(e.contains("tlv-records") && e.contains("ximg"), "{e}");
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
