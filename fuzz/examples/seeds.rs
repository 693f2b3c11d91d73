//! Writes the seed corpus of the byte-level fuzz targets from real encodings: every frame,
//! call, answer, heartbeat and body is built as the node builds it and encoded by the same
//! encoders the node sends with, so the fuzzer starts from valid inputs of every kind.
//!
//!   cargo run --manifest-path fuzz/Cargo.toml --example seeds   # writes fuzz/corpus/*/seed-*
//!
//! The structure-aware targets (stored_records, core_requests) take their inputs through
//! `arbitrary`; their corpus is what the fuzzer kept from earlier runs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use protobuf::Message as _;
use swarmkv::core::{
    ClusterLayout, ClusterSettings, Command, Consistency, LeaseInfo, LeaseRequest, NodeRecord,
    NodeState, Request, RequestBody, Response, Target,
};
use swarmkv::wire::{Announce, Answer, Call, ClusterInfo, KvAnswer, KvCall};
use swarmkv_net::{fuzzing, Multiaddr, PeerId, PeerInfo, SnapshotChunk};
use swarmkv_store::raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot};
use swarmkv_store::{CasAction, Compare, KvOp, KvOutcome, KvRecord, Session, SnapshotDescriptor};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let dir: PathBuf = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)
            .with_context(|| format!("writing {target}/{name}"))?;
        written += 1;
        Ok(())
    };
    let err = |e: String| anyhow::anyhow!(e);

    // raft_batch: frames of real Raft messages, bare and length-prefixed.
    let messages = raft_messages();
    let batch: Vec<(u64, Vec<u8>)> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Ok((i as u64, m.write_to_bytes()?)))
        .collect::<anyhow::Result<_>>()?;
    for (i, (_, bytes)) in batch.iter().enumerate() {
        let frame = fuzzing::encode_raft_frame(vec![vec![(1, bytes.clone())]]).map_err(err)?;
        put("raft_batch", &format!("message-{i}"), &frame)?;
    }
    let all = fuzzing::encode_raft_frame(vec![batch.clone(), batch[..2].to_vec()]).map_err(err)?;
    put("raft_batch", "batches", &all)?;
    put("raft_batch", "framed", &fuzzing::frame_bytes(&all)?)?;

    // kv_wire: every call and answer, bare and in their frames, and entry commands.
    for (i, call) in calls().into_iter().enumerate() {
        let payload = call.encode();
        put("kv_wire", &format!("call-{i}"), &payload)?;
        put(
            "kv_wire",
            &format!("call-frame-{i}"),
            &fuzzing::encode_kv_stream_request(i as u64, payload).map_err(err)?,
        )?;
    }
    for (i, answer) in answers().into_iter().enumerate() {
        let payload = answer.encode();
        put("kv_wire", &format!("answer-{i}"), &payload)?;
        let framed = fuzzing::encode_kv_stream_answer(i as u64, Ok(payload)).map_err(err)?;
        put("kv_wire", &format!("answer-frame-{i}"), &framed)?;
    }
    let refusal =
        fuzzing::encode_kv_stream_answer(0, Err("frame too large".into())).map_err(err)?;
    put("kv_wire", "answer-refused", &refusal)?;
    for (i, op) in ops().into_iter().enumerate() {
        let session = Some(Session {
            client: 9,
            seq: i as u64 + 1,
            first_incomplete: 1,
        });
        put(
            "kv_wire",
            &format!("command-{i}"),
            &Command::Kv { op, session }.encode(),
        )?;
    }

    // heartbeat: a heartbeat with a node's announcement, a hello, acks.
    let announce = Announce {
        cluster_id: Some(0xc1),
        node: 7,
        meta_leader: true,
        led: vec![(0, vec![7, 8, 9]), (3, vec![7, 8])],
        targets: Some((
            4,
            vec![(
                1,
                Target {
                    replicas: vec![7, 8, 9],
                    version: 2,
                },
            )],
        )),
    };
    put("heartbeat", "announce", &announce.encode())?;
    let info = PeerInfo {
        peer: PeerId::from_bytes(&[0, 2, 0x08, 0x01]).unwrap_or_else(|_| PeerId::random()),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/7379".parse::<Multiaddr>()?],
        cluster_name: "swarmkv".into(),
        cluster_id: Some(0xc1),
        software_version: "0.1.0".into(),
        seq: 42,
        app: announce.encode(),
    };
    put(
        "heartbeat",
        "heartbeat",
        &fuzzing::encode_heartbeat(&info).map_err(err)?,
    )?;
    let hello =
        fuzzing::encode_hello(("swarmkv".into(), Some(0xc1), "0.1.0".into())).map_err(err)?;
    put("heartbeat", "hello", &hello)?;
    put(
        "heartbeat",
        "ack-ok",
        &fuzzing::encode_ack(Ok(())).map_err(err)?,
    )?;
    put(
        "heartbeat",
        "ack-err",
        &fuzzing::encode_ack(Err("busy".into())).map_err(err)?,
    )?;

    // http_bodies: the gateway's bodies, queries and paths as clients send them.
    let bodies: [(&str, &str); 10] = [
        ("cas-rev", r#"{"expect_mod_rev":12,"value":"new"}"#),
        ("cas-value", r#"{"expect_value":"old","value_b64":"AAEC"}"#),
        ("cas-absent", r#"{"expect_absent":true,"delete":true}"#),
        ("cas-b64", r#"{"expect_value_b64":"b2xk","value":"x"}"#),
        ("grant-s", r#"{"ttl":30}"#),
        ("grant-ms", r#"{"ttl_ms":1500}"#),
        ("scan-query", "prefix=config%2F&limit=10&serializable=true"),
        ("scan-range", "start=a&end=b+c&limit=1000"),
        ("key-path", "config/db%2Fhost%00%FF"),
        ("lease-id", "0x00000000000000ff"),
    ];
    for (name, body) in bodies {
        put("http_bodies", name, body.as_bytes())?;
    }

    // snapshot_chunk: a real snapshot's chunk, in its frame, and its descriptor.
    let chunk = chunk_bytes();
    let frame = fuzzing::encode_snapshot_frame(SnapshotChunk {
        group: 2,
        snapshot_id: 40,
        seq: 0,
        last: true,
        data: chunk.clone(),
    })
    .map_err(err)?;
    put("snapshot_chunk", "frame", &frame)?;
    put("snapshot_chunk", "chunk", &chunk)?;
    put("snapshot_chunk", "descriptor", &descriptor().encode())?;

    println!("wrote {written} seeds under {}", root.display());
    Ok(())
}

fn descriptor() -> SnapshotDescriptor {
    swarmkv_fuzz::snapshot_chunk::sent().descriptor.clone()
}

/// A real chunk: the first of a real partition snapshot.
fn chunk_bytes() -> Vec<u8> {
    swarmkv_fuzz::snapshot_chunk::sent().chunks[0].clone()
}

fn raft_messages() -> Vec<Message> {
    let entry = |index: u64, op: KvOp| Entry {
        index,
        term: 6,
        data: Command::Kv {
            op,
            session: Some(Session {
                client: 3,
                seq: index,
                first_incomplete: index,
            }),
        }
        .encode()
        .into(),
        ..Default::default()
    };
    let mut append = Message {
        from: 7,
        to: 8,
        term: 6,
        log_term: 6,
        index: 40,
        commit: 39,
        ..Default::default()
    };
    append.set_msg_type(MessageType::MsgAppend);
    append.entries = ops()
        .into_iter()
        .enumerate()
        .map(|(i, op)| entry(41 + i as u64, op))
        .collect::<Vec<_>>()
        .into();
    let mut heartbeat = Message {
        from: 7,
        to: 8,
        term: 6,
        commit: 39,
        ..Default::default()
    };
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    let mut vote = Message {
        from: 8,
        to: 7,
        term: 7,
        log_term: 6,
        index: 45,
        ..Default::default()
    };
    vote.set_msg_type(MessageType::MsgRequestPreVote);
    let mut response = Message {
        from: 8,
        to: 7,
        term: 6,
        index: 45,
        reject: false,
        ..Default::default()
    };
    response.set_msg_type(MessageType::MsgAppendResponse);
    let mut snapshot = Message {
        from: 7,
        to: 9,
        term: 6,
        ..Default::default()
    };
    snapshot.set_msg_type(MessageType::MsgSnapshot);
    let mut snap = Snapshot {
        data: descriptor().encode().into(),
        ..Default::default()
    };
    snap.mut_metadata().index = 40;
    snap.mut_metadata().term = 6;
    snap.mut_metadata().set_conf_state(ConfState {
        voters: vec![7, 8, 9],
        ..Default::default()
    });
    snapshot.set_snapshot(snap);
    let mut read = Message {
        from: 8,
        to: 7,
        term: 6,
        ..Default::default()
    };
    read.set_msg_type(MessageType::MsgReadIndex);
    read.entries = vec![Entry {
        data: 17u64.to_be_bytes().to_vec().into(),
        ..Default::default()
    }]
    .into();
    vec![append, heartbeat, vote, response, snapshot, read]
}

fn ops() -> Vec<KvOp> {
    vec![
        KvOp::Put {
            key: b"config/db".to_vec(),
            value: b"host=a".to_vec(),
            lease: 0,
            prev_kv: true,
        },
        KvOp::Put {
            key: b"session/1".to_vec(),
            value: vec![0, 255],
            lease: 0x2a,
            prev_kv: false,
        },
        KvOp::Delete {
            key: b"config/db".to_vec(),
            prev_kv: true,
        },
        KvOp::Cas {
            key: b"k".to_vec(),
            compare: Compare::ModRevision(12),
            action: CasAction::Put(b"v".to_vec()),
        },
        KvOp::Cas {
            key: b"k".to_vec(),
            compare: Compare::Value(b"v".to_vec()),
            action: CasAction::Delete,
        },
        KvOp::Cas {
            key: b"k".to_vec(),
            compare: Compare::Absent,
            action: CasAction::Put(Vec::new()),
        },
        KvOp::DeleteRange {
            start: b"a".to_vec(),
            end: Some(b"b".to_vec()),
        },
        KvOp::DeleteLease { lease: 0x2a },
    ]
}

fn calls() -> Vec<KvCall> {
    let mut calls: Vec<KvCall> = ops()
        .into_iter()
        .map(|op| Call::Request {
            req: Request {
                partition: 3,
                body: RequestBody::Write {
                    op,
                    session: Some(Session {
                        client: 1,
                        seq: 2,
                        first_incomplete: 2,
                    }),
                },
            },
            hops: 0,
        })
        .map(KvCall::V1)
        .collect();
    calls.extend(
        [
            Call::Request {
                req: Request {
                    partition: 1,
                    body: RequestBody::Get {
                        key: b"k".to_vec(),
                        consistency: Consistency::Linearizable,
                    },
                },
                hops: 1,
            },
            Call::Request {
                req: Request {
                    partition: 2,
                    body: RequestBody::Scan {
                        start: b"a".to_vec(),
                        end: None,
                        limit: 100,
                        consistency: Consistency::Serializable,
                    },
                },
                hops: 2,
            },
            Call::Info,
            Call::Join {
                record: NodeRecord {
                    id: 9,
                    peer: vec![0, 2, 8, 1],
                    addrs: vec!["/ip4/10.0.0.2/tcp/7379".into()],
                    state: NodeState::Live,
                },
            },
            Call::Bootstrap {
                layout: ClusterLayout {
                    nodes: vec![7, 8, 9],
                    partitions: 64,
                    replication: 3,
                },
                cluster_id: 0xc1,
            },
            Call::Decommission { node: 8 },
            Call::Status,
            Call::Lease {
                req: LeaseRequest::Grant { ttl_ms: 5000 },
                hops: 0,
            },
            Call::Lease {
                req: LeaseRequest::KeepAlive { id: 0x2a },
                hops: 1,
            },
            Call::Lease {
                req: LeaseRequest::Revoke { id: 0x2a },
                hops: 0,
            },
            Call::Lease {
                req: LeaseRequest::TimeToLive { id: 0x2a },
                hops: 0,
            },
        ]
        .into_iter()
        .map(KvCall::V1),
    );
    calls
}

fn answers() -> Vec<KvAnswer> {
    let record = KvRecord {
        value: b"v".to_vec(),
        create_rev: 3,
        mod_rev: 5,
        version: 2,
        lease: 0,
    };
    [
        Answer::Reply(Ok(Response::Get(Some(record.clone())))),
        Answer::Reply(Ok(Response::Write(KvOutcome::Put {
            revision: 5,
            prev: Some(record.clone()),
        }))),
        Answer::Reply(Ok(Response::Write(KvOutcome::Cas {
            revision: 6,
            succeeded: false,
            current: Some(record.clone()),
        }))),
        Answer::Reply(Ok(Response::Scan {
            records: vec![(b"k".to_vec(), record)],
            more: true,
            revision: 9,
        })),
        Answer::Reply(Ok(Response::Lease(LeaseInfo {
            id: 0x2a,
            ttl_ms: 5000,
            remaining_ms: 4200,
        }))),
        Answer::Reply(Err(swarmkv::core::ClientError::NotLeader {
            leader: Some(8),
        })),
        Answer::Reply(Err(swarmkv::core::ClientError::Timeout)),
        Answer::Info(ClusterInfo {
            node: 7,
            partitions: Some(64),
        }),
        Answer::Joined(ClusterSettings {
            cluster_id: 0xc1,
            partitions: 64,
            replication: 3,
        }),
        Answer::Ok,
        Answer::Malformed("undecodable kv call".into()),
        Answer::UnknownNode(12),
    ]
    .into_iter()
    .map(KvAnswer::V2)
    .collect()
}
