//! Snapshots between two stores: frozen in bounded chunks on one, staged and installed
//! atomically on the other, including crashes between chunks and bad chunks from a peer.

mod common;

use common::*;
use swarmkv_store::raft::eraftpb::Snapshot;
use swarmkv_store::raft::Storage;
use swarmkv_store::{
    Backend, ChunkProgress, KvOp, LogBatch, SnapshotChunk, Store, StoreConfig, StoreError,
};

const G: u64 = 9;

fn small_chunks() -> StoreConfig {
    StoreConfig {
        snapshot_chunk_bytes: 2 * 1024,
        ..StoreConfig::default()
    }
}

/// A source partition with `n` keys of ~100 bytes, applied up to some index.
fn fill<B: Backend>(store: &Store<B>, n: usize) {
    let ops: Vec<KvOp> = (0..n)
        .map(|i| KvOp::Put {
            key: format!("key/{i:05}").into_bytes(),
            value: vec![(i % 251) as u8; 100],
            lease: 0,
            prev_kv: false,
        })
        .collect();
    apply_ops(store, G, &ops);
}

fn all_records<B: Backend>(store: &Store<B>) -> Vec<(Vec<u8>, swarmkv_store::KvRecord)> {
    store.scan(G, b"", None, 0).unwrap().records
}

fn take_snapshot<B: Backend>(store: &Store<B>) -> (Snapshot, Vec<Vec<u8>>) {
    let snap = store.group(G).unwrap().snapshot(0, 2).unwrap();
    let d = swarmkv_store::SnapshotDescriptor::decode(&snap.data).unwrap();
    let chunks = (0..d.chunks)
        .map(|seq| store.snapshot_chunk(G, d.index, seq).unwrap())
        .collect();
    (snap, chunks)
}

fn install<B: Backend>(store: &Store<B>, snap: &Snapshot) -> swarmkv_store::Result<()> {
    let mut b = LogBatch::new();
    b.apply_snapshot(G, snap.clone());
    store.commit(&b).map(|_| ())
}

#[test]
fn snapshot_round_trip_between_two_stores_in_chunks() {
    let src = sled_harness(small_chunks());
    fill(&src.store, 300);
    let (snap, chunks) = take_snapshot(&src.store);
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());
    for c in &chunks {
        assert!(c.len() < 4 * 1024, "chunk of {} bytes", c.len());
    }
    // Taking it again at the same applied index reuses the frozen copy.
    let (again, _) = take_snapshot(&src.store);
    assert_eq!(again.data, snap.data);

    let dst = sled_harness(small_chunks());
    // The destination has stale data of its own, which the snapshot replaces entirely.
    fill(&dst.store, 3);
    apply_ops(&dst.store, G, &[put("zzz-stale", "x")]);
    for (i, c) in chunks.iter().enumerate() {
        let progress = dst.store.receive_chunk(c).unwrap();
        if i + 1 < chunks.len() {
            assert_eq!(
                progress,
                ChunkProgress::Partial {
                    have: i as u32 + 1,
                    total: chunks.len() as u32
                }
            );
        } else {
            assert_eq!(progress, ChunkProgress::Complete);
        }
    }
    install(&dst.store, &snap).unwrap();
    assert_eq!(all_records(&dst.store), all_records(&src.store));
    assert_eq!(
        dst.store.apply_state(G).unwrap(),
        src.store.apply_state(G).unwrap()
    );
    let s = dst.store.group(G).unwrap();
    assert_eq!(s.first_index(), Ok(301));
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 300);
    drop(s);
    // And it is durable.
    let dst = dst.reopen();
    assert_eq!(all_records(&dst.store), all_records(&src.store));
}

#[test]
fn sessions_travel_with_the_snapshot() {
    use swarmkv_store::{ApplyEntry, ApplyOp, KvError, Session};
    let src = mem_harness(small_chunks());
    fill(&src.store, 20);
    let op = put("dedup", "1");
    let s = Session {
        client: 9,
        seq: 5,
        first_incomplete: 5,
    };
    let next = src.store.apply_state(G).unwrap().index + 1;
    let first = src
        .store
        .apply(
            G,
            &[ApplyEntry {
                index: next,
                term: 1,
                op: ApplyOp::KvOnce(&op, s),
            }],
        )
        .unwrap();
    let (snap, chunks) = take_snapshot(&src.store);
    let dst = mem_harness(small_chunks());
    // The replica remembers a client of its own (in client 9's bucket), not yet flushed:
    // the install replaces it with the snapshot's sessions.
    let own = Session {
        client: 13,
        seq: 1,
        first_incomplete: 1,
    };
    let own_op = put("own", "1");
    let entry = |index, op, session| ApplyEntry {
        index,
        term: 1,
        op: ApplyOp::KvOnce(op, session),
    };
    dst.store.apply(G, &[entry(1, &own_op, own)]).unwrap();
    for c in &chunks {
        dst.store.receive_chunk(c).unwrap();
    }
    install(&dst.store, &snap).unwrap();
    let at = dst.store.apply_state(G).unwrap().index + 1;
    let r = dst.store.apply(G, &[entry(at, &own_op, own)]).unwrap();
    assert!(
        matches!(&r[0], Some(Ok(swarmkv_store::KvOutcome::Put { revision, .. })) if *revision == at),
        "{r:?}"
    );
    dst.store.sync().unwrap();
    // On the new replica the retry is still recognised.
    let at = dst.store.apply_state(G).unwrap().index + 1;
    let retry = dst
        .store
        .apply(
            G,
            &[ApplyEntry {
                index: at,
                term: 1,
                op: ApplyOp::KvOnce(&op, s),
            }],
        )
        .unwrap();
    assert_eq!(retry, first);
    let stale = Session { seq: 4, ..s };
    let r = dst
        .store
        .apply(
            G,
            &[ApplyEntry {
                index: at + 1,
                term: 1,
                op: ApplyOp::KvOnce(&op, stale),
            }],
        )
        .unwrap();
    assert_eq!(r[0], Some(Err(KvError::StaleRetry { client: 9, seq: 4 })));
}

