//! Leader election as a service: candidates are meta-group records, each bound to a lease.
//!
//! # The records
//! A candidate of election `name` is the meta record `meta/elect/<name>/<token>`, holding its
//! lease and its value. Its *token* is the meta log index of the entry that created the record
//! (16 hex digits in the key, so key order is token order). An index is committed at most once
//! in the meta group's history, so tokens are never reused and a record created later always
//! has a larger token than every record created before it.
//!
//! **The leader of `name` is the candidate with the lowest token.** A new record can never
//! take the lead from an existing one (its token is larger), so waiting candidates are served
//! in the order they campaigned, and a leader's leadership ends only when its record is
//! deleted: by its own resignation, or because its lease ended (the coordinator deletes the
//! records of every revoked lease, see [`ElectionTable::dead_records`], before it forgets the
//! lease, so a crash in between only delays the deletion). The token is the fencing token:
//! every new leadership of `name` belongs to a record created after the previous leader's, so
//! tokens strictly increase from one leadership to the next.
//!
//! # Why two candidates never both believe they lead
//! A candidate believes it leads from the moment a read of the meta group (a ReadIndex at the
//! meta leader, or the state of a leader that applied everything committed) shows its record
//! as the lowest, until the earliest of: its resignation (it stops believing *before* it
//! sends the deletion), the record seen gone, and its *local deadline* `s + TTL`, where `s` is
//! the time it sent the last keep-alive of its lease that was confirmed. The coordinator
//! times the lease from when it proposed that keep-alive's record, which is after `s`, and
//! never shortens it (see [`super::lease`]), so the lease is revoked, and the record
//! deleted, only after the holder's local deadline has passed.
//!
//! Say A believes it leads over `[a0, a1)` and B over `[b0, b1)`, and B's token is larger.
//! B's read at `r_B <= b0` showed B's record and no record of A. Since B's record was created
//! after A's, that read reflects a state in which A's record had been created and then
//! deleted, and the deletion committed before `r_B`. The deletion was either A's resignation
//! (A stopped believing before it sent it) or the end of A's lease (after A's local deadline).
//! Either way `a1 <= r_B <= b0`: the intervals do not overlap. If B's token is smaller, swap
//! the roles: A's read showed no record of B, so B's record was already deleted and B, which
//! checks its own record is the lowest, cannot lead with it afterwards; and B's leadership
//! before that ended before its deletion, which came before A's read.
//!
//! What the argument assumes: the clocks of the candidate and the coordinator run at the same
//! rate (monotonic clocks; a drift of a few parts per million over a TTL is covered by the
//! delay between sending a keep-alive and its proposal), and that nobody but the holder ends
//! the holder's candidacy early: revoking a lease from elsewhere (`swarmkv lease revoke`) or
//! resigning with someone else's token ends that leadership at once, and the holder learns
//! it only when it next hears from the cluster. Fencing tokens protect the resource then.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use swarmkv_store::{CasAction, Compare, KvOp, KvRecord};

use super::lease::{LeaseId, LeaseWrite};
use super::types::RequestId;

const ELECT_PREFIX: &[u8] = b"meta/elect/";

/// The longest election name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The largest value a candidate may hold, in bytes.
pub const MAX_ELECTION_VALUE: usize = 64 * 1024;
/// The longest an observer waits at the meta leader for a change before it is answered with
/// the current leader (below the 3 s a forwarded call may take).
pub const MAX_OBSERVE_WAIT_MS: u64 = 2_000;

/// What the meta group stores for one candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRecord {
    /// The lease the candidacy lives on.
    pub lease: LeaseId,
    /// The value the candidate campaigns with (or proclaimed since).
    pub value: Vec<u8>,
}

/// One candidate of an election, as the meta group holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The election.
    pub name: String,
    /// The fencing token: the meta log index that created the record.
    pub token: u64,
    /// The lease the candidacy lives on.
    pub lease: LeaseId,
    /// The candidate's value.
    pub value: Vec<u8>,
    /// Revision of the record's last write (changes with every proclaim).
    pub revision: u64,
}

