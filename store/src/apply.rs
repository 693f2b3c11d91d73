//! Applying committed entries to a partition's state machine.

use std::collections::BTreeMap;
use std::ops::Bound;

use raft::eraftpb::ConfState;

use crate::backend::{Backend, BackendBatch, Scan, TreeId};
use crate::error::{Result, StoreError};
use crate::group::{self, ApplyState};
use crate::history::{self, Event, HistoryTail};
use crate::keys;
use crate::kv::{
    decode_record, encode_record, execute, execute_once, KvOp, KvRecord, KvResult, KvView, Session,
};
use crate::sessions::{SessionChanges, SessionRecord, SessionTables};
use crate::store::Store;

/// What a committed entry asks of the state machine.
#[derive(Clone, Copy, Debug)]
pub enum ApplyOp<'a> {
    /// Nothing (an empty entry, e.g. a new leader's first): only the applied index moves.
    Noop,
    /// A key-value operation.
    Kv(&'a KvOp),
    /// A key-value operation applied at most once for its session (a retried write).
    KvOnce(&'a KvOp, Session),
    /// A configuration change took effect; this is the configuration after it.
    ConfChange(&'a ConfState),
}

/// A committed entry, in the order raft-rs hands them out.
#[derive(Clone, Copy, Debug)]
pub struct ApplyEntry<'a> {
    pub index: u64,
    pub term: u64,
    pub op: ApplyOp<'a>,
}

/// The state seen by operations of one apply call: the store plus earlier writes of the call.
struct Overlay<'a, B> {
    backend: &'a B,
    group: u64,
    writes: BTreeMap<Vec<u8>, Option<KvRecord>>,
    /// Other records of the partition (revoked leases), by full key.
    raw: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    sessions: &'a SessionTables,
    /// Session records changed by this apply, committed with its writes.
    session_changes: SessionChanges,
    /// The revision of the entry being applied.
    revision: u64,
    /// One event per key change, in the order they happened.
    events: Vec<Event>,
}

impl<B: Backend> KvView for Overlay<'_, B> {
    fn get(&mut self, key: &[u8]) -> Result<Option<KvRecord>> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        match self
            .backend
            .get(TreeId::Kv, &keys::data_key(self.group, key))?
        {
            Some(v) => Ok(Some(decode_record(self.group, key, &v)?)),
            None => Ok(None),
        }
    }

    fn keys_in(&mut self, start: &[u8], end: Option<&[u8]>) -> Result<Vec<Vec<u8>>> {
        let lo = keys::data_key(self.group, start);
        let hi = match end {
            Some(e) => keys::data_key(self.group, e),
            None => keys::group_tag(self.group, keys::TAG_DATA + 1),
        };
        let mut found = std::collections::BTreeSet::new();
        self.backend.scan(
            TreeId::Kv,
            Bound::Included(&lo),
            Bound::Excluded(&hi),
            false,
            &mut |k, _| {
                found.insert(k[9..].to_vec());
                Ok(Scan::Continue)
            },
        )?;
        let in_range = |k: &[u8]| k >= start && end.is_none_or(|e| k < e);
        for (k, v) in &self.writes {
            if in_range(k) {
                match v {
                    Some(_) => found.insert(k.clone()),
                    None => found.remove(k),
                };
            }
        }
        Ok(found.into_iter().collect())
    }

    fn set(&mut self, key: Vec<u8>, record: Option<KvRecord>) {
        // The state machine calls `set` only for real changes (a delete of an absent key
        // writes nothing), so each call is one event.
        self.events
            .push(Event::of_write(key.clone(), record.as_ref(), self.revision));
        self.writes.insert(key, record);
    }

    fn session(&mut self, client: u64) -> Result<Option<SessionRecord>> {
        if let Some(r) = self.session_changes.get(&client) {
            return Ok(r.clone());
        }
        self.sessions.lock().get(self.backend, self.group, client)
    }

    fn set_session(&mut self, client: u64, record: SessionRecord) -> Result<()> {
        let victim =
            self.sessions
                .lock()
                .victim(self.backend, self.group, client, &self.session_changes)?;
        if let Some(v) = victim {
            self.session_changes.insert(v, None);
        }
        self.session_changes.insert(client, Some(record));
        Ok(())
    }

    fn lease_revoked(&mut self, lease: u64) -> Result<bool> {
        let key = keys::revoked_lease_key(self.group, lease);
        if let Some(w) = self.raw.get(&key) {
            return Ok(w.is_some());
        }
        Ok(self.backend.get(TreeId::Kv, &key)?.is_some())
    }

    fn mark_lease_revoked(&mut self, lease: u64) {
        let key = keys::revoked_lease_key(self.group, lease);
        self.raw.insert(key, Some(Vec::new()));
    }
}

/// Applies of several groups, gathered into one atomic write.
///
/// Each write to sled costs its log two synchronous buffer writes whatever its size, so a turn
/// that applies to 30 groups with one write each spent most of its time there; gathered, the
/// turn pays once. Nothing of a gathered apply is visible (data, applied index, waiters) until
/// [`Store::write_applies`].
#[derive(Debug, Default)]
pub struct ApplyBatch {
    pub(crate) writes: BackendBatch,
    /// Each group's state after the batch, in the order they were gathered.
    pub(crate) pending: Vec<Applied>,
}

/// What one group's gathered apply leaves in memory once its writes are stored.
#[derive(Debug)]
pub(crate) struct Applied {
    pub group: u64,
    pub apply: ApplyState,
    /// The group's new history tail (`None`: unchanged).
    pub history: Option<HistoryTail>,
    /// Its session changes.
    pub sessions: SessionChanges,
}

