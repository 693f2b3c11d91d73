//! One Raft group's persistent state, cached, and its `raft::Storage` implementation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, TreeId};
use crate::error::{Result, StoreError};
use crate::history::HistoryTail;
use crate::keys;
use crate::raft_log::{RaftLog, RaftLogBatch};
use crate::store::Store;

/// Where the state machine of a partition stands: persisted atomically with the data it
/// describes, so a restart neither re-applies nor skips an entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyState {
    /// Index of the last applied entry.
    pub index: u64,
    /// Term of the last applied entry.
    pub term: u64,
    /// Configuration in force at `index` (what a snapshot taken now must carry).
    pub conf_state: ConfState,
}

#[derive(Serialize, Deserialize)]
struct ApplyStateRecord {
    index: u64,
    term: u64,
    conf_state: Vec<u8>,
}

impl ApplyState {
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let conf_state = self
            .conf_state
            .write_to_bytes()
            .map_err(|e| StoreError::corrupt("kv", "apply state", e))?;
        let rec = ApplyStateRecord {
            index: self.index,
            term: self.term,
            conf_state,
        };
        Ok(postcard::to_stdvec(&rec).unwrap_or_default())
    }

    pub(crate) fn decode(group: u64, bytes: &[u8]) -> Result<ApplyState> {
        let loc = || format!("group {group} apply state");
        let rec: ApplyStateRecord =
            postcard::from_bytes(bytes).map_err(|e| StoreError::corrupt("kv", loc(), e))?;
        let conf_state = ConfState::parse_from_bytes(&rec.conf_state)
            .map_err(|e| StoreError::corrupt("kv", loc(), e))?;
        Ok(ApplyState {
            index: rec.index,
            term: rec.term,
            conf_state,
        })
    }
}

/// The metadata raft-rs asks for on every call, kept in memory so that answering never
/// touches the disk.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogMeta {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Index and term of the last entry removed by compaction or replaced by a snapshot.
    pub truncated_index: u64,
    pub truncated_term: u64,
    pub last_index: u64,
    pub last_term: u64,
    pub apply: ApplyState,
}

impl LogMeta {
    pub fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    /// The log restarts after a snapshot at `index`/`term` with configuration `conf_state`:
    /// nothing before it remains, and everything up to it counts as committed.
    pub fn restart_at(&mut self, index: u64, term: u64, conf_state: &ConfState) {
        self.truncated_index = index;
        self.truncated_term = term;
        self.last_index = index;
        self.last_term = term;
        self.hard_state.term = self.hard_state.term.max(term);
        self.hard_state.commit = index;
        self.conf_state = conf_state.clone();
    }
}

/// Cached state of one group. `cache` holds the most recent entries (contiguous, ending at
/// `meta.last_index`), which is what followers are sent right after an append.
#[derive(Debug, Default)]
pub(crate) struct GroupState {
    pub meta: LogMeta,
    /// The applied index the engine holds durably (the state layer's last flush): the log is
    /// never compacted past it, so a restart can replay what the layer lost.
    pub durable_applied: u64,
    pub cache: VecDeque<Entry>,
    pub cache_bytes: usize,
    /// Where the next apply's history events go.
    pub history: HistoryTail,
}

impl GroupState {
    fn cached(&self, index: u64) -> Option<&Entry> {
        let front = self.cache.front()?.index;
        if index < front {
            return None;
        }
        self.cache.get((index - front) as usize)
    }

    /// Drops cached entries at or after `index`.
    pub fn cache_truncate_from(&mut self, index: u64) {
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.compute_size() as usize;
            }
        }
    }

    /// Drops cached entries before `index`.
    pub fn cache_drop_before(&mut self, index: u64) {
        while self.cache.front().is_some_and(|e| e.index < index) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.compute_size() as usize;
            }
        }
    }

    /// Appends to the cache, evicting the oldest entries past `budget` bytes.
    pub fn cache_push(&mut self, entries: &[Entry], budget: usize) {
        for e in entries {
            self.cache_bytes += e.compute_size() as usize;
            self.cache.push_back(e.clone());
        }
        while self.cache_bytes > budget {
            match self.cache.pop_front() {
                Some(e) => self.cache_bytes -= e.compute_size() as usize,
                None => break,
            }
        }
    }

    pub fn cache_clear(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }
}

pub(crate) type SharedGroup = Arc<RwLock<GroupState>>;

pub(crate) fn read(g: &SharedGroup) -> RwLockReadGuard<'_, GroupState> {
    // The state is only mutated after a successful write, by code that does not panic midway;
    // a poisoned lock therefore still holds consistent data.
    g.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write(g: &SharedGroup) -> RwLockWriteGuard<'_, GroupState> {
    g.write().unwrap_or_else(|p| p.into_inner())
}

