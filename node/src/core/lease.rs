//! Leases: time-to-live handles that keys can be attached to, kept in the meta group and
//! timed by the meta group's leader (the coordinator).
//!
//! # What is replicated and what is not
//! A lease is one meta record, `meta/lease/<id>`, holding its TTL, a *remaining-TTL checkpoint*
//! and whether it was revoked. A grant, a keep-alive, a revocation and the leader's periodic
//! checkpoints are Raft writes of that record. Deadlines themselves are never replicated: no
//! two nodes share a clock. Every replica turns each record into a local deadline on its own
//! clock, and only the leader acts on it (proposes the revocation when it passes).
//!
//! # The timing rule (exact)
//! Let `t_recv(e)` be the time, on node N's clock, at which N appended entry `e` to its log
//! (for the leader: when it proposed `e`; for a follower: when `e` arrived). When N applies
//! lease record `r` carried by `e`, its deadline for the lease becomes
//!
//! ```text
//! base = t_recv(e) + r.remaining_ms
//! ```
//!
//! where `remaining_ms` is the full TTL for a grant or keep-alive, and `deadline - now` for a
//! checkpoint the leader proposes at `now`. Since every replica appends `e` no earlier than the
//! leader proposed it, every replica's `base` is at or after the leader's (never shortened),
//! and later only by the one-way delay of `e`. A record known only from storage (a restart, or
//! a snapshot of the meta group) gives `base = now + remaining_ms`: again never earlier.
//!
//! A node that becomes leader adds one election timeout `E` (the base election timeout,
//! `election_ticks * tick_ms`) to the deadline of every lease whose record was written under an
//! earlier leader: during the election no client could reach a leader to keep its lease alive.
//! So across one coordinator change a lease lives at most `E` (plus the delay of its last
//! record to the new leader) longer than its TTL after its last keep-alive, and never less.
//! A record applied in the leader's own term clears that grace (its `remaining_ms` already says
//! everything). The grace is a flag, not a sum: leadership moving back and forth sets it again,
//! and a checkpoint records `base - now`, never the grace, so the grace periods of successive
//! coordinators never add up. However often the coordinator changes, a lease ends no later
//! than `E` (plus the delays of its records' entries) after its TTL ran out.
//!
//! # Expiry and revocation
//! When the effective deadline passes, the leader proposes the record with `revoked = true`.
//! A revoked record stays in the meta group until the coordinator has deleted the lease's keys
//! in every partition (an idempotent `KvOp::DeleteLease` each) and then deletes the record; a
//! new coordinator redoes the deletions of every revoked record it finds, so a crash in the
//! middle loses nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use swarmkv_store::{CasAction, Compare, KvOp};

use super::types::RequestId;

/// A lease's id (never 0: 0 on a key means "no lease").
pub type LeaseId = u64;

const LEASE_PREFIX: &[u8] = b"meta/lease/";

/// The meta group's record of one lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: LeaseId,
    /// The TTL granted, in ms: what a keep-alive restores.
    pub ttl_ms: u64,
    /// Time left when the record was proposed, in ms (see the module's timing rule).
    pub remaining_ms: u64,
    /// Expired or revoked: its keys are being deleted; it is gone once they are.
    pub revoked: bool,
    /// A checkpoint written while a coordinator's grace applied to this TTL period: the grace
    /// still applies (it is a flag, never added twice).
    pub graced: bool,
}

/// What a client asks of the lease service (answered by the meta leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRequest {
    /// A new lease of `ttl_ms`.
    Grant { ttl_ms: u64 },
    /// Restart the lease's TTL.
    KeepAlive { id: LeaseId },
    /// End the lease now: its keys are deleted.
    Revoke { id: LeaseId },
    /// How long the lease has left.
    TimeToLive { id: LeaseId },
}

/// A lease as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: LeaseId,
    pub ttl_ms: u64,
    /// Time left on the leader's clock; 0 once revoked.
    pub remaining_ms: u64,
}

/// A lease id as users see it: 16 hex digits (JSON numbers cannot carry 63 bits exactly).
pub fn lease_hex(id: LeaseId) -> String {
    format!("{id:016x}")
}

/// Parses a lease id: 1 to 16 hex digits, an optional `0x` in front; never 0.
pub fn parse_lease_id(text: &str) -> Option<LeaseId> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok().filter(|id| *id != 0)
}

impl LeaseRecord {
    /// The meta key of lease `id`.
    pub fn key(id: LeaseId) -> Vec<u8> {
        let mut k = LEASE_PREFIX.to_vec();
        k.extend_from_slice(format!("{id:016x}").as_bytes());
        k
    }

