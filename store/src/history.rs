//! Each partition's recent event history: what watches read.
//!
//! Every apply that changes keys also records one [`Event`] per changed key, in the same atomic
//! write as the data and the applied index, under `[group][TAG_HISTORY][revision][n]` (`n`
//! numbers the events of one revision: a range delete changes many keys at once). So on every
//! replica, and at every instant a reader can see, the history holds exactly the events of the
//! revisions in `(compacted, applied]`: nothing is written without the apply, and the apply is
//! never visible without its events.
//!
//! A revision is the Raft index of the entry that made the change, and every replica applies
//! the same committed entries with the same deterministic state machine, so the events at a
//! revision are the same on every replica of the partition. That is what lets a watcher read
//! one revision range from one replica and the next range from another.
//!
//! Retention: the history keeps about [`crate::StoreConfig::history_revisions`] revisions;
//! older events are removed by the apply that moves past them (in steps, so that most applies
//! only add), and the record `[group][TAG_HISTORY]` says up to which revision events are gone
//! (the *compacted* revision). Installing a snapshot at index `s` drops the history and sets the
//! compacted revision to `s`: the snapshot carries state, not the changes that led to it.
//! The history is not part of snapshots (its tag sorts before the partition's data, which is
//! what snapshots copy).

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendBatch, Scan, TreeId};
use crate::error::{Result, StoreError};
use crate::group;
use crate::keys;
use crate::kv::KvRecord;
use crate::store::Store;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was written (created or updated).
    Put,
    /// The key was deleted (by a delete, a compare-and-swap, a range delete or its lease).
    Delete,
}

/// One change of one key, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The user key.
    pub key: Vec<u8>,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// The revision of the change: the Raft index of the entry that made it.
    pub revision: u64,
    /// For a put, the revision that created the key (since its last deletion); 0 for a delete.
    pub create_rev: u64,
    /// For a put, the number of writes since creation (1 for a create); 0 for a delete.
    pub version: u64,
    /// For a put, the lease the key is attached to (0: none); 0 for a delete.
    pub lease: u64,
}

impl Event {
    /// The event a write of `record` at `revision` makes (`None`: a deletion).
    pub(crate) fn of_write(key: Vec<u8>, record: Option<&KvRecord>, revision: u64) -> Event {
        match record {
            Some(r) => Event {
                kind: EventKind::Put,
                key,
                value: r.value.clone(),
                revision,
                create_rev: r.create_rev,
                version: r.version,
                lease: r.lease,
            },
            None => Event {
                kind: EventKind::Delete,
                key,
                value: Vec::new(),
                revision,
                create_rev: 0,
                version: 0,
                lease: 0,
            },
        }
    }

    /// Approximate size, for page limits.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len() + 40
    }
}

/// What a history read asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery<'a> {
    /// Events with a revision above this one.
    pub after: u64,
    /// Keys in `[start, end)` (`end = None`: to the end of the keyspace).
    pub start: &'a [u8],
    pub end: Option<&'a [u8]>,
    /// The page stops at the first revision boundary after this many events (0: no limit).
    pub max_events: usize,
    /// ... or after this many bytes of events (0: no limit).
    pub max_bytes: usize,
}

/// A page of a partition's history: every matching event with a revision in
/// `(after, through]`, in revision order (events of one revision in the order they were made).
/// A page never splits a revision's events.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HistoryPage {
    /// The matching events.
    pub events: Vec<Event>,
    /// The page is complete up to this revision: the reader may continue after it. When the
    /// replica has not applied past `after` yet, this is its applied index (not above `after`).
    pub through: u64,
    /// The replica's applied index when it read the page.
    pub applied: u64,
    /// The replica's compacted revision (events at or below it are gone).
    pub compacted: u64,
}

/// The answer to a history read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryRead {
    /// The events asked for.
    Page(HistoryPage),
    /// Events right after `after` are gone from this replica: its history starts after
    /// `compacted`. The reader must re-read the current state (or ask a replica that still
    /// has them).
    Compacted { compacted: u64, applied: u64 },
}

/// `[group][TAG_HISTORY]`: the compacted revision of the group's history.
pub(crate) fn compacted_key(group: u64) -> Vec<u8> {
    keys::group_tag(group, keys::TAG_HISTORY)
}

/// `[group][TAG_HISTORY][revision][n]`: the `n`th event of a revision.
pub(crate) fn event_key(group: u64, revision: u64, n: u32) -> Vec<u8> {
    let mut k = keys::group_tag_index(group, keys::TAG_HISTORY, revision);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The end of a group's history records (exclusive).
fn history_end(group: u64) -> Vec<u8> {
    keys::group_tag(group, keys::TAG_HISTORY + 1)
}

/// The stored compacted revision, if any.
pub(crate) fn read_compacted<B: Backend>(backend: &B, group: u64) -> Result<Option<u64>> {
    match backend.get(TreeId::Kv, &compacted_key(group))? {
        Some(b) => <[u8; 8]>::try_from(b.as_slice())
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| {
                StoreError::corrupt("kv", format!("group {group} history"), "bad compacted mark")
            }),
        None => Ok(None),
    }
}

fn decode_event(group: u64, bytes: &[u8]) -> Result<Event> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::corrupt("kv", format!("group {group} history event"), e))
}

