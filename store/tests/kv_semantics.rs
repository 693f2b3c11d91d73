//! The partition state machine: revisions, versions, CAS, deletes, scans, limits, and the
//! exactly-once apply rule. Runs on both backends.

#[macro_use]
mod common;

use std::ops::Bound;

use common::*;
use swarmkv_store::sessions::{
    bucket_key, bucket_of, decode_bucket, LegacySessionRecord, SessionRecord, BUCKET_CLIENTS,
    SESSION_BUCKETS,
};
use swarmkv_store::{
    keys, ApplyEntry, ApplyOp, Backend, BackendBatch, CasAction, Compare, KvError, KvOp, KvOutcome,
    KvRecord, KvResult, MemBackend, Scan, Session, Store, StoreConfig, StoreError, TreeId,
};

const G: u64 = 5;

fn put_prev(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: value.into(),
        lease: 0,
        prev_kv: true,
    }
}

fn del(key: &str) -> KvOp {
    KvOp::Delete {
        key: key.into(),
        prev_kv: true,
    }
}

fn cas(key: &str, compare: Compare, action: CasAction) -> KvOp {
    KvOp::Cas {
        key: key.into(),
        compare,
        action,
    }
}

fn rec(value: &str, create_rev: u64, mod_rev: u64, version: u64) -> KvRecord {
    KvRecord {
        value: value.into(),
        create_rev,
        mod_rev,
        version,
        lease: 0,
    }
}

fn get<B: Backend>(store: &Store<B>, key: &str) -> Option<KvRecord> {
    store.get(G, key.as_bytes()).unwrap()
}

both!(revisions_and_versions_follow_etcd, |store: &Store<_>| {
    // Indices 1, 2, 3: create, overwrite, overwrite.
    let r = apply_ops(
        store,
        G,
        &[put("k", "a"), put_prev("k", "b"), put("k", "c")],
    );
    assert_eq!(
        r[0],
        KvOutcome::Put {
            revision: 1,
            prev: None
        }
    );
    assert_eq!(
        r[1],
        KvOutcome::Put {
            revision: 2,
            prev: Some(rec("a", 1, 1, 1))
        }
    );
    assert_eq!(get(store, "k"), Some(rec("c", 1, 3, 3)));
    // Delete (4) then re-create (5): a new life with a new create revision and version 1.
    let r = apply_ops(store, G, &[del("k"), put("k", "d"), del("missing")]);
    assert_eq!(
        r[0],
        KvOutcome::Delete {
            revision: 4,
            deleted: true,
            prev: Some(rec("c", 1, 3, 3))
        }
    );
    assert_eq!(
        r[2],
        KvOutcome::Delete {
            revision: 6,
            deleted: false,
            prev: None
        }
    );
    assert_eq!(get(store, "k"), Some(rec("d", 5, 5, 1)));
    assert_eq!(store.apply_state(G).unwrap().index, 6);
    // Empty values are values.
    apply_ops(store, G, &[put("empty", "")]);
    assert_eq!(get(store, "empty"), Some(rec("", 7, 7, 1)));
});

both!(
    compare_and_swap_succeeds_and_fails_exactly,
    |store: &Store<_>| {
        let put_b = || CasAction::Put(b"b".to_vec());
        let r = apply_ops(
            store,
            G,
            &[
                cas("k", Compare::ModRevision(1), put_b()), // 1: absent key, fails
                cas("k", Compare::Value(b"x".to_vec()), put_b()), // 2: fails
                cas("k", Compare::Absent, CasAction::Put(b"a".to_vec())), // 3: creates
                cas("k", Compare::Absent, put_b()),         // 4: exists, fails
                cas("k", Compare::ModRevision(2), put_b()), // 5: wrong revision
                cas("k", Compare::ModRevision(3), put_b()), // 6: succeeds
                cas("k", Compare::Value(b"a".to_vec()), put_b()), // 7: stale value
                cas(
                    "k",
                    Compare::Value(b"b".to_vec()),
                    CasAction::Put(b"c".to_vec()),
                ), // 8
            ],
        );
        let succeeded: Vec<bool> = r
            .iter()
            .map(|o| match o {
                KvOutcome::Cas { succeeded, .. } => *succeeded,
                other => panic!("not a cas outcome: {other:?}"),
            })
            .collect();
        assert_eq!(
            succeeded,
            vec![false, false, true, false, false, true, false, true]
        );
        // A failed CAS reports what is there, so the caller can retry.
        assert_eq!(
            r[4],
            KvOutcome::Cas {
                revision: 5,
                succeeded: false,
                current: Some(rec("a", 3, 3, 1))
            }
        );
        assert_eq!(get(store, "k"), Some(rec("c", 3, 8, 3)));
        // CAS delete.
        let r = apply_ops(
            store,
            G,
            &[cas("k", Compare::ModRevision(8), CasAction::Delete)],
        );
        assert!(matches!(
            r[0],
            KvOutcome::Cas {
                succeeded: true,
                ..
            }
        ));
        assert_eq!(get(store, "k"), None);
    }
);