#[test]
fn crash_between_chunks_discards_the_partial_snapshot() {
    let src = mem_harness(small_chunks());
    fill(&src.store, 200);
    let (snap, chunks) = take_snapshot(&src.store);

    let dst = sled_harness(small_chunks());
    fill(&dst.store, 5);
    dst.store.sync().unwrap();
    let before = all_records(&dst.store);
    let half = chunks.len() / 2;
    for c in &chunks[..half] {
        dst.store.receive_chunk(c).unwrap();
    }
    // Installing now must fail: chunks are missing.
    match install(&dst.store, &snap) {
        Err(StoreError::SnapshotIncomplete { have, want, .. }) => {
            assert_eq!((have, want), (half as u32, chunks.len() as u32))
        }
        other => panic!("install with half the chunks: {other:?}"),
    }
    dst.store.sync().unwrap();
    // Crash (the store is dropped without further ado) and restart.
    let dst = dst.reopen();
    let discarded = dst.store.discarded_snapshots();
    assert_eq!(discarded.len(), 1);
    assert_eq!(discarded[0].chunks_staged, half as u32);
    assert_eq!(all_records(&dst.store), before, "old state untouched");
    assert!(matches!(
        install(&dst.store, &snap),
        Err(StoreError::SnapshotIncomplete { have: 0, .. })
    ));
    // The leader sends it again; this time it completes.
    for c in &chunks {
        dst.store.receive_chunk(c).unwrap();
    }
    install(&dst.store, &snap).unwrap();
    assert_eq!(all_records(&dst.store), all_records(&src.store));
}

#[test]
fn crash_after_staging_but_before_install_keeps_the_old_state() {
    let src = mem_harness(small_chunks());
    fill(&src.store, 50);
    let (snap, chunks) = take_snapshot(&src.store);
    let dst = mem_harness(small_chunks());
    fill(&dst.store, 2);
    dst.store.sync().unwrap();
    let before = all_records(&dst.store);
    for c in &chunks {
        dst.store.receive_chunk(c).unwrap();
    }
    let dst = dst.crash_and_reopen();
    assert_eq!(all_records(&dst.store), before);
    assert_eq!(dst.store.apply_state(G).unwrap().index, 2);
    assert!(install(&dst.store, &snap).is_err());
}

#[test]
fn bad_chunks_from_a_peer_are_refused_with_errors() {
    let src = mem_harness(small_chunks());
    fill(&src.store, 50);
    let (_, chunks) = take_snapshot(&src.store);
    let dst = mem_harness(small_chunks());

    // Random garbage.
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    for len in [0usize, 1, 7, 64, 4096] {
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect();
        assert!(
            dst.store.receive_chunk(&garbage).is_err(),
            "garbage of {len}"
        );
    }
    // A flipped byte in the records fails the checksum (or the decoding).
    let mut bad = chunks[0].clone();
    let at = bad.len() - 10;
    bad[at] ^= 0x40;
    assert!(dst.store.receive_chunk(&bad).is_err());
    // A chunk that claims a sequence number past its total.
    let mut c = SnapshotChunk::decode(&chunks[0], usize::MAX).unwrap();
    c.seq = c.total;
    assert!(matches!(
        dst.store.receive_chunk(&c.encode()),
        Err(StoreError::SnapshotInvalid { .. })
    ));
    // Oversized.
    let tiny = mem_harness(StoreConfig {
        max_chunk_message: 16,
        ..small_chunks()
    });
    assert!(matches!(
        tiny.store.receive_chunk(&chunks[0]),
        Err(StoreError::TooLarge { .. })
    ));
    // Stale: the destination already applied past the snapshot's index.
    fill(&dst.store, 60);
    assert!(matches!(
        dst.store.receive_chunk(&chunks[0]),
        Err(StoreError::SnapshotOutOfDate { .. })
    ));
}

#[test]
fn an_empty_partition_snapshots_to_one_empty_chunk() {
    let src = mem_harness(StoreConfig::default());
    seed_log(&src.store, G, 4, 2, &[]);
    let (snap, chunks) = take_snapshot(&src.store);
    assert_eq!(chunks.len(), 1);
    assert_eq!(snap.get_metadata().index, 4);
    let dst = mem_harness(StoreConfig::default());
    assert_eq!(
        dst.store.receive_chunk(&chunks[0]).unwrap(),
        ChunkProgress::Complete
    );
    install(&dst.store, &snap).unwrap();
    assert_eq!(dst.store.apply_state(G).unwrap().index, 4);
    assert!(all_records(&dst.store).is_empty());
}
