//! The node's store: opening, group handles, reads.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::backend::{Backend, BackendBatch, Scan, TreeId};
use crate::error::{Result, StoreError};
use crate::group::{self, ApplyState, GroupStorage, SharedGroup};
use crate::keys;
use crate::kv::{decode_record, KvRecord, Limits};
use crate::mem_backend::MemBackend;
use crate::raft_log::{RaftLog, RaftLogBatch, RaftLogConfig};
use crate::sessions::SessionTables;
use crate::sled_backend::{SledBackend, SledConfig};
use crate::snapshot::DiscardedSnapshot;
use crate::state_layer::{FlushStats, Layered};

/// Version of the on-disk layout (key layout, record encodings, where the Raft log lives, and
/// the node's mapping of keys to partitions, which decides where each key is stored). Stored
/// in the `meta` tree. Version 4: a key's hash tag (`{...}`) decides its partition. Version 5:
/// client sessions in buckets ([`crate::sessions`]); a version 4 store is opened and upgraded
/// in place (its per-client session records are read as they are and rewritten into buckets
/// as partitions are written).
pub const FORMAT_VERSION: u32 = 5;
/// The oldest version this build opens (and upgrades).
const OLDEST_FORMAT_VERSION: u32 = 4;
const FORMAT_KEY: &[u8] = b"format";

/// Records durably that the store is in this build's format.
fn write_format<B: Backend>(backend: &B) -> Result<()> {
    let mut b = BackendBatch::default();
    b.put(
        TreeId::Meta,
        FORMAT_KEY.to_vec(),
        FORMAT_VERSION.to_be_bytes().to_vec(),
    );
    backend.write(&b)?;
    backend.sync()
}

/// Settings of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Key and value size limits (cluster-wide settings).
    pub limits: Limits,
    /// Bytes of recent log entries kept in memory per group.
    pub entry_cache_bytes: usize,
    /// Target size of a snapshot chunk's records.
    pub snapshot_chunk_bytes: usize,
    /// Largest encoded chunk accepted from a peer.
    pub max_chunk_message: usize,
    /// sled tuning (ignored by the memory backend).
    pub sled: SledConfig,
    /// Revisions of event history kept per partition for watches (at least 1): a watch may
    /// resume from up to about this many revisions back. Each change costs one more record.
    pub history_revisions: u64,
    /// The partitions' writes wait in memory at most this long before they are written to
    /// sled and synced (see [`crate::state_layer`]); a restart replays the Raft log from the
    /// last flush, so this bounds the replay, not what survives.
    pub state_flush_ms: u64,
    /// ... or until this many bytes wait.
    pub state_flush_bytes: usize,
    /// Whether a due flush runs on a thread of its own while the caller goes on (the node),
    /// or in the caller's thread (the simulator and the tests, which need one thread and a
    /// deterministic order). A background flush's outcome is reported by the next
    /// [`Store::flush_state_if_due`]; no other flush starts while it runs.
    pub state_flush_in_background: bool,
    /// The Raft log's segment size.
    pub raft_log: RaftLogConfig,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            limits: Limits::default(),
            entry_cache_bytes: 1024 * 1024,
            snapshot_chunk_bytes: 1024 * 1024,
            max_chunk_message: 16 * 1024 * 1024,
            sled: SledConfig::default(),
            history_revisions: 10_000,
            state_flush_ms: 100,
            state_flush_bytes: 8 * 1024 * 1024,
            state_flush_in_background: false,
            raft_log: RaftLogConfig::default(),
        }
    }
}

/// Called with the duration of every sync a commit makes (metrics hook).
pub type SyncObserver = std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Called with `(group, applied index)` after every apply and snapshot install is written, so
/// that readers of the history (watches) wake up instead of polling.
pub type ApplyObserver = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

pub(crate) struct Inner<B> {
    /// The engine, with the partitions' recent writes in memory in front of it.
    pub backend: Layered<B>,
    /// Every partition's client sessions (the state layer's companion).
    pub sessions: Arc<SessionTables>,
    /// Every group's Raft log, hard state and configuration.
    pub raft_log: Mutex<RaftLog>,
    /// When the state layer was last flushed (the caller's clock, milliseconds).
    pub last_flush_ms: Mutex<Option<u64>>,
    /// The flush running on its own thread, if one is (see
    /// [`StoreConfig::state_flush_in_background`]).
    pub flusher: Mutex<Option<std::thread::JoinHandle<Result<FlushStats>>>>,
    pub sync_observer: std::sync::OnceLock<SyncObserver>,
    pub apply_observer: std::sync::OnceLock<ApplyObserver>,
    pub waiters: crate::apply_wait::ApplyWaiters,
    pub config: StoreConfig,
    pub groups: Mutex<HashMap<u64, SharedGroup>>,
    pub discarded: Vec<DiscardedSnapshot>,
}

