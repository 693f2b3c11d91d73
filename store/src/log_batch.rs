//! Group commit: one write and one fsync of the Raft log for the Raft state of many groups.

use std::collections::{BTreeSet, HashMap};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use crate::apply::{Applied, ApplyBatch};
use crate::backend::{Backend, BackendBatch};
use crate::error::{Result, StoreError};
use crate::group::{self, LogMeta, SharedGroup};
use crate::history::HistoryTail;
use crate::raft_log::RaftLogBatch;
use crate::store::Store;

#[derive(Debug, Clone)]
enum LogOp {
    Append(Vec<Entry>),
    HardState(HardState),
    /// A hard state whose term and vote are the stored ones: kept in memory only.
    Commit(HardState),
    ConfState(ConfState),
    Snapshot(Snapshot),
    Compact(u64),
}

/// Raft persistence work for any number of groups, committed by [`Store::commit`] as one
/// write of the Raft log followed by one sync (no sync when only commit indexes and
/// compactions are in it). Operations apply in the order they were added; for a raft-rs `Ready` that is:
/// snapshot, entries, hard state.
#[derive(Debug, Default, Clone)]
pub struct LogBatch {
    ops: Vec<(u64, LogOp)>,
    /// Some operation must be durable before the commit returns.
    sync: bool,
}

impl LogBatch {
    /// An empty batch.
    pub fn new() -> LogBatch {
        LogBatch::default()
    }

    /// Appends entries to `group`'s log, replacing any conflicting suffix (entries at or after
    /// the first new index that are not rewritten are removed).
    pub fn append(&mut self, group: u64, entries: Vec<Entry>) {
        if !entries.is_empty() {
            self.ops.push((group, LogOp::Append(entries)));
            self.sync = true;
        }
    }

    /// Records `group`'s hard state (term, vote, commit).
    pub fn set_hard_state(&mut self, group: u64, hs: HardState) {
        self.ops.push((group, LogOp::HardState(hs)));
        self.sync = true;
    }

    /// Records `group`'s hard state when only its commit index differs from the stored one
    /// (raft-rs's `Ready::must_sync() == false`). It is not written at all: the commit index
    /// is volatile state in Raft, learned again from the leader after a restart, and loading
    /// raises a stored commit index to the stored applied index (those entries were
    /// committed), which is all raft-rs needs to restart. The next term or vote change
    /// writes the commit index of its moment with it. Skipping it saves a key per active
    /// group and turn in the log's write.
    pub fn set_commit(&mut self, group: u64, hs: HardState) {
        self.ops.push((group, LogOp::Commit(hs)));
    }

    /// Records `group`'s configuration.
    pub fn set_conf_state(&mut self, group: u64, cs: ConfState) {
        self.ops.push((group, LogOp::ConfState(cs)));
        self.sync = true;
    }

    /// Installs a snapshot: the log restarts after its index and, when its data holds a chunk
    /// descriptor, the partition's state is replaced by the staged chunks; empty data installs
    /// an empty partition (how a new group's replicas start).
    pub fn apply_snapshot(&mut self, group: u64, snapshot: Snapshot) {
        self.ops.push((group, LogOp::Snapshot(snapshot)));
        self.sync = true;
    }

    /// Removes entries before `compact_index`. Only applied entries may be compacted. Does not
    /// make the commit sync: entries that come back after a crash are applied ones, which the
    /// state machine skips.
    pub fn compact(&mut self, group: u64, compact_index: u64) {
        self.ops.push((group, LogOp::Compact(compact_index)));
    }

    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// True when committing this batch syncs.
    pub fn needs_sync(&self) -> bool {
        self.sync
    }

    /// Leaves the sync to a later one ([`Store::log_syncer`] or [`Store::sync_log`]): the
    /// commit writes without syncing, and what it wrote is durable only once that sync
    /// returned. Not for a batch that installs a snapshot (the install syncs the engine, and
    /// the log must say so before anything else happens).
    pub fn defer_sync(&mut self) {
        self.sync = false;
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Removes every operation, keeping the allocation.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.sync = false;
    }
}

/// What a commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Distinct groups in the batch.
    pub groups: usize,
    /// Entries appended.
    pub entries: usize,
    /// Approximate bytes written.
    pub bytes: usize,
    /// Syncs performed (0 for an empty batch or one that needs none, else 1).
    pub syncs: usize,
}

struct Work {
    shared: SharedGroup,
    meta: LogMeta,
}

impl<B: Backend> Store<B> {
    /// Commits `batch`: validates every operation, writes them all to the Raft log in one
    /// write, makes it durable with one sync (unless [`LogBatch::needs_sync`] is false), then
    /// updates the in-memory state raft-rs reads. A snapshot install first writes the
    /// partition to the engine and syncs it, so the log never points past what the engine
    /// holds. On error nothing was applied to the in-memory state (and, unless the error came
    /// from a write or sync itself, nothing was written).
    pub fn commit(&self, batch: &LogBatch) -> Result<CommitStats> {
        self.commit_with_applies(batch, ApplyBatch::default())
    }

