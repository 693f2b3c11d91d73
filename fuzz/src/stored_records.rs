//! What a node reads back from its disk: a real node's store (made once: a two-partition
//! cluster with writes, sessions, a lease and compacted logs) with engine records dropped,
//! damaged, replaced, renamed or added (raw bytes, or well-formed records of every stored type
//! with arbitrary contents) and Raft log records added (hard states, configurations,
//! truncation points and entries with arbitrary contents, as far as the log accepts them:
//! its framing and checksums are the raft_log module's own tests), then opened, read through
//! every store API raft-rs and the core use, and served by a core.
//!
//! Checked: opening and serving never panic (a bad record is a typed error, or is skipped
//! where the code says so); a store that opened answers reads of every group; a core that
//! opened answers every request by its deadline. The node's key file is decoded too.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use swarmkv::core::{
    ClusterSettings, Command, Consistency, LeaseRecord, NodeRecord, NodeState, Request,
    RequestBody, Target,
};
use swarmkv_store::sessions::{bucket_key, encode_bucket, LegacySessionRecord, SessionRecord};
use swarmkv_store::raft::eraftpb::{ConfState, Entry, HardState};
use swarmkv_store::raft::{GetEntriesContext, Storage};
use swarmkv_store::{
    keys, Backend, GroupLog, KvError, KvOp, KvOutcome, KvRecord, KvResult, MemBackend, RaftLog, RaftLogBatch,
    RaftLogConfig, Store, TreeId,
};

use crate::single_node::{backend_with, records, store_config, Node};

/// A stored record of the engine: (tree, key, value).
pub type Record = (TreeId, Vec<u8>, Vec<u8>);

/// A record of a group's Raft log, written as a batch of its own.
#[derive(Debug, Clone)]
pub enum LogRecord {
    HardState(u64, HardState),
    ConfState(u64, ConfState),
    /// The log starts after (index, term).
    Compact(u64, u64, u64),
    Entry(u64, Entry),
}

/// A record of either store.
#[derive(Debug, Clone)]
pub enum Stored {
    Engine(Record),
    Log(LogRecord),
}

/// What a node reads back: the engine's records and its Raft log's.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub records: Vec<Record>,
    pub log: Vec<LogRecord>,
}

/// One change to the stored records.
#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    Drop(u16),
    Replace {
        at: u16,
        value: Vec<u8>,
    },
    Damage {
        at: u16,
        byte: u16,
        xor: u8,
    },
    Cut {
        at: u16,
        len: u16,
    },
    Rename {
        at: u16,
        key: Vec<u8>,
    },
    Add {
        tree: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Encoded(Encoded),
}

