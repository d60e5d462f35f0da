//! Snapshots saved to a file and loaded again into a fresh domain.
//!
//! [`Domain::save_snapshot_file`] writes every present guest frame, the
//! full HVM context (every vCPU's CPU record plus the platform records:
//! LAPIC, timers, MTRRs...) and metadata that identifies the guest (domain
//! name, guest type, memory size, vCPU count). [`Domain::load_snapshot_file`]
//! refuses a file made from a different guest, writes all frames into the
//! stopped domain (normally one just made from the same xl config with
//! `xl create -p`), loads the HVM context, and takes an in-memory snapshot
//! so that [`Domain::restore_snapshot`] works right away.
//!
//! Format (little-endian): the magic `XPSNAP01`, a u32 length and that many
//! bytes of JSON [`SnapshotFileMeta`], the HVM context blob, `frames` u64
//! guest frame numbers, then the `frames` pages in the same order.
//!
//! HVM and PVH only, like in-memory snapshots (PV frames are machine frames).
//! Breakpoint bytes are kept out of the file; breakpoints of the loading
//! domain are planted again after the load.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::xen::{HvmContext, Prot, PAGE_SHIFT, PAGE_SIZE};

use super::domain::Domain;
use super::error::{Error, Result};
use super::memory::{for_each_frame, hvm_frame_ranges};
use super::snapshot::SnapshotInfo;

const MAGIC: &[u8; 8] = b"XPSNAP01";
/// Frames written into the domain per mapping when loading.
const LOAD_CHUNK: usize = 1024;

/// What a snapshot file says about the guest it was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFileMeta {
    /// Domain name at save time (the xl config's `name`).
    pub name: String,
    /// Guest type: "PVH" or "HVM".
    pub kind: String,
    /// Memory limit in KiB.
    pub max_memkb: u64,
    /// Highest vCPU id.
    pub max_vcpu_id: u32,
    /// Pages the domain had.
    pub nr_pages: u64,
    /// Frames saved.
    pub frames: u64,
    /// Length of the HVM context blob.
    pub hvm_context_len: u64,
}

