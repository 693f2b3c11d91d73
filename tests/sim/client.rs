//! Simulated clients: what they ask (get / put / compare-and-swap / delete on a few keys, with
//! a unique value per write, and transactions on a few pairs of keys) and how an answer becomes
//! an entry of the history the linearizability checker reads. Half of the compare-and-swaps go
//! as transactions (a compare, then the write and a read of the key, or else a read), which the
//! register model checks as the compare-and-swap they are. The two keys of a pair share a hash
//! tag, so one partition; they are only ever changed together, by transactions that compare
//! either, write either or both, and read both, which the checker takes as one object of two
//! registers.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::Rng;
use swarmkv::core::{ClientError, Consistency, NodeId, Reply, RequestBody, RequestId, Response};
use swarmkv_store::{
    CasAction, Compare, CompareOp, CompareTarget, KvOp, KvOutcome, KvRecord, Session, Txn,
    TxnCompare, TxnOp, TxnOpResult,
};

use crate::linearizability::{Expect, Input, Output, Value};

/// What the clients work on: `keys` single keys (objects `0..keys`), then `pairs` pairs of
/// keys of one hash tag.
#[derive(Clone, Copy, Debug)]
pub struct Objects {
    pub keys: usize,
    pub pairs: usize,
}

impl Objects {
    pub fn count(&self) -> usize {
        self.keys + self.pairs
    }

    pub fn is_pair(&self, object: usize) -> bool {
        object >= self.keys
    }

    /// The keys of `object`: its one key, or the pair's two. The first decides the partition.
    pub fn keys_of(&self, object: usize) -> Vec<Vec<u8>> {
        if self.is_pair(object) {
            let tag = object - self.keys;
            ["a", "b"]
                .iter()
                .map(|k| format!("{{pair-{tag}}}{k}").into_bytes())
                .collect()
        } else {
            vec![format!("key-{object}").into_bytes()]
        }
    }

    /// A request that reads `object` linearizably: a get, or a transaction reading the pair.
    pub fn read(&self, object: usize) -> (Input, RequestBody) {
        let keys = self.keys_of(object);
        if self.is_pair(object) {
            let op = pair_txn(&keys, &[], [None, None]);
            let input = Input::Txn {
                expect: [None, None],
                then: [None, None],
            };
            return (input, RequestBody::Write { op, session: None });
        }
        let body = RequestBody::Get {
            key: keys[0].clone(),
            consistency: Consistency::Linearizable,
        };
        (Input::Get, body)
    }
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
    /// Last value and revision this client saw per (object, register), for compares.
    known: BTreeMap<(usize, usize), (Value, u64)>,
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

    fn session(&mut self) -> Option<Session> {
        self.next_seq += 1;
        Some(Session {
            client: self.id,
            seq: self.next_seq,
            first_incomplete: self.next_seq,
        })
    }

    /// A compare on register `register` of `object`: on the value or revision this client
    /// last saw there, or on absence.
    fn expectation(&self, rng: &mut StdRng, object: usize, register: usize) -> (Expect, Compare) {
        let known = self.known.get(&(object, register)).copied();
        match (known, rng.gen_range(0..10)) {
            (Some((v, _)), 0..=4) => (Expect::Value(v), Compare::Value(value_bytes(v))),
            // A compare on the revision of a value is a compare on that value: every value is
            // written once, at one revision.
            (Some((v, rev)), 5..=7) => (Expect::Value(v), Compare::ModRevision(rev)),
            _ => (Expect::Absent, Compare::Absent),
        }
    }

    /// Picks the next operation on one of `objects`: its object, model input and request.
    pub fn next_op(&mut self, rng: &mut StdRng, objects: Objects) -> (usize, Input, RequestBody) {
        let object = rng.gen_range(0..objects.count());
        if objects.is_pair(object) {
            return self.pair_op(rng, object, &objects.keys_of(object));
        }
        let kb = objects.keys_of(object).remove(0);
        let roll = rng.gen_range(0..100);
        if roll < 40 {
            return (object, Input::Get, objects.read(object).1);
        }
        let session = self.session();
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
            let (expect, compare) = self.expectation(rng, object, 0);
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
        (object, input, RequestBody::Write { op, session })
    }

