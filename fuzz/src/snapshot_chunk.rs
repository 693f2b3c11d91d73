//! Snapshots from a peer: the snapshot frame, the chunk and descriptor inside, and a whole
//! transfer: a real partition snapshot whose chunks arrive lost, repeated, reordered, damaged
//! or mixed with foreign bytes, staged by a receiving store and installed.
//!
//! Checked: no panic; decoded chunks and descriptors encode back to themselves; every chunk
//! delivered intact means the snapshot is ready and installs; and an install from intact
//! chunks gives the receiver exactly the sender's records.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use swarmkv::core::{group_of_partition, Consistency, GroupId, Request, RequestBody};
use swarmkv_net::fuzzing;
use swarmkv_store::raft::eraftpb::{ConfState, Snapshot};
use swarmkv_store::{KvOp, KvRecord, LogBatch, MemStore, SnapshotChunk, SnapshotDescriptor, Store};

use crate::single_node::{store_config, Node};

/// How one message of the transfer arrives.
#[derive(Arbitrary, Debug, Clone)]
pub enum Delivery {
    /// Chunk `seq` (modulo the count), intact.
    Chunk(u8),
    /// Chunk `seq` with one byte changed.
    Damaged { seq: u8, at: u16, xor: u8 },
    /// Chunk `seq` cut short.
    Cut { seq: u8, len: u16 },
    /// Any bytes as a chunk.
    Bytes(Vec<u8>),
    /// Any bytes as a snapshot frame, unwrapped as the driver does.
    Frame(Vec<u8>),
}

/// A whole input.
#[derive(Arbitrary, Debug)]
pub struct Transfer {
    pub deliveries: Vec<Delivery>,
    /// A descriptor to check readiness against instead of the real one.
    pub descriptor: Option<Vec<u8>>,
}

/// The sender's side, made once: a partition's snapshot, its chunks and its records.
pub struct Sent {
    pub group: GroupId,
    pub descriptor: SnapshotDescriptor,
    pub conf_state: ConfState,
    pub chunks: Vec<Vec<u8>>,
    pub records: Vec<(Vec<u8>, KvRecord)>,
}

/// A one-partition node with 40 keys of mixed sizes, snapshotted in 256-byte chunks.
pub fn sent() -> &'static Sent {
    static SENT: OnceLock<Sent> = OnceLock::new();
    SENT.get_or_init(|| {
        let mut node = match Node::bootstrap(1) {
            Ok(node) => node,
            Err(e) => panic!("bootstrap: {e}"),
        };
        let led = node.await_leadership(200).unwrap_or(false);
        assert!(led, "a one-node cluster elects itself");
        for i in 0..40u32 {
            let req = Request {
                partition: 0,
                body: RequestBody::Write {
                    op: KvOp::Put {
                        key: format!("key{i:02}").into_bytes(),
                        value: vec![i as u8; (i as usize * 7) % 200],
                        lease: 0,
                        prev_kv: false,
                    },
                    session: None,
                },
            };
            let id = node.submit(req);
            match node.answer(id) {
                Ok(Ok(_)) => {}
                other => panic!("a put failed: {other:?}"),
            }
        }
        let read = Request {
            partition: 0,
            body: RequestBody::Scan {
                start: Vec::new(),
                end: None,
                limit: 0,
                consistency: Consistency::Serializable,
            },
        };
        let id = node.submit(read);
        let records = match node.answer(id) {
            Ok(Ok(swarmkv::core::Response::Scan { records, .. })) => records,
            other => panic!("the scan failed: {other:?}"),
        };
        let group = group_of_partition(0);
        let store = node.core.store();
        let (descriptor, conf_state) = match store.create_snapshot(group) {
            Ok(s) => s,
            Err(e) => panic!("create_snapshot: {e}"),
        };
        let chunks = (0..descriptor.chunks)
            .map(
                |seq| match store.snapshot_chunk(group, descriptor.index, seq) {
                    Ok(c) => c,
                    Err(e) => panic!("snapshot_chunk {seq}: {e}"),
                },
            )
            .collect();
        Sent {
            group,
            descriptor,
            conf_state,
            chunks,
            records,
        }
    })
}

/// Runs the standalone decoders on `data`, then the transfer `data` describes.
pub fn check(data: &[u8]) {
    check_decoders(data);
    if let Ok(transfer) = Transfer::arbitrary_take_rest(arbitrary::Unstructured::new(data)) {
        check_transfer(&transfer);
    }
}

