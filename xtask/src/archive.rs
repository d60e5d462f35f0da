//! Debian's archive without apt: a suite's package index (checked against
//! the archive's signed `InRelease`), the dependency closure of a few
//! packages, and their `.deb`s (checked against the index) unpacked into a
//! directory. Used for the sysroots of other Xen releases and for the dom0
//! root of the Xen 4.20 lab; the machine's own apt setup is left alone.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

const MIRROR: &str = "http://deb.debian.org/debian";
const ARCH: &str = "amd64";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The `main` component's package index of one suite.
pub struct Index {
    suite: String,
    packages: HashMap<String, HashMap<String, String>>,
    /// Virtual package -> the first real package providing it.
    provides: HashMap<String, String>,
    /// Where downloads go (removed by [`Index::done`]).
    dl: PathBuf,
}

impl Index {
    /// Downloads and verifies `suite`'s index into `dl`.
    pub fn fetch(suite: &str, dl: &Path) -> Result<Self> {
        fs::create_dir_all(dl).with_context(|| format!("creating {}", dl.display()))?;
        let dist = format!("{MIRROR}/dists/{suite}");
        let inrelease = dl.join("InRelease");
        curl(&format!("{dist}/InRelease"), &inrelease)?;
        let release = dl.join("Release");
        let out = Command::new("gpgv")
            .args(["--keyring", KEYRING, "--output"])
            .args([&release, &inrelease])
            .output()
            .context("running gpgv (apt-get install gpgv debian-archive-keyring)")?;
        if !out.status.success() {
            bail!(
                "{dist}/InRelease: bad signature:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let index_name = format!("main/binary-{ARCH}/Packages.xz");
        let index_sum = release_sha256(&fs::read_to_string(&release)?, &index_name)
            .with_context(|| format!("{index_name} is not listed in {suite}'s Release"))?;
        let index = dl.join("Packages.xz");
        curl(&format!("{dist}/{index_name}"), &index)?;
        check_sha256(&index, &index_sum)?;
        let out = Command::new("xz")
            .arg("-dc")
            .arg(&index)
            .output()
            .context("running xz")?;
        if !out.status.success() {
            bail!("xz -dc {} failed", index.display());
        }
        let packages = parse_packages(&String::from_utf8_lossy(&out.stdout));
        Ok(Self {
            suite: suite.to_string(),
            provides: provides_map(&packages),
            packages,
            dl: dl.to_path_buf(),
        })
    }

    /// `roots` and, transitively, what they depend on (`Pre-Depends` and
    /// `Depends`, the first alternative of each), following only the
    /// dependencies `follow` accepts: a dom0 needs the libraries, not the
    /// maintainer scripts' interpreters.
    pub fn closure(&self, roots: &[&str], follow: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        closure(&self.packages, &self.provides, roots, follow)
            .map_err(|name| anyhow::anyhow!("{name} is not in {}'s index", self.suite))
    }

    /// Downloads `names`, checks each against the index and unpacks it into
    /// `root`. Returns one `name version` line per package.
    pub fn unpack(&self, names: &[String], root: &Path) -> Result<String> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let mut installed = String::new();
        for name in names {
            let p = self
                .packages
                .get(name)
                .with_context(|| format!("{name} is not in {}'s index", self.suite))?;
            let (Some(file), Some(sum), Some(ver)) =
                (p.get("Filename"), p.get("SHA256"), p.get("Version"))
            else {
                bail!("{name}: incomplete entry in {}'s index", self.suite);
            };
            let deb = self.dl.join(file.rsplit('/').next().unwrap_or(name));
            eprintln!("xtask: {} {name} {ver}", self.suite);
            curl(&format!("{MIRROR}/{file}"), &deb)?;
            check_sha256(&deb, sum)?;
            let status = Command::new("dpkg-deb")
                .arg("-x")
                .args([&deb, &root.to_path_buf()])
                .status()
                .context("running dpkg-deb")?;
            if !status.success() {
                bail!("dpkg-deb -x {} failed", deb.display());
            }
            fs::remove_file(&deb).ok();
            installed.push_str(&format!("{name} {ver}\n"));
        }
        Ok(installed)
    }

    /// Removes the download directory.
    pub fn done(self) {
        fs::remove_dir_all(&self.dl).ok();
    }
}

fn curl(url: &str, to: &Path) -> Result<()> {
    let status = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "-o"])
        .arg(to)
        .arg(url)
        .status()
        .context("running curl")?;
    if !status.success() {
        bail!("downloading {url} failed");
    }
    Ok(())
}