/// A node's durable state: every Raft group's log and every partition's state machine, in one
/// database. A cheap `Clone` (shared handle); safe to use from several threads, though the
/// node drives each group from one place.
pub struct Store<B: Backend> {
    pub(crate) inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for Store<B> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

/// The production store.
pub type SledStore = Store<SledBackend>;
/// The simulator's store.
pub type MemStore = Store<MemBackend>;

impl Store<SledBackend> {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: &Path, config: StoreConfig) -> Result<SledStore> {
        let backend = SledBackend::open(path, &config.sled)?;
        Store::with_backend(backend, config)
    }
}

impl Store<MemBackend> {
    /// A fresh in-memory store.
    pub fn in_memory(config: StoreConfig) -> Result<MemStore> {
        Store::with_backend(MemBackend::new(), config)
    }
}

/// A page of a scan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanPage {
    /// Records in key order.
    pub records: Vec<(Vec<u8>, KvRecord)>,
    /// True when the limit stopped the scan before the end of the range.
    pub more: bool,
}

impl<B: Backend> Store<B> {
    /// Opens a store on `backend`: checks the format, then discards staged snapshots a crash
    /// left half-received and frozen outgoing snapshots (both are redone on demand).
    pub fn with_backend(backend: B, config: StoreConfig) -> Result<Store<B>> {
        let path = backend
            .path()
            .map_or_else(|| std::path::PathBuf::from("(memory)"), Path::to_path_buf);
        match backend.get(TreeId::Meta, FORMAT_KEY)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::corrupt("meta", "format", "not a u32"))?;
                if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
                    return Err(StoreError::FormatVersion {
                        path,
                        found,
                        oldest: OLDEST_FORMAT_VERSION,
                        supported: FORMAT_VERSION,
                    });
                }
                if let Some(t) = TreeId::ALL.iter().find(|t| !backend.has_tree(**t)) {
                    return Err(StoreError::MissingTree {
                        path,
                        tree: t.name(),
                    });
                }
                if found != FORMAT_VERSION {
                    write_format(&backend)?;
                    log::info!("store format {found} upgraded to {FORMAT_VERSION}");
                }
            }
            None => write_format(&backend)?,
        }
        let raft_log = RaftLog::open(backend.raft_log_fs()?, config.raft_log.clone())?;
        if let Some((file, offset, bytes)) = &raft_log.open_report().torn_tail {
            log::warn!(
                "cut a torn write at the end of the raft log: {bytes} bytes at {file} offset \
                 {offset} (never acknowledged)"
            );
        }
        let discarded = crate::snapshot_io::discard_staged(&backend)?;
        for d in &discarded {
            log::warn!(
                "discarded a partially received snapshot of group {} at index {} ({} chunks staged)",
                d.group,
                d.index,
                d.chunks_staged
            );
        }
        let sessions = Arc::new(SessionTables::default());
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Layered::with_companion(backend, sessions.clone()),
                sessions,
                raft_log: Mutex::new(raft_log),
                last_flush_ms: Mutex::new(None),
                flusher: Mutex::new(None),
                sync_observer: std::sync::OnceLock::new(),
                apply_observer: std::sync::OnceLock::new(),
                waiters: Default::default(),
                config,
                groups: Mutex::new(HashMap::new()),
                discarded,
            }),
        })
    }

    /// Registers the function told how long each commit's sync took (at most one; later
    /// calls are ignored). The store stays free of any metrics library.
    pub fn set_sync_observer(&self, observer: SyncObserver) {
        let _ = self.inner.sync_observer.set(observer);
    }

    /// Registers the function told about every apply and snapshot install (at most one;
    /// later calls are ignored).
    pub fn set_apply_observer(&self, observer: ApplyObserver) {
        let _ = self.inner.apply_observer.set(observer);
    }

    pub(crate) fn applied(&self, group: u64, index: u64) {
        self.inner.waiters.wake(group);
        if let Some(observe) = self.inner.apply_observer.get() {
            observe(group, index);
        }
    }

    /// The engine underneath (without the writes still waiting in the state layer).
    pub fn backend(&self) -> &B {
        self.inner.backend.inner()
    }

    /// Writes the partitions' waiting writes to the engine in one batch and syncs it; then
    /// the Raft log may be compacted up to what each group had applied when the flush began.
    pub fn flush_state(&self) -> Result<FlushStats> {
        // Applies write their data before they publish their applied index (under the group's
        // lock), so an index read here is covered by the flush that follows.
        let groups: Vec<SharedGroup> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let applied: Vec<u64> = groups
            .iter()
            .map(|g| group::read(g).meta.apply.index)
            .collect();
        let stats = self.inner.backend.flush()?;
        for (g, index) in groups.iter().zip(applied) {
            let mut st = group::write(g);
            st.durable_applied = st.durable_applied.max(index);
            // The engine has the open history chunks: the next events start new ones, so that
            // each event reaches the engine once.
            st.history.close();
        }
        Ok(stats)
    }

    /// Flushes the state layer (see [`Store::flush_state`]) when [`StoreConfig::state_flush_ms`]
    /// have passed since the last flush or [`StoreConfig::state_flush_bytes`] wait. `now_ms` is
    /// the caller's clock. Returns what was flushed, if a flush finished: this one, or, with
    /// [`StoreConfig::state_flush_in_background`], the one that ran on its own thread since the
    /// last call, whose failure is returned here.
    ///
    /// A flush moves a few hundred keys into sled at a busy node's rate, several milliseconds
    /// of CPU: in the background the node takes in and answers requests meanwhile. Nothing
    /// waits for it: the Raft log holds every applied entry until a flush has made its
    /// effects durable (`durable_applied`, set when the flush ends).
    pub fn flush_state_if_due(&self, now_ms: u64) -> Result<Option<FlushStats>> {
        let finished = {
            let mut flusher = self.inner.flusher.lock().unwrap_or_else(|p| p.into_inner());
            match flusher.take() {
                Some(running) if !running.is_finished() => {
                    *flusher = Some(running);
                    return Ok(None);
                }
                Some(done) => Some(join_flush(done)?),
                None => None,
            }
        };
        let due = {
            let mut last = self
                .inner
                .last_flush_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let since = *last.get_or_insert(now_ms);
            now_ms.saturating_sub(since) >= self.inner.config.state_flush_ms
                || self.inner.backend.pending_bytes() >= self.inner.config.state_flush_bytes
        };
        if !due {
            return Ok(finished);
        }
        *self
            .inner
            .last_flush_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(now_ms);
        if self.inner.config.state_flush_in_background {
            let store = self.clone();
            let started = std::thread::Builder::new()
                .name("swarmkv-flush".into())
                .spawn(move || store.flush_state());
            match started {
                Ok(handle) => {
                    *self.inner.flusher.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                    return Ok(finished);
                }
                // No thread to be had (the process is at its limit): flush here instead.
                Err(e) => log::warn!("state flush in the caller's thread: no thread: {e}"),
            }
        }
        let stats = self.flush_state()?;
        Ok(Some(finished.map_or(stats, |f| FlushStats {
            keys: f.keys + stats.keys,
            bytes: f.bytes + stats.bytes,
        })))
    }

    pub(crate) fn raft_log(&self) -> std::sync::MutexGuard<'_, RaftLog> {
        // The log's state changes only after its writes succeed, and a failed write makes it
        // refuse further writes: a poisoned lock still guards a consistent log.
        self.inner
            .raft_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `group`'s changed session buckets to the state layer (consistent with its
    /// applied index there as long as the caller keeps the group from applying meanwhile) and,
    /// with `forget`, drops the group's sessions from memory, for an install or a removal
    /// that replaces them.
    pub(crate) fn settle_sessions(&self, group: u64, forget: bool) -> Result<()> {
        let mut tables = self.inner.sessions.lock();
        let mut b = BackendBatch::default();
        for (k, v) in tables.take_changed(Some(group)) {
            match v {
                Some(v) => b.put(TreeId::Kv, k, v),
                None => b.delete(TreeId::Kv, k),
            }
        }
        if !b.is_empty() {
            // Only `kv` writes: the layer keeps them, no take (which needs the tables' lock).
            self.inner.backend.write(&b)?;
        }
        if forget {
            tables.forget(group);
        }
        Ok(())
    }

    /// Bytes of partition writes waiting in the state layer.
    pub fn state_pending_bytes(&self) -> usize {
        self.inner.backend.pending_bytes()
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Partially received snapshots found and discarded when the store opened.
    pub fn discarded_snapshots(&self) -> &[DiscardedSnapshot] {
        &self.inner.discarded
    }

    pub(crate) fn shared_group(&self, group: u64) -> Result<SharedGroup> {
        let mut groups = self.inner.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = groups.get(&group) {
            return Ok(g.clone());
        }
        let state = group::load(&self.inner.backend, &self.inner.raft_log, group)?;
        let g = Arc::new(RwLock::new(state));
        groups.insert(group, g.clone());
        Ok(g)
    }

    /// The Raft storage of `group` (created empty if the store has nothing for it yet).
    pub fn group(&self, group: u64) -> Result<GroupStorage<B>> {
        Ok(GroupStorage {
            group,
            state: self.shared_group(group)?,
            store: self.clone(),
        })
    }

    /// Every group the store holds Raft or state-machine data for, in id order.
    pub fn groups(&self) -> Result<Vec<u64>> {
        let mut out: BTreeSet<u64> = self.raft_log().groups().into_iter().collect();
        {
            let tree = TreeId::Kv;
            let mut from: Option<u64> = Some(0);
            while let Some(start) = from {
                let start_key = start.to_be_bytes();
                let mut found = None;
                self.inner.backend.scan(
                    tree,
                    Bound::Included(&start_key),
                    Bound::Unbounded,
                    false,
                    &mut |k, _| {
                        found = keys::group_of(k);
                        Ok(Scan::Stop)
                    },
                )?;
                from = found.and_then(|g| {
                    out.insert(g);
                    g.checked_add(1)
                });
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The state machine's position for `group`.
    pub fn apply_state(&self, group: u64) -> Result<ApplyState> {
        Ok(group::read(&self.shared_group(group)?).meta.apply.clone())
    }

    /// Reads one key of a partition from local state (a serializable read).
    pub fn get(&self, group: u64, key: &[u8]) -> Result<Option<KvRecord>> {
        match self
            .inner
            .backend
            .get(TreeId::Kv, &keys::data_key(group, key))?
        {
            Some(v) => Ok(Some(decode_record(group, key, &v)?)),
            None => Ok(None),
        }
    }

    /// Ordered scan of the keys in `[start, end)` of a partition (`end = None`: to the end),
    /// at most `limit` records (0: no limit).
    pub fn scan(
        &self,
        group: u64,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage> {
        let lo = keys::data_key(group, start);
        let hi = match end {
            Some(e) => keys::data_key(group, e),
            None => keys::group_tag(group, keys::TAG_DATA + 1),
        };
        let mut page = ScanPage::default();
        self.inner.backend.scan(
            TreeId::Kv,
            Bound::Included(&lo),
            Bound::Excluded(&hi),
            false,
            &mut |k, v| {
                if limit != 0 && page.records.len() == limit {
                    page.more = true;
                    return Ok(Scan::Stop);
                }
                let user_key = &k[9..];
                page.records
                    .push((user_key.to_vec(), decode_record(group, user_key, v)?));
                Ok(Scan::Continue)
            },
        )?;
        Ok(page)
    }

    /// Ordered scan of the keys starting with `prefix`, at most `limit` (0: no limit).
    pub fn scan_prefix(&self, group: u64, prefix: &[u8], limit: usize) -> Result<ScanPage> {
        let end = keys::prefix_end(prefix);
        self.scan(group, prefix, end.as_deref(), limit)
    }

    /// Removes everything the store holds for `group` (its replica moved elsewhere), durably.
    pub fn destroy_group(&self, group: u64) -> Result<()> {
        let shared = self.shared_group(group)?;
        let mut st = group::write(&shared);
        let mut batch = BackendBatch::default();
        for tree in [TreeId::Kv, TreeId::SnapOut, TreeId::SnapIn] {
            let lo = group.to_be_bytes();
            let hi = group.checked_add(1).map(u64::to_be_bytes);
            let mut doomed = Vec::new();
            self.inner.backend.scan(
                tree,
                Bound::Included(&lo),
                hi.as_ref()
                    .map_or(Bound::Unbounded, |h| Bound::Excluded(&h[..])),
                false,
                &mut |k, _| {
                    doomed.push(k.to_vec());
                    Ok(Scan::Continue)
                },
            )?;
            for k in doomed {
                batch.delete(tree, k);
            }
        }
        self.settle_sessions(group, true)?;
        self.inner.backend.write(&batch)?;
        self.inner.backend.sync()?;
        let mut forget = RaftLogBatch::default();
        forget.remove_group(group);
        self.raft_log().write(&forget, true)?;
        *st = group::GroupState::default();
        drop(st);
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        self.inner.waiters.wake(group);
        Ok(())
    }
}

/// Node-level settings the layers above keep next to their data (cluster layout, peer table):
/// small records in the `meta` tree, under names that do not clash with the store's own.
impl<B: Backend> Store<B> {
    /// Reads a node-level record.
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.backend.get(TreeId::Meta, &meta_key(name))
    }

    /// Writes a node-level record durably.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut b = BackendBatch::default();
        b.put(TreeId::Meta, meta_key(name), value.to_vec());
        self.inner.backend.write(&b)?;
        self.inner.backend.sync()
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"app/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// The outcome of a background flush that has ended.
fn join_flush(done: std::thread::JoinHandle<Result<FlushStats>>) -> Result<FlushStats> {
    done.join().unwrap_or_else(|_| {
        Err(StoreError::Io {
            during: "the state flush",
            source: std::io::Error::other("its thread panicked"),
        })
    })
}