both!(
    delete_range_sees_writes_of_the_same_batch,
    |store: &Store<_>| {
        apply_ops(store, G, &[put("a1", "x"), put("a2", "x"), put("b1", "x")]);
        let r = apply_ops(
            store,
            G,
            &[
                put("a3", "x"), // written in this same apply call
                del("a1"),
                KvOp::DeleteRange {
                    start: b"a".to_vec(),
                    end: Some(b"b".to_vec()),
                },
                put("a9", "after"),
            ],
        );
        assert_eq!(
            r[2],
            KvOutcome::DeleteRange {
                revision: 6,
                deleted: 2
            }
        );
        let all = store.scan(G, b"", None, 0).unwrap();
        let keys: Vec<&[u8]> = all.records.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![b"a9".as_slice(), b"b1".as_slice()]);
        // An open-ended range deletes to the end of the partition.
        let r = apply_ops(
            store,
            G,
            &[KvOp::DeleteRange {
                start: b"a".to_vec(),
                end: None,
            }],
        );
        assert_eq!(
            r[0],
            KvOutcome::DeleteRange {
                revision: 8,
                deleted: 2
            }
        );
        assert!(store.scan(G, b"", None, 0).unwrap().records.is_empty());
    }
);

both!(
    scans_respect_prefix_boundaries_order_and_limits,
    |store: &Store<_>| {
        let keys: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"ab".to_vec(),
            b"ab\x00".to_vec(),
            b"abc".to_vec(),
            b"ab\xff".to_vec(),
            b"ab\xff\xff".to_vec(),
            b"ac".to_vec(),
            b"b".to_vec(),
            vec![0xff, 0xff],
        ];
        let ops: Vec<KvOp> = keys
            .iter()
            .map(|k| KvOp::Put {
                key: k.clone(),
                value: b"v".to_vec(),
                lease: 0,
                prev_kv: false,
            })
            .collect();
        apply_ops(store, G, &ops);
        // Another partition's keys never leak into this one's scans.
        apply_ops(store, G + 1, &[put("ab-other", "v")]);
        let names = |p: swarmkv_store::ScanPage| -> Vec<Vec<u8>> {
            p.records.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            names(store.scan_prefix(G, b"ab", 0).unwrap()),
            keys[1..6].to_vec()
        );
        assert_eq!(
            names(store.scan_prefix(G, b"ab\xff", 0).unwrap()),
            keys[4..6].to_vec()
        );
        assert_eq!(
            names(store.scan_prefix(G, &[0xff], 0).unwrap()),
            keys[8..].to_vec()
        );
        assert_eq!(names(store.scan_prefix(G, b"", 0).unwrap()), keys);
        let page = store.scan_prefix(G, b"ab", 2).unwrap();
        assert!(page.more);
        assert_eq!(names(page), keys[1..3].to_vec());
        let page = store.scan_prefix(G, b"ab", 5).unwrap();
        assert!(!page.more);
        // Ranges are [start, end).
        assert_eq!(
            names(store.scan(G, b"ab", Some(b"ac"), 0).unwrap()),
            keys[1..6].to_vec()
        );
        assert_eq!(
            names(store.scan(G, b"abc", None, 0).unwrap()),
            keys[3..].to_vec()
        );
        assert!(store
            .scan(G, b"b", Some(b"a"), 0)
            .unwrap()
            .records
            .is_empty());
    }
);