    /// The lease id a meta key names, if it is a lease key.
    pub fn id_of_key(key: &[u8]) -> Option<LeaseId> {
        let rest = key.strip_prefix(LEASE_PREFIX)?;
        u64::from_str_radix(std::str::from_utf8(rest).ok()?, 16).ok()
    }

    /// The write that records this lease, applied only while the stored record is still at
    /// revision `rev` (`None`: only while there is none). Every lease write is conditional, so
    /// a keep-alive that raced a revocation cannot undo it, whatever order they commit in.
    pub fn write(&self, rev: Option<u64>) -> KvOp {
        KvOp::Cas {
            key: LeaseRecord::key(self.id),
            compare: rev.map_or(Compare::Absent, Compare::ModRevision),
            action: CasAction::Put(postcard::to_stdvec(self).unwrap_or_default()),
        }
    }

    /// The write that forgets lease `id` once its keys are gone everywhere, if its record is
    /// still at revision `rev`.
    pub fn forget(id: LeaseId, rev: u64) -> KvOp {
        KvOp::Cas {
            key: LeaseRecord::key(id),
            compare: Compare::ModRevision(rev),
            action: CasAction::Delete,
        }
    }

    /// The key prefix of lease records.
    pub fn prefix() -> &'static [u8] {
        LEASE_PREFIX
    }
}

/// What an applied meta write did to a lease record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseWrite<'a> {
    /// The record now holds these bytes.
    Put(&'a [u8]),
    /// The record is gone.
    Delete,
    /// A conditional write found the record changed and did nothing.
    Refused,
}

#[derive(Clone, Debug)]
struct Entry {
    record: LeaseRecord,
    /// `t_recv + remaining_ms` of the last applied record, on this node's clock.
    base_ms: u64,
    /// One election timeout granted when this node became leader after the record was written.
    grace: bool,
    /// When this leader proposed a checkpoint (`false`) or revocation (`true`) of it, so it is
    /// not proposed again on every tick while in flight.
    proposed: Option<(u64, bool)>,
    /// When the last record of it applied here.
    applied_ms: u64,
    /// Revision of the stored record (the index of the entry that wrote it).
    mod_rev: u64,
    /// Index of this leader's latest proposal for the lease not yet applied: the revision the
    /// next proposal expects, so proposals in flight chain instead of refusing each other.
    chain: Option<u64>,
    /// When this leader proposed the keep-alive, grant or checkpoint in flight, if one is:
    /// the lease is not revoked before it applies (see [`LeaseTable::due`]).
    renewing_since: Option<u64>,
}

/// Why a lease request failed in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseMiss {
    /// Never granted, revoked, or expired.
    NotFound,
}

/// Every lease this node's meta replica knows, with its local deadline. Sans-IO: every call
/// that needs the time takes `now` in ms.
#[derive(Debug)]
pub struct LeaseTable {
    leases: BTreeMap<LeaseId, Entry>,
    /// Appended, not yet applied meta entries: index -> time appended.
    received: BTreeMap<u64, u64>,
    /// Lease requests proposed and waiting for their record to apply.
    waiting: BTreeMap<RequestId, LeaseId>,
    /// One election timeout (ms): the grace of a new leader.
    grace_ms: u64,
    /// A live lease is checkpointed when its last record is older than this.
    checkpoint_ms: u64,
}

impl LeaseTable {
    /// An empty table; `election_timeout_ms` is the grace a new leader gives.
    pub fn new(election_timeout_ms: u64) -> LeaseTable {
        LeaseTable {
            leases: BTreeMap::new(),
            received: BTreeMap::new(),
            waiting: BTreeMap::new(),
            grace_ms: election_timeout_ms,
            checkpoint_ms: election_timeout_ms.max(1000),
        }
    }