    /// A transaction on a pair: a read of both, a transfer (compare both on what this client
    /// saw, write both), a write of one without a compare, or a delete of both if the first
    /// is what this client saw.
    fn pair_op(
        &mut self,
        rng: &mut StdRng,
        object: usize,
        keys: &[Vec<u8>],
    ) -> (usize, Input, RequestBody) {
        let roll = rng.gen_range(0..100);
        let mut expect = [None, None];
        let mut then = [None, None];
        let mut compares = Vec::new();
        let mut compare = |rng: &mut StdRng, this: &Self, register: usize| {
            let (e, c) = this.expectation(rng, object, register);
            compares.push((register, c));
            Some(e)
        };
        match roll {
            0..30 => {}
            30..75 => {
                for r in 0..2 {
                    expect[r] = compare(rng, self, r);
                    then[r] = Some(Some(self.fresh_value()));
                }
            }
            75..90 => then[rng.gen_range(0..2)] = Some(Some(self.fresh_value())),
            _ => {
                expect[0] = compare(rng, self, 0);
                then = [Some(None), Some(None)];
            }
        }
        let op = pair_txn(keys, &compares, then);
        let session = self.session();
        (
            object,
            Input::Txn { expect, then },
            RequestBody::Write { op, session },
        )
    }

    /// Remembers what register `register` of `object` was seen to hold.
    pub fn saw(&mut self, object: usize, register: usize, record: Option<&KvRecord>) {
        match record.and_then(|r| value_of(&r.value).map(|v| (v, r.mod_rev))) {
            Some(vr) => {
                self.known.insert((object, register), vr);
            }
            None => {
                self.known.remove(&(object, register));
            }
        }
    }
}

fn target_of(compare: Compare) -> CompareTarget {
    match compare {
        Compare::Absent => CompareTarget::Version(0),
        Compare::Value(v) => CompareTarget::Value(v),
        Compare::ModRevision(r) => CompareTarget::ModRevision(r),
    }
}

/// A transaction on the pair `keys`: the compares (by register); then the writes of `then`
/// and a read of both keys, or else a read of both.
fn pair_txn(
    keys: &[Vec<u8>],
    compares: &[(usize, Compare)],
    then: [Option<Option<Value>>; 2],
) -> KvOp {
    let reads: Vec<TxnOp> = keys.iter().map(|k| TxnOp::Get { key: k.clone() }).collect();
    let mut success: Vec<TxnOp> = then
        .iter()
        .zip(keys)
        .filter_map(|(w, key)| {
            w.map(|v| match v {
                Some(v) => TxnOp::Put {
                    key: key.clone(),
                    value: value_bytes(v),
                    lease: 0,
                },
                None => TxnOp::Delete { key: key.clone() },
            })
        })
        .collect();
    success.extend(reads.iter().cloned());
    KvOp::Txn(Txn {
        compares: compares
            .iter()
            .map(|(r, c)| TxnCompare {
                key: keys[*r].clone(),
                target: target_of(c.clone()),
                op: CompareOp::Equal,
            })
            .collect(),
        success,
        failure: reads,
    })
}