both!(limits_refuse_bad_ops_deterministically, |store: &Store<
    _,
>| {
    let limits = store.config().limits;
    let big_key = "k".repeat(limits.max_key + 1);
    let ops = [
        put("", "v"),
        put(&big_key, "v"),
        KvOp::Put {
            key: b"k".to_vec(),
            value: vec![7; limits.max_value + 1],
            lease: 0,
            prev_kv: false,
        },
        put("ok", "v"),
    ];
    let entries: Vec<ApplyEntry<'_>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| ApplyEntry {
            index: i as u64 + 1,
            term: 1,
            op: ApplyOp::Kv(op),
        })
        .collect();
    let r = store.apply(G, &entries).unwrap();
    assert_eq!(r[0], Some(Err(KvError::EmptyKey)));
    assert_eq!(
        r[1],
        Some(Err(KvError::KeyTooLarge {
            len: limits.max_key + 1,
            max: limits.max_key
        }))
    );
    assert!(matches!(r[2], Some(Err(KvError::ValueTooLarge { .. }))));
    assert!(matches!(r[3], Some(Ok(KvOutcome::Put { revision: 4, .. }))));
    // Refused entries still count as applied: the index moves on.
    assert_eq!(store.apply_state(G).unwrap().index, 4);
    assert_eq!(get(store, "k"), None);
    // The largest allowed value is fine.
    apply_ops(
        store,
        G,
        &[KvOp::Put {
            key: b"max".to_vec(),
            value: vec![1; limits.max_value],
            lease: 0,
            prev_kv: false,
        }],
    );
    assert_eq!(get(store, "max").unwrap().value.len(), limits.max_value);
});

both!(apply_is_exactly_once_and_in_order, |store: &Store<_>| {
    apply_ops(store, G, &[put("a", "1")]);
    let op = put("a", "2");
    let again = [ApplyEntry {
        index: 1,
        term: 1,
        op: ApplyOp::Kv(&op),
    }];
    assert!(matches!(
        store.apply(G, &again),
        Err(StoreError::ApplyOutOfOrder {
            expected: 2,
            got: 1,
            ..
        })
    ));
    let skip = [ApplyEntry {
        index: 3,
        term: 1,
        op: ApplyOp::Kv(&op),
    }];
    assert!(matches!(
        store.apply(G, &skip),
        Err(StoreError::ApplyOutOfOrder {
            expected: 2,
            got: 3,
            ..
        })
    ));
    // A failed apply wrote nothing.
    assert_eq!(get(store, "a").unwrap().value, b"1");
    // A conf change entry moves the index and records the configuration.
    let cs = conf_state(&[4, 5, 6]);
    store
        .apply(
            G,
            &[ApplyEntry {
                index: 2,
                term: 3,
                op: ApplyOp::ConfChange(&cs),
            }],
        )
        .unwrap();
    let a = store.apply_state(G).unwrap();
    assert_eq!(
        (a.index, a.term, a.conf_state.voters),
        (2, 3, vec![4, 5, 6])
    );
});

#[test]
fn applied_index_and_data_survive_reopen_together() {
    let h = sled_harness(StoreConfig::default());
    apply_ops(&h.store, G, &[put("a", "1"), put("b", "2")]);
    h.store.sync().unwrap();
    let h = h.reopen();
    assert_eq!(h.store.apply_state(G).unwrap().index, 2);
    assert_eq!(h.store.get(G, b"b").unwrap(), Some(rec("2", 2, 2, 1)));
    // The next apply continues at 3, never re-applying 1 or 2.
    let r = apply_ops(&h.store, G, &[put_prev("a", "x")]);
    assert_eq!(
        r[0],
        KvOutcome::Put {
            revision: 3,
            prev: Some(rec("1", 1, 1, 1))
        }
    );
}

