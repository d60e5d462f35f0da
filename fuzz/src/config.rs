//! `--config FILE`: a guest to fuzz described in TOML, for guests that are
//! not xenprobe's samples. Every key but `image` is optional; relative paths
//! are relative to the file's directory. See `fuzz/examples/tlv.toml`.
//!
//! ```toml
//! image = "../../target/guests/tlv-pvh"  # ELF with symbols (and DWARF for lcov.info)
//! mode = "pvh"                # pvh | hvm: the fuzzer writes the xl config ...
//! # xl_cfg = "guest.cfg"      # ... or use this xl config (its name= is the domain)
//! name = "fuzz-tlv"           # domain name with `mode` (default: the file's stem)
//! memory_mb = 32
//! input = "xenprobe_input"    # buffer symbol; its ELF size is the capacity
//! input_len = "xenprobe_input_len"
//! input_len_size = 4          # its width in bytes: 1, 2, 4, 8 (default: its ELF size)
//! start = "xenprobe_fuzz_start"
//! end = "xenprobe_fuzz_end"
//! sinks = ["xenprobe_crash"]
//! cover = ["xenprobe_target", "crate:tlv"]   # functions: name, substring, crate:NAME
//! cover_ranges = ["0x101000-0x101400"]       # address ranges, end exclusive
//! timeout_ms = 500
//! seeds = "seeds"             # directory of seed inputs
//! dictionary = ["ee", "58424344"]            # extra tokens, hex
//! input_format = "raw"        # or a structured format (src/structured.rs)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use xenprobe_abi::{GuestMode, XlConfig};

use crate::session::TargetSpec;

/// Errors reading a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key or a wrong type.
    #[error("{path}: {source}")]
    Toml {
        /// File.
        path: String,
        /// Cause.
        source: toml::de::Error,
    },
    /// Valid TOML that does not describe a usable guest.
    #[error("{path}: {msg}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// The file's keys (see the module documentation).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// The guest's ELF image (with `kernel`: not used).
    pub image: Option<PathBuf>,
    /// Linux kernel code: the kernel's vmlinux (stripped or not),
    /// `System.map` or `/proc/kallsyms` copy (see [`crate::kernel`]).
    pub kernel: Option<PathBuf>,
    /// With `kernel`: modules (`.ko`) the harness runs in.
    pub modules: Option<Vec<PathBuf>>,
    /// With `kernel`: `cpuid` (KF/x's 0x13371337), `cpuid:LEAF`, or
    /// `symbols` (breakpoints at `start`/`end`; any guest type).
    pub marker: Option<String>,
    /// With `kernel`: seconds the guest may take to boot to its marker.
    pub boot_timeout_s: Option<u64>,
    /// An xl config to create the guest from (exclusive with `mode`).
    pub xl_cfg: Option<PathBuf>,
    /// `pvh` or `hvm`: the fuzzer writes the xl config.
    pub mode: Option<String>,
    /// Domain name with `mode`.
    pub name: Option<String>,
    /// Guest memory with `mode`.
    pub memory_mb: Option<u32>,
    /// Input buffer symbol.
    pub input: Option<String>,
    /// Input length symbol (unsigned, little-endian).
    pub input_len: Option<String>,
    /// Width of the input length in bytes (default: its symbol's size).
    pub input_len_size: Option<u64>,
    /// Start point (snapshot).
    pub start: Option<String>,
    /// End point.
    pub end: Option<String>,
    /// Crash sinks.
    pub sinks: Option<Vec<String>>,
    /// Functions to cover.
    pub cover: Option<Vec<String>>,
    /// Address ranges to cover, `0xSTART-0xEND`.
    pub cover_ranges: Option<Vec<String>>,
    /// Per-run timeout.
    pub timeout_ms: Option<u64>,
    /// Seed directory.
    pub seeds: Option<PathBuf>,
    /// Extra dictionary tokens as hex strings.
    pub dictionary: Option<Vec<String>>,
    /// `raw` or a structured input format (see [`crate::structured::by_name`]).
    pub input_format: Option<String>,
}

