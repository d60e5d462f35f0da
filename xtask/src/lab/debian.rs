//! Debian packages and sources for the debug hypervisor build: the installed
//! version of a package, a private apt configuration whose `deb-src` entries are
//! derived from the machine's own Debian sources (the system's apt setup is left
//! untouched), and which source version to fetch.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};

/// The installed version of a Debian package.
pub(super) fn installed_version(package: &str) -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .context("running dpkg-query (the debug hypervisor is built on Debian only)")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() {
        bail!("package {package} is not installed; install it with: apt-get install {package}");
    }
    Ok(version)
}

/// An apt configuration of its own (sources, lists, cache) under one directory.
pub(super) struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Writes `dir/sources.d/debian-src.sources`, the `deb-src` twin of the machine's
    /// Debian entries for its release.
    pub(super) fn setup(dir: &Path) -> Result<Self> {
        let codename =
            os_release_codename(&fs::read_to_string("/etc/os-release").unwrap_or_default())
                .ok_or_else(|| {
                    anyhow!("no VERSION_CODENAME in /etc/os-release: not a Debian release?")
                })?;
        let mut text = String::new();
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut extra: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            extra.sort();
            files.extend(extra);
        }
        for file in files {
            let Ok(content) = fs::read_to_string(&file) else {
                continue;
            };
            match file.extension().and_then(OsStr::to_str) {
                Some("sources") => text.push_str(&deb822_to_src(&content, &codename)),
                Some("list") => text.push_str(&one_line_to_src(&content, &codename)),
                _ => {}
            }
        }
        if text.is_empty() {
            bail!("no Debian '{codename}' entries in /etc/apt/sources.list{{,.d/}} to derive deb-src entries from");
        }
        for sub in ["sources.d", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::write(dir.join("sources.list"), "")?;
        fs::write(dir.join("sources.d/debian-src.sources"), text)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// `program` (apt-get, apt-cache) pointed at this configuration.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = &self.dir;
        for (opt, path) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", d.join("sources.d")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{opt}={}", path.display()));
        }
        cmd
    }
}

/// `VERSION_CODENAME` from the text of `/etc/os-release`.
pub(super) fn os_release_codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l
            .strip_prefix("VERSION_CODENAME=")?
            .trim()
            .trim_matches('"');
        (!v.is_empty()).then(|| v.to_owned())
    })
}

/// Whether `suite` belongs to the release `codename` (bookworm, bookworm-updates,
/// bookworm-security, bookworm/updates, ...).
pub(super) fn suite_of_release(suite: &str, codename: &str) -> bool {
    suite == codename
        || suite
            .strip_prefix(codename)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('/'))
}

/// The `deb-src` twins of the deb822 stanzas in `content` that serve `codename`.
pub(super) fn deb822_to_src(content: &str, codename: &str) -> String {
    let mut out = String::new();
    for stanza in content.split("\n\n") {
        let fields: Vec<(&str, &str)> = stanza
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let enabled = get("Enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        let is_deb = get("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let suites: Vec<&str> = get("Suites")
            .unwrap_or("")
            .split_whitespace()
            .filter(|s| suite_of_release(s, codename))
            .collect();
        if !enabled || !is_deb || suites.is_empty() {
            continue;
        }
        let _ = writeln!(out, "Types: deb-src");
        let _ = writeln!(out, "Suites: {}", suites.join(" "));
        for (k, v) in &fields {
            let k_lower = k.to_ascii_lowercase();
            if !matches!(k_lower.as_str(), "types" | "suites" | "enabled") {
                let _ = writeln!(out, "{k}: {v}");
            }
        }
        out.push('\n');
    }
    out
}

/// The `deb-src` twins of the one-line `deb` entries in `content` that serve
/// `codename`, as deb822 stanzas.
pub(super) fn one_line_to_src(content: &str, codename: &str) -> String {
    let mut out = String::new();
    for line in content.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").map(str::trim_start) else {
            continue;
        };
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once(']') {
                Some((opts, after)) => (opts.trim(), after.trim()),
                None => continue,
            },
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let components: Vec<&str> = words.collect();
        if !suite_of_release(suite, codename) || components.is_empty() {
            continue;
        }
        let _ = writeln!(out, "Types: deb-src\nURIs: {uri}\nSuites: {suite}");
        let _ = writeln!(out, "Components: {}", components.join(" "));
        for opt in options.split_whitespace() {
            if let Some((k, v)) = opt.split_once('=') {
                let key = match k {
                    "signed-by" => "Signed-By",
                    "arch" => "Architectures",
                    "trusted" => "Trusted",
                    _ => continue,
                };
                let _ = writeln!(out, "{key}: {v}");
            }
        }
        out.push('\n');
    }
    out
}

/// The versions of source package `package` in `apt-cache showsrc` output.
pub(super) fn parse_showsrc(listing: &str, package: &str) -> Vec<String> {
    let mut versions = Vec::new();
    for record in listing.split("\n\n") {
        let mut name = None;
        let mut version = None;
        for line in record.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            }
        }
        if let (Some(n), Some(v)) = (name, version) {
            if n == package && !versions.iter().any(|x| x == v) {
                versions.push(v.to_owned());
            }
        }
    }
    versions
}

