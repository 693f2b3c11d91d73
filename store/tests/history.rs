//! The event history watches read: one event per changed key for every operation kind, at its
//! revision, written with the apply; bounded retention with a compacted revision; snapshot
//! installs; crash consistency. Runs on both backends.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use swarmkv_store::raft::Storage;
use swarmkv_store::{
    ApplyEntry, ApplyOp, Backend, CasAction, Compare, Event, EventKind, HistoryPage, HistoryQuery,
    HistoryRead, KvOp, LogBatch, Session, Store, StoreConfig,
};

const G: u64 = 7;

macro_rules! both {
    ($name:ident, $config:expr, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn sled() {
                let h = sled_harness($config);
                ($body)(&h.store);
            }
            #[test]
            fn memory() {
                let h = mem_harness($config);
                ($body)(&h.store);
            }
        }
    };
}

fn all() -> HistoryQuery<'static> {
    HistoryQuery {
        after: 0,
        start: b"",
        end: None,
        max_events: 0,
        max_bytes: 0,
    }
}

fn page<B: Backend>(store: &Store<B>, q: &HistoryQuery<'_>) -> HistoryPage {
    match store.history(G, q).expect("history read") {
        HistoryRead::Page(p) => p,
        other => panic!("expected a page, got {other:?}"),
    }
}

/// (kind, key, value, revision) of each event, for compact comparisons.
fn brief(events: &[Event]) -> Vec<(EventKind, String, String, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e.kind,
                String::from_utf8_lossy(&e.key).into_owned(),
                String::from_utf8_lossy(&e.value).into_owned(),
                e.revision,
            )
        })
        .collect()
}

fn del(key: &str) -> KvOp {
    KvOp::Delete {
        key: key.into(),
        prev_kv: false,
    }
}

fn put_lease(key: &str, value: &str, lease: u64) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: value.into(),
        lease,
        prev_kv: false,
    }
}

use EventKind::{Delete as D, Put as P};

fn ev(kind: EventKind, key: &str, value: &str, rev: u64) -> (EventKind, String, String, u64) {
    (kind, key.into(), value.into(), rev)
}

both!(
    every_kind_of_change_is_one_event_at_its_revision,
    StoreConfig::default(),
    |store: &Store<_>| {
        apply_ops(
            store,
            G,
            &[
                put("a", "1"),  // 1
                put("a", "2"),  // 2
                del("a"),       // 3
                del("missing"), // 4: no change, no event
                put("b", "x"),  // 5
                KvOp::Cas {
                    key: "b".into(),
                    compare: Compare::Value("x".into()),
                    action: CasAction::Put("y".into()),
                }, // 6
                KvOp::Cas {
                    key: "b".into(),
                    compare: Compare::Value("nope".into()),
                    action: CasAction::Put("z".into()),
                }, // 7: fails, no event
                KvOp::Cas {
                    key: "b".into(),
                    compare: Compare::ModRevision(6),
                    action: CasAction::Delete,
                }, // 8
                put("r/1", "v"), // 9
                put("r/2", "v"), // 10
                put("r/3", "v"), // 11
                KvOp::DeleteRange {
                    start: "r/".into(),
                    end: Some("r/3".into()),
                }, // 12: two events
                put_lease("l/1", "v", 9), // 13
                put_lease("l/2", "v", 9), // 14
                KvOp::DeleteLease { lease: 9 }, // 15: two events
            ],
        );
        let p = page(store, &all());
        assert_eq!(
            brief(&p.events),
            vec![
                ev(P, "a", "1", 1),
                ev(P, "a", "2", 2),
                ev(D, "a", "", 3),
                ev(P, "b", "x", 5),
                ev(P, "b", "y", 6),
                ev(D, "b", "", 8),
                ev(P, "r/1", "v", 9),
                ev(P, "r/2", "v", 10),
                ev(P, "r/3", "v", 11),
                ev(D, "r/1", "", 12),
                ev(D, "r/2", "", 12),
                ev(P, "l/1", "v", 13),
                ev(P, "l/2", "v", 14),
                ev(D, "l/1", "", 15),
                ev(D, "l/2", "", 15),
            ]
        );
        assert_eq!((p.through, p.applied, p.compacted), (15, 15, 0));
        // Puts carry the record's metadata; deletes carry none.
        assert_eq!((p.events[1].create_rev, p.events[1].version), (1, 2));
        assert_eq!(p.events[11].lease, 9);
        assert_eq!((p.events[2].create_rev, p.events[2].version), (0, 0));
    }
);