fn check_sha256(file: &Path, want: &str) -> Result<()> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let got = text.split_whitespace().next().unwrap_or_default();
    if !out.status.success() || !got.eq_ignore_ascii_case(want) {
        bail!("{}: SHA256 {got}, the archive says {want}", file.display());
    }
    Ok(())
}

/// The SHA256 of `name` in a Debian `Release` file.
fn release_sha256(release: &str, name: &str) -> Option<String> {
    let section = release.split("\nSHA256:").nth(1)?;
    section
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let (sum, _size, file) = (w.next()?, w.next()?, w.next()?);
            (file == name).then(|| sum.to_string())
        })
}

/// The stanzas of a `Packages` index by package name (single-line fields only).
fn parse_packages(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out = HashMap::new();
    for stanza in text.split("\n\n") {
        let fields: HashMap<String, String> = stanza
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        if let Some(name) = fields.get("Package") {
            out.insert(name.clone(), fields);
        }
    }
    out
}

fn provides_map(packages: &HashMap<String, HashMap<String, String>>) -> HashMap<String, String> {
    let mut names: Vec<&String> = packages.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    for name in names {
        for p in packages[name]
            .get("Provides")
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
        {
            if let Some(v) = p.split_whitespace().next() {
                out.entry(v.to_string()).or_insert_with(|| name.clone());
            }
        }
    }
    out
}

/// The package a dependency clause names: its first alternative, without
/// version or architecture qualifiers.
fn clause_package(clause: &str) -> Option<&str> {
    let first = clause.split('|').next()?.split_whitespace().next()?;
    let name = first.split(':').next()?;
    (!name.is_empty()).then_some(name)
}

/// The dependency closure (sorted); `Err(name)` for a package nobody has.
fn closure(
    packages: &HashMap<String, HashMap<String, String>>,
    provides: &HashMap<String, String>,
    roots: &[&str],
    follow: impl Fn(&str) -> bool,
) -> std::result::Result<Vec<String>, String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
    while let Some(name) = todo.pop() {
        let real = if packages.contains_key(&name) {
            name
        } else {
            provides.get(&name).cloned().ok_or(name)?
        };
        if !seen.insert(real.clone()) {
            continue;
        }
        for field in ["Pre-Depends", "Depends"] {
            let deps = packages[&real].get(field).cloned().unwrap_or_default();
            for dep in deps.split(',').filter_map(clause_package) {
                if follow(dep) && !seen.contains(dep) {
                    todo.push(dep.to_string());
                }
            }
        }
    }
    Ok(seen.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_archive_indexes() {
        let release = "Codename: trixie\nMD5Sum:\n 0123 9 main/binary-amd64/Packages.xz\n\
                       SHA256:\n aaaa 10 main/binary-amd64/Packages\n bbbb 9 main/binary-amd64/Packages.xz\n";
        assert_eq!(
            release_sha256(release, "main/binary-amd64/Packages.xz").as_deref(),
            Some("bbbb")
        );
        assert_eq!(release_sha256(release, "contrib/x"), None);
        let packages =
            "Package: libxen-dev\nSource: xen\nVersion: 4.20.4-1\nDescription: d\n more\n\
                        Filename: pool/main/x/xen/libxen-dev_4.20.4-1_amd64.deb\nSHA256: cc\n\n\
                        Package: libxencall1\nVersion: 4.20.4-1\n";
        let p = parse_packages(packages);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p["libxen-dev"]["Filename"],
            "pool/main/x/xen/libxen-dev_4.20.4-1_amd64.deb"
        );
        assert_eq!(p["libxen-dev"]["SHA256"], "cc");
        assert_eq!(p["libxencall1"]["Version"], "4.20.4-1");
    }

    #[test]
    fn closure_follows_first_alternatives_and_virtual_packages() {
        let p = parse_packages(
            "Package: xl\nPre-Depends: libc6 (>= 2.38)\n\
             Depends: libyajl2, python3:any (>= 3.13), libfoo | libbar, libvirt-only\n\n\
             Package: libc6\nDepends: libgcc-s1\n\n\
             Package: libgcc-s1\nDepends: libc6\n\n\
             Package: libyajl2\n\n\
             Package: libfoo\n\n\
             Package: libbar\n\n\
             Package: python3\n\n\
             Package: libreal\nProvides: libvirt-only (= 1)\n",
        );
        let prov = provides_map(&p);
        let got = closure(&p, &prov, &["xl"], |d| d.starts_with("lib")).unwrap();
        assert_eq!(
            got,
            ["libc6", "libfoo", "libgcc-s1", "libreal", "libyajl2", "xl"]
        );
        assert_eq!(
            closure(&p, &prov, &["nothing"], |_| true),
            Err("nothing".to_string())
        );
    }
}
