//! Which Xen release the installed headers belong to.
//!
//! Compiled twice: into `harness/build.rs`, which classifies the headers that
//! bindgen reads and sets the `xen_4_18` cfg, and into the library's unit
//! tests. No FFI here.
//! See docs/xen-vmi.md#xen-versions

use std::fmt;

/// A Xen release xenprobe builds against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenRelease {
    /// Xen 4.17 (Debian 12): `xc_domain_getinfo` still exists.
    V4_17,
    /// Xen 4.20 (Debian 13): the 4.18+ libxenctrl API.
    V4_20,
}

impl XenRelease {
    /// Every supported release, oldest first.
    pub const ALL: [XenRelease; 2] = [XenRelease::V4_17, XenRelease::V4_20];

    /// `"4.17"` or `"4.20"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4_17 => "4.17",
            Self::V4_20 => "4.20",
        }
    }

    /// `(__XEN_LATEST_INTERFACE_VERSION__, XEN_DOMCTL_INTERFACE_VERSION)` of
    /// the release's public headers.
    pub fn interface_versions(self) -> (u32, u32) {
        match self {
            Self::V4_17 => (0x0004_0e00, 0x15),
            Self::V4_20 => (0x0004_1300, 0x17),
        }
    }

    /// True when libxenctrl has the 4.18 domain-info API
    /// (`xc_domain_getinfo_single`, no `xc_domain_getinfo`).
    pub fn has_4_18_api(self) -> bool {
        self != Self::V4_17
    }
}

/// Why the headers could not be matched to a supported release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// A `#define` was not found (file name, macro name).
    Missing(&'static str, &'static str),
    /// The interface versions belong to no supported release.
    Unsupported {
        /// `__XEN_LATEST_INTERFACE_VERSION__`.
        latest: u32,
        /// `XEN_DOMCTL_INTERFACE_VERSION`.
        domctl: u32,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(file, name) => write!(f, "{file} does not #define {name}"),
            Self::Unsupported { latest, domctl } => {
                let known: Vec<&str> = XenRelease::ALL.iter().map(|r| r.as_str()).collect();
                write!(
                    f,
                    "unsupported Xen headers (__XEN_LATEST_INTERFACE_VERSION__ {latest:#010x}, \
                     XEN_DOMCTL_INTERFACE_VERSION {domctl:#x}); xenprobe builds against Xen {}",
                    known.join(" and ")
                )
            }
        }
    }
}

/// The value of `#define NAME VALUE` in C header text (hex or decimal, an
/// optional `U`/`L` suffix); `None` when absent or not a number.
pub fn define(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut words = line.trim_start().strip_prefix('#')?.split_whitespace();
        if words.next()? != "define" || words.next()? != name {
            return None;
        }
        let value = words.next()?.trim_end_matches(['u', 'U', 'l', 'L']);
        match value
            .strip_prefix("0x")
            .or_else(|| value.strip_prefix("0X"))
        {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    })
}

/// The release whose headers these are, from the text of `xen/xen-compat.h`
/// and `xen/domctl.h`.
pub fn classify(compat_h: &str, domctl_h: &str) -> Result<XenRelease, HeaderError> {
    let latest = define(compat_h, "__XEN_LATEST_INTERFACE_VERSION__").ok_or(
        HeaderError::Missing("xen/xen-compat.h", "__XEN_LATEST_INTERFACE_VERSION__"),
    )?;
    let domctl = define(domctl_h, "XEN_DOMCTL_INTERFACE_VERSION").ok_or(HeaderError::Missing(
        "xen/domctl.h",
        "XEN_DOMCTL_INTERFACE_VERSION",
    ))?;
    XenRelease::ALL
        .into_iter()
        .find(|r| r.interface_versions() == (latest, domctl))
        .ok_or(HeaderError::Unsupported { latest, domctl })
}

/// `"4.20"` from a pkg-config version such as `"4.20.0"`.
pub fn major_minor(version: &str) -> Option<&str> {
    let mut dots = version.match_indices('.');
    let _ = dots.next()?;
    Some(match dots.next() {
        Some((i, _)) => &version[..i],
        None => version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPAT_4_17: &str = "#ifndef __XEN_PUBLIC_XEN_COMPAT_H__\n\
        #define __XEN_PUBLIC_XEN_COMPAT_H__\n\n\
        #define __XEN_LATEST_INTERFACE_VERSION__ 0x00040e00\n\n\
        #if defined(__XEN__) || defined(__XEN_TOOLS__)\n\
        #define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__\n";
    const DOMCTL_4_17: &str =
        "#include \"xen.h\"\n#define XEN_DOMCTL_INTERFACE_VERSION 0x00000015\n";
    const COMPAT_4_20: &str = "#define __XEN_LATEST_INTERFACE_VERSION__ 0x00041300\n";
    const DOMCTL_4_20: &str = "  #  define   XEN_DOMCTL_INTERFACE_VERSION 0x00000017U\n";

    #[test]
    fn reads_defines() {
        assert_eq!(
            define(COMPAT_4_17, "__XEN_LATEST_INTERFACE_VERSION__"),
            Some(0x40e00)
        );
        // A use of the macro is not its definition.
        assert_eq!(define(COMPAT_4_17, "__XEN_INTERFACE_VERSION__"), None);
        assert_eq!(
            define(DOMCTL_4_20, "XEN_DOMCTL_INTERFACE_VERSION"),
            Some(0x17)
        );
        assert_eq!(define("#define N 21\n", "N"), Some(21));
        assert_eq!(define("#define N (1U<<2)\n", "N"), None);
        assert_eq!(define("/* #define N 1 */\n", "N"), None);
    }

    #[test]
    fn classifies_supported_headers() {
        assert_eq!(classify(COMPAT_4_17, DOMCTL_4_17), Ok(XenRelease::V4_17));
        assert_eq!(classify(COMPAT_4_20, DOMCTL_4_20), Ok(XenRelease::V4_20));
        assert!(!XenRelease::V4_17.has_4_18_api());
        assert!(XenRelease::V4_20.has_4_18_api());
    }

    #[test]
    fn rejects_other_headers() {
        // 4.17's compat header with a newer domctl (as 4.18 has).
        let e = classify(COMPAT_4_17, "#define XEN_DOMCTL_INTERFACE_VERSION 0x16\n").unwrap_err();
        assert_eq!(
            e,
            HeaderError::Unsupported {
                latest: 0x40e00,
                domctl: 0x16
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("0x00040e00") && text.contains("0x16"),
            "{text}"
        );
        assert!(text.ends_with("Xen 4.17 and 4.20"), "{text}");
        assert_eq!(
            classify("", DOMCTL_4_17),
            Err(HeaderError::Missing(
                "xen/xen-compat.h",
                "__XEN_LATEST_INTERFACE_VERSION__"
            ))
        );
    }

    #[test]
    fn pkg_config_versions() {
        assert_eq!(major_minor("4.20.0"), Some("4.20"));
        assert_eq!(major_minor("4.17"), Some("4.17"));
        assert_eq!(major_minor("4"), None);
    }
}
