//! Random request sequences against one node's core (structure-aware: the fuzzer builds the
//! requests with `arbitrary`), with crashes that lose unsynced writes and restarts in between.
//!
//! Checked: the core never panics; every request (kv and lease) is answered exactly once by
//! its deadline; and, since one node decides everything, each answer agrees with a model of
//! the keyspace (acknowledged writes are read back, also after a crash; compare-and-swap
//! compares what the model holds; scans return the model's range; a write resent with the same
//! session gets the same answer instead of applying twice).

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Arbitrary;
use swarmkv::core::routing::partition_of;
use swarmkv::core::{
    ClientError, Consistency, CoreError, LeaseRequest, Reply, Request, RequestBody, Response,
};
use swarmkv_store::{CasAction, Compare, KvOp, KvOutcome, Session};

use crate::single_node::{store_config, Node};

/// A key: mostly from a small set (so operations meet), sometimes any bytes, sometimes around
/// the size limit.
#[derive(Arbitrary, Debug, Clone)]
pub enum Key {
    Small(u8),
    Raw(Vec<u8>),
    NearLimit(u8),
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Small(n) => format!("k{}", n % 8).into_bytes(),
            Key::Raw(b) => b.clone(),
            Key::NearLimit(n) => vec![b'x'; store_config().limits.max_key - 2 + usize::from(n % 5)],
        }
    }
}

/// A value, possibly around the size limit.
#[derive(Arbitrary, Debug, Clone)]
pub enum Value {
    Small(u8),
    Raw(Vec<u8>),
    NearLimit(u8),
}

impl Value {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Small(n) => vec![*n],
            Value::Raw(b) => b.clone(),
            Value::NearLimit(n) => {
                vec![b'v'; store_config().limits.max_value - 2 + usize::from(n % 5)]
            }
        }
    }
}

/// What a compare-and-swap compares.
#[derive(Arbitrary, Debug, Clone)]
pub enum Cmp {
    /// The key's current modification revision as the model knows it.
    CurrentRevision,
    Revision(u64),
    Value(Value),
    Absent,
}

/// One step of a scenario.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    Get {
        key: Key,
        serializable: bool,
    },
    Put {
        key: Key,
        value: Value,
        /// Attach to a granted lease (by position) or to an unknown id.
        lease: Option<u8>,
        prev_kv: bool,
        session: bool,
    },
    Delete {
        key: Key,
        prev_kv: bool,
        session: bool,
    },
    Cas {
        key: Key,
        compare: Cmp,
        /// Write this value, or delete when `None`.
        put: Option<Value>,
        session: bool,
    },
    DeleteRange {
        partition: u8,
        start: Key,
        end: Option<Key>,
        session: bool,
    },
    /// A raw lease deletion, as a peer could send one.
    DeleteLease {
        partition: u8,
        lease: u8,
    },
    Scan {
        partition: u8,
        start: Key,
        end: Option<Key>,
        limit: u8,
        serializable: bool,
    },
    /// A put addressed to any partition number, the key's or not, in range or not.
    Misrouted {
        partition: u32,
        key: Key,
        value: Value,
    },
    /// The last write again, with the same session.
    Resend,
    Grant {
        ttl_ms: u16,
    },
    KeepAlive {
        lease: u8,
    },
    Revoke {
        lease: u8,
    },
    TimeToLive {
        lease: u8,
    },
    /// Several requests handed over before any is answered.
    Concurrent(Vec<Op>),
    /// Time passes (leases expire, heartbeats go out).
    Wait {
        ms: u16,
    },
    /// A crash that keeps only some of the unsynced writes, and a restart.
    Restart {
        keep_unsynced: u8,
    },
}

/// A whole input: a cluster shape and the steps.
#[derive(Arbitrary, Debug)]
pub struct Scenario {
    pub partitions: u8,
    pub ops: Vec<Op>,
}

/// What the model knows of one key of one partition.
#[derive(Clone, Debug, PartialEq)]
struct Known {
    value: Vec<u8>,
    mod_rev: u64,
}

/// The keyspace as the acknowledged answers made it, per (partition, key). Keys whose state
/// the model cannot know (ambiguous outcomes, lease-attached keys, raw lease deletions) are
/// `unsure` and not checked.
#[derive(Default)]
struct Model {
    keys: BTreeMap<(u32, Vec<u8>), Known>,
    unsure: BTreeSet<(u32, Vec<u8>)>,
    /// Partitions where a raw lease deletion ran: which keys it removed is not modelled.
    unsure_partitions: BTreeSet<u32>,
}