impl SnapshotFileMeta {
    /// Why `dom` cannot take this snapshot, if it cannot. `check_name`:
    /// also require the same domain name.
    fn mismatch(&self, dom: &Domain, check_name: bool) -> Result<Option<String>> {
        let info = dom.info()?;
        let kind = dom.kind().to_string();
        Ok(if self.kind != kind {
            Some(format!(
                "the snapshot is of a {} guest, this one is {kind}",
                self.kind
            ))
        } else if self.max_memkb != info.max_memkb {
            Some(format!(
                "the snapshot's guest has {} KiB of memory, this one {} KiB",
                self.max_memkb, info.max_memkb
            ))
        } else if self.max_vcpu_id != info.max_vcpu_id {
            Some(format!(
                "the snapshot's guest has {} vCPUs, this one {}",
                self.max_vcpu_id + 1,
                info.max_vcpu_id + 1
            ))
        } else if check_name && self.name != dom.name() {
            Some(format!(
                "the snapshot is of domain {:?} (its xl config), this is {:?}",
                self.name,
                dom.name()
            ))
        } else {
            None
        })
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn snapshots_supported(dom: &Domain, what: &'static str) -> Result<()> {
    if dom.support_guest_frames().is_none() {
        return Err(Error::unsupported(
            what,
            "snapshot files are HVM/PVH only: a PV snapshot is kept by machine frame, and a new domain gets other machine frames (loading one needs the guest's p2m, which the sample guests do not publish)",
        ));
    }
    if !dom.is_stopped() {
        return Err(Error::State(format!(
            "{what} needs a stopped domain: pause() first"
        )));
    }
    Ok(())
}

/// Reads the metadata of a snapshot file.
pub fn read_meta(path: impl AsRef<Path>) -> Result<SnapshotFileMeta> {
    let path = path.as_ref();
    let f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    read_header(&mut BufReader::new(f), path)
}

fn read_header(r: &mut impl Read, path: &Path) -> Result<SnapshotFileMeta> {
    let err = |e| io(format!("reading {}", path.display()))(e);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(err)?;
    if &magic != MAGIC {
        return Err(Error::State(format!(
            "{} is not a xenprobe snapshot file",
            path.display()
        )));
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(err)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err(Error::State(format!(
            "{}: snapshot header of {len} bytes",
            path.display()
        )));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json).map_err(err)?;
    let meta: SnapshotFileMeta = serde_json::from_slice(&json)
        .map_err(|e| Error::State(format!("{}: snapshot header: {e}", path.display())))?;
    // The sizes below allocate buffers: a damaged header gets an error, not
    // an allocation of its numbers. A guest holds at most its maximum memory
    // in frames, plus a few special ones; an HVM context is a few KiB a vCPU.
    let max_frames = (meta.max_memkb / 4).saturating_add(1 << 16);
    if meta.frames > max_frames || meta.hvm_context_len > 16 << 20 {
        return Err(Error::State(format!(
            "{}: damaged snapshot header: {} frames for {} KiB of memory, an HVM context of {} bytes",
            path.display(),
            meta.frames,
            meta.max_memkb,
            meta.hvm_context_len
        )));
    }
    Ok(meta)
}

impl Domain {
    /// Saves the stopped domain's memory and vCPU state to `path`
    /// (HVM/PVH). Returns the metadata written.
    pub fn save_snapshot_file(&mut self, path: impl AsRef<Path>) -> Result<SnapshotFileMeta> {
        snapshots_supported(self, "saving a snapshot file")?;
        let path = path.as_ref();
        let info = self.info()?;
        let max_gpfn = self.xen.xc.domain_maximum_gpfn(self.domid)?;
        let mut gfns = Vec::new();
        let mut data = Vec::new();
        for_each_frame(
            &self.xen.fmem,
            self.domid,
            &hvm_frame_ranges(max_gpfn),
            |gfn, page| {
                gfns.push(gfn);
                data.extend_from_slice(page);
                Ok(())
            },
        )?;
        // Keep breakpoint bytes out of the file.
        for (_, b) in self.bps.planted() {
            if let Ok(i) = gfns.binary_search(&(b.pa >> PAGE_SHIFT)) {
                data[i * PAGE_SIZE + (b.pa as usize & (PAGE_SIZE - 1))] = b.orig;
            }
        }
        let cpu = self.xen.xc.hvm_context(self.domid)?;
        let meta = SnapshotFileMeta {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            max_memkb: info.max_memkb,
            max_vcpu_id: info.max_vcpu_id,
            nr_pages: info.nr_pages,
            frames: gfns.len() as u64,
            hvm_context_len: cpu.as_bytes().len() as u64,
        };
        let json =
            serde_json::to_vec(&meta).map_err(|e| Error::State(format!("snapshot header: {e}")))?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
            w.write_all(MAGIC)?;
            w.write_all(&(json.len() as u32).to_le_bytes())?;
            w.write_all(&json)?;
            w.write_all(cpu.as_bytes())?;
            for g in &gfns {
                w.write_all(&g.to_le_bytes())?;
            }
            w.write_all(&data)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(format!("writing {}", path.display()))(e));
        }
        tracing::debug!(
            domid = self.domid,
            frames = gfns.len(),
            "snapshot saved to {}",
            path.display()
        );
        Ok(meta)
    }

    /// Loads a snapshot file into this stopped domain, which must be of the
    /// same guest (same name, type, memory size and vCPU count: normally
    /// made from the same xl config), then takes an in-memory snapshot of
    /// the loaded state.
    pub fn load_snapshot_file(&mut self, path: impl AsRef<Path>) -> Result<SnapshotInfo> {
        self.load_snapshot_file_inner(path.as_ref(), true)
    }

