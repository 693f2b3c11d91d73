//! Simulated clients: what they ask (get / put / compare-and-swap / delete on a few keys, with
//! a unique value per write) and how an answer becomes an entry of the history the
//! linearizability checker reads. Half of the compare-and-swaps go as transactions (a compare,
//! then the write and a read of the key, or else a read), which the register model checks as
//! the compare-and-swap they are.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::Rng;
use swarmkv::core::{ClientError, Consistency, NodeId, Reply, RequestBody, RequestId, Response};
use swarmkv_store::{
    CasAction, Compare, CompareOp, CompareTarget, KvOp, KvOutcome, KvRecord, Session, Txn,
    TxnCompare, TxnOp, TxnOpResult,
};

use crate::linearizability::{Expect, Input, Output, Value};

/// The bytes of key number `k`.
pub fn key_bytes(k: usize) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// The bytes of value `v` (values are unique per write, so a read names the write it saw).
pub fn value_bytes(v: Value) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// The value id of stored bytes, if they are one of ours.
pub fn value_of(bytes: &[u8]) -> Option<Value> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Ok(Output),
    /// Did not happen (excluded from the history).
    Failed(String),
    /// May or may not have happened.
    Ambiguous(String),
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct OpRecord {
    pub client: u64,
    pub key: usize,
    pub call: u64,
    pub ret: u64,
    pub input: Input,
    pub body: RequestBody,
    pub outcome: Outcome,
    /// For a successful write that changed its key: the revision it reported.
    pub write_revision: Option<u64>,
}

/// Where a client is.
#[derive(Clone, Debug)]
pub enum ClientState {
    /// Starts its next operation at this time.
    Idle { next_at: u64 },
    /// Waiting for an answer to the current attempt of operation `op`.
    Busy {
        op: usize,
        rid: RequestId,
        attempt: u32,
        attempt_deadline: u64,
        /// An earlier attempt of this write may have taken effect.
        ambiguous: bool,
    },
    /// Between attempts of operation `op` (after an ambiguous or retryable failure).
    Retrying {
        op: usize,
        at: u64,
        attempt: u32,
        ambiguous: bool,
    },
}

/// A client with at most one operation in flight.
pub struct Client {
    pub id: u64,
    pub state: ClientState,
    next_value: u64,
    next_seq: u64,
    /// Leader hints per partition.
    pub hints: BTreeMap<u32, NodeId>,
    /// Last value and revision this client saw per key (for compare-and-swap).
    known: BTreeMap<usize, (Value, u64)>,
}

impl Client {
    pub fn new(id: u64) -> Client {
        Client {
            id,
            state: ClientState::Idle { next_at: 0 },
            next_value: 0,
            next_seq: 0,
            hints: BTreeMap::new(),
            known: BTreeMap::new(),
        }
    }

    fn fresh_value(&mut self) -> Value {
        self.next_value += 1;
        (self.id << 32) | self.next_value
    }

    /// Picks the next operation on one of `keys` keys: its model input and its request.
    pub fn next_op(&mut self, rng: &mut StdRng, keys: usize) -> (usize, Input, RequestBody) {
        let key = rng.gen_range(0..keys);
        let kb = key_bytes(key);
        let roll = rng.gen_range(0..100);
        if roll < 40 {
            let body = RequestBody::Get {
                key: kb,
                consistency: Consistency::Linearizable,
            };
            return (key, Input::Get, body);
        }
        self.next_seq += 1;
        let session = Some(Session {
            client: self.id,
            seq: self.next_seq,
            first_incomplete: self.next_seq,
        });
        let (input, op) = if roll < 65 {
            let v = self.fresh_value();
            let op = KvOp::Put {
                key: kb,
                value: value_bytes(v),
                lease: 0,
                prev_kv: false,
            };
            (Input::Put(v), op)
        } else if roll < 80 {
            (
                Input::Delete,
                KvOp::Delete {
                    key: kb,
                    prev_kv: false,
                },
            )
        } else {
            let known = self.known.get(&key).copied();
            let (expect, compare) = match (known, rng.gen_range(0..10)) {
                (Some((v, _)), 0..=4) => (Expect::Value(v), Compare::Value(value_bytes(v))),
                // A compare on the revision of a value is a compare on that value: every
                // value is written once, at one revision.
                (Some((v, rev)), 5..=7) => (Expect::Value(v), Compare::ModRevision(rev)),
                _ => (Expect::Absent, Compare::Absent),
            };
            let (then, action) = if rng.gen_bool(0.8) {
                let v = self.fresh_value();
                (Some(v), CasAction::Put(value_bytes(v)))
            } else {
                (None, CasAction::Delete)
            };
            let op = if rng.gen_bool(0.5) {
                txn_of(kb, compare, action)
            } else {
                KvOp::Cas {
                    key: kb,
                    compare,
                    action,
                }
            };
            (Input::Cas { expect, then }, op)
        };
        (key, input, RequestBody::Write { op, session })
    }

    /// Remembers a value seen for a key.
    pub fn saw(&mut self, key: usize, record: Option<&KvRecord>) {
        match record.and_then(|r| value_of(&r.value).map(|v| (v, r.mod_rev))) {
            Some(vr) => {
                self.known.insert(key, vr);
            }
            None => {
                self.known.remove(&key);
            }
        }
    }
}

