//! Client sessions: what each partition remembers of its clients' writes, so that a retried
//! write is applied at most once.
//!
//! # Why in memory, in buckets
//! Every write of a session changes its client's record. Stored one record per client, a
//! flush of the state layer wrote one engine key per (client, partition) written since the
//! last flush, and every write read its record back from the engine: together about a tenth of
//! a busy node's CPU. So the records live in memory, per partition, in [`SESSION_BUCKETS`]
//! buckets by client id; a bucket reaches the engine as one record, encoded when the state layer
//! moves its writes there (a flush, or the drain before a write across trees), and only if it
//! changed since it was last encoded. A partition then costs the engine at most
//! [`SESSION_BUCKETS`] keys per flush for all its clients.
//!
//! # Consistency with the applied index
//! A partition's applied index and its sessions must reach the engine together: a restart
//! replays the log from the applied index the engine holds, and a session ahead of it would
//! answer a replayed write with its remembered result instead of applying it (a session behind
//! it would apply a retried write twice). The applied index is a state-layer write; the
//! sessions are not. So [`SessionTables`] is the state layer's [`Companion`]: an apply writes
//! its records to the layer and its session changes to the tables under the tables' lock, and
//! the layer takes its writes for the engine under the same lock, with every changed bucket
//! encoded at that instant. A crash loses both, like the rest of the layer.
//!
//! # Bounded
//! A bucket keeps at most [`BUCKET_CLIENTS`] clients: a write of a new client into a full
//! bucket forgets the client whose last write in the partition is the oldest. A partition so
//! remembers its [`SESSION_BUCKETS`] x [`BUCKET_CLIENTS`] most recent writers at least; a
//! forgotten client's retry of a write it never got an answer for is applied again (a client
//! retries within seconds, so only a partition written by more than that many other clients
//! meanwhile forgets it). Eviction is part of the apply, so every replica forgets the same.
//!
//! # Stored form
//! `[group][TAG_SESSION][bucket]` holds the bucket: postcard `Vec<(client, SessionRecord)>`,
//! by client. Stores and backups written before buckets hold one [`LegacySessionRecord`] per
//! client at `[group][TAG_SESSION][client BE u64]`; they are read as members of their bucket,
//! and deleted when that bucket is next written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::backend::{records_in, Backend, TreeId};
use crate::error::{Result, StoreError};
use crate::keys;
use crate::kv::KvResult;
use crate::state_layer::{Companion, KvWrites};

/// Buckets per partition (part of the stored form).
pub const SESSION_BUCKETS: u8 = 4;

/// Clients a bucket remembers at most.
pub const BUCKET_CLIENTS: usize = 128;

/// The bucket of `client` (client ids are random, so buckets fill evenly).
pub fn bucket_of(client: u64) -> u8 {
    (client % u64::from(SESSION_BUCKETS)) as u8
}

/// What a partition remembers of one client.
///
/// Invariants, checked on decode: `results` is sorted by sequence number without duplicates,
/// and every remembered sequence number is at or above `watermark` (results below it are
/// forgotten when the watermark rises).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client's `first_incomplete` as last raised: a write numbered below it was answered
    /// and its result forgotten, so a retry of it is a [`crate::KvError::StaleRetry`].
    pub watermark: u64,
    /// The remembered results, as `(seq, result)`, by sequence number.
    pub results: Vec<(u64, KvResult)>,
    /// The revision (Raft index) of the client's last write in the partition: which client a
    /// full bucket forgets.
    pub last_index: u64,
}

impl SessionRecord {
    /// The remembered result of write `seq`, if any.
    pub fn result(&self, seq: u64) -> Option<&KvResult> {
        let i = self.results.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        Some(&self.results[i].1)
    }

    /// The invariants of the type's docs, as the reason they do not hold.
    fn check(&self) -> std::result::Result<(), String> {
        if !self.results.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("results out of order".into());
        }
        if let Some((seq, _)) = self.results.first().filter(|(s, _)| *s < self.watermark) {
            return Err(format!(
                "a result for seq {seq}, below the watermark {}",
                self.watermark
            ));
        }
        Ok(())
    }
}

/// A client's record as stores before buckets kept it, one key per client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacySessionRecord {
    pub watermark: u64,
    pub results: Vec<(u64, KvResult)>,
}