both!(a_retried_write_applies_once_per_session, |store: &Store<
    _,
>| {
    use swarmkv_store::Session;
    let op = put_prev("k", "v1");
    let s1 = Session {
        client: 42,
        seq: 1,
        first_incomplete: 1,
    };
    let once = |index: u64, op: &KvOp, s: Session| {
        store
            .apply(
                G,
                &[ApplyEntry {
                    index,
                    term: 1,
                    op: ApplyOp::KvOnce(op, s),
                }],
            )
            .unwrap()
            .remove(0)
            .unwrap()
    };
    let first = once(1, &op, s1);
    assert_eq!(
        first,
        Ok(KvOutcome::Put {
            revision: 1,
            prev: None
        })
    );
    // The same request again (a client retry after a timeout): same answer, not re-applied.
    let again = once(2, &op, s1);
    assert_eq!(again, first);
    assert_eq!(get(store, "k"), Some(rec("v1", 1, 1, 1)));
    // The next write of the session says seq 1 is answered: its memory is dropped, and a
    // late duplicate of seq 1 is refused instead of re-applied.
    let s2 = Session {
        client: 42,
        seq: 2,
        first_incomplete: 2,
    };
    assert!(matches!(
        once(3, &put("k", "v2"), s2),
        Ok(KvOutcome::Put { revision: 3, .. })
    ));
    assert_eq!(
        once(4, &op, s1),
        Err(KvError::StaleRetry { client: 42, seq: 1 })
    );
    assert_eq!(get(store, "k").unwrap().value, b"v2");
    // Another client's numbering is independent.
    let other = Session {
        client: 7,
        seq: 1,
        first_incomplete: 1,
    };
    assert!(matches!(
        once(5, &put("j", "x"), other),
        Ok(KvOutcome::Put { revision: 5, .. })
    ));
});

fn put_leased(key: &str, lease: u64) -> KvOp {
    KvOp::Put {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        prev_kv: false,
    }
}

both!(
    delete_lease_removes_its_keys_and_refuses_later_puts,
    |store: &Store<_>| {
        apply_ops(
            store,
            G,
            &[
                put_leased("a", 7),
                put_leased("b", 8),
                put_leased("c", 7),
                put("d", "free"),
            ],
        );
        // Written in the same apply call as the deletion: still deleted.
        let r = apply_ops(
            store,
            G,
            &[put_leased("e", 7), KvOp::DeleteLease { lease: 7 }],
        );
        assert_eq!(
            r[1],
            KvOutcome::DeleteLease {
                revision: 6,
                deleted: 3
            }
        );
        let keys: Vec<Vec<u8>> = store
            .scan(G, b"", None, 0)
            .unwrap()
            .records
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"d".to_vec()]);
        // A put racing the revocation, applied after it, is refused; other leases still work.
        let late = put_leased("late", 7);
        let other = put_leased("other", 8);
        let results = store
            .apply(
                G,
                &[
                    ApplyEntry {
                        index: 7,
                        term: 1,
                        op: ApplyOp::Kv(&late),
                    },
                    ApplyEntry {
                        index: 8,
                        term: 1,
                        op: ApplyOp::Kv(&other),
                    },
                ],
            )
            .unwrap();
        assert_eq!(results[0], Some(Err(KvError::LeaseNotFound { lease: 7 })));
        assert!(matches!(results[1], Some(Ok(KvOutcome::Put { .. }))));
        assert_eq!(get(store, "late"), None);
        // Idempotent: a second deletion (a new coordinator redoing it) deletes nothing more.
        let r = apply_ops(store, G, &[KvOp::DeleteLease { lease: 7 }]);
        assert_eq!(
            r[0],
            KvOutcome::DeleteLease {
                revision: 9,
                deleted: 0
            }
        );
    }
);

/// Applies `op` with `session` to `group` as its next entry.
fn apply_once<B: Backend>(store: &Store<B>, group: u64, op: &KvOp, session: Session) -> KvResult {
    let index = store.apply_state(group).unwrap().index + 1;
    store
        .apply(
            group,
            &[ApplyEntry {
                index,
                term: 1,
                op: ApplyOp::KvOnce(op, session),
            }],
        )
        .unwrap()
        .remove(0)
        .unwrap()
}

fn session(client: u64, seq: u64, first_incomplete: u64) -> Session {
    Session {
        client,
        seq,
        first_incomplete,
    }
}

/// Every stored record of `group`'s session family (`[group][TAG_SESSION]...`), read from the
/// backend itself: (key, value).
fn session_records<B: Backend>(store: &Store<B>, group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    // Whatever the store keeps above the backend reaches it first.
    store.sync().unwrap();
    let lo = keys::group_tag(group, keys::TAG_SESSION);
    let hi = keys::group_tag(group, keys::TAG_SESSION + 1);
    let mut found = Vec::new();
    store
        .backend()
        .scan(
            TreeId::Kv,
            Bound::Included(&lo),
            Bound::Excluded(&hi),
            false,
            &mut |k, v| {
                found.push((k.to_vec(), v.to_vec()));
                Ok(Scan::Continue)
            },
        )
        .unwrap();
    found
}

