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
//! everything). Each further coordinator change may add at most one `E` again, once per record.
//!
//! # Expiry and revocation
//! When the effective deadline passes, the leader proposes the record with `revoked = true`.
//! A revoked record stays in the meta group until the coordinator has deleted the lease's keys
//! in every partition (an idempotent `KvOp::DeleteLease` each) and then deletes the record; a
//! new coordinator redoes the deletions of every revoked record it finds, so a crash in the
//! middle loses nothing.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use swarmkv_store::KvOp;

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

    /// The write that records this lease.
    pub fn put(&self) -> KvOp {
        KvOp::Put {
            key: LeaseRecord::key(self.id),
            value: postcard::to_stdvec(self).unwrap_or_default(),
            lease: 0,
            prev_kv: false,
        }
    }

    /// The write that forgets lease `id` (after its keys are gone everywhere).
    pub fn delete(id: LeaseId) -> KvOp {
        KvOp::Delete {
            key: LeaseRecord::key(id),
            prev_kv: false,
        }
    }

    /// The key prefix of lease records.
    pub fn prefix() -> &'static [u8] {
        LEASE_PREFIX
    }
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
    waiting: HashMap<RequestId, LeaseId>,
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
            waiting: HashMap::new(),
            grace_ms: election_timeout_ms,
            checkpoint_ms: election_timeout_ms.max(1000),
        }
    }

    /// Replaces the table with the records of a meta replica's storage (a restart or a
    /// snapshot): deadlines count from `now`, so they are never earlier than the leader's.
    pub fn reload<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        now: u64,
    ) {
        self.leases.clear();
        self.received.clear();
        for (k, v) in records {
            let Some(id) = LeaseRecord::id_of_key(k) else {
                continue;
            };
            match postcard::from_bytes::<LeaseRecord>(v) {
                Ok(record) if record.id == id => {
                    self.leases.insert(id, Entry::new(record, now, now));
                }
                _ => log::warn!("bad lease record {}", k.escape_ascii()),
            }
        }
    }

    /// Meta entry `index` was appended to this node's log at `now`.
    pub fn note_appended(&mut self, index: u64, now: u64) {
        self.received.insert(index, now);
    }

    /// A committed meta entry at `index` of `term` wrote `key` (`value` `None`: deleted).
    /// `leader_term` is this node's term when it leads the meta group.
    pub fn on_apply(
        &mut self,
        index: u64,
        term: u64,
        key: &[u8],
        value: Option<&[u8]>,
        now: u64,
        leader_term: Option<u64>,
    ) {
        let t_recv = self.received.get(&index).copied().unwrap_or(now).min(now);
        self.received = self.received.split_off(&(index + 1));
        let Some(id) = LeaseRecord::id_of_key(key) else {
            return;
        };
        let Some(value) = value else {
            self.leases.remove(&id);
            return;
        };
        let record = match postcard::from_bytes::<LeaseRecord>(value) {
            Ok(r) if r.id == id => r,
            _ => {
                log::warn!("bad lease record {}", key.escape_ascii());
                return;
            }
        };
        let mut e = Entry::new(record, t_recv, now);
        // Written under an earlier leader and applied by this one: the new leader's grace
        // still holds for it.
        e.grace = leader_term.is_some_and(|lt| term < lt);
        self.leases.insert(id, e);
    }

    /// This node became the meta leader: every lease gets one election timeout of grace.
    pub fn on_become_leader(&mut self) {
        for e in self.leases.values_mut() {
            e.grace = true;
            e.proposed = None;
        }
    }

    /// This node stopped leading the meta group.
    pub fn on_lose_leadership(&mut self) {
        self.waiting.clear();
        for e in self.leases.values_mut() {
            e.proposed = None;
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

    /// The record a grant of lease `id` proposes.
    pub fn grant(id: LeaseId, ttl_ms: u64) -> LeaseRecord {
        LeaseRecord {
            id,
            ttl_ms,
            remaining_ms: ttl_ms,
            revoked: false,
        }
    }

    /// The record a keep-alive of `id` proposes, if the lease is alive at `now`.
    pub fn keep_alive(&self, id: LeaseId, now: u64) -> Result<LeaseRecord, LeaseMiss> {
        self.info(id, now).ok_or(LeaseMiss::NotFound)?;
        let e = &self.leases[&id];
        Ok(LeaseTable::grant(id, e.record.ttl_ms))
    }

    /// The record a revocation of `id` proposes (a revoked lease may be revoked again).
    pub fn revoke(&self, id: LeaseId) -> Result<LeaseRecord, LeaseMiss> {
        let e = self.leases.get(&id).ok_or(LeaseMiss::NotFound)?;
        Ok(LeaseRecord {
            revoked: true,
            remaining_ms: 0,
            ..e.record.clone()
        })
    }

    /// Leader only: the records to propose at `now`: revocations of leases past their
    /// deadline, and remaining-TTL checkpoints of live leases whose last record is older than
    /// the checkpoint period (so a restart or snapshot carries a recent remaining TTL).
    pub fn due(&mut self, now: u64) -> Vec<LeaseRecord> {
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
            let deadline = e.base_ms + if e.grace { grace } else { 0 };
            if deadline <= now {
                if !in_flight(true) {
                    e.proposed = Some((now, true));
                    out.push(LeaseRecord {
                        revoked: true,
                        remaining_ms: 0,
                        ..e.record.clone()
                    });
                }
            } else if now.saturating_sub(e.applied_ms) >= self.checkpoint_ms && !in_flight(false) {
                e.proposed = Some((now, false));
                out.push(LeaseRecord {
                    remaining_ms: deadline - now,
                    ..e.record.clone()
                });
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
    fn new(record: LeaseRecord, t_recv: u64, now: u64) -> Entry {
        Entry {
            base_ms: t_recv + record.remaining_ms,
            record,
            grace: false,
            proposed: None,
            applied_ms: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 1000;

    fn apply(
        t: &mut LeaseTable,
        index: u64,
        term: u64,
        r: &LeaseRecord,
        now: u64,
        lt: Option<u64>,
    ) {
        let v = postcard::to_stdvec(r).unwrap();
        t.on_apply(index, term, &LeaseRecord::key(r.id), Some(&v), now, lt);
    }

    #[test]
    fn leader_deadline_counts_from_the_proposal_not_the_apply() {
        let mut t = LeaseTable::new(E);
        t.note_appended(10, 1_000);
        apply(&mut t, 10, 2, &LeaseTable::grant(7, 5_000), 1_030, Some(2));
        assert_eq!(t.info(7, 1_030).map(|i| i.remaining_ms), Some(4_970));
        assert_eq!(t.info(7, 5_999).map(|i| i.remaining_ms), Some(1));
        assert_eq!(t.info(7, 6_000), None, "expired exactly at proposal + TTL");
    }

    #[test]
    fn new_leader_carries_the_remaining_ttl_plus_at_most_one_election_timeout() {
        // Old leader: keep-alive proposed at 10_000 (its clock), TTL 5_000: deadline 15_000.
        // Follower (different clock, offset 500_000): the entry arrives 20 ms after the
        // proposal, applies 100 ms after it.
        let off = 500_000;
        let mut f = LeaseTable::new(E);
        f.note_appended(42, off + 10_020);
        apply(
            &mut f,
            42,
            3,
            &LeaseTable::grant(9, 5_000),
            off + 10_100,
            None,
        );
        // The old leader dies at 12_000; the follower wins the election at 13_500.
        f.on_become_leader();
        let now = off + 13_500;
        let left = f.info(9, now).unwrap().remaining_ms;
        // Without failover 1_500 ms were left; never less, at most E + the 20 ms delay more.
        assert!(left >= 1_500, "shortened: {left}");
        assert!(left <= 1_500 + E + 20, "extended too much: {left}");
        assert_eq!(left, 1_500 + E + 20);
        // Nothing is due before the carried deadline (a checkpoint at most), and a
        // checkpoint in flight does not hold the revocation back.
        let early = f.due(off + 16_019);
        assert!(early.iter().all(|r| !r.revoked && r.remaining_ms == 1));
        let due = f.due(off + 16_020);
        assert_eq!(due.len(), 1);
        assert!(due[0].revoked && due[0].id == 9);
    }

    #[test]
    fn the_full_ttl_is_never_restored_by_a_leader_change() {
        // A lease granted long ago and checkpointed: the checkpoint's remaining TTL is what a
        // new leader carries, not the TTL.
        let mut f = LeaseTable::new(E);
        let cp = LeaseRecord {
            id: 3,
            ttl_ms: 60_000,
            remaining_ms: 2_000,
            revoked: false,
        };
        f.note_appended(5, 100);
        apply(&mut f, 5, 1, &cp, 120, None);
        f.on_become_leader();
        assert_eq!(f.info(3, 200).unwrap().remaining_ms, 100 + 2_000 + E - 200);
        // Leadership flapping back and forth does not stack grace periods for one record.
        f.on_lose_leadership();
        f.on_become_leader();
        assert_eq!(f.info(3, 200).unwrap().remaining_ms, 100 + 2_000 + E - 200);
    }

    #[test]
    fn a_record_of_the_leaders_own_term_clears_the_grace() {
        let mut t = LeaseTable::new(E);
        t.note_appended(1, 0);
        apply(&mut t, 1, 1, &LeaseTable::grant(4, 3_000), 5, None);
        t.on_become_leader();
        // An older-term entry applied by the new leader (term 2) keeps the grace...
        t.note_appended(2, 10);
        apply(&mut t, 2, 1, &LeaseTable::grant(4, 3_000), 500, Some(2));
        assert_eq!(t.info(4, 500).unwrap().remaining_ms, 10 + 3_000 + E - 500);
        // ...its own keep-alive does not need it.
        t.note_appended(3, 600);
        apply(&mut t, 3, 2, &LeaseTable::grant(4, 3_000), 610, Some(2));
        assert_eq!(t.info(4, 610).unwrap().remaining_ms, 600 + 3_000 - 610);
    }

    #[test]
    fn restart_and_snapshot_count_from_now() {
        let r = LeaseRecord {
            id: 8,
            ttl_ms: 10_000,
            remaining_ms: 4_000,
            revoked: false,
        };
        let k = LeaseRecord::key(8);
        let v = postcard::to_stdvec(&r).unwrap();
        let mut t = LeaseTable::new(E);
        t.reload(
            [
                (k.as_slice(), v.as_slice()),
                (b"meta/other".as_slice(), b"x".as_slice()),
            ],
            77,
        );
        assert_eq!(t.info(8, 77).unwrap().remaining_ms, 4_000);
        assert_eq!(t.info(8, 77).unwrap().ttl_ms, 10_000);
    }

    #[test]
    fn checkpoints_carry_the_remaining_ttl_and_revocations_are_proposed_once() {
        let mut t = LeaseTable::new(E);
        t.note_appended(1, 0);
        apply(&mut t, 1, 1, &LeaseTable::grant(2, 10_000), 0, Some(1));
        assert!(t.due(500).is_empty());
        let cp = t.due(1_000);
        assert_eq!(cp.len(), 1);
        assert!(!cp[0].revoked);
        assert_eq!(cp[0].remaining_ms, 9_000);
        // In flight: not proposed again until it applies or a grace period passes.
        assert!(t.due(1_500).is_empty());
        t.note_appended(2, 1_000);
        apply(&mut t, 2, 1, &cp[0], 1_010, Some(1));
        assert_eq!(t.info(2, 1_010).unwrap().remaining_ms, 8_990);
        // Expired: one revocation, then nothing while it is in flight.
        let due = t.due(10_000);
        assert!(due.len() == 1 && due[0].revoked);
        assert!(t.due(10_100).is_empty());
        assert_eq!(t.keep_alive(2, 10_000), Err(LeaseMiss::NotFound));
        apply(&mut t, 3, 1, &due[0], 10_050, Some(1));
        assert_eq!(t.revoked(), vec![2]);
        assert!(t.due(20_000).is_empty());
        t.on_apply(4, 1, &LeaseRecord::key(2), None, 20_000, Some(1));
        assert!(!t.contains(2));
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            LeaseRecord::id_of_key(&LeaseRecord::key(0xdead)),
            Some(0xdead)
        );
        assert_eq!(LeaseRecord::id_of_key(b"meta/node/01"), None);
        assert!(LeaseRecord::key(1).starts_with(crate::core::MetaState::prefix()));
    }
}