/// A well-formed record of a stored type, with arbitrary contents, under its real key.
#[derive(Arbitrary, Debug, Clone)]
pub enum Encoded {
    HardState {
        group: u8,
        term: u64,
        vote: u64,
        commit: u64,
    },
    ConfState {
        group: u8,
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    Truncated {
        group: u8,
        index: u64,
        term: u64,
    },
    Entry {
        group: u8,
        index: u64,
        term: u64,
        conf_change: bool,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    ApplyState {
        group: u8,
        index: u64,
        term: u64,
        voters: Vec<u64>,
    },
    Data {
        group: u8,
        key: Vec<u8>,
        value: Vec<u8>,
        create: u64,
        modified: u64,
        version: u64,
        lease: u64,
    },
    /// Arbitrary bytes as a client's session record.
    SessionBytes {
        group: u8,
        client: u8,
        value: Vec<u8>,
    },
    /// A per-client session record (the layout before buckets) that decodes, with arbitrary contents: results out of order, repeated
    /// or below the watermark among them (`Some(revision)` is a put's result, `None` a refusal).
    SessionRecord {
        group: u8,
        client: u8,
        watermark: u64,
        results: Vec<(u64, Option<u64>)>,
    },
    /// Arbitrary bytes as a bucket of session records (buckets past the last included).
    SessionBucketBytes {
        group: u8,
        bucket: u8,
        value: Vec<u8>,
    },
    /// A bucket that decodes, with arbitrary contents: clients out of order, repeated or in
    /// another bucket, records breaking their invariants among them.
    SessionBucket {
        group: u8,
        bucket: u8,
        clients: Vec<(u8, u64, Vec<(u64, Option<u64>)>, u64)>,
    },
    RevokedLease {
        group: u8,
        lease: u64,
        value: Vec<u8>,
    },
    Settings {
        cluster_id: u64,
        partitions: u32,
        replication: u8,
    },
    Tombstone {
        group: u8,
        term: u64,
        vote: u64,
        last_term: u64,
        last_index: u64,
    },
    Lease {
        id: u64,
        ttl_ms: u64,
        remaining_ms: u64,
        revoked: bool,
        graced: bool,
    },
    NodeRecord {
        id: u64,
        peer: Vec<u8>,
        addrs: Vec<String>,
        state: u8,
    },
    Target {
        group: u64,
        replicas: Vec<u64>,
        version: u64,
    },
}

/// A whole input.
#[derive(Arbitrary, Debug)]
pub struct Damage {
    pub mutations: Vec<Mutation>,
    pub requests: Vec<(u8, u8, bool)>,
    /// The node's key file (`node.key`), read at every start.
    pub key_file: Vec<u8>,
}

/// The real node's records, made once.
pub fn template() -> &'static Disk {
    static TEMPLATE: OnceLock<Disk> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let made = (|| -> Result<Disk, swarmkv::core::CoreError> {
            let mut node = Node::bootstrap(2)?;
            assert!(
                node.await_leadership(200)?,
                "a one-node cluster elects itself"
            );
            let grant = node.submit_lease(swarmkv::core::LeaseRequest::Grant { ttl_ms: 60_000 });
            let lease = match node.answer(grant)? {
                Ok(swarmkv::core::Response::Lease(info)) => info.id,
                other => panic!("a lease grant failed: {other:?}"),
            };
            for i in 0..48u64 {
                let key = format!("key{}", i % 12).into_bytes();
                let op = if i % 5 == 4 {
                    KvOp::Delete { key, prev_kv: true }
                } else {
                    KvOp::Put {
                        key,
                        value: vec![i as u8; (i % 9) as usize],
                        lease: if i % 7 == 0 { lease } else { 0 },
                        prev_kv: false,
                    }
                };
                let partition = swarmkv::core::routing::partition_of(op.key().unwrap_or(b""), 2);
                let session = swarmkv_store::Session {
                    client: 7,
                    seq: i + 1,
                    first_incomplete: i + 1,
                };
                let id = node.submit(Request {
                    partition,
                    body: RequestBody::Write {
                        op,
                        session: Some(session),
                    },
                });
                match node.answer(id)? {
                    Ok(_) => {}
                    other => panic!("a write failed: {other:?}"),
                }
            }
            // The partitions' writes reach the backend with a flush of the state layer.
            node.core.store().sync()?;
            let backend = node.backend.clone();
            drop(node);
            Ok(Disk {
                records: records(&backend),
                log: log_records(&backend)?,
            })
        })();
        match made {
            Ok(r) => r,
            Err(e) => panic!("the template node failed: {e}"),
        }
    })
}

/// Every group's Raft log in `backend`, as the records that rebuild it.
fn log_records(backend: &MemBackend) -> swarmkv_store::Result<Vec<LogRecord>> {
    let log = RaftLog::open(backend.raft_log_fs()?, RaftLogConfig::default())?;
    let mut out = Vec::new();
    for g in log.groups() {
        let GroupLog {
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            last_index,
            ..
        } = log.group(g).unwrap_or_default();
        out.push(LogRecord::Compact(g, truncated_index, truncated_term));
        for e in log.entries(g, truncated_index + 1, last_index + 1, None)? {
            out.push(LogRecord::Entry(g, e));
        }
        out.push(LogRecord::HardState(g, hard_state));
        out.push(LogRecord::ConfState(g, conf_state));
    }
    Ok(out)
}