/// Adds to `bb` the writes that record `events` (each with its revision) and, when the
/// history has grown past the retention, remove its oldest revisions. `applied_before` is the
/// applied index before this apply, `applied` the one after it.
pub(crate) fn record<B: Backend>(
    backend: &B,
    group: u64,
    events: &[Event],
    applied_before: u64,
    applied: u64,
    retain: u64,
    bb: &mut BackendBatch,
) -> Result<()> {
    let mut n = 0u32;
    let mut last_rev = 0;
    for e in events {
        if e.revision != last_rev {
            last_rev = e.revision;
            n = 0;
        }
        bb.put(
            TreeId::Kv,
            event_key(group, e.revision, n),
            postcard::to_stdvec(e).unwrap_or_default(),
        );
        n += 1;
    }
    // A group without a mark has recorded nothing before this apply (a store from before
    // histories existed, or a group that started empty): its history starts here.
    let stored = read_compacted(backend, group)?;
    let compacted = stored.unwrap_or(applied_before);
    let retain = retain.max(1);
    // Trim in steps of an eighth of the retention, so most applies only add.
    let slack = (retain / 8).max(1);
    let target = applied.saturating_sub(retain);
    if target >= compacted + slack {
        let lo = event_key(group, compacted.saturating_add(1), 0);
        let hi = event_key(group, target.saturating_add(1), 0);
        delete_range(backend, &lo, &hi, bb)?;
        set_compacted(group, target, bb);
    } else if stored.is_none() {
        set_compacted(group, compacted, bb);
    }
    Ok(())
}

/// Adds to `bb` the deletion of every event key in `[lo, hi)`.
fn delete_range<B: Backend>(
    backend: &B,
    lo: &[u8],
    hi: &[u8],
    bb: &mut BackendBatch,
) -> Result<()> {
    backend.scan(
        TreeId::Kv,
        Bound::Included(lo),
        Bound::Excluded(hi),
        false,
        &mut |k, _| {
            bb.delete(TreeId::Kv, k.to_vec());
            Ok(Scan::Continue)
        },
    )
}

/// Adds to `bb` the record that `group`'s history starts after revision `compacted`.
fn set_compacted(group: u64, compacted: u64, bb: &mut BackendBatch) {
    bb.put(
        TreeId::Kv,
        compacted_key(group),
        compacted.to_be_bytes().to_vec(),
    );
}

/// Adds to `bb` the writes that drop `group`'s history and start it again after `compacted`
/// (a snapshot install).
pub(crate) fn reset<B: Backend>(
    backend: &B,
    group: u64,
    compacted: u64,
    bb: &mut BackendBatch,
) -> Result<()> {
    delete_range(backend, &event_key(group, 0, 0), &history_end(group), bb)?;
    set_compacted(group, compacted, bb);
    Ok(())
}

impl<B: Backend> Store<B> {
    /// Reads the events of `group` after `query.after` that touch keys in the query's range,
    /// from this replica's applied state.
    ///
    /// The page is consistent: applies to the group wait while it is read, and a snapshot
    /// installed meanwhile (which replaces the history) is detected and the read redone.
    pub fn history(&self, group: u64, query: &HistoryQuery<'_>) -> Result<HistoryRead> {
        let shared = self.shared_group(group)?;
        let backend = &self.inner.backend;
        let in_range = |k: &[u8]| k >= query.start && query.end.is_none_or(|e| k < e);
        loop {
            let st = group::read(&shared);
            let applied = st.meta.apply.index;
            let before = read_compacted(backend, group)?;
            let compacted = before.unwrap_or(applied);
            if query.after < compacted {
                return Ok(HistoryRead::Compacted { compacted, applied });
            }
            let mut page = HistoryPage {
                events: Vec::new(),
                through: applied,
                applied,
                compacted,
            };
            if query.after < applied {
                let lo = event_key(group, query.after + 1, 0);
                let hi = event_key(group, applied.saturating_add(1), 0);
                let (mut count, mut bytes) = (0usize, 0usize);
                let mut current = 0u64;
                backend.scan(
                    TreeId::Kv,
                    Bound::Included(&lo),
                    Bound::Excluded(&hi),
                    false,
                    &mut |k, v| {
                        let rev = keys::u64_at(k, 9).ok_or_else(|| {
                            StoreError::corrupt("kv", format!("group {group} history"), "bad key")
                        })?;
                        if rev != current {
                            // A revision boundary: the page may stop here.
                            let full = (query.max_events != 0 && count >= query.max_events)
                                || (query.max_bytes != 0 && bytes >= query.max_bytes);
                            if full {
                                page.through = current;
                                return Ok(Scan::Stop);
                            }
                            current = rev;
                        }
                        let e = decode_event(group, v)?;
                        count += 1;
                        bytes += e.size();
                        if in_range(&e.key) {
                            page.events.push(e);
                        }
                        Ok(Scan::Continue)
                    },
                )?;
            }
            // A snapshot install does not take the group lock: if one replaced the history
            // while it was read, the page may mix the two; read again.
            if read_compacted(backend, group)? != before {
                drop(st);
                continue;
            }
            return Ok(HistoryRead::Page(page));
        }
    }

    /// The compacted revision of `group`'s history: events at or below it are gone.
    pub fn history_compacted(&self, group: u64) -> Result<u64> {
        let shared = self.shared_group(group)?;
        let st = group::read(&shared);
        Ok(read_compacted(&self.inner.backend, group)?.unwrap_or(st.meta.apply.index))
    }
}