    /// A sync of the Raft log's writes so far to run on another thread (the node's writer)
    /// while commits go on, with how many writes it covers; `None` when all are durable.
    /// Report its outcome through [`Store::log_synced`].
    pub fn log_syncer(&self) -> Result<Option<(u64, crate::raft_log::Syncer)>> {
        let Some((writes, sync)) = self.raft_log().syncer()? else {
            return Ok(None);
        };
        let observer = self.inner.sync_observer.get().cloned();
        let timed: crate::raft_log::Syncer = Box::new(move || {
            let started = std::time::Instant::now();
            let done = sync();
            if let Some(observe) = observer {
                observe(started.elapsed());
            }
            done
        });
        Ok(Some((writes, timed)))
    }

    /// The outcome of a [`Store::log_syncer`] sync covering `writes` writes: after an error
    /// the log refuses further writes (the node must stop, as after any failed sync).
    pub fn log_synced(&self, writes: u64, ok: bool) {
        self.raft_log()
            .synced(if ok { Ok(writes) } else { Err(()) });
    }

    /// Makes every Raft log write so far durable, in place; whether that took a sync.
    pub fn sync_log(&self) -> Result<bool> {
        let mut log = self.raft_log();
        let needed = log.has_unsynced();
        log.sync()?;
        Ok(needed)
    }