/// What a client asks of the election service (answered by the meta leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionRequest {
    /// Become a candidate of `name` with `value`, on `lease`. Idempotent per (name, lease):
    /// a lease that already has a record in the election gets that record back.
    Campaign {
        name: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    /// Replace the leader's value: refused unless `token` leads `name` on `lease`.
    Proclaim {
        name: String,
        token: u64,
        lease: LeaseId,
        value: Vec<u8>,
    },
    /// Withdraw candidate `token` (on `lease`) from `name`; nothing to do if it is gone.
    Resign {
        name: String,
        token: u64,
        lease: LeaseId,
    },
    /// The current leader of `name` (a linearizable read).
    Leader { name: String },
    /// The leader of `name` once it differs from `known` (token, revision), or after
    /// `wait_ms` (at most [`MAX_OBSERVE_WAIT_MS`]) whatever it is: a long poll.
    Observe {
        name: String,
        known: Option<(u64, u64)>,
        wait_ms: u64,
    },
}

/// Checks an election name: 1 to [`MAX_NAME_LEN`] bytes, no `/` (it separates the name from
/// the token in the record's key) and no control characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "an election name has 1 to {MAX_NAME_LEN} bytes, not {}",
            name.len()
        ));
    }
    if name.chars().any(|c| c == '/' || c.is_control()) {
        return Err("an election name may not contain '/' or control characters".into());
    }
    Ok(())
}

/// The key prefix of every candidate of `name`.
pub fn name_prefix(name: &str) -> Vec<u8> {
    let mut k = ELECT_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(b'/');
    k
}

/// The first key after every candidate of `name` (the end of a scan of them).
pub fn name_prefix_end(name: &str) -> Vec<u8> {
    let mut k = ELECT_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(b'/' + 1);
    k
}

/// The meta key of candidate `token` of `name`.
pub fn record_key(name: &str, token: u64) -> Vec<u8> {
    let mut k = name_prefix(name);
    k.extend_from_slice(format!("{token:016x}").as_bytes());
    k
}

/// The (name, token) a meta key names, if it is a candidate's key.
pub fn parse_key(key: &[u8]) -> Option<(String, u64)> {
    let rest = key.strip_prefix(ELECT_PREFIX)?;
    let slash = rest.iter().rposition(|b| *b == b'/')?;
    let name = std::str::from_utf8(&rest[..slash]).ok()?;
    let token = std::str::from_utf8(&rest[slash + 1..]).ok()?;
    if token.len() != 16 {
        return None;
    }
    Some((name.to_string(), u64::from_str_radix(token, 16).ok()?))
}

/// The candidate a stored meta record describes.
pub fn candidate_of(key: &[u8], rec: &KvRecord) -> Option<Candidate> {
    let (name, token) = parse_key(key)?;
    let r: ElectionRecord = postcard::from_bytes(&rec.value).ok()?;
    Some(Candidate {
        name,
        token,
        lease: r.lease,
        value: r.value,
        revision: rec.mod_rev,
    })
}

fn encode(record: &ElectionRecord) -> Vec<u8> {
    postcard::to_stdvec(record).unwrap_or_default()
}

/// A stored candidate, as this node's meta replica applied it.
#[derive(Clone, Debug)]
struct Stored {
    record: ElectionRecord,
    mod_rev: u64,
}

/// What a request waiting on the meta group turns into when its answer comes.
#[derive(Clone, Debug)]
pub(crate) enum Waiting {
    /// A campaign's record was proposed at `token`.
    Campaign {
        name: String,
        lease: LeaseId,
        token: u64,
    },
    /// A proclaim of `token`: answered with the record as it is then.
    Proclaim { name: String, token: u64 },
    /// A resignation: answered with no candidate.
    Resign,
    /// A read of the lowest record of `name`.
    Leader,
}

/// An observer parked until the leader of `name` changes or `deadline_ms` passes.
#[derive(Clone, Debug)]
struct Observer {
    id: RequestId,
    name: String,
    known: Option<(u64, u64)>,
    deadline_ms: u64,
}

/// Every candidate this node's meta replica knows, the election requests it serves as meta
/// leader, and the deletions of dead candidates it has proposed. Sans-IO: calls that need the
/// time take `now` in ms.
#[derive(Debug)]
pub struct ElectionTable {
    records: BTreeMap<(String, u64), Stored>,
    /// Campaigns proposed and not answered yet, by (name, lease): a resend waits for them
    /// instead of creating a second record.
    campaigning: BTreeMap<(String, LeaseId), u64>,
    /// Deletions of dead candidates proposed, and when.
    deleting: BTreeMap<(String, u64), u64>,
    waiting: BTreeMap<RequestId, Waiting>,
    observers: Vec<Observer>,
    /// A deletion that did not apply within this time is proposed again.
    retry_ms: u64,
}