/// Delivers the chunks as `transfer` says to a fresh store, then installs if ready.
pub fn check_transfer(transfer: &Transfer) {
    let sent = sent();
    let store = match Store::in_memory(store_config()) {
        Ok(s) => s,
        Err(e) => panic!("a memory store: {e}"),
    };
    let count = sent.chunks.len();
    let mut exact = transfer.descriptor.is_none();
    let mut intact = vec![false; count];
    for d in transfer.deliveries.iter().take(32) {
        let bytes = match d {
            Delivery::Chunk(seq) => {
                let seq = usize::from(*seq) % count;
                intact[seq] = true;
                sent.chunks[seq].clone()
            }
            Delivery::Damaged { seq, at, xor } => {
                exact = false;
                let mut c = sent.chunks[usize::from(*seq) % count].clone();
                let at = usize::from(*at) % c.len().max(1);
                if let Some(b) = c.get_mut(at) {
                    *b ^= xor;
                }
                c
            }
            Delivery::Cut { seq, len } => {
                exact = false;
                let c = &sent.chunks[usize::from(*seq) % count];
                c[..usize::from(*len).min(c.len())].to_vec()
            }
            Delivery::Bytes(b) => {
                exact = false;
                b.clone()
            }
            Delivery::Frame(f) => {
                exact = false;
                match fuzzing::decode_snapshot_frame(f) {
                    Ok(chunk) => chunk.data,
                    Err(_) => continue,
                }
            }
        };
        let _ = store.receive_chunk(&bytes);
    }
    let real = sent.descriptor.encode();
    let descriptor = transfer.descriptor.as_deref().unwrap_or(&real);
    let ready = store.snapshot_ready(sent.group, descriptor);
    let all_intact = exact && intact.iter().all(|i| *i);
    if all_intact {
        assert!(
            matches!(ready, Ok(true)),
            "every chunk arrived intact, yet: {ready:?}"
        );
    }
    if !matches!(ready, Ok(true)) {
        return;
    }
    let installed = install(&store, sent);
    if all_intact {
        if let Err(e) = &installed {
            panic!("every chunk arrived intact, yet the install failed: {e}");
        }
    }
    if installed.is_ok() {
        let page = match store.scan(sent.group, &[], None, 0) {
            Ok(p) => p,
            Err(e) => panic!("an installed snapshot cannot be read: {e}"),
        };
        if exact {
            assert_eq!(
                page.records, sent.records,
                "the installed records differ from the sender's"
            );
        }
        let applied = store.apply_state(sent.group).map(|a| a.index);
        assert_eq!(applied.ok(), Some(sent.descriptor.index));
    }
}

/// Installs the snapshot as the core does when raft-rs hands it over: one log batch.
fn install(store: &MemStore, sent: &Sent) -> swarmkv_store::Result<()> {
    let mut snap = Snapshot {
        data: sent.descriptor.encode().into(),
        ..Default::default()
    };
    let meta = snap.mut_metadata();
    meta.index = sent.descriptor.index;
    meta.term = sent.descriptor.term;
    meta.set_conf_state(sent.conf_state.clone());
    let mut batch = LogBatch::new();
    batch.apply_snapshot(sent.group, snap);
    store.commit(&batch).map(|_| ())
}

/// The snapshot frame, chunk and descriptor decoders on any bytes, with their round trips.
pub fn check_decoders(bytes: &[u8]) {
    if let Ok(chunk) = fuzzing::decode_snapshot_frame(bytes) {
        let again = fuzzing::encode_snapshot_frame(chunk.clone()).expect("a chunk frame encodes");
        assert_eq!(fuzzing::decode_snapshot_frame(&again), Ok(chunk.clone()));
        check_store_chunk(&chunk.data);
    }
    check_store_chunk(bytes);
    if let Ok(d) = SnapshotDescriptor::decode(bytes) {
        match SnapshotDescriptor::decode(&d.encode()) {
            Ok(again) => assert_eq!(again, d),
            Err(e) => panic!("an encoded descriptor does not decode: {e}"),
        }
    }
}

fn check_store_chunk(bytes: &[u8]) {
    let max = store_config().max_chunk_message;
    if let Ok(c) = SnapshotChunk::decode(bytes, max) {
        match SnapshotChunk::decode(&c.encode(), max) {
            Ok(again) => assert_eq!(again, c),
            Err(e) => panic!("an encoded chunk does not decode: {e}"),
        }
    }
}