/// Writes `records` to `backend`'s Raft log, a batch each; one the log refuses (an entry that
/// does not continue its group's log) is left out, as the log would refuse it.
fn write_log(backend: &MemBackend, records: &[LogRecord]) -> swarmkv_store::Result<()> {
    let mut log = RaftLog::open(backend.raft_log_fs()?, RaftLogConfig::default())?;
    for r in records {
        let mut b = RaftLogBatch::default();
        match r {
            LogRecord::HardState(g, hs) => b.set_hard_state(*g, hs),
            LogRecord::ConfState(g, cs) => b.set_conf_state(*g, cs),
            LogRecord::Compact(g, index, term) => b.compact(*g, *index, *term),
            LogRecord::Entry(g, e) => b.append(*g, std::slice::from_ref(e)),
        }
        if let Err(e) = log.write(&b, true) {
            if !matches!(
                e,
                swarmkv_store::StoreError::BadAppend { .. }
                    | swarmkv_store::StoreError::NonConsecutiveAppend { .. }
            ) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The key a node-level meta record is stored under (found by writing one).
fn meta_key(name: &str) -> Vec<u8> {
    let backend = MemBackend::new();
    let written = Store::with_backend(backend.clone(), store_config())
        .and_then(|s| s.put_meta(name, b"\xff-marker"));
    if let Err(e) = written {
        panic!("a memory store: {e}");
    }
    records(&backend)
        .into_iter()
        .find(|(tree, _, v)| *tree == TreeId::Meta && v.as_slice() == b"\xff-marker")
        .map(|(_, k, _)| k)
        .unwrap_or_else(|| panic!("put_meta wrote no record for {name}"))
}

fn group(g: u8) -> u64 {
    u64::from(g % 4)
}

/// Mostly the client whose session the template and the checked writes use (7), so that a
/// replaced session record is the one those writes read.
/// Remembered results: `Some(revision)` is a put's result, `None` a refusal.
fn session_results(client: u64, results: &[(u64, Option<u64>)]) -> Vec<(u64, KvResult)> {
    results
        .iter()
        .map(|&(seq, r)| {
            let r = match r {
                Some(revision) => Ok(KvOutcome::Put {
                    revision,
                    prev: None,
                }),
                None => Err(KvError::StaleRetry { client, seq }),
            };
            (seq, r)
        })
        .collect()
}

fn client(c: u8) -> u64 {
    if c < 192 {
        7
    } else {
        u64::from(c)
    }
}

fn pb(m: &impl protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

fn kv_record(value: Vec<u8>) -> Vec<u8> {
    postcard::to_stdvec(&KvRecord {
        value,
        create_rev: 1,
        mod_rev: 1,
        version: 1,
        lease: 0,
    })
    .unwrap_or_default()
}

impl Encoded {
    /// The record, under the key its type is stored at.
    pub fn record(&self) -> Stored {
        let record = match self {
            Encoded::HardState {
                group: g,
                term,
                vote,
                commit,
            } => {
                let hs = HardState {
                    term: *term,
                    vote: *vote,
                    commit: *commit,
                    ..Default::default()
                };
                return Stored::Log(LogRecord::HardState(group(*g), hs));
            }
            Encoded::ConfState {
                group: g,
                voters,
                learners,
            } => {
                let cs = ConfState {
                    voters: voters.clone(),
                    learners: learners.clone(),
                    ..Default::default()
                };
                return Stored::Log(LogRecord::ConfState(group(*g), cs));
            }
            Encoded::Truncated {
                group: g,
                index,
                term,
            } => return Stored::Log(LogRecord::Compact(group(*g), *index, *term)),
            Encoded::Entry {
                group: g,
                index,
                term,
                conf_change,
                key,
                value,
            } => {
                let mut e = Entry {
                    index: *index,
                    term: *term,
                    ..Default::default()
                };
                if *conf_change {
                    e.set_entry_type(swarmkv_store::raft::eraftpb::EntryType::EntryConfChange);
                    e.data = value.clone().into();
                } else {
                    let op = KvOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease: 0,
                        prev_kv: false,
                    };
                    e.data = Command::Kv { op, session: None }.encode().into();
                }
                return Stored::Log(LogRecord::Entry(group(*g), e));
            }
            Encoded::ApplyState {
                group: g,
                index,
                term,
                voters,
            } => {
                // The apply state's layout: (index, term, conf state protobuf).
                let cs = pb(&ConfState {
                    voters: voters.clone(),
                    ..Default::default()
                });
                (
                    TreeId::Kv,
                    keys::group_tag(group(*g), keys::TAG_APPLY_STATE),
                    postcard::to_stdvec(&(*index, *term, cs)).unwrap_or_default(),
                )
            }
            Encoded::Data {
                group: g,
                key,
                value,
                create,
                modified,
                version,
                lease,
            } => (
                TreeId::Kv,
                keys::data_key(group(*g), key),
                postcard::to_stdvec(&KvRecord {
                    value: value.clone(),
                    create_rev: *create,
                    mod_rev: *modified,
                    version: *version,
                    lease: *lease,
                })
                .unwrap_or_default(),
            ),
            Encoded::SessionBytes {
                group: g,
                client: c,
                value,
            } => (
                TreeId::Kv,
                keys::group_tag_index(group(*g), keys::TAG_SESSION, client(*c)),
                value.clone(),
            ),
            Encoded::SessionBucketBytes {
                group: g,
                bucket,
                value,
            } => (TreeId::Kv, bucket_key(group(*g), *bucket % 8), value.clone()),
            Encoded::SessionBucket {
                group: g,
                bucket,
                clients,
            } => {
                let records: Vec<(u64, SessionRecord)> = clients
                    .iter()
                    .map(|(c, watermark, results, last_index)| {
                        let record = SessionRecord {
                            watermark: *watermark,
                            results: session_results(client(*c), results),
                            last_index: *last_index,
                        };
                        (client(*c), record)
                    })
                    .collect();
                (
                    TreeId::Kv,
                    bucket_key(group(*g), *bucket % 8),
                    encode_bucket(records.iter().map(|(c, r)| (c, r))),
                )
            }
            Encoded::SessionRecord {
                group: g,
                client: c,
                watermark,
                results,
            } => {
                let record = LegacySessionRecord {
                    watermark: *watermark,
                    results: session_results(client(*c), results),
                };
                (
                    TreeId::Kv,
                    keys::group_tag_index(group(*g), keys::TAG_SESSION, client(*c)),
                    record.encode(),
                )
            }
            Encoded::RevokedLease {
                group: g,
                lease,
                value,
            } => (
                TreeId::Kv,
                keys::revoked_lease_key(group(*g), *lease),
                value.clone(),
            ),
            Encoded::Settings {
                cluster_id,
                partitions,
                replication,
            } => (
                TreeId::Meta,
                meta_key("cluster"),
                postcard::to_stdvec(&ClusterSettings {
                    cluster_id: *cluster_id,
                    partitions: *partitions,
                    replication: usize::from(*replication),
                })
                .unwrap_or_default(),
            ),
            Encoded::Tombstone {
                group: g,
                term,
                vote,
                last_term,
                last_index,
            } => (
                TreeId::Meta,
                meta_key(&format!("tombstone/{}", group(*g))),
                postcard::to_stdvec(&(*term, *vote, *last_term, *last_index)).unwrap_or_default(),
            ),
            Encoded::Lease {
                id,
                ttl_ms,
                remaining_ms,
                revoked,
                graced,
            } => {
                let rec = LeaseRecord {
                    id: *id,
                    ttl_ms: *ttl_ms,
                    remaining_ms: *remaining_ms,
                    revoked: *revoked,
                    graced: *graced,
                };
                (
                    TreeId::Kv,
                    keys::data_key(0, &LeaseRecord::key(*id)),
                    kv_record(postcard::to_stdvec(&rec).unwrap_or_default()),
                )
            }
            Encoded::NodeRecord {
                id,
                peer,
                addrs,
                state,
            } => {
                let state = match state % 4 {
                    0 => NodeState::Live,
                    1 => NodeState::Dead,
                    2 => NodeState::Decommissioning,
                    _ => NodeState::Decommissioned,
                };
                let rec = NodeRecord {
                    id: *id,
                    peer: peer.clone(),
                    addrs: addrs.clone(),
                    state,
                };
                (
                    TreeId::Kv,
                    keys::data_key(0, format!("meta/node/{id:016x}").as_bytes()),
                    kv_record(postcard::to_stdvec(&rec).unwrap_or_default()),
                )
            }
            Encoded::Target {
                group: g,
                replicas,
                version,
            } => {
                let t = Target {
                    replicas: replicas.clone(),
                    version: *version,
                };
                (
                    TreeId::Kv,
                    keys::data_key(0, format!("meta/target/{g:016x}").as_bytes()),
                    kv_record(postcard::to_stdvec(&t).unwrap_or_default()),
                )
            }
        };
        Stored::Engine(record)
    }
}

/// Applies the mutations to a copy of the template's records.
pub fn damaged(mutations: &[Mutation]) -> Disk {
    let Disk {
        records: mut recs,
        mut log,
    } = template().clone();
    for m in mutations.iter().take(8) {
        let pick = |at: u16, len: usize| usize::from(at) % len.max(1);
        match m {
            Mutation::Drop(at) if !recs.is_empty() => {
                recs.remove(pick(*at, recs.len()));
            }
            Mutation::Replace { at, value } if !recs.is_empty() => {
                let i = pick(*at, recs.len());
                recs[i].2 = value.clone();
            }
            Mutation::Damage { at, byte, xor } if !recs.is_empty() => {
                let i = pick(*at, recs.len());
                let v = &mut recs[i].2;
                let j = pick(*byte, v.len());
                if let Some(b) = v.get_mut(j) {
                    *b ^= xor;
                }
            }
            Mutation::Cut { at, len } if !recs.is_empty() => {
                let i = pick(*at, recs.len());
                let v = &mut recs[i].2;
                v.truncate(usize::from(*len) % (v.len() + 1));
            }
            Mutation::Rename { at, key } if !recs.is_empty() => {
                let i = pick(*at, recs.len());
                recs[i].1 = key.clone();
            }
            Mutation::Add { tree, key, value } => {
                let tree = TreeId::ALL[usize::from(*tree) % TreeId::ALL.len()];
                recs.push((tree, key.clone(), value.clone()));
            }
            Mutation::Encoded(e) => match e.record() {
                Stored::Engine(r) => recs.push(r),
                Stored::Log(r) => log.push(r),
            },
            _ => {}
        }
    }
    Disk { records: recs, log }
}

/// Opens and serves the damaged store; decodes the key file.
pub fn check(damage: &Damage) {
    check_key_file(&damage.key_file);
    let disk = damaged(&damage.mutations);
    let backend = backend_with(&disk.records);
    if write_log(&backend, &disk.log).is_err() {
        return;
    }
    let Ok(store) = Store::with_backend(backend.clone(), store_config()) else {
        return;
    };
    if let Ok(groups) = store.groups() {
        for g in groups.into_iter().take(8) {
            read_group(&store, g);
        }
    }
    drop(store);
    let Ok(mut node) = Node::open(backend, 2, 0) else {
        return;
    };
    // The turns may fail with a storage error on a bad record (the node stops); they must
    // not panic, and whatever was asked before must be answered.
    for _ in 0..10 {
        if node.turn().is_err() {
            return;
        }
    }
    for (kind, key, serializable) in damage.requests.iter().take(8) {
        let key = format!("key{}", key % 12).into_bytes();
        let partition = swarmkv::core::routing::partition_of(&key, 2);
        let consistency = if *serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        let body = match kind % 3 {
            0 => RequestBody::Get { key, consistency },
            1 => RequestBody::Scan {
                start: Vec::new(),
                end: None,
                limit: 0,
                consistency,
            },
            _ => RequestBody::Write {
                op: KvOp::Put {
                    key,
                    value: b"v".to_vec(),
                    lease: 0,
                    prev_kv: true,
                },
                session: Some(swarmkv_store::Session {
                    client: 7,
                    seq: 100 + u64::from(*kind),
                    first_incomplete: 100,
                }),
            },
        };
        let id = node.submit(Request { partition, body });
        if node.answer(id).is_err() {
            return;
        }
    }
}

/// Everything raft-rs and the core read of one group.
fn read_group(store: &swarmkv_store::MemStore, g: u64) {
    let _ = store.apply_state(g);
    let _ = store.scan(g, &[], None, 0);
    let _ = store.get(g, b"key1");
    let Ok(storage) = store.group(g) else { return };
    let _ = storage.initial_state();
    let (Ok(first), Ok(last)) = (storage.first_index(), storage.last_index()) else {
        return;
    };
    let _ = storage.term(first.saturating_sub(1));
    let _ = storage.term(last);
    if first <= last && last - first < 4096 {
        let _ = storage.entries(first, last + 1, None, GetEntriesContext::empty(false));
        let _ = storage.entries(first, last + 1, Some(64), GetEntriesContext::empty(false));
    }
    let _ = storage.snapshot(0, 0);
}

/// A key file that decodes is an ed25519 key whose encoding decodes to the same identity.
pub fn check_key_file(bytes: &[u8]) {
    let Ok(keypair) = swarmkv_net::fuzzing::decode_identity(bytes) else {
        return;
    };
    let encoded = keypair
        .to_protobuf_encoding()
        .expect("a decoded key encodes");
    match swarmkv_net::fuzzing::decode_identity(&encoded) {
        Ok(again) => assert_eq!(again.public(), keypair.public()),
        Err(e) => panic!("an encoded key file does not decode: {e}"),
    }
}