/// Whether raft-rs can restore configuration `cs`: it replays the outgoing voters, then (in a
/// joint configuration) enters the joint state with the incoming voters, learners and next
/// learners, and insists that the result equals `cs` (as sets). So a node has one role per half, next learners exist only in a joint configuration and are outgoing
/// voters, and learners are not outgoing voters (those would be next learners).
pub fn check_conf_state(cs: &ConfState) -> std::result::Result<(), String> {
    use std::collections::BTreeSet;
    // raft-rs compares the lists as sets: a repeated id is harmless.
    let set = |ids: &[u64]| -> BTreeSet<u64> { ids.iter().copied().collect() };
    let voters = set(cs.get_voters());
    let learners = set(cs.get_learners());
    let outgoing = set(cs.get_voters_outgoing());
    let next = set(cs.get_learners_next());
    // 0 is raft-rs's "no node": a configuration naming it cannot be restored.
    if [&voters, &learners, &outgoing, &next]
        .iter()
        .any(|ids| ids.contains(&0))
    {
        return Err("node id 0 (no node) in the configuration".into());
    }
    if let Some(id) = voters.intersection(&learners).next() {
        return Err(format!("{id} is both a voter and a learner"));
    }
    if let Some(id) = voters.intersection(&next).next() {
        return Err(format!("{id} is both a voter and a next learner"));
    }
    if let Some(id) = learners.intersection(&next).next() {
        return Err(format!("{id} is both a learner and a next learner"));
    }
    if outgoing.is_empty() {
        if !next.is_empty() {
            return Err("next learners outside a joint configuration".into());
        }
        if cs.get_auto_leave() {
            return Err("auto-leave outside a joint configuration".into());
        }
        if voters.is_empty() && !learners.is_empty() {
            return Err("learners without voters".into());
        }
    } else {
        if voters.is_empty() {
            return Err("a joint configuration without incoming voters".into());
        }
        if let Some(id) = learners.intersection(&outgoing).next() {
            return Err(format!("{id} is both an outgoing voter and a learner"));
        }
        if let Some(id) = next.difference(&outgoing).next() {
            return Err(format!("next learner {id} is not an outgoing voter"));
        }
    }
    Ok(())
}

/// Loads a group's state: its log's from the Raft log, its applied state from the engine.
///
/// A snapshot install reaches the engine (synced) before the log records it, so a crash in
/// between leaves an applied index that the log does not hold at its term: the install
/// happened, and the log restarts after it, as the lost record would have made it.
pub(crate) fn load<B: Backend>(
    backend: &B,
    raft_log: &Mutex<RaftLog>,
    group: u64,
) -> Result<GroupState> {
    let mut log = raft_log.lock().unwrap_or_else(|p| p.into_inner());
    let stored = log.group(group).unwrap_or_default();
    let mut meta = LogMeta {
        hard_state: stored.hard_state,
        conf_state: stored.conf_state,
        truncated_index: stored.truncated_index,
        truncated_term: stored.truncated_term,
        last_index: stored.last_index,
        last_term: stored.last_term,
        apply: ApplyState::default(),
    };
    if let Some(b) = backend.get(TreeId::Kv, &keys::group_tag(group, keys::TAG_APPLY_STATE))? {
        meta.apply = ApplyState::decode(group, &b)?;
    }
    let apply = &meta.apply;
    let lost_install = apply.index > meta.last_index
        || (apply.index >= meta.truncated_index
            && apply.index > 0
            && log.term(group, apply.index)? != apply.term);
    if lost_install {
        let apply = apply.clone();
        meta.restart_at(apply.index, apply.term, &apply.conf_state);
        let mut redo = RaftLogBatch::default();
        redo.reset(group, apply.index, apply.term);
        redo.set_hard_state(group, &meta.hard_state);
        redo.set_conf_state(group, &meta.conf_state);
        log.write(&redo, true)?;
        log::warn!(
            "group {group}: the raft log lacked the snapshot installed at {} (a crash between \
             the install and its log record): the log restarts there",
            meta.apply.index
        );
    }
    drop(log);
    if meta.last_index == u64::MAX {
        return Err(StoreError::corrupt(
            "raft",
            format!("group {group} entry {}", meta.last_index),
            "an entry at the largest index leaves the log no room",
        ));
    }
    // Commit-only hard states are not written (`LogBatch::set_commit`): what this replica
    // applied was committed, so the commit index is at least that, if the log holds it.
    if meta.apply.index > meta.hard_state.commit && meta.apply.index <= meta.last_index {
        meta.hard_state.commit = meta.apply.index;
    }
    // raft-rs aborts the process on a commit index outside the log it is given (found by the
    // stored_records fuzz target): report the record instead.
    let commit = meta.hard_state.commit;
    if commit < meta.truncated_index || commit > meta.last_index {
        return Err(StoreError::corrupt(
            "raft",
            format!("group {group} hard state"),
            format!(
                "commit index {commit} is outside the log [{}, {}]",
                meta.truncated_index, meta.last_index
            ),
        ));
    }
    // raft-rs rebuilds the configuration from the stored one by a sequence of changes and
    // aborts the process if the result differs from what it was given (also found by the
    // fuzz target): report a configuration that cannot be rebuilt instead.
    check_conf_state(&meta.conf_state)
        .map_err(|e| StoreError::corrupt("raft", format!("group {group} conf state"), e))?;
    check_conf_state(&meta.apply.conf_state)
        .map_err(|e| StoreError::corrupt("kv", format!("group {group} apply state"), e))?;
    if meta.apply.index < meta.truncated_index {
        return Err(StoreError::corrupt(
            "kv",
            format!("group {group} apply state"),
            format!(
                "applied index {} is behind the compacted log (truncated at {})",
                meta.apply.index, meta.truncated_index
            ),
        ));
    }
    Ok(GroupState {
        durable_applied: meta.apply.index,
        meta,
        cache: VecDeque::new(),
        cache_bytes: 0,
        history: HistoryTail::default(),
    })
}

