//! Transactions within a partition: compares on every target, both branches, the order of
//! operations, the checks that refuse a transaction before anything is written, and the
//! events one transaction leaves. Runs on both backends.

#[macro_use]
mod common;

use common::*;
use swarmkv_store::txn::MAX_TXN_OPS;
use swarmkv_store::{
    ApplyEntry, ApplyOp, Backend, CompareOp, CompareTarget, EventKind, HistoryQuery, HistoryRead,
    KvError, KvOp, KvOutcome, KvRecord, Limits, Store, StoreConfig, Txn, TxnCompare, TxnOp,
    TxnOpResult,
};

const G: u64 = 3;

fn cmp(key: &str, target: CompareTarget, op: CompareOp) -> TxnCompare {
    TxnCompare {
        key: key.into(),
        target,
        op,
    }
}

fn tput(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
    }
}

fn tget(key: &str) -> TxnOp {
    TxnOp::Get { key: key.into() }
}

fn tdel(key: &str) -> TxnOp {
    TxnOp::Delete { key: key.into() }
}

/// Applies `txn` as the group's next entry and returns its result.
fn apply_txn<B: Backend>(store: &Store<B>, txn: Txn) -> Result<KvOutcome, KvError> {
    let index = store.apply_state(G).unwrap().index + 1;
    let op = KvOp::Txn(txn);
    let mut results = store
        .apply(
            G,
            &[ApplyEntry {
                index,
                term: 1,
                op: ApplyOp::Kv(&op),
            }],
        )
        .unwrap();
    results.remove(0).expect("a kv entry has a result")
}

fn outcome(r: Result<KvOutcome, KvError>) -> (u64, bool, Vec<TxnOpResult>) {
    match r {
        Ok(KvOutcome::Txn {
            revision,
            succeeded,
            results,
        }) => (revision, succeeded, results),
        other => panic!("expected a transaction outcome, got {other:?}"),
    }
}

fn value<B: Backend>(store: &Store<B>, key: &str) -> Option<Vec<u8>> {
    store.get(G, key.as_bytes()).unwrap().map(|r| r.value)
}

both!(compares_choose_the_branch, |store: &Store<_>| {
    // 1: k = a (create 1, mod 1, version 1); 2: k = b (mod 2, version 2).
    apply_ops(store, G, &[put("k", "a"), put("k", "b")]);
    let holds = |c: TxnCompare| {
        let txn = Txn {
            compares: vec![c],
            success: vec![],
            failure: vec![],
        };
        outcome(apply_txn(store, txn)).1
    };
    use CompareOp::*;
    use CompareTarget::*;
    let cases = [
        (cmp("k", Value(b"b".to_vec()), Equal), true),
        (cmp("k", Value(b"a".to_vec()), Greater), true),
        (cmp("k", Value(b"c".to_vec()), Less), true),
        (cmp("k", Value(b"b".to_vec()), NotEqual), false),
        (cmp("k", Version(2), Equal), true),
        (cmp("k", Version(3), Less), true),
        (cmp("k", CreateRevision(1), Equal), true),
        (cmp("k", ModRevision(2), Equal), true),
        (cmp("k", ModRevision(1), Greater), true),
        (cmp("k", ModRevision(2), NotEqual), false),
        (cmp("k", Lease(0), Equal), true),
        // A missing key: every number is 0 and it has no value, so no value compare holds.
        (cmp("missing", Version(0), Equal), true),
        (cmp("missing", CreateRevision(0), Equal), true),
        (cmp("missing", ModRevision(1), Less), true),
        (cmp("missing", Value(Vec::new()), Equal), false),
        (cmp("missing", Value(b"x".to_vec()), NotEqual), false),
    ];
    for (c, expected) in cases {
        let shown = format!("{c:?}");
        assert_eq!(holds(c), expected, "{shown}");
    }
    // Every compare must hold: one failing compare picks the failure branch.
    let txn = Txn {
        compares: vec![
            cmp("k", Version(2), Equal),
            cmp("k", Value(b"zzz".to_vec()), Equal),
        ],
        success: vec![tput("chosen", "success")],
        failure: vec![tput("chosen", "failure")],
    };
    let (_, succeeded, results) = outcome(apply_txn(store, txn));
    assert!(!succeeded);
    assert_eq!(results, vec![TxnOpResult::Put]);
    assert_eq!(value(store, "chosen"), Some(b"failure".to_vec()));
});