impl Model {
    fn sure(&self, p: u32, key: &[u8]) -> bool {
        !self.unsure_partitions.contains(&p) && !self.unsure.contains(&(p, key.to_vec()))
    }

    fn range_sure(&self, p: u32, start: &[u8], end: Option<&[u8]>) -> bool {
        !self.unsure_partitions.contains(&p)
            && !self
                .unsure
                .iter()
                .any(|(q, k)| *q == p && in_range(k, start, end))
    }

    fn range(&self, p: u32, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Known)> {
        self.keys
            .iter()
            .filter(|((q, k), _)| *q == p && in_range(k, start, end))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    fn forget(&mut self, p: u32, key: &[u8]) {
        self.unsure.insert((p, key.to_vec()));
    }
}

fn in_range(key: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    key >= start && end.is_none_or(|e| key < e)
}

/// A request on its way, with what is needed to judge its answer.
#[derive(Clone, Debug)]
enum Pending {
    Write {
        partition: u32,
        op: KvOp,
    },
    Get {
        partition: u32,
        key: Vec<u8>,
    },
    Scan {
        partition: u32,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    },
    Grant,
    Lease,
}

/// Runs the scenario.
pub struct Runner {
    node: Node,
    model: Model,
    leases: Vec<u64>,
    client: u64,
    seq: u64,
    /// Sessions handed out and not answered yet.
    open_seqs: BTreeSet<u64>,
    /// The last write sent with a session, and its first answer.
    last_write: Option<(Request, Pending, Reply)>,
    /// The read being judged raced with writes: its contents are not compared.
    racing: bool,
}

/// Runs `scenario` against a fresh one-node cluster and checks every answer.
pub fn check(scenario: &Scenario) {
    let partitions = 1 + u32::from(scenario.partitions % 4);
    let run = || -> Result<(), CoreError> {
        let mut node = Node::bootstrap(partitions)?;
        assert!(
            node.await_leadership(200)?,
            "a one-node cluster elects itself"
        );
        let mut runner = Runner {
            node,
            model: Model::default(),
            leases: Vec::new(),
            client: 0xc11e47,
            seq: 0,
            open_seqs: BTreeSet::new(),
            last_write: None,
            racing: false,
        };
        for op in scenario.ops.iter().take(64) {
            runner.step(op)?;
        }
        Ok(())
    };
    // A storage error would be a bug too: the memory backend never fails.
    if let Err(e) = run() {
        panic!("the core failed: {e}");
    }
}

impl Runner {
    fn partition_for(&self, key: &[u8]) -> u32 {
        partition_of(key, self.node.partitions)
    }

    fn lease_id(&self, n: u8) -> u64 {
        match self.leases.len() {
            0 => u64::from(n),
            len => self.leases[usize::from(n) % len],
        }
    }

    fn session(&mut self, with: bool) -> Option<Session> {
        if !with {
            return None;
        }
        self.seq += 1;
        let first_incomplete = self.open_seqs.first().copied().unwrap_or(self.seq);
        self.open_seqs.insert(self.seq);
        Some(Session {
            client: self.client,
            seq: self.seq,
            first_incomplete,
        })
    }

    fn write(&mut self, partition: u32, op: KvOp, session: bool) -> (Request, Pending) {
        let session = self.session(session);
        let req = Request {
            partition,
            body: RequestBody::Write {
                op: op.clone(),
                session,
            },
        };
        (req, Pending::Write { partition, op })
    }