impl ApplyBatch {
    /// True when a gathered apply of `group` is waiting to be written.
    pub fn contains(&self, group: u64) -> bool {
        self.pending.iter().any(|a| a.group == group)
    }

    /// True when nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl<B: Backend> Store<B> {
    /// Applies committed entries of `group`, which must continue exactly where the last apply
    /// stopped. The data they write and the new applied index go to the store in one atomic
    /// write (not synced: after a crash, the Raft log replays whatever was lost). Returns the
    /// result of each entry that carried a key-value operation (`None` for the others).
    pub fn apply(&self, group: u64, entries: &[ApplyEntry<'_>]) -> Result<Vec<Option<KvResult>>> {
        let mut batch = ApplyBatch::default();
        let results = self.apply_into(&mut batch, group, entries)?;
        self.write_applies(batch)?;
        Ok(results)
    }

    /// As [`Store::apply`], but the writes join `batch` for one later
    /// [`Store::write_applies`]. A group already in `batch` has it written first, so that this
    /// apply reads what the earlier one wrote.
    pub fn apply_into(
        &self,
        batch: &mut ApplyBatch,
        group: u64,
        entries: &[ApplyEntry<'_>],
    ) -> Result<Vec<Option<KvResult>>> {
        if batch.contains(group) {
            self.write_applies(std::mem::take(batch))?;
        }
        let shared = self.shared_group(group)?;
        let st = group::read(&shared);
        let mut apply = st.meta.apply.clone();
        let mut view = Overlay {
            backend: &self.inner.backend,
            group,
            writes: BTreeMap::new(),
            raw: BTreeMap::new(),
            sessions: &self.inner.sessions,
            session_changes: SessionChanges::new(),
            revision: 0,
            events: Vec::new(),
        };
        let applied_before = apply.index;
        let limits = self.inner.config.limits;
        let mut results = Vec::with_capacity(entries.len());
        for e in entries {
            if e.index != apply.index + 1 {
                return Err(StoreError::ApplyOutOfOrder {
                    group,
                    expected: apply.index + 1,
                    got: e.index,
                });
            }
            view.revision = e.index;
            let r = match e.op {
                ApplyOp::Noop => None,
                ApplyOp::Kv(op) => Some(execute(&mut view, op, e.index, &limits)?),
                ApplyOp::KvOnce(op, session) => {
                    Some(execute_once(&mut view, op, session, e.index, &limits)?)
                }
                ApplyOp::ConfChange(cs) => {
                    apply.conf_state = cs.clone();
                    None
                }
            };
            results.push(r);
            apply.index = e.index;
            apply.term = e.term;
        }
        if entries.is_empty() {
            return Ok(results);
        }
        let bb = &mut batch.writes;
        let history = history::record(
            &self.inner.backend,
            group,
            &st.history,
            &view.events,
            applied_before,
            apply.index,
            self.inner.config.history_revisions,
            bb,
        )?;
        for (k, v) in view.writes {
            let key = keys::data_key(group, &k);
            match v {
                Some(r) => bb.put(TreeId::Kv, key, encode_record(&r)),
                None => bb.delete(TreeId::Kv, key),
            }
        }
        for (k, v) in view.raw {
            match v {
                Some(v) => bb.put(TreeId::Kv, k, v),
                None => bb.delete(TreeId::Kv, k),
            }
        }
        bb.put(
            TreeId::Kv,
            keys::group_tag(group, keys::TAG_APPLY_STATE),
            apply.encode()?,
        );
        drop(st);
        batch.pending.push(Applied {
            group,
            apply,
            history,
            sessions: view.session_changes,
        });
        Ok(results)
    }

    /// Writes what `batch` gathered in one atomic write, then makes it visible: each group's
    /// applied state, and the waiters and observer of its applied index.
    pub fn write_applies(&self, mut batch: ApplyBatch) -> Result<()> {
        if batch.pending.is_empty() {
            return Ok(());
        }
        let mut shared = Vec::with_capacity(batch.pending.len());
        for a in &batch.pending {
            shared.push(self.shared_group(a.group)?);
        }
        {
            // Every group's lock is held across the write, as one apply's was: nothing reads a
            // group's data newer than the applied state it sees. A group is in a batch once,
            // and only the thread that writes it takes two locks, so no order is needed.
            let mut locked: Vec<_> = shared.iter().map(group::write).collect();
            self.write_with_sessions(&batch.writes, &mut batch.pending)?;
            for (st, a) in locked.iter_mut().zip(&mut batch.pending) {
                st.meta.apply = a.apply.clone();
                if let Some(tail) = a.history.take() {
                    st.history = tail;
                }
            }
        }
        for a in &batch.pending {
            self.applied(a.group, a.apply.index);
        }
        Ok(())
    }

    /// Writes applies' records to the state layer and commits their session changes, under
    /// the session tables' lock: a take of the layer sees both or neither (see
    /// [`crate::sessions`]).
    pub(crate) fn write_with_sessions(
        &self,
        writes: &BackendBatch,
        pending: &mut [Applied],
    ) -> Result<()> {
        // Applies write only the `kv` tree, which the layer keeps without a take (a take
        // needs the tables' lock, held here).
        debug_assert!(writes.writes.iter().all(|(t, _, _)| *t == TreeId::Kv));
        let mut tables = self.inner.sessions.lock();
        self.inner.backend.write(writes)?;
        for a in pending {
            tables.commit(a.group, std::mem::take(&mut a.sessions));
        }
        Ok(())
    }

    /// Makes every write so far durable, the state layer's included (applies are not synced
    /// on their own).
    pub fn sync(&self) -> Result<()> {
        self.flush_state().map(|_| ())
    }
}