/// The one stored session bucket of `group`, which must hold `client` alone: its record.
fn only_session_record<B: Backend>(store: &Store<B>, group: u64, client: u64) -> SessionRecord {
    let records = session_records(store, group);
    assert_eq!(records.len(), 1, "session records of group {group}");
    let bucket = bucket_of(client);
    assert_eq!(records[0].0, bucket_key(group, bucket));
    let mut clients = decode_bucket(group, bucket, &records[0].1).unwrap();
    assert_eq!(clients.len(), 1, "clients of the bucket");
    let (c, record) = clients.remove(0);
    assert_eq!(c, client);
    record
}

/// `client`'s stored record in `group`, if its bucket holds one.
fn stored_session<B: Backend>(store: &Store<B>, group: u64, client: u64) -> Option<SessionRecord> {
    let key = bucket_key(group, bucket_of(client));
    let (_, bytes) = session_records(store, group)
        .into_iter()
        .find(|(k, _)| *k == key)?;
    decode_bucket(group, bucket_of(client), &bytes)
        .unwrap()
        .into_iter()
        .find(|(c, _)| *c == client)
        .map(|(_, r)| r)
}

fn seqs(record: &SessionRecord) -> Vec<u64> {
    record.results.iter().map(|(s, _)| *s).collect()
}

