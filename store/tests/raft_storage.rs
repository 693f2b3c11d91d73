//! The `raft::Storage` contract, with cases modelled on raft-rs's own `MemStorage` tests, run
//! on both backends. Our store keeps the term of the entry before `first_index` (the truncation
//! point), so `term(first_index - 1)` answers where raft-rs's MemStorage says `Compacted`.

#[macro_use]
mod common;

use common::*;
use swarmkv_store::raft::eraftpb::Entry;
use swarmkv_store::raft::{self, GetEntriesContext, Storage, StorageError};
use swarmkv_store::{Backend, LogBatch, Store, StoreConfig, StoreError};

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn size_of(e: &Entry) -> u64 {
    u64::from(protobuf::Message::compute_size(e))
}

fn compacted<T>() -> raft::Result<T> {
    Err(raft::Error::Store(StorageError::Compacted))
}

fn unavailable<T>() -> raft::Result<T> {
    Err(raft::Error::Store(StorageError::Unavailable))
}

fn three_entries<B: Backend>(store: &Store<B>) {
    // Log truncated at (2, 2), holding 3..=5 with terms 3..=5.
    seed_log(store, 1, 2, 2, &[entry(3, 3), entry(4, 4), entry(5, 5)]);
}

both!(
    term_answers_compacted_known_and_unavailable,
    |store: &Store<_>| {
        three_entries(store);
        let s = store.group(1).unwrap();
        assert_eq!(s.term(1), compacted());
        assert_eq!(s.term(2), Ok(2), "the truncation point keeps its term");
        assert_eq!(s.term(3), Ok(3));
        assert_eq!(s.term(4), Ok(4));
        assert_eq!(s.term(5), Ok(5));
        assert_eq!(s.term(6), unavailable());
    }
);

both!(entries_honours_bounds_and_max_size, |store: &Store<_>| {
    let ents = vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 6)];
    seed_log(store, 1, 2, 2, &ents);
    let s = store.group(1).unwrap();
    let max = u64::MAX;
    assert_eq!(s.entries(2, 6, max, ctx()), compacted());
    assert_eq!(s.entries(3, 4, max, ctx()), Ok(vec![entry(3, 3)]));
    assert_eq!(s.entries(4, 5, max, ctx()), Ok(vec![entry(4, 4)]));
    assert_eq!(
        s.entries(4, 6, max, ctx()),
        Ok(vec![entry(4, 4), entry(5, 5)])
    );
    assert_eq!(s.entries(4, 7, max, ctx()), Ok(ents[1..].to_vec()));
    // Even with a max size of zero, the first entry is returned.
    assert_eq!(s.entries(4, 7, 0, ctx()), Ok(vec![entry(4, 4)]));
    let two = size_of(&ents[1]) + size_of(&ents[2]);
    assert_eq!(s.entries(4, 7, two, ctx()), Ok(ents[1..3].to_vec()));
    assert_eq!(
        s.entries(4, 7, two + size_of(&ents[3]) / 2, ctx()),
        Ok(ents[1..3].to_vec())
    );
    assert_eq!(
        s.entries(4, 7, two + size_of(&ents[3]) - 1, ctx()),
        Ok(ents[1..3].to_vec())
    );
    assert_eq!(
        s.entries(4, 7, two + size_of(&ents[3]), ctx()),
        Ok(ents[1..].to_vec())
    );
    assert_eq!(s.entries(4, 8, max, ctx()), unavailable());
});

#[test]
fn entries_are_the_same_from_cache_and_from_disk() {
    for cache in [0usize, 300, 1 << 20] {
        let config = StoreConfig {
            entry_cache_bytes: cache,
            ..StoreConfig::default()
        };
        let h = sled_harness(config);
        let ents: Vec<Entry> = (3..=40)
            .map(|i| entry_with_data(i, 3 + i / 10, &[i as u8; 32]))
            .collect();
        seed_log(&h.store, 7, 2, 2, &ents);
        let s = h.store.group(7).unwrap();
        assert_eq!(
            s.entries(3, 41, u64::MAX, ctx()),
            Ok(ents.clone()),
            "cache {cache}"
        );
        assert_eq!(
            s.entries(20, 25, u64::MAX, ctx()),
            Ok(ents[17..22].to_vec())
        );
        for e in &ents {
            assert_eq!(s.term(e.index), Ok(e.term));
        }
        assert_eq!(
            s.entries(3, 41, size_of(&ents[0]) * 3, ctx())
                .map(|v| v.len()),
            Ok(3)
        );
    }
}