    /// As [`Store::commit`], with the gathered `applies` written to the state layer in the
    /// same turn. The applies become visible with the write, as [`Store::write_applies`]
    /// would make them; their waiters are woken after it.
    pub fn commit_with_applies(
        &self,
        batch: &LogBatch,
        mut applies: ApplyBatch,
    ) -> Result<CommitStats> {
        let installed: BTreeSet<u64> = batch
            .ops
            .iter()
            .filter(|(_, op)| matches!(op, LogOp::Snapshot(_)))
            .map(|(g, _)| *g)
            .collect();
        // An install replaces a partition and its applied state: an apply of the same group
        // goes first, on its own, so that the install reads and overwrites what it wrote.
        if applies.pending.iter().any(|a| installed.contains(&a.group)) {
            self.write_applies(std::mem::take(&mut applies))?;
        }
        if batch.is_empty() {
            self.write_applies(applies)?;
            return Ok(CommitStats::default());
        }
        let mut work: HashMap<u64, Work> = HashMap::new();
        let mut installs = BackendBatch::default();
        let mut rb = RaftLogBatch::default();
        let mut entries = 0;
        let mut compacted = false;
        for (group, op) in &batch.ops {
            let group = *group;
            let w = match work.entry(group) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let shared = self.shared_group(group)?;
                    let meta = group::read(&shared).meta.clone();
                    v.insert(Work { shared, meta })
                }
            };
            match op {
                LogOp::Append(ents) => {
                    entries += ents.len();
                    check_append(group, &mut w.meta, ents)?;
                    rb.append(group, ents);
                }
                LogOp::HardState(hs) => {
                    rb.set_hard_state(group, hs);
                    w.meta.hard_state = hs.clone();
                }
                LogOp::Commit(hs) => w.meta.hard_state = hs.clone(),
                LogOp::ConfState(cs) => {
                    rb.set_conf_state(group, cs);
                    w.meta.conf_state = cs.clone();
                }
                LogOp::Snapshot(snap) => {
                    // The install replaces the group's sessions (the next use reads them
                    // again); the ones in memory go to the layer first, so that the install
                    // sees, and deletes, every bucket.
                    self.settle_sessions(group, true)?;
                    self.prepare_snapshot(group, &mut w.meta, snap, &mut installs)?;
                    let m = &w.meta;
                    rb.reset(group, m.truncated_index, m.truncated_term);
                    rb.set_hard_state(group, &m.hard_state);
                    rb.set_conf_state(group, &m.conf_state);
                }
                LogOp::Compact(ci) => {
                    let shared = w.shared.clone();
                    if self.prepare_compact(group, &shared, &mut w.meta, *ci)? {
                        rb.compact(group, w.meta.truncated_index, w.meta.truncated_term);
                        compacted = true;
                    }
                }
            }
        }
        let mut applied: Vec<Applied> = applies.pending;
        let applied_shared: Vec<SharedGroup> = applied
            .iter()
            .map(|a| self.shared_group(a.group))
            .collect::<Result<_>>()?;
        if !installs.is_empty() {
            // Durable in the engine before the log says the log restarts after it (a crash in
            // between is repaired at load, see `group::load`).
            // An install of an empty partition writes only `kv` records, which the state
            // layer would hold: the flush moves them (and the layer) into the engine, synced.
            self.inner.backend.write(&installs)?;
            self.inner.backend.flush()?;
        }
        let mut bytes = 0;
        if !rb.is_empty() {
            let started = std::time::Instant::now();
            let mut log = self.raft_log();
            bytes = log.write(&rb, batch.sync)?.bytes as usize;
            if compacted && log.segment_count() > 1 {
                log.purge()?;
            }
            drop(log);
            if batch.sync {
                if let Some(observe) = self.inner.sync_observer.get() {
                    observe(started.elapsed());
                }
            }
        }
        {
            // As in `write_applies`: no reader sees a group's data ahead of its applied state.
            let mut locked: Vec<_> = applied_shared.iter().map(group::write).collect();
            self.write_with_sessions(&applies.writes, &mut applied)?;
            for (st, a) in locked.iter_mut().zip(&mut applied) {
                st.meta.apply = a.apply.clone();
                if let Some(tail) = a.history.take() {
                    st.history = tail;
                }
            }
        }

        // Durable: now let raft-rs see it.
        let budget = self.inner.config.entry_cache_bytes;
        for (group, op) in &batch.ops {
            let Some(w) = work.get(group) else { continue };
            let mut st = group::write(&w.shared);
            match op {
                LogOp::Append(ents) => {
                    st.cache_truncate_from(ents[0].index);
                    st.cache_push(ents, budget);
                }
                LogOp::Compact(_) => st.cache_drop_before(w.meta.first_index()),
                LogOp::Snapshot(_) => st.cache_clear(),
                LogOp::HardState(_) | LogOp::Commit(_) | LogOp::ConfState(_) => {}
            }
        }
        let applied_groups: BTreeSet<u64> = applied.iter().map(|a| a.group).collect();
        for (g, w) in &work {
            let mut st = group::write(&w.shared);
            // `w.meta` was read before the write: an apply in it is newer.
            let apply = applied_groups.contains(g).then(|| st.meta.apply.clone());
            st.meta = w.meta.clone();
            if let Some(apply) = apply {
                st.meta.apply = apply;
            }
            if installed.contains(g) {
                // An install is written through to the engine and synced, and it replaced
                // the history: the next apply opens a new chunk after the new mark.
                st.durable_applied = w.meta.apply.index;
                st.history = HistoryTail::default();
            }
        }
        for a in &applied {
            self.applied(a.group, a.apply.index);
        }
        // An install replaced partitions (and their histories): wake their watchers.
        for (group, op) in &batch.ops {
            if let (LogOp::Snapshot(_), Some(w)) = (op, work.get(group)) {
                self.applied(*group, w.meta.apply.index);
            }
        }
        Ok(CommitStats {
            groups: work.len(),
            entries,
            bytes,
            syncs: usize::from(batch.sync && !rb.is_empty()),
        })
    }

    /// Moves `meta`'s truncation point for a compaction to `ci`; false when there is nothing
    /// to compact.
    fn prepare_compact(
        &self,
        group: u64,
        shared: &SharedGroup,
        meta: &mut LogMeta,
        ci: u64,
    ) -> Result<bool> {
        if ci <= meta.first_index() {
            return Ok(false);
        }
        if ci > meta.last_index + 1 || ci - 1 > meta.apply.index {
            return Err(StoreError::BadCompact {
                group,
                index: ci,
                applied: meta.apply.index,
                last: meta.last_index,
            });
        }
        // Entries the engine does not hold applied durably stay: after a crash they are
        // replayed into the state the layer lost. A later compaction removes them.
        let ci = ci.min(group::read(shared).durable_applied + 1);
        if ci <= meta.first_index() {
            return Ok(false);
        }
        // ci - 1 is applied, hence committed, hence not rewritten by an append in this batch:
        // its term can be read from the state as it was before the batch.
        let term = if ci - 1 == meta.last_index {
            meta.last_term
        } else {
            let storage = crate::group::GroupStorage {
                group,
                state: shared.clone(),
                store: self.clone(),
            };
            raft::Storage::term(&storage, ci - 1).map_err(|e| {
                StoreError::corrupt("raft", format!("group {group} entry {}", ci - 1), e)
            })?
        };
        meta.truncated_index = ci - 1;
        meta.truncated_term = term;
        Ok(true)
    }

    /// Prepares an install into `bb` (the partition's new state) and moves `meta` to the
    /// snapshot's point.
    fn prepare_snapshot(
        &self,
        group: u64,
        meta: &mut LogMeta,
        snap: &Snapshot,
        bb: &mut BackendBatch,
    ) -> Result<()> {
        let sm = snap.get_metadata();
        if sm.index < meta.first_index() {
            return Err(StoreError::SnapshotOutOfDate {
                group,
                index: sm.index,
                first: meta.first_index(),
            });
        }
        let apply = self.prepare_install(group, snap, bb)?;
        meta.restart_at(sm.index, sm.term, sm.get_conf_state());
        meta.apply = apply;
        Ok(())
    }
}

/// Checks that `ents` continue `group`'s log (replacing a conflicting suffix) and moves
/// `meta`'s last index to them.
fn check_append(group: u64, meta: &mut LogMeta, ents: &[Entry]) -> Result<()> {
    let first = ents[0].index;
    if first <= meta.truncated_index || first > meta.last_index + 1 {
        return Err(StoreError::BadAppend {
            group,
            index: first,
            first: meta.first_index(),
            last: meta.last_index,
        });
    }
    for (i, e) in ents.iter().enumerate() {
        if e.index != first + i as u64 {
            return Err(StoreError::NonConsecutiveAppend {
                group,
                index: e.index,
            });
        }
    }
    if let Some(last) = ents.last() {
        meta.last_index = last.index;
        meta.last_term = last.term;
    }
    Ok(())
}