impl LegacySessionRecord {
    /// Its stored form.
    pub fn encode(&self) -> Vec<u8> {
        // postcard cannot fail to serialize plain data into a Vec.
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

/// `[group][TAG_SESSION][bucket]`.
pub fn bucket_key(group: u64, bucket: u8) -> Vec<u8> {
    let mut k = keys::group_tag(group, keys::TAG_SESSION);
    k.push(bucket);
    k
}

/// Encodes a bucket's records (sorted by client, as a `BTreeMap` iterates).
pub fn encode_bucket<'a>(records: impl Iterator<Item = (&'a u64, &'a SessionRecord)>) -> Vec<u8> {
    let list: Vec<(&u64, &SessionRecord)> = records.collect();
    // postcard cannot fail to serialize plain data into a Vec.
    postcard::to_stdvec(&list).unwrap_or_default()
}

/// Decodes bucket `bucket` of `group`: bytes that are not exactly one bucket, clients out of
/// order or in the wrong bucket, or a record breaking its invariants are
/// [`StoreError::Corrupt`].
pub fn decode_bucket(group: u64, bucket: u8, bytes: &[u8]) -> Result<Vec<(u64, SessionRecord)>> {
    let corrupt = |detail: String| {
        StoreError::corrupt(
            "kv",
            format!("group {group} session bucket {bucket}"),
            detail,
        )
    };
    let (list, rest) = postcard::take_from_bytes::<Vec<(u64, SessionRecord)>>(bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the bucket", rest.len())));
    }
    if !list.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(corrupt("clients out of order".into()));
    }
    for (client, record) in &list {
        if bucket_of(*client) != bucket {
            return Err(corrupt(format!(
                "client {client:x} belongs to another bucket"
            )));
        }
        record
            .check()
            .map_err(|d| corrupt(format!("client {client:x}: {d}")))?;
    }
    Ok(list)
}

/// A stored session record of a partition, decoded.
pub(crate) enum Stored {
    /// A bucket and its clients.
    Bucket(u8, Vec<(u64, SessionRecord)>),
    /// A legacy per-client record.
    Legacy(u64, SessionRecord),
}

/// Decodes the session record of `group` whose key continues with `rest` after
/// `[group][TAG_SESSION]`: a bucket number below [`SESSION_BUCKETS`], or a legacy record's
/// client id. Anything else is [`StoreError::Corrupt`].
pub(crate) fn decode_stored(group: u64, rest: &[u8], bytes: &[u8]) -> Result<Stored> {
    match *rest {
        [bucket] if bucket < SESSION_BUCKETS => {
            Ok(Stored::Bucket(bucket, decode_bucket(group, bucket, bytes)?))
        }
        [bucket] => Err(StoreError::corrupt(
            "kv",
            format!("group {group} session bucket {bucket}"),
            format!("there are {SESSION_BUCKETS} buckets"),
        )),
        _ => match keys::u64_at(rest, 0).filter(|_| rest.len() == 8) {
            Some(client) => Ok(Stored::Legacy(client, decode_legacy(group, client, bytes)?)),
            None => Err(StoreError::corrupt(
                "kv",
                format!("group {group} sessions"),
                format!("a key of {} bytes after the tag", rest.len()),
            )),
        },
    }
}

/// Decodes a legacy per-client record (see the module docs).
pub fn decode_legacy(group: u64, client: u64, bytes: &[u8]) -> Result<SessionRecord> {
    let corrupt = |detail: String| {
        StoreError::corrupt(
            "kv",
            format!("group {group} session of client {client:x}"),
            detail,
        )
    };
    let (old, rest) = postcard::take_from_bytes::<LegacySessionRecord>(bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    if !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the record", rest.len())));
    }
    let record = SessionRecord {
        watermark: old.watermark,
        results: old.results,
        last_index: 0,
    };
    record.check().map_err(corrupt)?;
    Ok(record)
}

#[derive(Debug, Default)]
struct Bucket {
    clients: BTreeMap<u64, SessionRecord>,
    /// Changed since it was last encoded into the state layer.
    dirty: bool,
}

#[derive(Debug)]
struct GroupSessions {
    buckets: Vec<Bucket>,
    /// Legacy per-client keys read into the buckets: deleted with the next encoding.
    legacy: Vec<Vec<u8>>,
}

/// A change an apply makes to one client's record (`None`: the client is forgotten).
pub(crate) type SessionChanges = BTreeMap<u64, Option<SessionRecord>>;

/// Every partition's sessions, loaded from the engine on first use (see the module docs).
#[derive(Debug, Default)]
pub struct SessionTables {
    groups: Mutex<HashMap<u64, GroupSessions>>,
}

/// The locked tables: reads and commits of applies, encodings of the state layer's takes.
pub(crate) struct Tables<'a>(MutexGuard<'a, HashMap<u64, GroupSessions>>);

