//! Each partition's recent event history: what watches read.
//!
//! Every apply that changes keys also records one [`Event`] per changed key, in the same atomic
//! write as the data and the applied index. So on every replica, and at every instant a reader
//! can see, the history holds exactly the events of the revisions in `(compacted, applied]`:
//! nothing is written without the apply, and the apply is never visible without its events.
//!
//! Events are stored in *chunks*: `[group][TAG_HISTORY][revision][0]` holds the events of
//! consecutive applies, the first at `revision`, each event postcard-encoded after the other
//! (a chunk of one event is that event's encoding). An apply appends its events to the
//! group's open chunk and rewrites it, which the state layer absorbs: the engine receives one
//! chunk per group per flush, not one key per event, and a key per event (always a new key,
//! at the end of the range) was most of what a flush cost the engine. A chunk closes at each
//! flush of the state layer (so an event reaches the engine once), at [`CHUNK_EVENTS`] events
//! or [`CHUNK_BYTES`] bytes (which bound what an apply copies); the next apply opens a new
//! one. The open chunk is remembered per group in memory ([`HistoryTail`]); after a restart or
//! an install the next apply opens a new chunk.
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

use crate::backend::{keys_in, Backend, BackendBatch, Scan, TreeId};
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

/// A chunk takes no more events once it holds this many ...
pub(crate) const CHUNK_EVENTS: usize = 32;
/// ... or this many bytes.
pub(crate) const CHUNK_BYTES: usize = 8 * 1024;

/// What the history writer keeps of a group between applies: the chunk still taking events
/// and the stored compacted revision (read once instead of at every apply). It is updated
/// with the group's applied state, after the write that stores it.
#[derive(Clone, Debug, Default)]
pub(crate) struct HistoryTail {
    /// The stored compacted mark once read (`Some(None)`: the group has none).
    mark: Option<Option<u64>>,
    /// The open chunk: its key, its encoded events and how many.
    open: Option<OpenChunk>,
}

impl HistoryTail {
    /// The next apply's events start a new chunk.
    pub(crate) fn close(&mut self) {
        self.open = None;
    }
}

#[derive(Clone, Debug)]
struct OpenChunk {
    key: Vec<u8>,
    value: Vec<u8>,
    events: usize,
}

/// `[group][TAG_HISTORY][revision][n]`: the chunk whose first event is the `n`th of `revision`
/// (chunks start at an apply, so `n` is 0 in what this version writes).
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

/// The events of a stored chunk, in order.
fn decode_chunk(group: u64, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<()> {
    if bytes.is_empty() {
        return Err(StoreError::corrupt(
            "kv",
            format!("group {group} history"),
            "an empty chunk",
        ));
    }
    while !bytes.is_empty() {
        let (e, rest) = postcard::take_from_bytes::<Event>(bytes)
            .map_err(|e| StoreError::corrupt("kv", format!("group {group} history event"), e))?;
        out.push(e);
        bytes = rest;
    }
    Ok(())
}

/// The key of the chunk that holds the first event after revision `after`: the last chunk
/// starting at or before `after + 1` (`None`: no chunk does).
fn chunk_holding<B: Backend>(backend: &B, group: u64, after: u64) -> Result<Option<Vec<u8>>> {
    let lo = event_key(group, 0, 0);
    let at = event_key(group, after.saturating_add(1), 0);
    let mut found = None;
    backend.scan(
        TreeId::Kv,
        Bound::Included(&lo),
        Bound::Included(&at),
        true,
        &mut |k, _| {
            found = Some(k.to_vec());
            Ok(Scan::Stop)
        },
    )?;
    Ok(found)
}

/// Adds to `bb` the writes that record `events` (each with its revision) and, when the
/// history has grown past the retention, remove its oldest revisions. `applied_before` is the
/// applied index before this apply, `applied` the one after it. `tail` is the group's tail
/// before the apply; a changed one is returned, to replace it once `bb` is written (`None`:
/// the tail stays as it is, so an apply without events copies nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record<B: Backend>(
    backend: &B,
    group: u64,
    tail: &HistoryTail,
    events: &[Event],
    applied_before: u64,
    applied: u64,
    retain: u64,
    bb: &mut BackendBatch,
) -> Result<Option<HistoryTail>> {
    // A group without a mark has recorded nothing before this apply (a store from before
    // histories existed, or a group that started empty): its history starts here.
    let stored = match tail.mark {
        Some(m) => m,
        None => read_compacted(backend, group)?,
    };
    let compacted = stored.unwrap_or(applied_before);
    let retain = retain.max(1);
    // Trim in steps of an eighth of the retention, so most applies only add.
    let slack = (retain / 8).max(1);
    let target = applied.saturating_sub(retain);
    let mark = if target >= compacted + slack {
        trim(backend, group, target, bb)?;
        set_compacted(group, target, bb);
        Some(target)
    } else if stored.is_none() {
        set_compacted(group, compacted, bb);
        Some(compacted)
    } else {
        stored
    };
    let Some(first) = events.first() else {
        return Ok((tail.mark != Some(mark)).then(|| HistoryTail {
            mark: Some(mark),
            open: tail.open.clone(),
        }));
    };
    let mut open = match &tail.open {
        Some(o) if o.events < CHUNK_EVENTS && o.value.len() < CHUNK_BYTES => o.clone(),
        _ => OpenChunk {
            key: event_key(group, first.revision, 0),
            value: Vec::new(),
            events: 0,
        },
    };
    for e in events {
        open.value = postcard::to_extend(e, std::mem::take(&mut open.value))
            .map_err(|e| StoreError::corrupt("kv", format!("group {group} history"), e))?;
        open.events += 1;
    }
    bb.put(TreeId::Kv, open.key.clone(), open.value.clone());
    Ok(Some(HistoryTail {
        mark: Some(mark),
        open: Some(open),
    }))
}

