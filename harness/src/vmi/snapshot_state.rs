//! A domain's snapshot state: its one snapshot, the restore settings, and
//! whether the next restore must load the whole vCPU state.
//!
//! Taking and restoring ([`super::snapshot`], [`super::snapshot_pv`]) is
//! `Domain`'s: it combines memory, registers and breakpoints.

use super::platform::SnapshotStore;
use super::snapshot::{RestoreOptions, Snapshot, SnapshotInfo};

/// The snapshot a domain keeps and how it is restored.
#[derive(Default)]
pub(crate) struct SnapshotState {
    /// Boxed: a restore takes it out and puts it back, a pointer's move
    /// rather than the snapshot's kilobytes.
    store: Option<Box<SnapshotStore>>,
    /// How restores work (kept across snapshots).
    options: RestoreOptions,
    /// The guest wrote a descriptor-table register (IDTR, GDTR, LDTR, TR)
    /// since the vCPU state was last loaded: the next restore loads it all.
    descriptors_changed: bool,
}

impl SnapshotState {
    /// The snapshot, if one was taken.
    pub(crate) fn get(&self) -> Option<&SnapshotStore> {
        self.store.as_deref()
    }

    /// The HVM/PVH snapshot, if that is what was taken.
    pub(crate) fn hvm(&self) -> Option<&Snapshot> {
        self.store.as_deref().and_then(SnapshotStore::hvm)
    }

    /// The snapshot's size and timing, if one was taken.
    pub(crate) fn info(&self) -> Option<SnapshotInfo> {
        self.store.as_deref().map(SnapshotStore::info)
    }

    /// Takes the snapshot out (for a restore, see [`SnapshotState::put`]).
    pub(crate) fn take(&mut self) -> Option<Box<SnapshotStore>> {
        self.store.take()
    }

    /// Puts a snapshot in, replacing any other.
    pub(crate) fn put(&mut self, store: Box<SnapshotStore>) {
        self.store = Some(store);
    }

    /// Forgets the snapshot.
    pub(crate) fn clear(&mut self) {
        self.store = None;
    }

    /// How restores work.
    pub(crate) fn options(&self) -> RestoreOptions {
        self.options
    }

    /// Chooses how restores work.
    pub(crate) fn set_options(&mut self, options: RestoreOptions) {
        self.options = options;
    }

    /// A descriptor-table register was written since the vCPU state was
    /// last loaded.
    pub(crate) fn descriptors_changed(&self) -> bool {
        self.descriptors_changed
    }

    /// Notes a descriptor-table access (`write`: the register changed).
    pub(crate) fn descriptors_accessed(&mut self, write: bool) {
        self.descriptors_changed |= write;
    }

    /// The whole vCPU state was loaded (or saved): descriptors match it.
    pub(crate) fn descriptors_loaded(&mut self) {
        self.descriptors_changed = false;
    }
}