/// A compare-and-swap as a transaction: the compare; then the action and a read of the key;
/// else a read of the key (what the compare saw).
fn txn_of(key: Vec<u8>, compare: Compare, action: CasAction) -> KvOp {
    let target = target_of(compare);
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
    /// Succeeded: the model output, the values seen or written with their revisions, the
    /// records seen per register, and, for a write that changed its keys, the revision it
    /// wrote and the registers it wrote.
    Ok {
        output: Output,
        seen: Vec<(Value, u64)>,
        records: Vec<(usize, Option<KvRecord>)>,
        write_revision: Option<u64>,
        written: Vec<usize>,
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

/// The record a write of `v` at `revision` leaves (the fields the clients look at).
fn written_record(v: Value, revision: u64) -> KvRecord {
    KvRecord {
        value: value_bytes(v),
        create_rev: 0,
        mod_rev: revision,
        version: 0,
        lease: 0,
    }
}

/// A single key's answer: `record` is what the key was seen to hold (if the answer says),
/// `wrote` the value and revision of a put it made.
fn single(
    output: Output,
    seen: Option<(Value, u64)>,
    record: Option<Option<KvRecord>>,
    wrote: Option<(Value, u64)>,
    write_revision: Option<u64>,
) -> Interpretation {
    let record = match wrote {
        Some((v, rev)) => Some(Some(written_record(v, rev))),
        None => record,
    };
    Interpretation::Ok {
        output,
        seen: seen.into_iter().chain(wrote).collect(),
        records: record.map(|r| (0, r)).into_iter().collect(),
        write_revision,
        written: write_revision.map(|_| 0).into_iter().collect(),
    }
}

/// Reads an answer to `input`.
pub fn interpret(input: &Input, reply: &Reply) -> Interpretation {
    match (input, reply) {
        (_, Err(e)) if e.is_ambiguous() => Interpretation::Ambiguous(e.clone()),
        (_, Err(ClientError::Rejected(k))) => {
            Interpretation::Ambiguous(ClientError::Rejected(k.clone()))
        }
        (_, Err(e)) => Interpretation::Definite(e.clone()),
        (Input::Get, Ok(Response::Get(r))) => match seen_of(r) {
            Ok(s) => single(
                Output::Get(s.map(|(v, _)| v)),
                s,
                Some(r.clone()),
                None,
                None,
            ),
            Err(e) => Interpretation::Nonsense(e),
        },
        (Input::Put(v), Ok(Response::Write(KvOutcome::Put { revision, .. }))) => single(
            Output::Put,
            None,
            None,
            Some((*v, *revision)),
            Some(*revision),
        ),
        (
            Input::Delete,
            Ok(Response::Write(KvOutcome::Delete {
                revision, deleted, ..
            })),
        ) => single(
            Output::Delete { deleted: *deleted },
            None,
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
                // A delete that held leaves nothing; a compare that failed saw `current`.
                let record = if *succeeded {
                    Some(None)
                } else {
                    Some(current.clone())
                };
                single(
                    Output::Cas {
                        succeeded: *succeeded,
                        before: s.map(|(v, _)| v),
                    },
                    s,
                    record,
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
                return single(
                    Output::Cas {
                        succeeded: false,
                        before: seen.map(|(v, _)| v),
                    },
                    seen,
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
            single(
                Output::Cas {
                    succeeded: true,
                    before,
                },
                seen,
                Some(read.clone()),
                then.map(|v| (v, *revision)),
                Some(*revision),
            )
        }
        (
            Input::Txn { then, .. },
            Ok(Response::Write(KvOutcome::Txn {
                revision,
                succeeded,
                results,
            })),
        ) => pair_answer(then, *revision, *succeeded, results),
        (i, Ok(r)) => Interpretation::Nonsense(format!("answer {r:?} to {i:?}")),
    }
}

/// A pair transaction's answer: its results end with the reads of both keys, after the
/// writes when it held, and those reads show exactly what it wrote.
fn pair_answer(
    then: &[Option<Option<Value>>; 2],
    revision: u64,
    succeeded: bool,
    results: &[TxnOpResult],
) -> Interpretation {
    let reads = match results {
        [.., TxnOpResult::Get(a), TxnOpResult::Get(b)] => [a, b],
        _ => {
            return Interpretation::Nonsense(format!(
                "a pair transaction's results end without its two reads: {results:?}"
            ))
        }
    };
    let mut after = [None, None];
    let mut seen = Vec::new();
    for r in 0..2 {
        after[r] = match seen_of(reads[r]) {
            Ok(s) => s,
            Err(e) => return Interpretation::Nonsense(e),
        };
        seen.extend(after[r]);
        if let (true, Some(w)) = (succeeded, then[r]) {
            if after[r].map(|(v, _)| v) != w {
                return Interpretation::Nonsense(format!(
                    "a pair transaction wrote {w:?} to register {r} and then read {:?}",
                    after[r]
                ));
            }
            seen.extend(w.map(|v| (v, revision)));
        }
    }
    let written: Vec<usize> = (0..2).filter(|r| succeeded && then[*r].is_some()).collect();
    Interpretation::Ok {
        output: Output::Txn {
            succeeded,
            after: after.map(|s| s.map(|(v, _)| v)),
        },
        seen,
        records: vec![(0, reads[0].clone()), (1, reads[1].clone())],
        write_revision: (!written.is_empty()).then_some(revision),
        written,
    }
}