/// A compare-and-swap as a transaction: the compare; then the action and a read of the key;
/// else a read of the key (what the compare saw).
fn txn_of(key: Vec<u8>, compare: Compare, action: CasAction) -> KvOp {
    let target = match compare {
        Compare::Absent => CompareTarget::Version(0),
        Compare::Value(v) => CompareTarget::Value(v),
        Compare::ModRevision(r) => CompareTarget::ModRevision(r),
    };
    let write = match action {
        CasAction::Put(value) => TxnOp::Put {
            key: key.clone(),
            value,
            lease: 0,
        },
        CasAction::Delete => TxnOp::Delete { key: key.clone() },
    };
    KvOp::Txn(Txn {
        compares: vec![TxnCompare {
            key: key.clone(),
            target,
            op: CompareOp::Equal,
        }],
        success: vec![write, TxnOp::Get { key: key.clone() }],
        failure: vec![TxnOp::Get { key }],
    })
}

/// What an answer means for the history.
pub enum Interpretation {
    /// Succeeded: the model output, records seen (value, revision) and, for a write that
    /// changed its key, the revision it wrote.
    Ok {
        output: Output,
        seen: Vec<(Value, u64)>,
        record: Option<Option<KvRecord>>,
        wrote: Option<(Value, u64)>,
        write_revision: Option<u64>,
    },
    /// Did not happen: safe to give up or retry.
    Definite(ClientError),
    /// May have happened.
    Ambiguous(ClientError),
    /// An answer no correct node gives (a protocol violation).
    Nonsense(String),
}

fn seen_of(r: &Option<KvRecord>) -> Result<Option<(Value, u64)>, String> {
    match r {
        None => Ok(None),
        Some(rec) => value_of(&rec.value)
            .map(|v| Some((v, rec.mod_rev)))
            .ok_or_else(|| format!("a record holds a value nobody wrote: {rec:?}")),
    }
}

/// Reads an answer to `input`.
pub fn interpret(input: &Input, reply: &Reply) -> Interpretation {
    let ok = |output, seen: Vec<Option<(Value, u64)>>, record, wrote, write_revision| {
        Interpretation::Ok {
            output,
            seen: seen.into_iter().flatten().collect(),
            record,
            wrote,
            write_revision,
        }
    };
    match (input, reply) {
        (_, Err(e)) if e.is_ambiguous() => Interpretation::Ambiguous(e.clone()),
        (_, Err(ClientError::Rejected(k))) => {
            Interpretation::Ambiguous(ClientError::Rejected(k.clone()))
        }
        (_, Err(e)) => Interpretation::Definite(e.clone()),
        (Input::Get, Ok(Response::Get(r))) => match seen_of(r) {
            Ok(s) => ok(
                Output::Get(s.map(|(v, _)| v)),
                vec![s],
                Some(r.clone()),
                None,
                None,
            ),
            Err(e) => Interpretation::Nonsense(e),
        },
        (Input::Put(v), Ok(Response::Write(KvOutcome::Put { revision, .. }))) => ok(
            Output::Put,
            vec![],
            None,
            Some((*v, *revision)),
            Some(*revision),
        ),
        (
            Input::Delete,
            Ok(Response::Write(KvOutcome::Delete {
                revision, deleted, ..
            })),
        ) => ok(
            Output::Delete { deleted: *deleted },
            vec![],
            Some(None),
            None,
            deleted.then_some(*revision),
        ),
        (
            Input::Cas { then, .. },
            Ok(Response::Write(KvOutcome::Cas {
                revision,
                succeeded,
                current,
            })),
        ) => match seen_of(current) {
            Ok(s) => {
                let wrote = then.filter(|_| *succeeded).map(|v| (v, *revision));
                let record = succeeded.then(|| {
                    then.map(|v| KvRecord {
                        value: value_bytes(v),
                        create_rev: 0,
                        mod_rev: *revision,
                        version: 0,
                        lease: 0,
                    })
                });
                ok(
                    Output::Cas {
                        succeeded: *succeeded,
                        before: s.map(|(v, _)| v),
                    },
                    vec![s],
                    record.or(Some(current.clone())),
                    wrote,
                    succeeded.then_some(*revision),
                )
            }
            Err(e) => Interpretation::Nonsense(e),
        },
        (
            Input::Cas { expect, then },
            Ok(Response::Write(KvOutcome::Txn {
                revision,
                succeeded,
                results,
            })),
        ) => {
            // The last result is the read of the key: after the write, or what the compare saw.
            let read = match results.last() {
                Some(TxnOpResult::Get(r)) => r,
                _ => {
                    return Interpretation::Nonsense(format!(
                        "a transaction's results end without its read: {results:?}"
                    ))
                }
            };
            let seen = match seen_of(read) {
                Ok(s) => s,
                Err(e) => return Interpretation::Nonsense(e),
            };
            if !*succeeded {
                return ok(
                    Output::Cas {
                        succeeded: false,
                        before: seen.map(|(v, _)| v),
                    },
                    vec![seen],
                    Some(read.clone()),
                    None,
                    None,
                );
            }
            if seen.map(|(v, _)| v) != *then {
                return Interpretation::Nonsense(format!(
                    "a transaction wrote {then:?} and then read {seen:?}"
                ));
            }
            let before = match expect {
                Expect::Absent => None,
                Expect::Value(v) => Some(*v),
            };
            ok(
                Output::Cas {
                    succeeded: true,
                    before,
                },
                vec![seen],
                Some(read.clone()),
                then.map(|v| (v, *revision)),
                Some(*revision),
            )
        }
        (i, Ok(r)) => Interpretation::Nonsense(format!("answer {r:?} to {i:?}")),
    }
}