    /// Builds the request of a simple op; `None` for the ops that are not one request.
    fn request(&mut self, op: &Op) -> Option<(Request, Pending)> {
        let consistency = |serializable: bool| {
            if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            }
        };
        Some(match op {
            Op::Get { key, serializable } => {
                let key = key.bytes();
                let partition = self.partition_for(&key);
                let req = Request {
                    partition,
                    body: RequestBody::Get {
                        key: key.clone(),
                        consistency: consistency(*serializable),
                    },
                };
                (req, Pending::Get { partition, key })
            }
            Op::Put {
                key,
                value,
                lease,
                prev_kv,
                session,
            } => {
                let key = key.bytes();
                let op = KvOp::Put {
                    key: key.clone(),
                    value: value.bytes(),
                    lease: lease.map_or(0, |n| self.lease_id(n)),
                    prev_kv: *prev_kv,
                };
                self.write(self.partition_for(&key), op, *session)
            }
            Op::Delete {
                key,
                prev_kv,
                session,
            } => {
                let key = key.bytes();
                let op = KvOp::Delete {
                    key: key.clone(),
                    prev_kv: *prev_kv,
                };
                self.write(self.partition_for(&key), op, *session)
            }
            Op::Cas {
                key,
                compare,
                put,
                session,
            } => {
                let key = key.bytes();
                let partition = self.partition_for(&key);
                let compare = match compare {
                    Cmp::CurrentRevision => Compare::ModRevision(
                        self.model
                            .keys
                            .get(&(partition, key.clone()))
                            .map_or(0, |k| k.mod_rev),
                    ),
                    Cmp::Revision(r) => Compare::ModRevision(*r),
                    Cmp::Value(v) => Compare::Value(v.bytes()),
                    Cmp::Absent => Compare::Absent,
                };
                let action = match put {
                    Some(v) => CasAction::Put(v.bytes()),
                    None => CasAction::Delete,
                };
                let op = KvOp::Cas {
                    key,
                    compare,
                    action,
                };
                self.write(partition, op, *session)
            }
            Op::DeleteRange {
                partition,
                start,
                end,
                session,
            } => {
                let op = KvOp::DeleteRange {
                    start: start.bytes(),
                    end: end.as_ref().map(Key::bytes),
                };
                self.write(u32::from(*partition) % self.node.partitions, op, *session)
            }
            Op::DeleteLease { partition, lease } => {
                let op = KvOp::DeleteLease {
                    lease: self.lease_id(*lease),
                };
                self.write(u32::from(*partition) % self.node.partitions, op, false)
            }
            Op::Scan {
                partition,
                start,
                end,
                limit,
                serializable,
            } => {
                let partition = u32::from(*partition) % self.node.partitions;
                let (start, end, limit) = (
                    start.bytes(),
                    end.as_ref().map(Key::bytes),
                    usize::from(*limit % 8),
                );
                let req = Request {
                    partition,
                    body: RequestBody::Scan {
                        start: start.clone(),
                        end: end.clone(),
                        limit,
                        consistency: consistency(*serializable),
                    },
                };
                let pending = Pending::Scan {
                    partition,
                    start,
                    end,
                    limit,
                };
                (req, pending)
            }
            Op::Misrouted {
                partition,
                key,
                value,
            } => {
                let op = KvOp::Put {
                    key: key.bytes(),
                    value: value.bytes(),
                    lease: 0,
                    prev_kv: false,
                };
                self.write(*partition, op, false)
            }
            _ => return None,
        })
    }

    fn step(&mut self, op: &Op) -> Result<(), CoreError> {
        match op {
            Op::Concurrent(ops) => {
                let mut sent = Vec::new();
                for op in ops.iter().take(16) {
                    if let Some(sent_one) = self.send(op) {
                        sent.push(sent_one);
                    }
                }
                // Writes apply in the order they were proposed, but a read of the burst may
                // be served before or after any of them: reads of a partition the burst
                // writes to are only checked for their shape.
                let written: BTreeSet<u32> = sent
                    .iter()
                    .filter_map(|(_, _, p)| match p {
                        Pending::Write { partition, .. } => Some(*partition),
                        _ => None,
                    })
                    .collect();
                for (id, req, pending) in sent {
                    let reply = self.node.answer(id)?;
                    let racing = match &pending {
                        Pending::Get { partition, .. } | Pending::Scan { partition, .. } => {
                            written.contains(partition)
                        }
                        _ => false,
                    };
                    self.racing = racing;
                    self.judge(req, pending, reply);
                    self.racing = false;
                }
            }
            Op::Resend => {
                let Some((req, pending, first)) = self.last_write.clone() else {
                    return Ok(());
                };
                let id = self.node.submit(req);
                let again = self.node.answer(id)?;
                // A remembered outcome (applied, or refused by the state machine) comes back
                // as it was; an answer that says nothing happened lets the resend apply now.
                let remembered = first.is_ok() || matches!(first, Err(ClientError::Rejected(_)));
                let decided = again.is_ok() || matches!(again, Err(ClientError::Rejected(_)));
                if remembered {
                    if decided {
                        assert_eq!(
                            again, first,
                            "a resent write was not answered as the first time"
                        );
                    }
                } else {
                    self.judge_write(&pending, &again);
                }
            }
            Op::Wait { ms } => {
                let turns = u64::from(*ms) / 10 + 1;
                for _ in 0..turns {
                    self.node.turn()?;
                }
            }
            Op::Restart { keep_unsynced } => {
                let blank = Node::open(swarmkv_store::MemBackend::new(), 1, 0)?;
                let node = std::mem::replace(&mut self.node, blank);
                self.node = node.crash_and_restart(usize::from(*keep_unsynced % 4))?;
                assert!(
                    self.node.await_leadership(200)?,
                    "a restarted one-node cluster elects itself"
                );
                // Acknowledged writes must have survived: read every sure key back.
                let known: Vec<((u32, Vec<u8>), Known)> = self
                    .model
                    .keys
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for ((partition, key), _) in known.into_iter().take(16) {
                    let req = Request {
                        partition,
                        body: RequestBody::Get {
                            key: key.clone(),
                            consistency: Consistency::Linearizable,
                        },
                    };
                    let id = self.node.submit(req.clone());
                    let reply = self.node.answer(id)?;
                    self.judge(Some(req), Pending::Get { partition, key }, reply);
                }
            }
            simple => {
                if let Some((id, req, pending)) = self.send(simple) {
                    let reply = self.node.answer(id)?;
                    self.judge(req, pending, reply);
                }
            }
        }
        Ok(())
    }

