//! What `xl` says when it fails, in words a user can act on: the one
//! failure that is nobody's bug, a host without the memory a guest asks
//! for, is named with what is free and what the guest wants.

use std::process::Command;

/// What `xl` prints when Xen has no memory left for a new domain (the
/// domain builder's allocation, or libxl's attempt to make room).
const OUT_OF_MEMORY: &[&str] = &[
    "Out of memory",
    "Cannot allocate memory",
    "failed to free memory",
    "not enough memory",
    "ENOMEM",
];

/// Whether `xl`'s error output says that Xen ran out of memory.
pub fn out_of_memory(stderr: &str) -> bool {
    OUT_OF_MEMORY.iter().any(|p| stderr.contains(p))
}

/// The `memory=` (MiB) a guest asks for: the last of its xl config text and
/// the `key=value` overrides given to `xl create` after the file.
pub fn requested_memory_mb(cfg: &str, overrides: &[&str]) -> Option<u64> {
    let value = |l: &str| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "memory")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    };
    overrides
        .iter()
        .rev()
        .find_map(|o| value(o))
        .or_else(|| cfg.lines().rev().find_map(value))
}

/// Memory Xen has free for new guests (`xl info`'s `free_memory`, MiB).
pub fn free_memory_mb() -> Option<u64> {
    let out = Command::new("xl").arg("info").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "free_memory")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// The error for a failed `xl create` of config `cfg_path` (text `cfg`,
/// with `overrides`), given what xl printed: a lack of memory is said as
/// such, with the memory asked for and free; anything else is xl's own
/// message.
pub fn create_failed(cfg_path: &str, cfg: &str, overrides: &[&str], stderr: &str) -> String {
    let said = stderr.trim();
    if !out_of_memory(said) {
        return format!("xl create {cfg_path} failed: {said}");
    }
    let wants = requested_memory_mb(cfg, overrides)
        .map_or_else(|| "its memory".to_string(), |m| format!("{m} MiB"));
    let free =
        free_memory_mb().map_or_else(|| "an unknown amount".to_string(), |m| format!("{m} MiB"));
    let last = said.lines().find(|l| out_of_memory(l)).unwrap_or(said);
    format!(
        "xl create {cfg_path}: Xen has not enough free memory for the guest (it asks for {wants}, \
         {free} free per `xl info`): destroy guests that are not needed (`xl list`) or lower \
         memory= in the config (xl: {last})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_recognised_from_xl_output() {
        let xl = "Parsing config from /tmp/oom.cfg\n\
            xc: error: panic: xg_dom_boot.c:119: xc_dom_boot_mem_init: can't allocate low memory for domain: Out of memory\n\
            libxl: error: libxl_dom.c:586:libxl__build_dom: xc_dom_boot_mem_init failed: Cannot allocate memory\n";
        assert!(out_of_memory(xl));
        assert!(!out_of_memory(
            "libxl: error: libxl_create.c: Domain 3:cannot (re-)build domain: -3"
        ));
        let msg = create_failed("/tmp/oom.cfg", "name=\"x\"\nmemory=9000\n", &[], xl);
        assert!(msg.contains("not enough free memory"), "{msg}");
        assert!(msg.contains("asks for 9000 MiB"), "{msg}");
        assert!(msg.contains("Out of memory"), "{msg}");
        let other = create_failed("/tmp/a.cfg", "", &[], "Parsing config\nbad key\n");
        assert_eq!(
            other,
            "xl create /tmp/a.cfg failed: Parsing config\nbad key"
        );
    }

    #[test]
    fn the_last_memory_setting_wins() {
        assert_eq!(requested_memory_mb("memory = 32\n", &[]), Some(32));
        assert_eq!(
            requested_memory_mb("memory=32\n", &["name=\"a\"", "memory=64"]),
            Some(64)
        );
        assert_eq!(requested_memory_mb("maxmem=9\n", &[]), None);
    }
}