both!(
    first_and_last_index_follow_appends_and_compaction,
    |store: &Store<_>| {
        three_entries(store);
        let s = store.group(1).unwrap();
        assert_eq!(s.first_index(), Ok(3));
        assert_eq!(s.last_index(), Ok(5));
        let mut b = LogBatch::new();
        b.append(1, vec![entry(6, 5)]);
        store.commit(&b).unwrap();
        assert_eq!(s.last_index(), Ok(6));
        apply_noops_to(store, 1, 4, 4);
        let mut b = LogBatch::new();
        b.compact(1, 4);
        store.commit(&b).unwrap();
        assert_eq!(s.first_index(), Ok(4));
        assert_eq!(s.term(3), Ok(3), "the new truncation point keeps its term");
        assert_eq!(s.term(2), compacted());
    }
);

both!(
    compact_drops_prefix_and_refuses_unapplied,
    |store: &Store<_>| {
        // (compact index, first index after, term of first, entries left), as in raft-rs.
        let cases = [
            (2u64, 3u64, 3u64, 3usize),
            (3, 3, 3, 3),
            (4, 4, 4, 2),
            (5, 5, 5, 1),
        ];
        for (group, (idx, windex, wterm, wlen)) in cases.into_iter().enumerate() {
            let group = group as u64 + 10;
            seed_log(store, group, 2, 2, &[entry(3, 3), entry(4, 4), entry(5, 5)]);
            let mut b = LogBatch::new();
            b.compact(group, idx);
            if idx > 3 {
                // Entries 3.. are not applied yet: compaction past the applied index is refused.
                match store.commit(&b) {
                    Err(StoreError::BadCompact { applied: 2, .. }) => {}
                    other => panic!("compact {idx} before apply: {other:?}"),
                }
                apply_noops_to(store, group, 5, 5);
            }
            store.commit(&b).unwrap();
            let s = store.group(group).unwrap();
            assert_eq!(s.first_index(), Ok(windex), "compact {idx}");
            let got = s.entries(windex, windex + 1, 1, ctx()).unwrap();
            assert_eq!(got[0].term, wterm);
            assert_eq!(s.entries(windex, 6, 100, ctx()).unwrap().len(), wlen);
        }
        // Compacting past the last index is refused too.
        let mut b = LogBatch::new();
        b.compact(13, 7);
        assert!(matches!(
            store.commit(&b),
            Err(StoreError::BadCompact { .. })
        ));
    }
);

both!(
    append_overwrites_conflicts_and_refuses_gaps,
    |store: &Store<_>| {
        let base = vec![entry(3, 3), entry(4, 4), entry(5, 5)];
        let cases: Vec<(Vec<Entry>, Vec<Entry>)> = vec![
            (base.clone(), base.clone()),
            (
                vec![entry(3, 3), entry(4, 6), entry(5, 6)],
                vec![entry(3, 3), entry(4, 6), entry(5, 6)],
            ),
            (
                vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)],
                vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)],
            ),
            // Truncate incoming entries, truncate the existing ones and append.
            (vec![entry(4, 5)], vec![entry(3, 3), entry(4, 5)]),
            // Truncate the existing entries and append.
            (
                vec![entry(5, 5)],
                vec![entry(3, 3), entry(4, 4), entry(5, 5)],
            ),
            // Direct append.
            (
                vec![entry(6, 5)],
                vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)],
            ),
        ];
        for (i, (append, want)) in cases.into_iter().enumerate() {
            let group = 100 + i as u64;
            seed_log(store, group, 2, 2, &base);
            let mut b = LogBatch::new();
            b.append(group, append);
            store.commit(&b).unwrap();
            let s = store.group(group).unwrap();
            let last = s.last_index().unwrap();
            assert_eq!(last, want.last().unwrap().index, "case {i}");
            assert_eq!(
                s.entries(3, last + 1, u64::MAX, ctx()),
                Ok(want),
                "case {i}"
            );
        }
        // A gap after the last index, or rewriting compacted entries, is an error.
        seed_log(store, 200, 2, 2, &base);
        let mut b = LogBatch::new();
        b.append(200, vec![entry(7, 5)]);
        assert!(matches!(
            store.commit(&b),
            Err(StoreError::BadAppend { index: 7, .. })
        ));
        let mut b = LogBatch::new();
        b.append(200, vec![entry(2, 5)]);
        assert!(matches!(
            store.commit(&b),
            Err(StoreError::BadAppend { index: 2, .. })
        ));
        let mut b = LogBatch::new();
        b.append(200, vec![entry(6, 5), entry(8, 5)]);
        assert!(matches!(
            store.commit(&b),
            Err(StoreError::NonConsecutiveAppend { index: 8, .. })
        ));
        // A failed batch changes nothing, for any group in it.
        let mut b = LogBatch::new();
        b.append(201, vec![entry(1, 1)]);
        b.append(200, vec![entry(9, 5)]);
        assert!(store.commit(&b).is_err());
        assert_eq!(store.group(201).unwrap().last_index(), Ok(0));
        assert_eq!(store.group(200).unwrap().last_index(), Ok(5));
    }
);