    /// Submits one op (a lease op or a request) without waiting for its answer.
    fn send(&mut self, op: &Op) -> Option<(u64, Option<Request>, Pending)> {
        let lease_req = match op {
            Op::Grant { ttl_ms } => Some((
                LeaseRequest::Grant {
                    ttl_ms: u64::from(*ttl_ms),
                },
                Pending::Grant,
            )),
            Op::KeepAlive { lease } => Some((
                LeaseRequest::KeepAlive {
                    id: self.lease_id(*lease),
                },
                Pending::Lease,
            )),
            Op::Revoke { lease } => Some((
                LeaseRequest::Revoke {
                    id: self.lease_id(*lease),
                },
                Pending::Lease,
            )),
            Op::TimeToLive { lease } => Some((
                LeaseRequest::TimeToLive {
                    id: self.lease_id(*lease),
                },
                Pending::Lease,
            )),
            _ => None,
        };
        if let Some((req, pending)) = lease_req {
            let id = self.node.submit_lease(req);
            return Some((id, None, pending));
        }
        let (req, pending) = self.request(op)?;
        let id = self.node.submit(req.clone());
        Some((id, Some(req), pending))
    }

    fn judge(&mut self, req: Option<Request>, pending: Pending, reply: Reply) {
        if let Some(
            req @ Request {
                body:
                    RequestBody::Write {
                        session: Some(s), ..
                    },
                ..
            },
        ) = &req
        {
            self.open_seqs.remove(&s.seq);
            self.last_write = Some((req.clone(), pending.clone(), reply.clone()));
        }
        match &pending {
            Pending::Write { .. } => self.judge_write(&pending, &reply),
            Pending::Get { partition, key } => {
                if let (Ok(resp), true) = (&reply, !self.racing && self.model.sure(*partition, key))
                {
                    let want = self.model.keys.get(&(*partition, key.clone()));
                    match resp {
                        Response::Get(got) => assert_eq!(
                            got.as_ref().map(|r| (&r.value, r.mod_rev)),
                            want.map(|k| (&k.value, k.mod_rev)),
                            "a read of {key:?} in partition {partition} disagrees with the acknowledged writes"
                        ),
                        other => panic!("a get answered {other:?}"),
                    }
                }
            }
            Pending::Scan {
                partition,
                start,
                end,
                limit,
            } => {
                let Ok(resp) = &reply else { return };
                let Response::Scan { records, more, .. } = resp else {
                    panic!("a scan answered {resp:?}");
                };
                assert!(
                    *limit == 0 || records.len() <= *limit,
                    "a scan passed its limit"
                );
                assert!(
                    records.windows(2).all(|w| w[0].0 < w[1].0),
                    "a scan out of order"
                );
                assert!(records
                    .iter()
                    .all(|(k, _)| in_range(k, start, end.as_deref())));
                if !self.racing && self.model.range_sure(*partition, start, end.as_deref()) {
                    let want = self.model.range(*partition, start, end.as_deref());
                    let cut = if *limit == 0 {
                        want.len()
                    } else {
                        want.len().min(*limit)
                    };
                    let got: Vec<(Vec<u8>, Vec<u8>, u64)> = records
                        .iter()
                        .map(|(k, r)| (k.clone(), r.value.clone(), r.mod_rev))
                        .collect();
                    let want_page: Vec<(Vec<u8>, Vec<u8>, u64)> = want[..cut]
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone(), v.mod_rev))
                        .collect();
                    assert_eq!(
                        got, want_page,
                        "a scan disagrees with the acknowledged writes"
                    );
                    assert_eq!(*more, want.len() > cut, "a scan's `more` is wrong");
                }
            }
            Pending::Grant => {
                if let Ok(Response::Lease(info)) = &reply {
                    assert_ne!(info.id, 0, "lease id 0 granted");
                    self.leases.push(info.id);
                }
            }
            Pending::Lease => {}
        }
    }

    fn judge_write(&mut self, pending: &Pending, reply: &Reply) {
        let Pending::Write { partition, op } = pending else {
            return;
        };
        let p = *partition;
        match reply {
            Err(e) if e.is_ambiguous() => {
                // It may or may not have happened: its keys are not known anymore.
                match op.key() {
                    Some(k) => self.model.forget(p, k),
                    None => {
                        self.model.unsure_partitions.insert(p);
                    }
                }
            }
            Err(_) => {}
            Ok(Response::Write(outcome)) => self.apply(p, op, outcome),
            Ok(other) => panic!("a write answered {other:?}"),
        }
    }

    /// Checks a write's outcome against the model, then applies it there.
    fn apply(&mut self, p: u32, op: &KvOp, outcome: &KvOutcome) {
        match (op, outcome) {
            (
                KvOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                },
                KvOutcome::Put { revision, prev },
            ) => {
                if self.model.sure(p, key) && *prev_kv {
                    let want = self.model.keys.get(&(p, key.clone()));
                    assert_eq!(
                        prev.as_ref().map(|r| &r.value),
                        want.map(|k| &k.value),
                        "a put's previous value"
                    );
                }
                self.model.keys.insert(
                    (p, key.clone()),
                    Known {
                        value: value.clone(),
                        mod_rev: *revision,
                    },
                );
                if *lease != 0 {
                    // The lease may expire and take the key with it.
                    self.model.forget(p, key);
                }
            }
            (KvOp::Delete { key, .. }, KvOutcome::Delete { deleted, .. }) => {
                if self.model.sure(p, key) {
                    let had = self.model.keys.contains_key(&(p, key.clone()));
                    assert_eq!(*deleted, had, "a delete of {key:?} says deleted={deleted}");
                }
                self.model.keys.remove(&(p, key.clone()));
            }
            (
                KvOp::Cas {
                    key,
                    compare,
                    action,
                },
                KvOutcome::Cas {
                    revision,
                    succeeded,
                    current,
                },
            ) => {
                if self.model.sure(p, key) {
                    let known = self.model.keys.get(&(p, key.clone()));
                    assert_eq!(
                        current.as_ref().map(|r| (&r.value, r.mod_rev)),
                        known.map(|k| (&k.value, k.mod_rev)),
                        "a compare-and-swap saw another value than the acknowledged one"
                    );
                    let holds = match (compare, known) {
                        (Compare::Absent, None) => true,
                        (Compare::ModRevision(r), Some(k)) => k.mod_rev == *r,
                        (Compare::Value(v), Some(k)) => k.value == *v,
                        _ => false,
                    };
                    assert_eq!(*succeeded, holds, "a compare-and-swap decided wrongly");
                }
                if *succeeded {
                    match action {
                        CasAction::Put(v) => {
                            self.model.keys.insert(
                                (p, key.clone()),
                                Known {
                                    value: v.clone(),
                                    mod_rev: *revision,
                                },
                            );
                        }
                        CasAction::Delete => {
                            self.model.keys.remove(&(p, key.clone()));
                        }
                    }
                }
            }
            (KvOp::DeleteRange { start, end }, KvOutcome::DeleteRange { deleted, .. }) => {
                if self.model.range_sure(p, start, end.as_deref()) {
                    let want = self.model.range(p, start, end.as_deref()).len() as u64;
                    assert_eq!(
                        *deleted, want,
                        "a range delete removed another number of keys"
                    );
                }
                self.model
                    .keys
                    .retain(|(q, k), _| *q != p || !in_range(k, start, end.as_deref()));
                self.model
                    .unsure
                    .retain(|(q, k)| *q != p || !in_range(k, start, end.as_deref()));
            }
            (KvOp::DeleteLease { .. }, KvOutcome::DeleteLease { deleted, .. }) => {
                if *deleted > 0 {
                    self.model.unsure_partitions.insert(p);
                }
            }
            (op, outcome) => panic!("{op:?} answered with {outcome:?}"),
        }
    }
}