impl ElectionTable {
    /// An empty table; a deletion of a dead candidate lost to a leader change is proposed
    /// again after `retry_ms`.
    pub fn new(retry_ms: u64) -> ElectionTable {
        ElectionTable {
            records: BTreeMap::new(),
            campaigning: BTreeMap::new(),
            deleting: BTreeMap::new(),
            waiting: BTreeMap::new(),
            observers: Vec::new(),
            retry_ms: retry_ms.max(1),
        }
    }

    /// The key prefix of every candidate record.
    pub fn prefix() -> &'static [u8] {
        ELECT_PREFIX
    }

    /// Replaces the table with the records of a meta replica's storage (a restart or a
    /// snapshot). `records` are (key, value, revision).
    pub fn reload<'a>(&mut self, records: impl IntoIterator<Item = (&'a [u8], &'a [u8], u64)>) {
        self.records.clear();
        self.deleting.clear();
        for (k, v, rev) in records {
            let parsed = parse_key(k).zip(postcard::from_bytes::<ElectionRecord>(v).ok());
            match parsed {
                Some((id, record)) => {
                    self.records.insert(
                        id,
                        Stored {
                            record,
                            mod_rev: rev,
                        },
                    );
                }
                None => log::warn!("bad election record {}", k.escape_ascii()),
            }
        }
    }

    /// A committed meta entry at `index` did `write` to `key` (any meta key).
    pub fn on_apply(&mut self, index: u64, key: &[u8], write: LeaseWrite<'_>) {
        let Some(id) = parse_key(key) else {
            return;
        };
        match write {
            LeaseWrite::Put(v) => match postcard::from_bytes::<ElectionRecord>(v) {
                Ok(record) => {
                    self.records.insert(
                        id,
                        Stored {
                            record,
                            mod_rev: index,
                        },
                    );
                }
                Err(_) => log::warn!("bad election record {}", key.escape_ascii()),
            },
            LeaseWrite::Delete => {
                self.deleting.remove(&id);
                self.records.remove(&id);
            }
            LeaseWrite::Refused => {
                // A deletion that found the record changed (a proclaim won): propose again.
                self.deleting.remove(&id);
            }
        }
    }

    fn candidate(&self, (name, token): (&String, &u64), s: &Stored) -> Candidate {
        Candidate {
            name: name.clone(),
            token: *token,
            lease: s.record.lease,
            value: s.record.value.clone(),
            revision: s.mod_rev,
        }
    }

    /// The candidates of `name` in token order.
    fn of_name<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a (String, u64), &'a Stored)> {
        self.records
            .range((name.to_string(), 0)..=(name.to_string(), u64::MAX))
    }

    /// The leader of `name` as this replica applied it: its lowest token.
    pub fn leader(&self, name: &str) -> Option<Candidate> {
        self.of_name(name)
            .next()
            .map(|((n, t), s)| self.candidate((n, t), s))
    }

    /// Candidate `token` of `name`, if its record exists.
    pub fn get(&self, name: &str, token: u64) -> Option<Candidate> {
        let key = (name.to_string(), token);
        self.records
            .get(&key)
            .map(|s| self.candidate((&key.0, &key.1), s))
    }

    /// The candidate `lease` holds in `name`, if any.
    pub fn of_lease(&self, name: &str, lease: LeaseId) -> Option<Candidate> {
        self.of_name(name)
            .find(|(_, s)| s.record.lease == lease)
            .map(|((n, t), s)| self.candidate((n, t), s))
    }

    /// Whether any candidate lives on `lease` (the lease is not forgotten while one does).
    pub fn has_records_of(&self, lease: LeaseId) -> bool {
        self.records.values().any(|s| s.record.lease == lease)
    }

    /// Leader only: the deletions to propose at `now` of candidates whose lease is dead
    /// (revoked, expired or unknown: `alive` says), each a (name, token, write) conditional on
    /// the record being unchanged. Not proposed again while one is in flight, unless it did
    /// not apply within the retry time (a leader change may have lost it).
    pub fn dead_records(
        &mut self,
        alive: impl Fn(LeaseId) -> bool,
        now: u64,
    ) -> Vec<(String, u64, KvOp)> {
        let mut out = Vec::new();
        for ((name, token), s) in &self.records {
            if alive(s.record.lease) {
                continue;
            }
            let id = (name.clone(), *token);
            if self
                .deleting
                .get(&id)
                .is_some_and(|at| now < at + self.retry_ms)
            {
                continue;
            }
            self.deleting.insert(id, now);
            out.push((name.clone(), *token, delete_write(name, *token, s.mod_rev)));
        }
        out
    }

    /// Remembers that request `id` waits for `what`.
    pub(crate) fn wait(&mut self, id: RequestId, what: Waiting) {
        if let Waiting::Campaign { name, lease, token } = &what {
            self.campaigning.insert((name.clone(), *lease), *token);
        }
        self.waiting.insert(id, what);
    }

    /// What request `id` waits for, removed.
    pub(crate) fn take_waiting(&mut self, id: RequestId) -> Option<Waiting> {
        let w = self.waiting.remove(&id)?;
        if let Waiting::Campaign { name, lease, .. } = &w {
            self.campaigning.remove(&(name.clone(), *lease));
        }
        Some(w)
    }

    /// Whether a campaign of `lease` in `name` is proposed and not answered yet.
    pub fn campaign_in_flight(&self, name: &str, lease: LeaseId) -> bool {
        self.campaigning.contains_key(&(name.to_string(), lease))
    }

    /// Parks observer `id` of `name` until its leader differs from `known` or `deadline_ms`.
    pub fn park(
        &mut self,
        id: RequestId,
        name: String,
        known: Option<(u64, u64)>,
        deadline_ms: u64,
    ) {
        self.observers.push(Observer {
            id,
            name,
            known,
            deadline_ms,
        });
    }

    /// Whether the leader of `name` differs from `known` (token, revision).
    pub fn changed(&self, name: &str, known: Option<(u64, u64)>) -> bool {
        self.leader(name).map(|c| (c.token, c.revision)) != known
    }

    /// The parked observers to answer at `now`: their leader changed or their wait is over.
    /// Each is (request, name).
    pub fn ready_observers(&mut self, now: u64) -> Vec<(RequestId, String)> {
        let (ready, parked): (Vec<Observer>, Vec<Observer>) = std::mem::take(&mut self.observers)
            .into_iter()
            .partition(|o| o.deadline_ms <= now || self.changed(&o.name, o.known));
        self.observers = parked;
        ready.into_iter().map(|o| (o.id, o.name)).collect()
    }

    /// This node stopped leading the meta group: forgets what it proposed and returns the
    /// parked observers, which must be told to ask the new leader.
    pub fn on_lose_leadership(&mut self) -> Vec<RequestId> {
        self.campaigning.clear();
        self.deleting.clear();
        self.waiting.clear();
        std::mem::take(&mut self.observers)
            .into_iter()
            .map(|o| o.id)
            .collect()
    }

    /// The write that creates candidate `token` of `name` (refused if the key exists).
    pub fn campaign_write(name: &str, token: u64, lease: LeaseId, value: Vec<u8>) -> KvOp {
        KvOp::Cas {
            key: record_key(name, token),
            compare: Compare::Absent,
            action: CasAction::Put(encode(&ElectionRecord { lease, value })),
        }
    }

    /// The write that gives candidate `c` a new value, if its record is unchanged.
    pub fn proclaim_write(c: &Candidate, value: Vec<u8>) -> KvOp {
        KvOp::Cas {
            key: record_key(&c.name, c.token),
            compare: Compare::ModRevision(c.revision),
            action: CasAction::Put(encode(&ElectionRecord {
                lease: c.lease,
                value,
            })),
        }
    }

    /// The write that deletes candidate `c`, if its record is unchanged.
    pub fn resign_write(c: &Candidate) -> KvOp {
        delete_write(&c.name, c.token, c.revision)
    }
}