both!(
    reads_filter_by_range_start_after_a_revision_and_never_split_one,
    StoreConfig::default(),
    |store: &Store<_>| {
        apply_ops(
            store,
            G,
            &[
                put("x/1", "a"), // 1
                put("y/1", "a"), // 2
                put("x/2", "a"), // 3
                put("x/3", "a"), // 4
                KvOp::DeleteRange {
                    start: "x/".into(),
                    end: Some("x/9".into()),
                }, // 5: three events
                put("x/1", "b"), // 6
            ],
        );
        let prefix = HistoryQuery {
            start: b"x/",
            end: Some(b"x0"),
            ..all()
        };
        let p = page(store, &prefix);
        assert_eq!(
            p.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![1, 3, 4, 5, 5, 5, 6]
        );
        // After revision 4: only what follows.
        let p = page(
            store,
            &HistoryQuery {
                after: 4,
                ..prefix.clone()
            },
        );
        assert_eq!(
            p.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![5, 5, 5, 6]
        );
        // A limit of 2 events stops at a revision boundary: revision 5's three events stay
        // together, and `through` says where to continue.
        let p = page(
            store,
            &HistoryQuery {
                after: 2,
                max_events: 2,
                ..prefix.clone()
            },
        );
        assert_eq!(
            p.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(p.through, 4);
        let p = page(
            store,
            &HistoryQuery {
                after: 4,
                max_events: 1,
                ..prefix.clone()
            },
        );
        assert_eq!(
            p.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![5, 5, 5]
        );
        assert_eq!(p.through, 5);
        // Nothing after the applied index: an empty page through the applied index.
        let p = page(
            store,
            &HistoryQuery {
                after: 6,
                ..prefix.clone()
            },
        );
        assert!(p.events.is_empty());
        assert_eq!(p.through, 6);
        // A reader ahead of this replica gets nothing and a `through` below its position.
        let p = page(
            store,
            &HistoryQuery {
                after: 50,
                ..prefix
            },
        );
        assert!(p.events.is_empty());
        assert_eq!(p.through, 6);
    }
);

both!(
    retention_keeps_a_bounded_history_and_reports_the_compacted_revision,
    StoreConfig {
        history_revisions: 16,
        ..StoreConfig::default()
    },
    |store: &Store<_>| {
        for i in 0..100 {
            apply_ops(store, G, &[put(&format!("k{}", i % 7), &i.to_string())]);
        }
        let c = store.history_compacted(G).unwrap();
        // At most the retention plus its trimming step is kept, at least the retention.
        assert!((100 - 16 - 2..=100 - 16).contains(&c), "compacted {c}");
        match store
            .history(
                G,
                &HistoryQuery {
                    after: c - 1,
                    ..all()
                },
            )
            .unwrap()
        {
            HistoryRead::Compacted { compacted, applied } => {
                assert_eq!((compacted, applied), (c, 100))
            }
            other => panic!("a read before the compacted revision: {other:?}"),
        }
        let p = page(store, &HistoryQuery { after: c, ..all() });
        assert_eq!(
            p.events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            (c + 1..=100).collect::<Vec<_>>()
        );
        assert_eq!(p.compacted, c);
    }
);

both!(
    a_retried_write_answered_from_its_session_adds_no_event,
    StoreConfig::default(),
    |store: &Store<_>| {
        let op = put("k", "v");
        let session = Session {
            client: 3,
            seq: 1,
            first_incomplete: 1,
        };
        for index in [1, 2] {
            store
                .apply(
                    G,
                    &[ApplyEntry {
                        index,
                        term: 1,
                        op: ApplyOp::KvOnce(&op, session),
                    }],
                )
                .unwrap();
        }
        let p = page(store, &all());
        assert_eq!(brief(&p.events), vec![ev(P, "k", "v", 1)]);
        assert_eq!(p.through, 2);
    }
);

both!(
    the_apply_observer_hears_every_apply,
    StoreConfig::default(),
    |store: &Store<_>| {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        store.set_apply_observer(Arc::new(move |g, i| h.lock().unwrap().push((g, i))));
        apply_ops(store, G, &[put("a", "1"), put("b", "1")]);
        apply_ops(store, G, &[del("a")]);
        assert_eq!(*heard.lock().unwrap(), vec![(G, 2), (G, 3)]);
    }
);

#[test]
fn a_new_group_from_an_empty_snapshot_has_its_whole_history() {
    let h = mem_harness(StoreConfig::default());
    let mut b = LogBatch::new();
    b.apply_snapshot(G, empty_snapshot(5, 5, &[1, 2, 3]));
    h.store.commit(&b).unwrap();
    assert_eq!(h.store.history_compacted(G).unwrap(), 0);
    apply_ops(&h.store, G, &[put("a", "1")]);
    let p = page(&h.store, &all());
    assert_eq!(brief(&p.events), vec![ev(P, "a", "1", 6)]);
}

#[test]
fn an_installed_snapshot_replaces_the_history_and_compacts_to_its_index() {
    let src = sled_harness(StoreConfig::default());
    apply_ops(&src.store, G, &[put("a", "1"), put("b", "1"), del("a")]);
    let dst = mem_harness(StoreConfig::default());
    apply_ops(&dst.store, G, &[put("old", "1")]);
    let snap = src.store.group(G).unwrap().snapshot(0, 2).unwrap();
    let d = swarmkv_store::SnapshotDescriptor::decode(&snap.data).unwrap();
    for seq in 0..d.chunks {
        let c = src.store.snapshot_chunk(G, d.index, seq).unwrap();
        dst.store.receive_chunk(&c).unwrap();
    }
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = heard.clone();
    dst.store
        .set_apply_observer(Arc::new(move |g, i| h.lock().unwrap().push((g, i))));
    let mut b = LogBatch::new();
    b.apply_snapshot(G, snap);
    dst.store.commit(&b).unwrap();
    assert_eq!(*heard.lock().unwrap(), vec![(G, 3)]);
    assert_eq!(dst.store.history_compacted(G).unwrap(), 3);
    assert!(matches!(
        dst.store.history(G, &all()).unwrap(),
        HistoryRead::Compacted {
            compacted: 3,
            applied: 3
        }
    ));
    // The snapshot carried the data, not the history; new changes are recorded again.
    apply_ops(&dst.store, G, &[put("c", "1")]);
    let p = page(&dst.store, &HistoryQuery { after: 3, ..all() });
    assert_eq!(brief(&p.events), vec![ev(P, "c", "1", 4)]);
    assert_eq!(dst.store.scan(G, b"", None, 0).unwrap().records.len(), 2);
    // The source's history is untouched by having been snapshotted.
    assert_eq!(page(&src.store, &all()).events.len(), 3);
}

#[test]
fn after_a_crash_the_history_matches_the_applied_index() {
    let mut h = mem_harness(StoreConfig::default());
    apply_ops(&h.store, G, &[put("a", "1"), put("b", "1")]);
    h.store.sync().unwrap();
    apply_ops(&h.store, G, &[put("c", "1")]);
    // The last apply was not synced: a crash loses it, events and applied index together.
    h = h.crash_and_reopen();
    let p = page(&h.store, &all());
    assert_eq!(p.applied, 2);
    assert_eq!(
        brief(&p.events),
        vec![ev(P, "a", "1", 1), ev(P, "b", "1", 2)]
    );
    // Re-applying the lost entry records its event once.
    apply_ops(&h.store, G, &[put("c", "1")]);
    assert_eq!(page(&h.store, &all()).events.len(), 3);
}

#[test]
fn the_history_survives_a_restart() {
    let h = sled_harness(StoreConfig::default());
    apply_ops(&h.store, G, &[put("a", "1"), del("a")]);
    h.store.sync().unwrap();
    let h = h.reopen();
    let p = page(&h.store, &all());
    assert_eq!(
        brief(&p.events),
        vec![ev(P, "a", "1", 1), ev(D, "a", "", 2)]
    );
}

/// The keys of group `G`'s history chunks in the engine (the tag sorts first in a group, and
/// its compacted mark is the bare tag, 9 bytes).
fn chunk_keys<B: Backend>(store: &Store<B>) -> Vec<Vec<u8>> {
    let mut lo = G.to_be_bytes().to_vec();
    lo.push(0);
    let mut hi = G.to_be_bytes().to_vec();
    hi.push(1);
    let mut keys = Vec::new();
    store
        .backend()
        .scan(
            swarmkv_store::TreeId::Kv,
            std::ops::Bound::Included(&lo),
            std::ops::Bound::Excluded(&hi),
            false,
            &mut |k, _| {
                if k.len() > 9 {
                    keys.push(k.to_vec());
                }
                Ok(swarmkv_store::Scan::Continue)
            },
        )
        .unwrap();
    keys
}

/// Reads the history after its compacted revision in pages of at most `max_events`,
/// following `through`.
fn read_in_pages<B: Backend>(store: &Store<B>, max_events: usize) -> Vec<u64> {
    let mut revisions = Vec::new();
    let mut after = store.history_compacted(G).unwrap();
    loop {
        let p = page(
            store,
            &HistoryQuery {
                after,
                max_events,
                ..all()
            },
        );
        revisions.extend(p.events.iter().map(|e| e.revision));
        if p.through == p.applied {
            return revisions;
        }
        assert!(p.through > after, "a page that does not advance");
        after = p.through;
    }
}

both!(
    the_events_of_many_applies_reach_the_engine_as_a_few_chunks,
    StoreConfig::default(),
    |store: &Store<_>| {
        for i in 0..300u64 {
            apply_ops(store, G, &[put(&format!("k{}", i % 11), &i.to_string())]);
        }
        store.sync().unwrap();
        let chunks = chunk_keys(store);
        // 32 events at most per chunk: 300 single-event applies make 10.
        assert_eq!(chunks.len(), 10, "{} chunks", chunks.len());
        // Pages of any size cut at revision boundaries inside chunks and follow on exactly.
        for max in [1, 7, 64, 100, 0] {
            assert_eq!(read_in_pages(store, max), (1..=300).collect::<Vec<_>>());
        }
        // A read from the middle of a chunk starts at the right event.
        let p = page(
            store,
            &HistoryQuery {
                after: 130,
                ..all()
            },
        );
        assert_eq!(p.events.first().map(|e| e.revision), Some(131));
        assert_eq!(p.events.len(), 170);
    }
);

both!(
    each_flush_closes_the_open_chunks,
    StoreConfig::default(),
    |store: &Store<_>| {
        for i in 0..30u64 {
            apply_ops(store, G, &[put("k", &i.to_string())]);
            if i % 3 == 2 {
                store.sync().unwrap();
            }
        }
        assert_eq!(chunk_keys(store).len(), 10);
        assert_eq!(read_in_pages(store, 2), (1..=30).collect::<Vec<_>>());
    }
);

both!(
    retention_deletes_whole_chunks_and_keeps_the_engine_bounded,
    StoreConfig {
        history_revisions: 16,
        ..StoreConfig::default()
    },
    |store: &Store<_>| {
        for i in 0..1000u64 {
            apply_ops(store, G, &[put("k", &i.to_string())]);
        }
        store.sync().unwrap();
        let c = store.history_compacted(G).unwrap();
        assert!((1000 - 16 - 2..=1000 - 16).contains(&c), "compacted {c}");
        // What is kept: the chunk that holds the compacted revision and the ones after it.
        assert!(chunk_keys(store).len() <= 2, "{:?}", chunk_keys(store));
        assert_eq!(read_in_pages(store, 5), (c + 1..=1000).collect::<Vec<_>>());
    }
);

#[test]
fn after_a_restart_the_next_apply_opens_a_new_chunk_and_nothing_is_lost() {
    let h = sled_harness(StoreConfig::default());
    for i in 0..10u64 {
        apply_ops(&h.store, G, &[put("a", &i.to_string())]);
    }
    h.store.sync().unwrap();
    let h = h.reopen();
    // The flush closed the first chunk; the restart changes nothing to that.
    for i in 10..20u64 {
        apply_ops(&h.store, G, &[put("a", &i.to_string())]);
    }
    h.store.sync().unwrap();
    assert_eq!(chunk_keys(&h.store).len(), 2);
    assert_eq!(read_in_pages(&h.store, 3), (1..=20).collect::<Vec<_>>());
}

#[test]
fn a_crash_loses_the_open_chunk_with_its_applies_and_the_replay_records_them_once() {
    let mut h = mem_harness(StoreConfig::default());
    for i in 0..5u64 {
        apply_ops(&h.store, G, &[put("a", &i.to_string())]);
    }
    h.store.sync().unwrap();
    // These open a chunk held in the layer only: the crash loses it with them.
    for i in 5..9u64 {
        apply_ops(&h.store, G, &[put("a", &i.to_string())]);
    }
    h = h.crash_and_reopen();
    assert_eq!(read_in_pages(&h.store, 0), (1..=5).collect::<Vec<_>>());
    for i in 5..9u64 {
        apply_ops(&h.store, G, &[put("a", &i.to_string())]);
    }
    assert_eq!(read_in_pages(&h.store, 2), (1..=9).collect::<Vec<_>>());
}

/// A waker that counts its wake-ups.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

both!(
    a_waiter_is_woken_by_the_apply_that_passes_its_index,
    StoreConfig::default(),
    |store: &Store<_>| {
        use std::future::Future;
        use std::task::{Context, Poll};
        apply_ops(store, G, &[put("a", "1")]);
        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut wait = Box::pin(store.applied_past(G, 1));
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
        // An apply of another group does not wake it.
        apply_ops(store, G + 1, &[put("b", "1")]);
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        apply_ops(store, G, &[put("a", "2")]);
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(2));
        // Already past: ready at once.
        let mut done = Box::pin(store.applied_past(G, 0));
        assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(2));
    }
);