/// The source versions to try, best first: the installed version, then older versions of
/// the same Xen series (newest first), then newer ones.
pub(super) fn source_candidates(
    listed: &[String],
    installed: &str,
    series: &str,
) -> Result<Vec<String>> {
    let prefix = format!("{series}.");
    let mut same_series: Vec<String> = listed
        .iter()
        .filter(|v| v.starts_with(&prefix) || v.as_str() == series)
        .cloned()
        .collect();
    // Newest first, compared the way dpkg does.
    let mut err = None;
    same_series.sort_by(|a, b| match deb_version_cmp(b, a) {
        Ok(o) => o,
        Err(e) => {
            err.get_or_insert(e);
            std::cmp::Ordering::Equal
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut ordered = Vec::new();
    if same_series.iter().any(|v| v == installed) {
        ordered.push(installed.to_owned());
    }
    let mut newer = Vec::new();
    for v in same_series.into_iter().filter(|v| v != installed) {
        if deb_version_cmp(&v, installed)? == std::cmp::Ordering::Less {
            ordered.push(v);
        } else {
            newer.push(v);
        }
    }
    newer.reverse();
    ordered.extend(newer);
    Ok(ordered)
}

/// Compares two Debian versions with `dpkg --compare-versions`.
pub(super) fn deb_version_cmp(a: &str, b: &str) -> Result<std::cmp::Ordering> {
    use std::cmp::Ordering::*;
    if a == b {
        return Ok(Equal);
    }
    let lt = Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .context("running dpkg --compare-versions")?;
    if lt.success() {
        return Ok(Less);
    }
    let eq = Command::new("dpkg")
        .args(["--compare-versions", a, "eq", b])
        .status()
        .context("running dpkg --compare-versions")?;
    Ok(if eq.success() { Equal } else { Greater })
}

/// The `.dsc` file name apt-get source writes for `package` at `version` (the epoch is
/// not part of file names).
pub(super) fn dsc_name(package: &str, version: &str) -> String {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    format!("{package}_{no_epoch}.dsc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources_become_deb_src_for_the_release_only() {
        let sources = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
                       Suites: bookworm bookworm-updates bookworm-backports\nComponents: main\n\
                       Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                       Types: deb\nURIs: https://other.example/node\nSuites: nodistro\nComponents: main\n\n\
                       Types: deb\nEnabled: no\nURIs: http://x.example\nSuites: bookworm\nComponents: main\n";
        let out = deb822_to_src(sources, "bookworm");
        assert_eq!(
            out,
            "Types: deb-src\nSuites: bookworm bookworm-updates bookworm-backports\n\
             URIs: http://mirror.example/debian\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        );
        assert_eq!(deb822_to_src(sources, "trixie"), "");
    }

    #[test]
    fn one_line_sources_become_deb_src_for_the_release_only() {
        let list = "deb [signed-by=/k.gpg arch=amd64] http://m.example/debian bookworm-security main contrib\n\
                    deb https://packages.example/apt cloud-sdk-bookworm main\n\
                    # deb http://commented.example bookworm main\n\
                    deb-src http://m.example/debian bookworm main\n";
        assert_eq!(
            one_line_to_src(list, "bookworm"),
            "Types: deb-src\nURIs: http://m.example/debian\nSuites: bookworm-security\n\
             Components: main contrib\nSigned-By: /k.gpg\nArchitectures: amd64\n\n"
        );
    }

    #[test]
    fn codename_and_suites() {
        assert_eq!(
            os_release_codename("NAME=\"Debian\"\nVERSION_CODENAME=bookworm\n").as_deref(),
            Some("bookworm")
        );
        assert_eq!(os_release_codename("NAME=x\n"), None);
        assert!(suite_of_release("bookworm-security", "bookworm"));
        assert!(suite_of_release("bookworm/updates", "bookworm"));
        assert!(!suite_of_release("bookwormish", "bookworm"));
    }

    #[test]
    fn showsrc_versions_and_candidate_order() {
        let listing = "Package: xen\nBinary: a, b\nVersion: 4.17.5+72-g01140da4e8-1\n\n\
                       Package: xen\nVersion: 4.17.7+13-g2445b30a44-0+deb12u1\n\n\
                       Package: xen-other\nVersion: 9.9\n\n\
                       Package: xen\nVersion: 4.17.3+10-1\n\n\
                       Package: xen\nVersion: 4.20.1-1\n\n\
                       Package: xen\nVersion: 4.17.8-1\n";
        let listed = parse_showsrc(listing, "xen");
        assert_eq!(listed.len(), 5);
        let installed = "4.17.7+13-g2445b30a44-0+deb12u1";
        let order = match source_candidates(&listed, installed, "4.17") {
            Ok(o) => o,
            Err(e) => panic!("dpkg --compare-versions: {e:#}"),
        };
        assert_eq!(
            order,
            [
                installed,
                "4.17.5+72-g01140da4e8-1",
                "4.17.3+10-1",
                "4.17.8-1"
            ]
        );
        let without: Vec<String> = listed.iter().filter(|v| *v != installed).cloned().collect();
        let order = source_candidates(&without, installed, "4.17").unwrap_or_default();
        assert_eq!(
            order.first().map(String::as_str),
            Some("4.17.5+72-g01140da4e8-1")
        );
    }

    #[test]
    fn dsc_names_drop_the_epoch() {
        assert_eq!(dsc_name("xen", "4.17.5-1"), "xen_4.17.5-1.dsc");
        assert_eq!(dsc_name("qemu", "1:10.0.2+ds-2"), "qemu_10.0.2+ds-2.dsc");
    }
}