both!(
    apply_snapshot_resets_log_and_refuses_old_ones,
    |store: &Store<_>| {
        three_entries(store);
        let mut b = LogBatch::new();
        b.apply_snapshot(1, empty_snapshot(8, 6, &[1, 2]));
        store.commit(&b).unwrap();
        let s = store.group(1).unwrap();
        assert_eq!(s.first_index(), Ok(9));
        assert_eq!(s.last_index(), Ok(8));
        assert_eq!(s.term(8), Ok(6));
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 8);
        assert_eq!(st.hard_state.term, 6);
        assert_eq!(st.conf_state.voters, vec![1, 2]);
        assert_eq!(store.apply_state(1).unwrap().index, 8);
        // Older than the log: refused.
        let mut b = LogBatch::new();
        b.apply_snapshot(1, empty_snapshot(4, 4, &[1, 2]));
        assert!(matches!(
            store.commit(&b),
            Err(StoreError::SnapshotOutOfDate { index: 4, .. })
        ));
    }
);

both!(snapshot_is_taken_at_the_applied_index, |store: &Store<
    _,
>| {
    three_entries(store);
    let s = store.group(1).unwrap();
    // Nothing past index 2 is applied: a snapshot for index 4 must wait.
    assert_eq!(
        s.snapshot(4, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    );
    apply_ops(store, 1, &[put("a", "1"), put("b", "2"), put("c", "3")]);
    let snap = s.snapshot(4, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 5);
    assert_eq!(snap.get_metadata().term, 1);
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
    let d = swarmkv_store::SnapshotDescriptor::decode(&snap.data).unwrap();
    assert_eq!((d.group, d.index, d.records), (1, 5, 3));
});

both!(hard_and_conf_state_round_trip, |store: &Store<_>| {
    let mut b = LogBatch::new();
    b.set_hard_state(4, hard_state(7, 2, 0));
    b.set_conf_state(4, conf_state(&[1, 2, 3]));
    store.commit(&b).unwrap();
    let st = store.group(4).unwrap().initial_state().unwrap();
    assert_eq!(st.hard_state, hard_state(7, 2, 0));
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(store.groups().unwrap(), vec![4]);
});

#[test]
fn one_commit_is_one_sync_for_any_number_of_groups() {
    let h = mem_harness(StoreConfig::default());
    let mem = h.mem.clone().unwrap();
    let mut b = LogBatch::new();
    for g in 0..64 {
        b.append(g, vec![entry(1, 1), entry(2, 1)]);
        b.set_hard_state(g, hard_state(1, 1, 2));
    }
    let before = mem.sync_count();
    let stats = h.store.commit(&b).unwrap();
    assert_eq!(mem.sync_count() - before, 1);
    assert_eq!((stats.groups, stats.entries, stats.syncs), (64, 128, 1));
    assert_eq!(h.store.groups().unwrap(), (0..64).collect::<Vec<_>>());
}

#[test]
fn a_commit_index_alone_does_not_sync_and_a_crash_before_the_next_sync_only_loses_it() {
    let h = mem_harness(StoreConfig::default());
    let mem = h.mem.clone().unwrap();
    let mut b = LogBatch::new();
    b.append(2, vec![entry(1, 1), entry(2, 1)]);
    b.set_hard_state(2, hard_state(1, 1, 1));
    assert!(b.needs_sync());
    assert_eq!(h.store.commit(&b).unwrap().syncs, 1);
    // raft-rs's Ready with must_sync() == false: only the commit index moved.
    let mut commit = LogBatch::new();
    commit.set_commit(2, hard_state(1, 1, 2));
    commit.compact(2, 1);
    assert!(!commit.needs_sync());
    let before = mem.sync_count();
    assert_eq!(h.store.commit(&commit).unwrap().syncs, 0);
    assert_eq!(mem.sync_count(), before);
    // Readers see it at once.
    let st = h.store.group(2).unwrap().initial_state().unwrap();
    assert_eq!(st.hard_state, hard_state(1, 1, 2));
    // A crash loses the commit index, never the synced entries, term or vote.
    let h = h.crash_and_reopen();
    let s = h.store.group(2).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, hard_state(1, 1, 1));
    assert_eq!(s.last_index(), Ok(2));
}