/// A loaded config: the target and the campaign settings it names.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The guest.
    pub target: TargetSpec,
    /// Seed directory, if any.
    pub seeds: Option<PathBuf>,
    /// Extra dictionary tokens.
    pub dictionary: Vec<Vec<u8>>,
    /// The domain name.
    pub name: String,
}

/// Non-empty hex bytes.
fn hex(s: &str) -> Option<Vec<u8>> {
    xenprobe_abi::hex::decode(s).ok().filter(|b| !b.is_empty())
}

/// The xl config the fuzzer writes for `mode` (`pvh` or `hvm`).
pub fn xl_config(name: &str, mode: &str, image: &Path, memory_mb: u32) -> Option<String> {
    let mode: GuestMode = mode
        .parse()
        .ok()
        .filter(|m: &GuestMode| m.is_hvm_container())?;
    Some(XlConfig::image(name, mode, image, memory_mb).render())
}

/// `cfg` with its `name=` line replaced by `name` (parallel guests of one
/// campaign run under distinct names).
pub fn with_name(cfg: &str, name: &str) -> String {
    let mut out: Vec<String> = cfg
        .lines()
        .filter(|l| l.split_once('=').is_none_or(|(k, _)| k.trim() != "name"))
        .map(str::to_string)
        .collect();
    out.insert(0, format!("name=\"{name}\""));
    out.join("\n") + "\n"
}

