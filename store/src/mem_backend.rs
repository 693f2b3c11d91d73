//! An in-memory [`Backend`] that can simulate crashes.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{range_is_empty, Backend, BackendBatch, Scan, TreeId, Visitor};
use crate::error::Result;
use crate::raft_log::{LogFs, MemFs};

type Trees = Vec<BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Default)]
struct MemState {
    /// What readers see: durable state plus every unsynced batch.
    live: Trees,
    /// What survives a crash for sure.
    durable: Trees,
    /// Batches written since the last sync, oldest first.
    pending: Vec<BackendBatch>,
    syncs: u64,
}

/// Memory storage with explicit durability, for the deterministic simulator and fast tests.
///
/// It is a cheap `Clone` (shared state): keep a clone, drop the [`crate::Store`], call
/// [`MemBackend::crash`], and open a new store on it to model a node that was killed and
/// restarted.
#[derive(Clone, Default)]
pub struct MemBackend {
    state: Arc<Mutex<MemState>>,
    /// The Raft log's files, which crash with the engine.
    log: MemFs,
}

/// Bytes of the Raft log's unsynced tail a crash keeps per unsynced engine batch it keeps:
/// enough to leave a torn record behind.
const LOG_BYTES_KEPT_PER_BATCH: usize = 61;

fn empty_trees() -> Trees {
    vec![BTreeMap::new(); TreeId::ALL.len()]
}

fn apply(trees: &mut Trees, batch: &BackendBatch) {
    for (tree, k, v) in &batch.writes {
        let t = &mut trees[tree.index()];
        match v {
            Some(v) => {
                t.insert(k.clone(), v.clone());
            }
            None => {
                t.remove(k);
            }
        }
    }
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> MemBackend {
        let state = MemState {
            live: empty_trees(),
            durable: empty_trees(),
            pending: Vec::new(),
            syncs: 0,
        };
        MemBackend {
            state: Arc::new(Mutex::new(state)),
            log: MemFs::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // A panic while holding this lock can only come from a bug in this file (no user code
        // runs under it except a scan visitor, whose panic we let poison the state): recover
        // the data rather than cascading the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates a crash: every batch written after the last sync is lost, except the first
    /// `keep_unsynced` of them (a real disk may have written some of them already; writes are
    /// ordered, so what survives is always a prefix). The Raft log loses its unsynced tail
    /// likewise, but for a prefix of `keep_unsynced` times a few dozen bytes (a torn record).
    pub fn crash(&self, keep_unsynced: usize) {
        self.crash_keeping(keep_unsynced, keep_unsynced * LOG_BYTES_KEPT_PER_BATCH);
    }

    /// As [`MemBackend::crash`], with the Raft log keeping the first `keep_log_bytes` of its
    /// unsynced writes in write order (see [`MemBackend::unsynced_log_bytes`]): a disk may
    /// have written any prefix of them, the last one torn.
    pub fn crash_keeping(&self, keep_unsynced: usize, keep_log_bytes: usize) {
        self.log.crash(keep_log_bytes);
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        let mut trees = s.durable.clone();
        for b in pending.iter().take(keep_unsynced) {
            apply(&mut trees, b);
        }
        s.durable = trees.clone();
        s.live = trees;
    }

    /// The Raft log's files (tests damage them through [`MemFs::corrupt`]).
    pub fn raft_log_files(&self) -> MemFs {
        self.log.clone()
    }

    /// Bytes the Raft log wrote that no sync has made durable yet.
    pub fn unsynced_log_bytes(&self) -> usize {
        self.log.unsynced_bytes()
    }

    /// Number of batches written since the last sync.
    pub fn unsynced_batches(&self) -> usize {
        self.lock().pending.len()
    }

    /// Number of syncs so far, of the engine and of the Raft log (what the group-commit tests
    /// count).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs + self.log.sync_count()
    }
}

impl Backend for MemBackend {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().live[tree.index()].get(key).cloned())
    }

    fn scan(
        &self,
        tree: TreeId,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        reverse: bool,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        if range_is_empty(start, end) {
            return Ok(());
        }
        let s = self.lock();
        let range = s.live[tree.index()].range::<[u8], _>((start, end));
        if reverse {
            for (k, v) in range.rev() {
                if visit(k, v)? == Scan::Stop {
                    break;
                }
            }
        } else {
            for (k, v) in range {
                if visit(k, v)? == Scan::Stop {
                    break;
                }
            }
        }
        Ok(())
    }

    fn write(&self, batch: &BackendBatch) -> Result<()> {
        let mut s = self.lock();
        apply(&mut s.live, batch);
        s.pending.push(batch.clone());
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut s = self.lock();
        let pending = std::mem::take(&mut s.pending);
        for b in &pending {
            apply(&mut s.durable, b);
        }
        s.syncs += 1;
        Ok(())
    }

    fn has_tree(&self, _tree: TreeId) -> bool {
        true
    }

    fn raft_log_fs(&self) -> Result<Box<dyn LogFs>> {
        Ok(Box::new(self.log.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_and_a_prefix_of_unsynced() {
        let b = MemBackend::new();
        let put = |k: &str| {
            let mut batch = BackendBatch::default();
            batch.put(TreeId::Kv, k.as_bytes().to_vec(), vec![1]);
            b.write(&batch).unwrap();
        };
        put("a");
        b.sync().unwrap();
        put("b");
        put("c");
        assert_eq!(b.unsynced_batches(), 2);
        b.crash(1);
        assert!(b.get(TreeId::Kv, b"a").unwrap().is_some());
        assert!(b.get(TreeId::Kv, b"b").unwrap().is_some());
        assert!(b.get(TreeId::Kv, b"c").unwrap().is_none());
        assert_eq!(b.unsynced_batches(), 0);
    }
}