fn delete_write(name: &str, token: u64, rev: u64) -> KvOp {
    KvOp::Cas {
        key: record_key(name, token),
        compare: Compare::ModRevision(rev),
        action: CasAction::Delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(t: &mut ElectionTable, index: u64, name: &str, token: u64, lease: LeaseId, v: &[u8]) {
        let rec = encode(&ElectionRecord {
            lease,
            value: v.to_vec(),
        });
        t.on_apply(index, &record_key(name, token), LeaseWrite::Put(&rec));
    }

    #[test]
    fn keys_round_trip_and_sort_by_token() {
        let k = record_key("db-primary", 0x1234);
        assert_eq!(parse_key(&k), Some(("db-primary".to_string(), 0x1234)));
        assert!(k.starts_with(&name_prefix("db-primary")));
        assert!(k.as_slice() < name_prefix_end("db-primary").as_slice());
        assert!(record_key("a", 9) < record_key("a", 10));
        // The candidates of "a" are not mistaken for those of "a.b" or "ab" by a scan.
        assert!(
            record_key("a.b", 1).as_slice() >= name_prefix_end("a").as_slice()
                || record_key("a.b", 1).as_slice() < name_prefix("a").as_slice()
        );
        assert_eq!(parse_key(b"meta/lease/0000000000000001"), None);
        assert!(ElectionTable::prefix().starts_with(crate::core::MetaState::prefix()));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("leader-of.the_pack:1").is_ok());
        for bad in ["", "a/b", "tab\tname", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_lowest_token_leads_and_a_deletion_passes_the_lead_on_in_order() {
        let mut t = ElectionTable::new(1_000);
        put(&mut t, 30, "e", 30, 7, b"c");
        put(&mut t, 10, "e", 10, 5, b"a");
        put(&mut t, 20, "e", 20, 6, b"b");
        put(&mut t, 15, "other", 15, 5, b"z");
        assert_eq!(t.leader("e").map(|c| c.token), Some(10));
        assert_eq!(t.of_lease("e", 6).map(|c| c.token), Some(20));
        t.on_apply(40, &record_key("e", 10), LeaseWrite::Delete);
        let l = t.leader("e").unwrap();
        assert_eq!(
            (l.token, l.lease, l.value.as_slice()),
            (20, 6, b"b".as_slice())
        );
        // A proclaim changes the revision, not the token.
        put(&mut t, 41, "e", 20, 6, b"b2");
        assert_eq!(t.leader("e").map(|c| (c.token, c.revision)), Some((20, 41)));
        assert!(t.has_records_of(5));
        assert!(t.leader("nobody").is_none());
    }

    #[test]
    fn dead_candidates_are_deleted_once_per_retry_period() {
        let mut t = ElectionTable::new(1_000);
        put(&mut t, 10, "e", 10, 5, b"a");
        put(&mut t, 11, "e", 11, 6, b"b");
        let dead = t.dead_records(|l| l != 5, 0);
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].0.as_str(), dead[0].1), ("e", 10));
        assert!(matches!(
            &dead[0].2,
            KvOp::Cas {
                compare: Compare::ModRevision(10),
                action: CasAction::Delete,
                ..
            }
        ));
        assert!(t.dead_records(|l| l != 5, 500).is_empty(), "in flight");
        assert_eq!(t.dead_records(|l| l != 5, 1_000).len(), 1, "lost: again");
        t.on_apply(12, &record_key("e", 10), LeaseWrite::Delete);
        assert!(t.dead_records(|l| l != 5, 5_000).is_empty());
        assert!(!t.has_records_of(5));
    }

    #[test]
    fn observers_wake_on_a_change_or_at_their_deadline() {
        let mut t = ElectionTable::new(1_000);
        put(&mut t, 10, "e", 10, 5, b"a");
        t.park(1, "e".into(), Some((10, 10)), 2_000);
        t.park(2, "e".into(), None, 2_000);
        t.park(3, "f".into(), None, 1_000);
        // 2 knew no leader: there is one now.
        assert_eq!(t.ready_observers(0), vec![(2, "e".to_string())]);
        assert!(t.ready_observers(500).is_empty());
        assert_eq!(t.ready_observers(1_000), vec![(3, "f".to_string())]);
        put(&mut t, 11, "e", 10, 5, b"proclaimed");
        assert_eq!(t.ready_observers(1_001), vec![(1, "e".to_string())]);
        t.park(4, "e".into(), Some((10, 11)), 9_000);
        assert_eq!(t.on_lose_leadership(), vec![4]);
    }

    #[test]
    fn a_campaign_in_flight_is_known_until_answered() {
        let mut t = ElectionTable::new(1_000);
        t.wait(
            7,
            Waiting::Campaign {
                name: "e".into(),
                lease: 3,
                token: 50,
            },
        );
        assert!(t.campaign_in_flight("e", 3));
        assert!(!t.campaign_in_flight("e", 4));
        assert!(matches!(t.take_waiting(7), Some(Waiting::Campaign { .. })));
        assert!(!t.campaign_in_flight("e", 3));
    }
}