impl GuestConfig {
    /// Parses TOML text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Toml {
            path: path.display().to_string(),
            source,
        })
    }

    /// Turns the config into a target; `work` is where a generated xl
    /// config is written (the campaign directory).
    pub fn resolve(&self, path: &Path, work: &Path) -> Result<Loaded, ConfigError> {
        let p = path.display().to_string();
        let invalid = |msg: String| ConfigError::Invalid {
            path: p.clone(),
            msg,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |f: &Path| -> PathBuf {
            let j = if f.is_absolute() {
                f.to_path_buf()
            } else {
                base.join(f)
            };
            // Canonical where the file exists: paths printed in debugger
            // command lines stay readable.
            std::fs::canonicalize(&j)
                .or_else(|_| std::path::absolute(&j))
                .unwrap_or(j)
        };
        let kernel = match &self.kernel {
            None => None,
            Some(k) => Some(self.kernel_target(abs(k), &abs, &invalid)?),
        };
        let image = match (&self.image, &kernel) {
            (Some(i), _) => abs(i),
            (None, Some(k)) => k.symbols.clone(),
            (None, None) => {
                return Err(invalid(
                    "give image (or kernel for Linux kernel code)".into(),
                ))
            }
        };
        if !image.is_file() {
            return Err(invalid(format!("image {} does not exist", image.display())));
        }
        if kernel.is_some() && self.mode.is_some() {
            return Err(invalid(
                "a Linux guest needs its own xl config (kernel, ramdisk, cmdline): give xl_cfg, not mode"
                    .into(),
            ));
        }
        let (cfg, name) = match (&self.xl_cfg, &self.mode) {
            (Some(_), Some(_)) => return Err(invalid("give xl_cfg or mode, not both".into())),
            (None, None) => return Err(invalid("give xl_cfg or mode (pvh, hvm)".into())),
            (Some(c), None) => {
                let c = abs(c);
                let text = std::fs::read_to_string(&c).map_err(|source| ConfigError::Io {
                    path: c.display().to_string(),
                    source,
                })?;
                let name = crate::session::cfg_name(&text)
                    .ok_or_else(|| invalid(format!("{} has no name=", c.display())))?;
                (c, name)
            }
            (None, Some(mode)) => {
                let name = self.name.clone().unwrap_or_else(|| {
                    path.file_stem()
                        .map_or("xenprobe-fuzz".into(), |s| s.to_string_lossy().into_owned())
                });
                let text = xl_config(&name, mode, &image, self.memory_mb.unwrap_or(32))
                    .ok_or_else(|| {
                        invalid(format!(
                            "mode {mode:?}: use pvh or hvm (PV guests cannot be fuzzed: no vm_event ring)"
                        ))
                    })?;
                std::fs::create_dir_all(work).map_err(|source| ConfigError::Io {
                    path: work.display().to_string(),
                    source,
                })?;
                let c = work.join(format!("{name}.cfg"));
                std::fs::write(&c, text).map_err(|source| ConfigError::Io {
                    path: c.display().to_string(),
                    source,
                })?;
                (c, name)
            }
        };
        let mut target = TargetSpec::sample("", cfg, image);
        if let Some(v) = &self.input {
            target.input_sym = v.clone();
        }
        if let Some(v) = &self.input_len {
            target.len_sym = v.clone();
        }
        if let Some(w) = self.input_len_size {
            let w = usize::try_from(w)
                .ok()
                .filter(|w| crate::abi::LEN_WIDTHS.contains(w))
                .ok_or_else(|| invalid(format!("input_len_size: {w} is not 1, 2, 4 or 8")))?;
            target.len_size = Some(w);
        }
        if let Some(v) = &self.start {
            target.start_sym = v.clone();
        }
        if let Some(v) = &self.end {
            target.end_sym = v.clone();
        }
        if let Some(v) = &self.sinks {
            target.sinks = v.clone();
        } else if kernel.is_some() {
            // The kernel's own error paths are the sinks (crate::kernel::SINKS).
            target.sinks.clear();
        }
        let mut cover = self.cover.clone().unwrap_or_default();
        for r in self.cover_ranges.iter().flatten() {
            if crate::blocks::parse_range(r).is_none() {
                return Err(invalid(format!(
                    "cover_ranges: {r:?} is not 0xSTART-0xEND with START < END"
                )));
            }
            cover.push(r.clone());
        }
        if cover.is_empty() {
            match &kernel {
                Some(k) => cover = k.default_cover(),
                None => cover.push(xenprobe_abi::target::TARGET.into()),
            }
        }
        target.cover = cover;
        target.kernel = kernel;
        if let Some(ms) = self.timeout_ms {
            target.timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(f) = &self.input_format {
            target.input_format =
                crate::structured::by_name(f).map_err(|e| invalid(format!("input_format: {e}")))?;
        }
        let mut dictionary = Vec::new();
        for t in self.dictionary.iter().flatten() {
            dictionary.push(
                hex(t).ok_or_else(|| invalid(format!("dictionary: {t:?} is not hex bytes")))?,
            );
        }
        Ok(Loaded {
            target,
            seeds: self.seeds.as_deref().map(abs),
            dictionary,
            name,
        })
    }
}

impl GuestConfig {
    /// The `kernel`, `modules`, `marker` and `boot_timeout_s` keys.
    fn kernel_target(
        &self,
        symbols: PathBuf,
        abs: &dyn Fn(&Path) -> PathBuf,
        invalid: &dyn Fn(String) -> ConfigError,
    ) -> Result<crate::kernel::KernelTarget, ConfigError> {
        if !symbols.is_file() {
            return Err(invalid(format!(
                "kernel {} does not exist",
                symbols.display()
            )));
        }
        let modules: Vec<PathBuf> = self.modules.iter().flatten().map(|m| abs(m)).collect();
        if let Some(m) = modules.iter().find(|m| !m.is_file()) {
            return Err(invalid(format!("module {} does not exist", m.display())));
        }
        let marker = match self.marker.as_deref().map(str::trim) {
            None | Some("cpuid") => crate::kernel::Marker::Cpuid(crate::kernel::KFX_MAGIC),
            Some("symbols") => crate::kernel::Marker::Symbols,
            Some(m) => match m.strip_prefix("cpuid:") {
                Some(leaf) => {
                    let leaf = leaf.trim();
                    let v = match leaf.strip_prefix("0x") {
                        Some(h) => u32::from_str_radix(h, 16).ok(),
                        None => leaf.parse().ok(),
                    };
                    crate::kernel::Marker::Cpuid(v.ok_or_else(|| {
                        invalid(format!("marker: {leaf:?} is not a 32-bit cpuid leaf"))
                    })?)
                }
                None => {
                    return Err(invalid(format!(
                        "marker: {m:?}: use \"cpuid\" (0x13371337), \"cpuid:LEAF\" or \"symbols\" (start and end)"
                    )))
                }
            },
        };
        if modules.is_empty() && self.cover.is_none() && self.cover_ranges.is_none() {
            return Err(invalid(
                "kernel: name the code to cover: modules (every function of each) or cover/cover_ranges"
                    .into(),
            ));
        }
        Ok(crate::kernel::KernelTarget {
            symbols,
            modules,
            marker,
            boot_timeout: Duration::from_secs(self.boot_timeout_s.unwrap_or(120).max(1)),
        })
    }
}

/// Reads and resolves the config at `path` (see [`GuestConfig::resolve`]).
pub fn load(path: &Path, work: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    GuestConfig::parse(&text, path)?.resolve(path, work)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fresh_tmp_dir;

    #[test]
    fn the_example_config_parses_and_names_an_abi_guest() {
        let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tlv.toml");
        let text = std::fs::read_to_string(&ex).expect("example");
        let c = GuestConfig::parse(&text, &ex).expect("parse");
        assert_eq!(c.mode.as_deref(), Some("pvh"));
        assert!(c.image.as_ref().is_some_and(|i| i.ends_with("tlv-pvh")));
        assert!(c
            .cover
            .as_ref()
            .is_some_and(|v| v.contains(&"crate:tlv".to_string())));
    }

    #[test]
    fn the_c_guest_example_names_its_own_sink() {
        let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cguest.toml");
        let text = std::fs::read_to_string(&ex).expect("example");
        let c = GuestConfig::parse(&text, &ex).expect("parse");
        assert!(c.image.as_ref().is_some_and(|i| i.ends_with("cguest-pvh")));
        assert_eq!(c.sinks, Some(vec!["cg_crash".to_string()]));
        // The width comes from the guest's uint32_t symbol.
        assert_eq!(c.input_len_size, None);
    }

    #[test]
    fn the_linux_example_names_a_kernel_target() {
        let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/linux-sample.toml");
        let text = std::fs::read_to_string(&ex).expect("example");
        let c = GuestConfig::parse(&text, &ex).expect("parse");
        assert!(c.image.is_none() && c.mode.is_none());
        assert!(c.kernel.as_ref().is_some_and(|k| k.ends_with("vmlinux")));
        assert_eq!(c.marker.as_deref(), Some("cpuid"));
        assert!(c
            .modules
            .as_ref()
            .is_some_and(|m| m.len() == 1 && m[0].ends_with("xenprobe_sample.ko")));
    }

    #[test]
    fn kernel_configs_say_what_is_wrong() {
        let d = fresh_tmp_dir("config-kernel");
        std::fs::write(d.join("vmlinux"), b"x").expect("vmlinux");
        std::fs::write(d.join("m.ko"), b"x").expect("ko");
        std::fs::write(d.join("g.cfg"), "name=\"g\"\n").expect("cfg");
        let path = d.join("k.toml");
        let load = |text: &str| GuestConfig::parse(text, &path).and_then(|c| c.resolve(&path, &d));
        let base = "kernel = \"vmlinux\"\nxl_cfg = \"g.cfg\"\nmodules = [\"m.ko\"]\n";
        let l = load(base).expect("a kernel config");
        let k = l.target.kernel.expect("kernel target");
        assert_eq!(
            k.marker,
            crate::kernel::Marker::Cpuid(crate::kernel::KFX_MAGIC)
        );
        assert_eq!(l.target.cover, vec!["module:m"]);
        assert!(
            l.target.sinks.is_empty(),
            "the kernel's own paths are the sinks"
        );
        let sym = load(&format!("{base}marker = \"symbols\"\n")).expect("symbols marker");
        assert_eq!(
            sym.target.kernel.map(|k| k.marker),
            Some(crate::kernel::Marker::Symbols)
        );
        let leaf = load(&format!("{base}marker = \"cpuid:0x4711\"\n")).expect("leaf");
        assert_eq!(
            leaf.target.kernel.map(|k| k.marker),
            Some(crate::kernel::Marker::Cpuid(0x4711))
        );
        let err = |text: &str| load(text).map(|_| ()).unwrap_err().to_string();
        assert!(err(&format!("{base}marker = \"int3\"\n")).contains("marker"));
        assert!(err(&format!("{base}marker = \"cpuid:zz\"\n")).contains("cpuid leaf"));
        assert!(
            err("kernel = \"vmlinux\"\nmode = \"pvh\"\nmodules = [\"m.ko\"]\n").contains("xl_cfg")
        );
        assert!(err("kernel = \"vmlinux\"\nxl_cfg = \"g.cfg\"\n").contains("modules"));
        assert!(
            err("kernel = \"nope\"\nxl_cfg = \"g.cfg\"\nmodules = [\"m.ko\"]\n")
                .contains("does not exist")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn resolves_paths_symbols_and_a_generated_xl_config() {
        let d = fresh_tmp_dir("config-resolve");
        std::fs::write(d.join("img"), b"\x7fELF").expect("img");
        std::fs::create_dir_all(d.join("seeds")).expect("seeds");
        let path = d.join("my-guest.toml");
        let text = r#"
image = "img"
mode = "hvm"
start = "go"
input_len_size = 4
sinks = ["oops", "bad"]
cover = ["parse"]
cover_ranges = ["0x1000-0x1100"]
timeout_ms = 250
seeds = "seeds"
dictionary = ["ee", "0x58424344"]
input_format = "tlv-records"
"#;
        let l = GuestConfig::parse(text, &path)
            .expect("parse")
            .resolve(&path, &d.join("work"))
            .expect("resolve");
        assert_eq!(l.name, "my-guest");
        assert_eq!(l.target.start_sym, "go");
        assert_eq!(l.target.len_size, Some(4));
        assert_eq!(l.target.end_sym, "xenprobe_fuzz_end");
        assert_eq!(l.target.sinks, vec!["oops", "bad"]);
        assert_eq!(l.target.cover, vec!["parse", "0x1000-0x1100"]);
        assert_eq!(l.target.timeout, Duration::from_millis(250));
        assert_eq!(l.dictionary, vec![vec![0xee], b"XBCD".to_vec()]);
        assert_eq!(l.seeds.as_deref(), Some(d.join("seeds").as_path()));
        assert_eq!(l.target.input_format.map(|f| f.name()), Some("tlv-records"));
        let cfg = std::fs::read_to_string(&l.target.cfg).expect("cfg written");
        assert!(cfg.starts_with("name=\"my-guest\"\ntype=\"hvm\"\nfirmware_override="));
        assert!(cfg.contains(&format!("\"{}\"", d.join("img").display())));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let d = fresh_tmp_dir("config-bad");
        std::fs::write(d.join("img"), b"x").expect("img");
        let path = d.join("g.toml");
        let err =
            |text: &str| match GuestConfig::parse(text, &path).and_then(|c| c.resolve(&path, &d)) {
                Ok(_) => panic!("accepted {text:?}"),
                Err(e) => e.to_string(),
            };
        assert!(err("image = \"img\"\nmode = \"pvh\"\ntypo = 1\n").contains("typo"));
        assert!(err("image = \"nope\"\nmode = \"pvh\"\n").contains("does not exist"));
        assert!(err("image = \"img\"\n").contains("xl_cfg or mode"));
        assert!(err("image = \"img\"\nmode = \"pv\"\n").contains("PV"));
        assert!(
            err("image = \"img\"\nmode = \"pvh\"\ncover_ranges = [\"0x2-0x1\"]\n")
                .contains("cover_ranges")
        );
        assert!(err("image = \"img\"\nmode = \"pvh\"\ndictionary = [\"zz\"]\n").contains("hex"));
        for bad in ["3", "0", "16"] {
            let e = err(&format!(
                "image = \"img\"\nmode = \"pvh\"\ninput_len_size = {bad}\n"
            ));
            assert!(
                e.contains(&format!("input_len_size: {bad} is not 1, 2, 4 or 8")),
                "{e}"
            );
        }
        assert!(
            err("image = \"img\"\nmode = \"pvh\"\ninput_len_size = -4\n")
                .contains("input_len_size")
        );
        assert!(
            err("image = \"img\"\nmode = \"pvh\"\ninput_format = \"json\"\n")
                .contains("input_format: unknown input format")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn renames_an_xl_config() {
        let c = "name = \"a\"\ntype=\"pvh\"\n";
        assert_eq!(with_name(c, "a-2"), "name=\"a-2\"\ntype=\"pvh\"\n");
        assert_eq!(
            crate::session::cfg_name(&with_name(c, "a-2")).as_deref(),
            Some("a-2")
        );
    }
}
