//! The ordered, atomic key-value engine underneath the store, as a trait.
//!
//! The partition state machines, snapshots and node records are written once against
//! [`Backend`]; [`crate::SledBackend`] makes them durable on disk and [`crate::MemBackend`]
//! keeps them in memory for the simulator and fast tests, where it can also model a crash that
//! loses what was not synced. The Raft logs live beside the engine, in a
//! [`crate::RaftLog`] on the files the backend names ([`Backend::raft_log_fs`]).

use std::ops::Bound;

use crate::error::Result;

/// The trees of a node's database, one per purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TreeId {
    /// Store-wide metadata (format version).
    Meta,
    /// Partition state machines: user data and apply states.
    Kv,
    /// Frozen copies of partitions, chunked, served to peers that need a snapshot.
    SnapOut,
    /// Snapshot chunks received from a peer, staged until the snapshot is complete.
    SnapIn,
}

impl TreeId {
    /// Every tree, in a fixed order.
    pub const ALL: [TreeId; 4] = [TreeId::Meta, TreeId::Kv, TreeId::SnapOut, TreeId::SnapIn];

    /// The tree's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            TreeId::Meta => "meta",
            TreeId::Kv => "kv",
            TreeId::SnapOut => "snap_out",
            TreeId::SnapIn => "snap_in",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// An ordered list of writes that a backend applies all or nothing.
#[derive(Debug, Default, Clone)]
pub struct BackendBatch {
    pub(crate) writes: Vec<(TreeId, Vec<u8>, Option<Vec<u8>>)>,
}

impl BackendBatch {
    /// Sets `key` to `value` in `tree`.
    pub fn put(&mut self, tree: TreeId, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((tree, key, Some(value)));
    }

    /// Removes `key` from `tree`.
    pub fn delete(&mut self, tree: TreeId, key: Vec<u8>) {
        self.writes.push((tree, key, None));
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Approximate payload size in bytes, for statistics.
    pub fn bytes(&self) -> usize {
        self.writes
            .iter()
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

/// A scan's callback: sees each key and value, says whether to go on.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Scan> + 'a;

/// Whether a scan should go on after the current record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Visit the next record.
    Continue,
    /// Stop the scan.
    Stop,
}

/// The engine contract the store relies on.
///
/// `write` is atomic: after a crash either all of a batch is visible or none of it. Writes are
/// ordered: if a batch survives a crash, every batch written before it survives too. `sync`
/// makes every batch written before it durable against power loss before returning; a write
/// that was not followed by a successful `sync` may be lost by a crash.
pub trait Backend: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits the records with keys in `[start, end)` in key order (reverse order when
    /// `reverse`), until `visit` says stop or returns an error. `visit` must not call back into
    /// the backend.
    fn scan(
        &self,
        tree: TreeId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<()>;

    /// Applies a batch atomically (not necessarily durably).
    fn write(&self, batch: &BackendBatch) -> Result<()>;

    /// Makes all previous writes durable.
    fn sync(&self) -> Result<()>;

    /// True if the tree exists in an engine opened from existing files; engines without the
    /// notion answer true.
    fn has_tree(&self, tree: TreeId) -> bool;

    /// The files of the node's Raft log: a directory beside the engine's files on disk, the
    /// same memory files again for a memory backend (so a reopened store finds its log).
    fn raft_log_fs(&self) -> Result<Box<dyn crate::raft_log::LogFs>>;

    /// Where the data lives, for error messages; `None` for memory.
    fn path(&self) -> Option<&std::path::Path> {
        None
    }
}

/// True when `[start, end)` contains no key, including the inverted ranges that
/// `BTreeMap::range` would panic on.
pub(crate) fn range_is_empty(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    use Bound::*;
    match (start, end) {
        (Included(s), Included(e)) => s > e,
        (Included(s), Excluded(e)) | (Excluded(s), Included(e)) | (Excluded(s), Excluded(e)) => {
            s >= e
        }
        _ => false,
    }
}

/// The keys of `tree` in `[lo, hi)`, in order.
pub(crate) fn keys_in<B: Backend + ?Sized>(
    backend: &B,
    tree: TreeId,
    lo: &[u8],
    hi: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    backend.scan(
        tree,
        Bound::Included(lo),
        Bound::Excluded(hi),
        false,
        &mut |k, _| {
            keys.push(k.to_vec());
            Ok(Scan::Continue)
        },
    )?;
    Ok(keys)
}

/// The records of `tree` in `[lo, hi)`, in key order.
pub(crate) fn records_in<B: Backend + ?Sized>(
    backend: &B,
    tree: TreeId,
    lo: &[u8],
    hi: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut records = Vec::new();
    backend.scan(
        tree,
        Bound::Included(lo),
        Bound::Excluded(hi),
        false,
        &mut |k, v| {
            records.push((k.to_vec(), v.to_vec()));
            Ok(Scan::Continue)
        },
    )?;
    Ok(records)
}