#[test]
fn everything_survives_reopen_on_disk() {
    let h = sled_harness(StoreConfig::default());
    seed_log(&h.store, 3, 2, 2, &[entry(3, 3), entry(4, 4), entry(5, 5)]);
    apply_noops_to(&h.store, 3, 4, 4);
    let mut b = LogBatch::new();
    b.compact(3, 4);
    b.set_hard_state(3, hard_state(5, 1, 5));
    h.store.commit(&b).unwrap();
    let h = h.reopen();
    let s = h.store.group(3).unwrap();
    assert_eq!(s.first_index(), Ok(4));
    assert_eq!(s.last_index(), Ok(5));
    assert_eq!(s.term(3), Ok(3));
    assert_eq!(
        s.entries(4, 6, u64::MAX, ctx()),
        Ok(vec![entry(4, 4), entry(5, 5)])
    );
    assert_eq!(s.initial_state().unwrap().hard_state, hard_state(5, 1, 5));
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    assert_eq!(h.store.apply_state(3).unwrap().index, 4);
}

#[test]
fn unsynced_applies_are_lost_by_a_crash_but_the_log_is_not() {
    let h = mem_harness(StoreConfig::default());
    let mut b = LogBatch::new();
    b.append(1, vec![entry(1, 1), entry(2, 1)]);
    h.store.commit(&b).unwrap();
    apply_ops(&h.store, 1, &[put("k", "v"), put("k", "w")]);
    let h = h.crash_and_reopen();
    // The apply was not synced: after the crash the state machine is back at 0 and the log
    // still holds both entries, so raft-rs replays them.
    assert_eq!(h.store.apply_state(1).unwrap().index, 0);
    assert_eq!(h.store.group(1).unwrap().last_index(), Ok(2));
    assert_eq!(h.store.get(1, b"k").unwrap(), None);
}

#[test]
fn compaction_stops_at_the_applied_index_the_engine_holds_durably() {
    let h = mem_harness(StoreConfig::default());
    seed_log(&h.store, 4, 2, 2, &[entry(3, 3), entry(4, 4), entry(5, 5)]);
    // Applied through 5, but only 3 of it flushed.
    apply_noops_to(&h.store, 4, 3, 3);
    h.store
        .apply(
            4,
            &[4u64, 5].map(|i| swarmkv_store::ApplyEntry {
                index: i,
                term: i,
                op: swarmkv_store::ApplyOp::Noop,
            }),
        )
        .unwrap();
    let mut b = LogBatch::new();
    b.compact(4, 6);
    h.store.commit(&b).unwrap();
    let s = h.store.group(4).unwrap();
    assert_eq!(s.first_index(), Ok(4), "entries 4 and 5 wait for a flush");
    drop(s);
    // A crash loses the unflushed applies; the log still holds what replays them.
    let h = h.crash_and_reopen();
    assert_eq!(h.store.apply_state(4).unwrap().index, 3);
    let s = h.store.group(4).unwrap();
    assert_eq!(s.entries(4, 6, u64::MAX, ctx()).unwrap().len(), 2);
    drop(s);
    apply_noops_to(&h.store, 4, 5, 5);
    let mut b = LogBatch::new();
    b.compact(4, 6);
    h.store.commit(&b).unwrap();
    assert_eq!(h.store.group(4).unwrap().first_index(), Ok(6));
}