both!(operations_run_in_order_at_one_revision, |store: &Store<
    _,
>| {
    apply_ops(store, G, &[put("a", "1"), put("b", "2"), put("c", "3")]);
    // 4: the transaction.
    let txn = Txn {
        compares: vec![cmp(
            "a",
            CompareTarget::Value(b"1".to_vec()),
            CompareOp::Equal,
        )],
        success: vec![
            tput("a", "10"),
            tget("a"),
            tdel("b"),
            tget("b"),
            tdel("nothing"),
            TxnOp::DeleteRange {
                start: b"c".to_vec(),
                end: Some(b"d".to_vec()),
            },
            tput("new", "n"),
        ],
        failure: vec![],
    };
    let (revision, succeeded, results) = outcome(apply_txn(store, txn));
    assert_eq!((revision, succeeded), (4, true));
    assert_eq!(
        results,
        vec![
            TxnOpResult::Put,
            TxnOpResult::Get(Some(KvRecord {
                value: b"10".to_vec(),
                create_rev: 1,
                mod_rev: 4,
                version: 2,
                lease: 0,
            })),
            TxnOpResult::Delete { deleted: true },
            TxnOpResult::Get(None),
            TxnOpResult::Delete { deleted: false },
            TxnOpResult::DeleteRange { deleted: 1 },
            TxnOpResult::Put,
        ]
    );
    assert_eq!(value(store, "a"), Some(b"10".to_vec()));
    assert_eq!(value(store, "b"), None);
    assert_eq!(value(store, "c"), None);
    assert_eq!(
        store
            .get(G, b"new")
            .unwrap()
            .map(|r| (r.create_rev, r.version)),
        Some((4, 1))
    );
    // Watchers see one event per changed key, all at the transaction's revision.
    let query = HistoryQuery {
        after: 3,
        start: b"",
        end: None,
        max_events: 0,
        max_bytes: 0,
    };
    let page = match store.history(G, &query).unwrap() {
        HistoryRead::Page(page) => page,
        other => panic!("expected a page, got {other:?}"),
    };
    let events: Vec<(EventKind, Vec<u8>, u64)> = page
        .events
        .iter()
        .map(|e| (e.kind, e.key.clone(), e.revision))
        .collect();
    assert_eq!(
        events,
        vec![
            (EventKind::Put, b"a".to_vec(), 4),
            (EventKind::Delete, b"b".to_vec(), 4),
            (EventKind::Delete, b"c".to_vec(), 4),
            (EventKind::Put, b"new".to_vec(), 4),
        ]
    );
});

both!(a_refused_transaction_writes_nothing, |store: &Store<_>| {
    apply_ops(
        store,
        G,
        &[
            KvOp::Put {
                key: b"leased".to_vec(),
                value: b"v".to_vec(),
                lease: 9,
                prev_kv: false,
            },
            KvOp::DeleteLease { lease: 9 },
        ],
    );
    // The second put names the revoked lease: the first put must not land either.
    let txn = Txn {
        compares: vec![],
        success: vec![
            tput("first", "x"),
            TxnOp::Put {
                key: b"second".to_vec(),
                value: b"y".to_vec(),
                lease: 9,
            },
        ],
        failure: vec![],
    };
    assert_eq!(
        apply_txn(store, txn),
        Err(KvError::LeaseNotFound { lease: 9 })
    );
    assert_eq!(value(store, "first"), None);
    assert_eq!(value(store, "second"), None);
    // The refused entry still advanced the applied index.
    assert_eq!(store.apply_state(G).unwrap().index, 3);
});

#[test]
fn validation_refuses_oversized_duplicate_and_too_long_transactions() {
    let limits = Limits::default();
    let ops = |n: usize| Txn {
        compares: vec![],
        success: (0..n).map(|i| tput(&format!("k{i}"), "v")).collect(),
        failure: vec![],
    };
    assert_eq!(KvOp::Txn(ops(MAX_TXN_OPS)).validate(&limits), Ok(()));
    assert_eq!(
        KvOp::Txn(ops(MAX_TXN_OPS + 1)).validate(&limits),
        Err(KvError::TooManyOps {
            ops: MAX_TXN_OPS + 1,
            max: MAX_TXN_OPS
        })
    );
    let one = |success: Vec<TxnOp>| {
        KvOp::Txn(Txn {
            compares: vec![],
            success,
            failure: vec![],
        })
        .validate(&limits)
    };
    let dup = |k: &str| Err(KvError::DuplicateTxnKey { key: k.into() });
    assert_eq!(one(vec![tput("k", "1"), tput("k", "2")]), dup("k"));
    assert_eq!(one(vec![tput("k", "1"), tdel("k")]), dup("k"));
    assert_eq!(
        one(vec![
            TxnOp::DeleteRange {
                start: b"a".to_vec(),
                end: Some(b"m".to_vec())
            },
            tput("c", "1")
        ]),
        dup("c")
    );
    // Reads never conflict, a key at a range's exclusive end is outside it, and the two
    // branches are separate (only one runs).
    assert_eq!(
        one(vec![
            tget("k"),
            tput("k", "1"),
            tget("k"),
            TxnOp::DeleteRange {
                start: b"a".to_vec(),
                end: Some(b"k".to_vec())
            },
        ]),
        Ok(())
    );
    assert_eq!(
        KvOp::Txn(Txn {
            compares: vec![],
            success: vec![tput("k", "1")],
            failure: vec![tput("k", "2")],
        })
        .validate(&limits),
        Ok(())
    );
    // Sizes are checked in compares and in both branches.
    let big = vec![b'x'; limits.max_value + 1];
    assert!(matches!(
        KvOp::Txn(Txn {
            compares: vec![TxnCompare {
                key: b"k".to_vec(),
                target: CompareTarget::Value(big.clone()),
                op: CompareOp::Equal,
            }],
            success: vec![],
            failure: vec![],
        })
        .validate(&limits),
        Err(KvError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        KvOp::Txn(Txn {
            compares: vec![],
            success: vec![],
            failure: vec![tget("")],
        })
        .validate(&limits),
        Err(KvError::EmptyKey)
    ));
}