both!(
    a_session_keeps_one_record_per_client_and_group_in_its_bucket,
    |store: &Store<_>| {
        // Four writes in flight at once (first_incomplete stays 1): all four remembered, in
        // the one record of the client.
        for seq in 1..=4 {
            let r = apply_once(store, G, &put("k", "v"), session(42, seq, 1));
            assert!(matches!(r, Ok(KvOutcome::Put { .. })), "{r:?}");
            let record = only_session_record(store, G, 42);
            assert_eq!(record.watermark, 1);
            assert_eq!(seqs(&record), (1..=seq).collect::<Vec<_>>());
        }
        // Writes 1 and 2 answered: forgotten, and the watermark rises; still one record.
        apply_once(store, G, &put("k", "v"), session(42, 5, 3)).unwrap();
        let record = only_session_record(store, G, 42);
        assert_eq!(record.watermark, 3);
        assert_eq!(seqs(&record), vec![3, 4, 5]);
        // A retry and a stale retry write nothing.
        let before = session_records(store, G);
        apply_once(store, G, &put("k", "v"), session(42, 4, 3)).unwrap();
        assert_eq!(
            apply_once(store, G, &put("k", "v"), session(42, 2, 3)),
            Err(KvError::StaleRetry { client: 42, seq: 2 })
        );
        assert_eq!(session_records(store, G), before);
        // Another client has its own record, in its own bucket (7 and 42 are in different
        // ones) or beside another client's (46 is in 42's); another group its own family.
        assert_ne!(bucket_of(7), bucket_of(42));
        assert_eq!(bucket_of(46), bucket_of(42));
        apply_once(store, G, &put("j", "x"), session(7, 1, 1)).unwrap();
        apply_once(store, G, &put("j", "y"), session(46, 1, 1)).unwrap();
        let mut keys_of_g: Vec<_> = session_records(store, G)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys_of_g.sort();
        let mut want = vec![bucket_key(G, bucket_of(7)), bucket_key(G, bucket_of(42))];
        want.sort();
        assert_eq!(keys_of_g, want);
        assert_eq!(seqs(&stored_session(store, G, 42).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(&stored_session(store, G, 46).unwrap()), vec![1]);
        assert_eq!(seqs(&stored_session(store, G, 7).unwrap()), vec![1]);
        apply_once(store, G + 1, &put("k", "v"), session(42, 1, 1)).unwrap();
        assert_eq!(only_session_record(store, G + 1, 42).watermark, 1);
        assert_eq!(session_records(store, G).len(), 2);
    }
);

both!(
    retries_are_answered_from_the_session_until_forgotten,
    |store: &Store<_>| {
        // Three writes of one client in flight, out of order with their answers.
        let first: Vec<KvResult> = (1..=3)
            .map(|seq| {
                apply_once(
                    store,
                    G,
                    &put_prev("k", &format!("v{seq}")),
                    session(42, seq, 1),
                )
            })
            .collect();
        assert_eq!(
            first[1],
            Ok(KvOutcome::Put {
                revision: 2,
                prev: Some(rec("v1", 1, 1, 1))
            })
        );
        // Each retry gets its own first answer and changes nothing.
        for seq in [2, 1, 3] {
            let again = apply_once(store, G, &put_prev("k", "retry"), session(42, seq, 1));
            assert_eq!(again, first[seq as usize - 1]);
        }
        assert_eq!(get(store, "k"), Some(rec("v3", 1, 3, 3)));
        // Write 4 says 1 and 2 were answered: their retries are refused from now on, 3's is
        // still answered.
        let r4 = apply_once(store, G, &put_prev("k", "v4"), session(42, 4, 3));
        assert!(matches!(r4, Ok(KvOutcome::Put { .. })), "{r4:?}");
        for seq in [1, 2] {
            assert_eq!(
                apply_once(store, G, &put("k", "late"), session(42, seq, 3)),
                Err(KvError::StaleRetry { client: 42, seq })
            );
        }
        assert_eq!(
            apply_once(store, G, &put("k", "late"), session(42, 3, 3)),
            first[2]
        );
        // A write carrying an older first_incomplete (sent before a later one was answered)
        // does not lower the watermark.
        apply_once(store, G, &put("other", "x"), session(42, 5, 1)).unwrap();
        assert_eq!(
            apply_once(store, G, &put("k", "late"), session(42, 2, 1)),
            Err(KvError::StaleRetry { client: 42, seq: 2 })
        );
        // A write whose own number is already answered (first_incomplete past it) is applied
        // and not remembered.
        apply_once(store, G, &put("own", "x"), session(42, 6, 7)).unwrap();
        assert_eq!(
            apply_once(store, G, &put("own", "y"), session(42, 6, 7)),
            Err(KvError::StaleRetry { client: 42, seq: 6 })
        );
        assert_eq!(get(store, "k").unwrap().value, b"v4");
        assert_eq!(get(store, "own").unwrap().value, b"x");
        // A retry in the same apply call as the write: answered from the record the call has
        // not written yet.
        let op = put_prev("same", "1");
        let s = session(42, 8, 7);
        let at = store.apply_state(G).unwrap().index + 1;
        let r = store
            .apply(
                G,
                &[
                    ApplyEntry {
                        index: at,
                        term: 1,
                        op: ApplyOp::KvOnce(&op, s),
                    },
                    ApplyEntry {
                        index: at + 1,
                        term: 1,
                        op: ApplyOp::KvOnce(&op, s),
                    },
                ],
            )
            .unwrap();
        assert_eq!(r[0], r[1]);
        assert_eq!(get(store, "same"), Some(rec("1", at, at, 1)));
        let record = only_session_record(store, G, 42);
        assert_eq!(record.watermark, 7);
        assert_eq!(seqs(&record), vec![8]);
    }
);

/// A record remembering writes `results` (each a put at its own revision).
fn remembering(watermark: u64, results: &[u64]) -> LegacySessionRecord {
    LegacySessionRecord {
        watermark,
        results: results
            .iter()
            .map(|&seq| {
                let outcome = KvOutcome::Put {
                    revision: seq,
                    prev: None,
                };
                (seq, Ok(outcome))
            })
            .collect(),
    }
}

fn in_bucket(records: &[(u64, LegacySessionRecord)]) -> Vec<(u64, SessionRecord)> {
    records
        .iter()
        .map(|(c, r)| {
            let record = SessionRecord {
                watermark: r.watermark,
                results: r.results.clone(),
                last_index: 1,
            };
            (*c, record)
        })
        .collect()
}

#[test]
fn a_corrupt_session_record_is_reported_with_its_location() {
    let bucket = bucket_of(42);
    let mut trailing = remembering(1, &[1]).encode();
    trailing.push(0);
    let good = |c| (c, remembering(1, &[1]));
    let bucket_bytes = |records: &[(u64, LegacySessionRecord)]| {
        let list = in_bucket(records);
        swarmkv_store::sessions::encode_bucket(list.iter().map(|(c, r)| (c, r)))
    };
    let legacy = keys::group_tag_index(G, keys::TAG_SESSION, 42);
    let at_bucket = bucket_key(G, bucket);
    let of_client = "group 5 session of client 2a".to_string();
    let of_bucket = format!("group 5 session bucket {bucket}");
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, String)> = vec![
        (
            "undecodable",
            legacy.clone(),
            vec![0xff; 3],
            of_client.clone(),
        ),
        ("empty", legacy.clone(), Vec::new(), of_client.clone()),
        (
            "trailing bytes",
            legacy.clone(),
            trailing,
            of_client.clone(),
        ),
        (
            "out of order",
            legacy.clone(),
            remembering(1, &[3, 2]).encode(),
            of_client.clone(),
        ),
        (
            "repeated seq",
            legacy.clone(),
            remembering(1, &[2, 2]).encode(),
            of_client.clone(),
        ),
        (
            "below the watermark",
            legacy.clone(),
            remembering(5, &[4, 6]).encode(),
            of_client.clone(),
        ),
        (
            "undecodable bucket",
            at_bucket.clone(),
            vec![0xff; 3],
            of_bucket.clone(),
        ),
        (
            "clients out of order",
            at_bucket.clone(),
            bucket_bytes(&[good(46), good(42)]),
            of_bucket.clone(),
        ),
        (
            "a client of another bucket",
            at_bucket.clone(),
            bucket_bytes(&[good(42), good(43)]),
            of_bucket.clone(),
        ),
        (
            "a bad record in a bucket",
            at_bucket.clone(),
            bucket_bytes(&[(42, remembering(5, &[4]))]),
            of_bucket.clone(),
        ),
        (
            "a bucket past the last",
            bucket_key(G, SESSION_BUCKETS),
            bucket_bytes(&[]),
            format!("group 5 session bucket {SESSION_BUCKETS}"),
        ),
    ];
    for (what, key, bytes, want) in cases {
        let mem = MemBackend::new();
        let mut b = BackendBatch::default();
        b.put(TreeId::Kv, key, bytes);
        mem.write(&b).unwrap();
        let store = Store::with_backend(mem, StoreConfig::default()).unwrap();
        let r = store.apply(
            G,
            &[ApplyEntry {
                index: 1,
                term: 1,
                op: ApplyOp::KvOnce(&put("k", "v"), session(42, 7, 7)),
            }],
        );
        match r {
            Err(StoreError::Corrupt { tree, location, .. }) => {
                assert_eq!(tree, "kv", "{what}");
                assert_eq!(location, want, "{what}");
            }
            other => panic!("{what}: expected corruption, got {other:?}"),
        }
        // Nothing of the refused apply happened.
        assert_eq!(get(&store, "k"), None, "{what}");
        // A write without a session does not read the sessions.
        let r = apply_ops(&store, G, &[put("k", "v")]);
        assert!(
            matches!(r[0], KvOutcome::Put { revision: 1, .. }),
            "{what}: {r:?}"
        );
    }
}