/// One group's Raft log as raft-rs sees it: a cheap handle onto the store's shared cache.
///
/// Reads of first/last index, last term, hard and conf state come from memory; entries come
/// from the in-memory tail cache when they are recent, else from disk.
pub struct GroupStorage<B: Backend> {
    pub(crate) group: u64,
    pub(crate) state: SharedGroup,
    pub(crate) store: Store<B>,
}

impl<B: Backend> Clone for GroupStorage<B> {
    fn clone(&self) -> Self {
        GroupStorage {
            group: self.group,
            state: self.state.clone(),
            store: self.store.clone(),
        }
    }
}

impl<B: Backend> GroupStorage<B> {
    /// The group (partition) id.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The state machine's position.
    pub fn apply_state(&self) -> ApplyState {
        read(&self.state).meta.apply.clone()
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        read(&self.state).meta.hard_state.clone()
    }

    fn entries_inner(&self, lo: u64, hi: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        let st = read(&self.state);
        let m = &st.meta;
        if lo <= m.truncated_index {
            return Err(StoreError::Compacted {
                group: self.group,
                index: lo,
                first: m.first_index(),
            });
        }
        if hi > m.last_index + 1 {
            return Err(StoreError::Unavailable {
                group: self.group,
                index: hi - 1,
                last: m.last_index,
            });
        }
        if lo >= hi {
            return Ok(Vec::new());
        }
        if st.cached(lo).is_some() {
            let mut out = Vec::new();
            let mut size = 0u64;
            for i in lo..hi {
                let Some(e) = st.cached(i) else { break };
                size += u64::from(e.compute_size());
                if max_size.is_some_and(|max| !out.is_empty() && size > max) {
                    break;
                }
                out.push(e.clone());
            }
            return Ok(out);
        }
        drop(st);
        self.store.raft_log().entries(self.group, lo, hi, max_size)
    }

    fn term_inner(&self, idx: u64) -> Result<u64> {
        let st = read(&self.state);
        let m = &st.meta;
        if idx == m.truncated_index {
            return Ok(m.truncated_term);
        }
        if idx < m.truncated_index {
            return Err(StoreError::Compacted {
                group: self.group,
                index: idx,
                first: m.first_index(),
            });
        }
        if idx > m.last_index {
            return Err(StoreError::Unavailable {
                group: self.group,
                index: idx,
                last: m.last_index,
            });
        }
        if idx == m.last_index {
            return Ok(m.last_term);
        }
        if let Some(e) = st.cached(idx) {
            return Ok(e.term);
        }
        drop(st);
        self.store.raft_log().term(self.group, idx)
    }
}

impl<B: Backend> raft::Storage for GroupStorage<B> {
    /// raft-rs applies configuration changes when the application applies their entries, and
    /// on restart replays only entries after the applied index: so the configuration to start
    /// from is the one recorded with the applied index (the apply state), when there is one.
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = read(&self.state);
        let apply_cs = &st.meta.apply.conf_state;
        let conf_state = if apply_cs.voters.is_empty() && apply_cs.learners.is_empty() {
            st.meta.conf_state.clone()
        } else {
            apply_cs.clone()
        };
        Ok(RaftState::new(st.meta.hard_state.clone(), conf_state))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max = max_size.into().filter(|m| *m != u64::MAX);
        Ok(self.entries_inner(low, high, max)?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.term_inner(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(read(&self.state).meta.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(read(&self.state).meta.last_index)
    }

    /// Freezes the partition at its applied index (or reuses the frozen copy taken at that
    /// index) and returns a snapshot whose data is the chunk descriptor.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if read(&self.state).meta.apply.index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let (desc, conf_state) = self.store.create_snapshot(self.group)?;
        let mut snap = Snapshot {
            data: desc.encode().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = desc.index;
        meta.term = desc.term;
        meta.set_conf_state(conf_state);
        Ok(snap)
    }
}