/// Adds to `bb` the deletion of the chunks that hold only events at or below `target`: every
/// chunk starting at or below it but the last of them, which may go on past it (its older
/// events stay until the chunk after it starts below the compacted revision).
fn trim<B: Backend>(backend: &B, group: u64, target: u64, bb: &mut BackendBatch) -> Result<()> {
    let hi = event_key(group, target.saturating_add(1), 0);
    let mut starts = keys_in(backend, TreeId::Kv, &event_key(group, 0, 0), &hi)?;
    // The first chunk after the range: when it starts right after `target`, the last chunk
    // of the range ends at or before `target` and goes too.
    let mut next_starts_after_target = false;
    backend.scan(
        TreeId::Kv,
        Bound::Included(&hi),
        Bound::Excluded(&history_end(group)),
        false,
        &mut |k, _| {
            next_starts_after_target = k.starts_with(&hi[..hi.len() - 4]);
            Ok(Scan::Stop)
        },
    )?;
    if !next_starts_after_target {
        starts.pop();
    }
    for k in starts {
        bb.delete(TreeId::Kv, k);
    }
    Ok(())
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
    for k in keys_in(
        backend,
        TreeId::Kv,
        &event_key(group, 0, 0),
        &history_end(group),
    )? {
        bb.delete(TreeId::Kv, k);
    }
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
                let lo = match chunk_holding(backend, group, query.after)? {
                    Some(k) => k,
                    None => event_key(group, query.after + 1, 0),
                };
                let hi = event_key(group, applied.saturating_add(1), 0);
                let (mut count, mut bytes) = (0usize, 0usize);
                let mut current = 0u64;
                let mut chunk = Vec::new();
                backend.scan(
                    TreeId::Kv,
                    Bound::Included(&lo),
                    Bound::Excluded(&hi),
                    false,
                    &mut |_, v| {
                        chunk.clear();
                        decode_chunk(group, v, &mut chunk)?;
                        for e in chunk.drain(..) {
                            if e.revision <= query.after || e.revision > applied {
                                continue;
                            }
                            if e.revision != current {
                                // A revision boundary: the page may stop here.
                                let full = (query.max_events != 0 && count >= query.max_events)
                                    || (query.max_bytes != 0 && bytes >= query.max_bytes);
                                if full {
                                    page.through = current;
                                    return Ok(Scan::Stop);
                                }
                                current = e.revision;
                            }
                            count += 1;
                            bytes += e.size();
                            if in_range(&e.key) {
                                page.events.push(e);
                            }
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