    /// Replaces the table with the records of a meta replica's storage (a restart or a
    /// snapshot): deadlines count from `now`, so they are never earlier than the leader's.
    /// `records` are (key, value, revision).
    pub fn reload<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8], u64)>,
        now: u64,
    ) {
        self.leases.clear();
        self.received.clear();
        for (k, v, rev) in records {
            let Some(id) = LeaseRecord::id_of_key(k) else {
                continue;
            };
            match postcard::from_bytes::<LeaseRecord>(v) {
                Ok(record) if record.id == id => {
                    self.leases.insert(id, Entry::new(record, now, now, rev));
                }
                _ => log::warn!("bad lease record {}", k.escape_ascii()),
            }
        }
    }

    /// Meta entry `index` was appended to this node's log at `now`.
    pub fn note_appended(&mut self, index: u64, now: u64) {
        self.received.insert(index, now);
    }

    /// A committed meta entry at `index` of `term` did `write` to `key` (any meta key: the
    /// table also forgets the arrival times of applied entries). `leader_term` is this node's
    /// term when it leads the meta group.
    pub fn on_apply(
        &mut self,
        (index, term): (u64, u64),
        key: &[u8],
        write: LeaseWrite<'_>,
        now: u64,
        leader_term: Option<u64>,
    ) {
        let t_recv = self.received.get(&index).copied().unwrap_or(now).min(now);
        self.received = self.received.split_off(&(index + 1));
        let Some(id) = LeaseRecord::id_of_key(key) else {
            return;
        };
        let value = match write {
            LeaseWrite::Put(v) => v,
            LeaseWrite::Delete => {
                self.leases.remove(&id);
                return;
            }
            LeaseWrite::Refused => {
                // One of this leader's proposals lost a race (the ones chained after it will
                // too): start over from the stored record on the next request or tick.
                if let Some(e) = self.leases.get_mut(&id) {
                    e.chain = None;
                    e.proposed = None;
                    e.renewing_since = None;
                }
                return;
            }
        };
        let record = match postcard::from_bytes::<LeaseRecord>(value) {
            Ok(r) if r.id == id => r,
            _ => {
                log::warn!("bad lease record {}", key.escape_ascii());
                return;
            }
        };
        let chain = self
            .leases
            .get(&id)
            .and_then(|e| e.chain)
            .filter(|c| *c > index);
        let proposed = self
            .leases
            .get(&id)
            .and_then(|e| e.proposed)
            .filter(|_| chain.is_some());
        let renewing_since = self
            .leases
            .get(&id)
            .and_then(|e| e.renewing_since)
            .filter(|_| chain.is_some());
        let mut e = Entry::new(record, t_recv, now, index);
        e.chain = chain;
        e.proposed = proposed;
        e.renewing_since = renewing_since;
        // Written under an earlier leader and applied by this one: the new leader's grace
        // still holds for it. A checkpoint carries the grace of the coordinator that wrote it.
        e.grace = e.record.graced || leader_term.is_some_and(|lt| term < lt);
        self.leases.insert(id, e);
    }

    /// This node became the meta leader: every lease gets one election timeout of grace.
    pub fn on_become_leader(&mut self) {
        for e in self.leases.values_mut() {
            e.grace = true;
            e.proposed = None;
            e.chain = None;
            e.renewing_since = None;
        }
    }

    /// This node stopped leading the meta group.
    pub fn on_lose_leadership(&mut self) {
        self.waiting.clear();
        for e in self.leases.values_mut() {
            e.proposed = None;
            e.chain = None;
            e.renewing_since = None;
        }
    }

    fn deadline(&self, e: &Entry) -> u64 {
        e.base_ms + if e.grace { self.grace_ms } else { 0 }
    }

    /// The lease as this node sees it at `now`; `None` when it is unknown, revoked or past its
    /// deadline.
    pub fn info(&self, id: LeaseId, now: u64) -> Option<LeaseInfo> {
        let e = self.leases.get(&id)?;
        let deadline = self.deadline(e);
        if e.record.revoked || deadline <= now {
            return None;
        }
        Some(LeaseInfo {
            id,
            ttl_ms: e.record.ttl_ms,
            remaining_ms: deadline - now,
        })
    }

    /// Whether `id` names a lease the table holds (in any state).
    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// The write a grant of lease `id` proposes (refused if the id is taken meanwhile).
    pub fn grant(id: LeaseId, ttl_ms: u64) -> KvOp {
        LeaseTable::fresh(id, ttl_ms).write(None)
    }

    fn fresh(id: LeaseId, ttl_ms: u64) -> LeaseRecord {
        LeaseRecord {
            id,
            ttl_ms,
            remaining_ms: ttl_ms,
            revoked: false,
            graced: false,
        }
    }

    /// The write a keep-alive of `id` proposes, if the lease is alive at `now` and no
    /// revocation of it is in flight.
    pub fn keep_alive(&self, id: LeaseId, now: u64) -> Result<KvOp, LeaseMiss> {
        self.info(id, now).ok_or(LeaseMiss::NotFound)?;
        let e = &self.leases[&id];
        if e.proposed.is_some_and(|(_, revoking)| revoking) {
            return Err(LeaseMiss::NotFound);
        }
        Ok(LeaseTable::fresh(id, e.record.ttl_ms).write(Some(e.expected_rev())))
    }

    /// The write a revocation of `id` proposes (a revoked lease may be revoked again).
    pub fn revoke(&self, id: LeaseId) -> Result<KvOp, LeaseMiss> {
        let e = self.leases.get(&id).ok_or(LeaseMiss::NotFound)?;
        Ok(e.revoked_record().write(Some(e.expected_rev())))
    }

    /// The write that forgets revoked lease `id`.
    pub fn forget(&self, id: LeaseId) -> Option<KvOp> {
        let e = self.leases.get(&id).filter(|e| e.record.revoked)?;
        Some(LeaseRecord::forget(id, e.expected_rev()))
    }

    /// This leader proposed a write of lease `id` at log index `index` (`revoking`: a
    /// revocation) at `now`.
    pub fn note_proposed(&mut self, id: LeaseId, index: u64, revoking: bool, now: u64) {
        if let Some(e) = self.leases.get_mut(&id) {
            e.chain = Some(index);
            if revoking {
                e.proposed = Some((now, true));
            } else if e.renewing_since.is_none() {
                e.renewing_since = Some(now);
            }
        }
    }

    /// Leader only: the records to propose at `now`: revocations of leases past their
    /// deadline, and remaining-TTL checkpoints of live leases whose last record is older than
    /// the checkpoint period (so a restart or snapshot carries a recent remaining TTL).
    /// Each is (lease, write, is a revocation); pass what was proposed to
    /// [`LeaseTable::note_proposed`].
    pub fn due(&mut self, now: u64) -> Vec<(LeaseId, KvOp, bool)> {
        let mut out = Vec::new();
        let grace = self.grace_ms;
        for e in self.leases.values_mut() {
            if e.record.revoked {
                continue;
            }
            // A proposal of the same kind in flight: wait for it to apply (or for one grace
            // period, in case a leader change lost it). A checkpoint in flight does not hold
            // back a revocation.
            let in_flight = |revoking: bool| {
                e.proposed
                    .is_some_and(|(at, r)| r == revoking && now < at + grace.max(1))
            };
            // A keep-alive of this leader in flight renews the lease when it applies, and its
            // caller then hears that the lease lives: a revocation chained after it would
            // revoke the lease its holder was just told is renewed. A revocation waits for
            // this leader's write in flight (keep-alive, grant or checkpoint) to apply, one
            // grace period at most in case it was lost; meanwhile the lease is not revoked, so
            // no one else can take what it holds.
            let renewing = e.renewing_since.is_some_and(|at| now < at + grace.max(1));
            let deadline = e.base_ms + if e.grace { grace } else { 0 };
            if deadline <= now {
                if !in_flight(true) && !renewing {
                    e.proposed = Some((now, true));
                    let op = e.revoked_record().write(Some(e.expected_rev()));
                    out.push((e.record.id, op, true));
                }
            } else if now.saturating_sub(e.applied_ms) >= self.checkpoint_ms
                && e.base_ms > now
                && !in_flight(false)
                // A keep-alive (or grant) of this leader in flight: a checkpoint computed now,
                // from the deadline before it, would be chained after it and undo it.
                && e.chain.is_none()
            {
                e.proposed = Some((now, false));
                // What the TTL left, and whether a grace applies, separately: so grace periods
                // of successive coordinators never add up, and a checkpoint keeps the one
                // given.
                let checkpoint = LeaseRecord {
                    remaining_ms: e.base_ms - now,
                    graced: e.grace,
                    ..e.record.clone()
                };
                out.push((e.record.id, checkpoint.write(Some(e.expected_rev())), false));
            }
        }
        out
    }

    /// Revoked leases whose keys still have to be deleted.
    pub fn revoked(&self) -> Vec<LeaseId> {
        self.leases
            .values()
            .filter(|e| e.record.revoked)
            .map(|e| e.record.id)
            .collect()
    }

    /// Remembers that request `request` waits for a record of lease `id` to apply.
    pub fn wait(&mut self, request: RequestId, id: LeaseId) {
        self.waiting.insert(request, id);
    }

    /// The lease a request waits on, removed from the waiting list.
    pub fn take_waiting(&mut self, request: RequestId) -> Option<LeaseId> {
        self.waiting.remove(&request)
    }

    /// The record of `id`, if known.
    pub fn record(&self, id: LeaseId) -> Option<&LeaseRecord> {
        self.leases.get(&id).map(|e| &e.record)
    }
}

impl Entry {
    fn new(record: LeaseRecord, t_recv: u64, now: u64, mod_rev: u64) -> Entry {
        Entry {
            base_ms: t_recv + record.remaining_ms,
            grace: record.graced,
            record,
            proposed: None,
            applied_ms: now,
            mod_rev,
            chain: None,
            renewing_since: None,
        }
    }

    /// The revision the next write of this lease expects the record at.
    fn expected_rev(&self) -> u64 {
        self.chain.unwrap_or(self.mod_rev)
    }

    fn revoked_record(&self) -> LeaseRecord {
        LeaseRecord {
            revoked: true,
            remaining_ms: 0,
            graced: false,
            ..self.record.clone()
        }
    }
}

#[cfg(test)]
mod tests;