#[test]
fn a_full_bucket_forgets_the_client_whose_last_write_is_oldest() {
    let store = Store::with_backend(MemBackend::new(), StoreConfig::default()).unwrap();
    // Clients 4, 8, ...: all in bucket 0. Client 4 writes first, then BUCKET_CLIENTS - 1
    // others, then client 4 again (now the most recent), then client 8 is the oldest.
    let clients: Vec<u64> = (1..=BUCKET_CLIENTS as u64 + 1).map(|i| i * 4).collect();
    assert!(clients.iter().all(|c| bucket_of(*c) == 0));
    let first = apply_once(&store, G, &put("k", "a"), session(4, 1, 1));
    for c in &clients[1..BUCKET_CLIENTS] {
        apply_once(&store, G, &put("k", "b"), session(*c, 1, 1)).unwrap();
    }
    // Full: a retry of client 4 is still answered from its session.
    assert_eq!(
        apply_once(&store, G, &put("k", "retry"), session(4, 1, 1)),
        first
    );
    apply_once(&store, G, &put("k", "c"), session(4, 2, 1)).unwrap();
    // A new client: client 8 (the oldest last write) is forgotten, not client 4.
    let newcomer = clients[BUCKET_CLIENTS];
    apply_once(&store, G, &put("k", "d"), session(newcomer, 1, 1)).unwrap();
    store.sync().unwrap();
    let stored = decode_bucket(G, 0, &session_records(&store, G)[0].1).unwrap();
    assert_eq!(stored.len(), BUCKET_CLIENTS);
    assert!(stored.iter().all(|(c, _)| *c != 8));
    assert_eq!(
        apply_once(&store, G, &put("k", "retry"), session(4, 1, 1)),
        first
    );
    // Client 8's retry of its write is a new write now: applied again, at a new revision.
    let before = store.apply_state(G).unwrap().index;
    let again = apply_once(&store, G, &put("k", "b"), session(8, 1, 1));
    assert!(
        matches!(again, Ok(KvOutcome::Put { revision, .. }) if revision == before + 1),
        "{again:?}"
    );
    // Client 8 came back in the place of client 12. Three new clients in one apply call: the
    // bucket stays full, the three oldest go (16, 20, 24).
    let op = put("k", "e");
    let at = store.apply_state(G).unwrap().index + 1;
    let newcomers: Vec<u64> = (0..3)
        .map(|i| 4 * (BUCKET_CLIENTS as u64 + 10 + i))
        .collect();
    let entries: Vec<ApplyEntry> = newcomers
        .iter()
        .enumerate()
        .map(|(i, c)| ApplyEntry {
            index: at + i as u64,
            term: 1,
            op: ApplyOp::KvOnce(&op, session(*c, 1, 1)),
        })
        .collect();
    store.apply(G, &entries).unwrap();
    store.sync().unwrap();
    let stored = decode_bucket(G, 0, &session_records(&store, G)[0].1).unwrap();
    let members: Vec<u64> = stored.iter().map(|(c, _)| *c).collect();
    assert_eq!(members.len(), BUCKET_CLIENTS);
    for gone in [12, 16, 20, 24] {
        assert!(
            !members.contains(&gone),
            "client {gone} is still remembered"
        );
    }
    for kept in [4, 8, 28].into_iter().chain(newcomers) {
        assert!(members.contains(&kept), "client {kept} was forgotten");
    }
}