    /// Like [`Domain::load_snapshot_file`] for a domain under another name
    /// (the type, memory size and vCPU count must still match).
    pub fn load_snapshot_file_renamed(&mut self, path: impl AsRef<Path>) -> Result<SnapshotInfo> {
        self.load_snapshot_file_inner(path.as_ref(), false)
    }

    fn load_snapshot_file_inner(&mut self, path: &Path, check_name: bool) -> Result<SnapshotInfo> {
        snapshots_supported(self, "loading a snapshot file")?;
        let f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let meta = read_header(&mut r, path)?;
        if let Some(why) = meta.mismatch(self, check_name)? {
            return Err(Error::State(format!(
                "refusing to load {}: {why}",
                path.display()
            )));
        }
        let err = |e| io(format!("reading {}", path.display()))(e);
        let mut ctx = vec![0u8; meta.hvm_context_len as usize];
        r.read_exact(&mut ctx).map_err(err)?;
        let frames = meta.frames as usize;
        let mut raw = vec![0u8; frames * 8];
        r.read_exact(&mut raw).map_err(err)?;
        let gfns: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect();
        // The snapshot is dropped first: its log-dirty tracking would see
        // nothing of these foreign writes anyway.
        self.snapshot.clear();
        let mut page = vec![0u8; PAGE_SIZE * LOAD_CHUNK];
        for chunk in gfns.chunks(LOAD_CHUNK) {
            let bytes = &mut page[..chunk.len() * PAGE_SIZE];
            r.read_exact(bytes).map_err(err)?;
            let mut map = self
                .xen
                .fmem
                .map_sparse(self.domid, Prot::ReadWrite, chunk)?;
            if let Some(i) = (0..chunk.len()).find(|&i| !map.page_valid(i)) {
                return Err(Error::State(format!(
                    "refusing to go on loading {}: frame {:#x} of the snapshot is not in domain {} (memory loaded so far is changed)",
                    path.display(),
                    chunk[i],
                    self.domid
                )));
            }
            map.write(0, bytes)?;
        }
        // Our breakpoints live in memory: plant them again.
        let opcode = self.bps.opcode();
        if let Some(op) = opcode {
            let planted: Vec<u64> = self.bps.planted().map(|(_, b)| b.pa).collect();
            for pa in planted {
                self.mem.write_phys(pa, &[op])?;
            }
        }
        self.regs_backend.forget();
        self.xen
            .xc
            .set_hvm_context(self.domid, &HvmContext::from_bytes(ctx))?;
        self.stops.all_regs_written();
        self.mem.invalidate();
        tracing::debug!(
            domid = self.domid,
            frames,
            "snapshot loaded from {}",
            path.display()
        );
        self.take_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_other_files() {
        let meta = SnapshotFileMeta {
            name: "known-pvh".into(),
            kind: "PVH".into(),
            max_memkb: 32768,
            max_vcpu_id: 0,
            nr_pages: 8192,
            frames: 8200,
            hvm_context_len: 1234,
        };
        let json = serde_json::to_vec(&meta).expect("json");
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        buf.extend_from_slice(&json);
        let back = read_header(&mut &buf[..], Path::new("x")).expect("header");
        assert_eq!(back, meta);
        let mut bad = buf.clone();
        bad[0] = b'Y';
        let e = read_header(&mut &bad[..], Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("not a xenprobe snapshot"), "{e}");
        let e = read_header(&mut &buf[..10], Path::new("x")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        for damaged in [
            SnapshotFileMeta {
                frames: u64::MAX / 4,
                ..meta.clone()
            },
            SnapshotFileMeta {
                hvm_context_len: u64::MAX,
                ..meta.clone()
            },
        ] {
            let json = serde_json::to_vec(&damaged).expect("json");
            let mut buf = MAGIC.to_vec();
            buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
            buf.extend_from_slice(&json);
            let e = read_header(&mut &buf[..], Path::new("x")).unwrap_err();
            assert!(e.to_string().contains("damaged snapshot header"), "{e}");
        }
    }
}