impl SessionTables {
    pub(crate) fn lock(&self) -> Tables<'_> {
        // Nothing here panics while the lock is held: a poisoned lock guards consistent data.
        Tables(self.groups.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Companion for SessionTables {
    fn around_take(&self, take: &mut dyn FnMut(KvWrites)) {
        let mut tables = self.lock();
        let writes = tables.take_changed(None);
        take(writes);
    }
}

impl Tables<'_> {
    fn group<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        group: u64,
    ) -> Result<&mut GroupSessions> {
        Ok(match self.0.entry(group) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(load(backend, group)?),
        })
    }

    /// `client`'s record in `group`, as of the last committed apply.
    pub fn get<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        group: u64,
        client: u64,
    ) -> Result<Option<SessionRecord>> {
        let g = self.group(backend, group)?;
        Ok(g.buckets[usize::from(bucket_of(client))]
            .clients
            .get(&client)
            .cloned())
    }

    /// The client `group` forgets to make room for a new client in `client`'s bucket, given
    /// the apply's uncommitted `changes`; `None` while the bucket has room. The client whose
    /// last write is the oldest goes (the lower id among equals), the same on every replica.
    pub fn victim<B: Backend + ?Sized>(
        &mut self,
        backend: &B,
        group: u64,
        client: u64,
        changes: &SessionChanges,
    ) -> Result<Option<u64>> {
        let bucket = bucket_of(client);
        let g = self.group(backend, group)?;
        let committed = &g.buckets[usize::from(bucket)].clients;
        let changed = || changes.iter().filter(|(c, _)| bucket_of(**c) == bucket);
        // Almost always: a known client, or a bucket with room even if every change of the
        // apply added a client.
        let known = match changes.get(&client) {
            Some(change) => change.is_some(),
            None => committed.contains_key(&client),
        };
        if known || committed.len() + changed().count() < BUCKET_CLIENTS {
            return Ok(None);
        }
        let mut members: BTreeMap<u64, u64> =
            committed.iter().map(|(c, r)| (*c, r.last_index)).collect();
        for (c, change) in changed() {
            match change {
                Some(r) => members.insert(*c, r.last_index),
                None => members.remove(c),
            };
        }
        if members.len() < BUCKET_CLIENTS {
            return Ok(None);
        }
        Ok(members
            .into_iter()
            .min_by_key(|(c, last)| (*last, *c))
            .map(|(c, _)| c))
    }

    /// Makes an apply's changes the committed state of `group` (loaded by the apply's reads).
    pub fn commit(&mut self, group: u64, changes: SessionChanges) {
        let Some(g) = self.0.get_mut(&group) else {
            return;
        };
        for (client, change) in changes {
            let b = &mut g.buckets[usize::from(bucket_of(client))];
            match change {
                Some(r) => b.clients.insert(client, r),
                None => b.clients.remove(&client),
            };
            b.dirty = true;
        }
    }

    /// Drops what is known of `group` (an install or a removal replaced its records): the
    /// next use reads them again from the store.
    pub fn forget(&mut self, group: u64) {
        self.0.remove(&group);
    }

    /// The changed buckets (of `only` that group, or of all), encoded as state-layer writes,
    /// and marked unchanged.
    pub fn take_changed(&mut self, only: Option<u64>) -> KvWrites {
        let mut out = Vec::new();
        for (group, g) in self.0.iter_mut() {
            if only.is_some_and(|o| o != *group) {
                continue;
            }
            for (i, b) in g.buckets.iter_mut().enumerate() {
                if !b.dirty {
                    continue;
                }
                b.dirty = false;
                let key = bucket_key(*group, i as u8);
                if b.clients.is_empty() {
                    out.push((key, None));
                } else {
                    out.push((key, Some(encode_bucket(b.clients.iter()))));
                }
            }
            out.extend(g.legacy.drain(..).map(|k| (k, None)));
        }
        out
    }
}

/// Reads `group`'s buckets (and any legacy per-client records) from `backend`.
fn load<B: Backend + ?Sized>(backend: &B, group: u64) -> Result<GroupSessions> {
    let mut g = GroupSessions {
        buckets: (0..SESSION_BUCKETS).map(|_| Bucket::default()).collect(),
        legacy: Vec::new(),
    };
    let lo = keys::group_tag(group, keys::TAG_SESSION);
    let hi = keys::group_tag(group, keys::TAG_SESSION + 1);
    let found = records_in(backend, TreeId::Kv, &lo, &hi)?;
    // Buckets first, then legacy records (their keys sort among the buckets'): a client in
    // both is the bucket's, which is newer.
    let mut legacy: Vec<(Vec<u8>, u64, SessionRecord)> = Vec::new();
    for (k, v) in found {
        match decode_stored(group, &k[lo.len()..], &v)? {
            Stored::Bucket(bucket, clients) => {
                g.buckets[usize::from(bucket)].clients.extend(clients);
            }
            Stored::Legacy(client, record) => legacy.push((k, client, record)),
        }
    }
    for (k, client, record) in legacy {
        let b = &mut g.buckets[usize::from(bucket_of(client))];
        b.clients.entry(client).or_insert(record);
        b.dirty = true;
        g.legacy.push(k);
    }
    Ok(g)
}