#[test]
fn a_format_4_store_opens_with_its_per_client_sessions_moved_into_buckets() {
    let mem = MemBackend::new();
    let mut b = BackendBatch::default();
    b.put(
        TreeId::Meta,
        b"format".to_vec(),
        4u32.to_be_bytes().to_vec(),
    );
    let legacy = keys::group_tag_index(G, keys::TAG_SESSION, 42);
    b.put(TreeId::Kv, legacy.clone(), remembering(1, &[3]).encode());
    mem.write(&b).unwrap();
    let store = Store::with_backend(mem.clone(), StoreConfig::default()).unwrap();
    assert_eq!(
        mem.get(TreeId::Meta, b"format").unwrap(),
        Some(swarmkv_store::FORMAT_VERSION.to_be_bytes().to_vec())
    );
    apply_noops_to(&store, G, 9, 1);
    // Write 3 is remembered: its retry gets the stored answer (revision 3), not a new one.
    assert_eq!(
        apply_once(&store, G, &put("k", "v"), session(42, 3, 1)),
        Ok(KvOutcome::Put {
            revision: 3,
            prev: None
        })
    );
    assert_eq!(get(&store, "k"), None);
    // The legacy record stays until the client writes; then it moves into the bucket.
    store.sync().unwrap();
    assert_eq!(session_records(&store, G).len(), 1);
    apply_once(&store, G, &put("k", "v"), session(42, 4, 4)).unwrap();
    let record = only_session_record(&store, G, 42);
    assert_eq!(record.watermark, 4);
    assert_eq!(seqs(&record), vec![4]);
    assert!(mem.get(TreeId::Kv, &legacy).unwrap().is_none());
}

#[test]
fn a_crash_keeps_the_sessions_of_the_applied_index_it_keeps() {
    let h = mem_harness(StoreConfig::default());
    let first = apply_once(&h.store, G, &put("k", "a"), session(42, 1, 1));
    // Write 1 and its session reach the engine; write 2 stays in the state layer.
    h.store.sync().unwrap();
    let second = apply_once(&h.store, G, &put("k", "b"), session(42, 2, 1));
    let h = h.crash_and_reopen();
    assert_eq!(h.store.apply_state(G).unwrap().index, 1);
    // The log replays write 2: applied again (its session did not survive either), then
    // both retries are answered from the session.
    assert_eq!(
        apply_once(&h.store, G, &put("k", "b"), session(42, 2, 1)),
        second
    );
    assert_eq!(
        apply_once(&h.store, G, &put("k", "x"), session(42, 1, 1)),
        first
    );
    assert_eq!(
        apply_once(&h.store, G, &put("k", "x"), session(42, 2, 1)),
        second
    );
    assert_eq!(get(&h.store, "k").unwrap().value, b"b");
}
