//! Applies gathered into one write ([`ApplyBatch`]): nothing is visible before the write,
//! everything is after it, a group applied twice sees its first apply, and an apply that rides
//! in a log commit is as durable, and as atomic, as the commit.

mod common;

use common::*;
use swarmkv_store::{ApplyBatch, ApplyEntry, ApplyOp, KvOp, KvOutcome, KvResult, LogBatch, Store};

fn entries(start: u64, ops: &[KvOp]) -> Vec<ApplyEntry<'_>> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| ApplyEntry {
            index: start + i as u64,
            term: 1,
            op: ApplyOp::Kv(op),
        })
        .collect()
}

fn value_of<B: swarmkv_store::Backend>(store: &Store<B>, group: u64, key: &str) -> Option<String> {
    store
        .get(group, key.as_bytes())
        .expect("get")
        .map(|r| String::from_utf8(r.value).expect("utf-8 value"))
}

fn prev_of(result: &Option<KvResult>) -> Option<Vec<u8>> {
    match result {
        Some(Ok(KvOutcome::Put { prev, .. })) => prev.as_ref().map(|r| r.value.clone()),
        other => panic!("not a put's result: {other:?}"),
    }
}

#[test]
fn gathered_applies_appear_together_at_the_write() {
    let h = mem_harness(Default::default());
    let store = &h.store;
    for g in [1, 2] {
        seed_log(store, g, 5, 1, &[]);
    }
    let mut batch = ApplyBatch::default();
    let one = [put("a", "1")];
    let two = [put("b", "2")];
    store
        .apply_into(&mut batch, 1, &entries(6, &one))
        .expect("apply to group 1");
    store
        .apply_into(&mut batch, 2, &entries(6, &two))
        .expect("apply to group 2");
    assert!(batch.contains(1) && batch.contains(2) && !batch.contains(3));
    // Gathered, not written: neither the data nor the applied index moved.
    assert_eq!(value_of(store, 1, "a"), None);
    assert_eq!(store.apply_state(2).expect("state").index, 5);

    store.write_applies(batch).expect("write");
    assert_eq!(value_of(store, 1, "a").as_deref(), Some("1"));
    assert_eq!(value_of(store, 2, "b").as_deref(), Some("2"));
    assert_eq!(store.apply_state(1).expect("state").index, 6);
    assert_eq!(store.apply_state(2).expect("state").index, 6);
}

#[test]
fn a_group_applied_twice_reads_its_first_apply() {
    let h = mem_harness(Default::default());
    let store = &h.store;
    seed_log(store, 7, 1, 1, &[]);
    let mut batch = ApplyBatch::default();
    let first = [put("k", "old")];
    let second = [put_prev("k", "new")];
    store
        .apply_into(&mut batch, 7, &entries(2, &first))
        .expect("first apply");
    let results = store
        .apply_into(&mut batch, 7, &entries(3, &second))
        .expect("second apply");
    // The second apply replaced the first one's value: it read it.
    assert_eq!(prev_of(&results[0]).as_deref(), Some(&b"old"[..]));
    store.write_applies(batch).expect("write");
    assert_eq!(value_of(store, 7, "k").as_deref(), Some("new"));
    assert_eq!(store.apply_state(7).expect("state").index, 3);
}

#[test]
fn applies_survive_a_crash_once_the_state_is_flushed_and_the_log_keeps_them_until_then() {
    let h = mem_harness(Default::default());
    seed_log(&h.store, 3, 1, 1, &[entry(2, 1)]);
    let mut applies = ApplyBatch::default();
    let ops = [put("x", "durable")];
    h.store
        .apply_into(&mut applies, 3, &entries(2, &ops))
        .expect("apply");
    let mut log = LogBatch::new();
    log.append(3, vec![entry(3, 1)]);
    log.set_hard_state(3, hard_state(1, 1, 2));
    h.store
        .commit_with_applies(&log, applies)
        .expect("commit with applies");
    // Visible at once; the commit's sync made the log durable, not the state layer: a crash
    // loses the apply, and the log still holds the entry to apply it again.
    assert_eq!(value_of(&h.store, 3, "x").as_deref(), Some("durable"));
    let h = h.crash_and_reopen();
    assert_eq!(value_of(&h.store, 3, "x"), None);
    assert_eq!(h.store.apply_state(3).expect("state").index, 1);
    let g = h.store.group(3).expect("group");
    assert_eq!(
        swarmkv_store::raft::Storage::last_index(&g).expect("last index"),
        3
    );
    // Applied again and flushed, it survives.
    let mut applies = ApplyBatch::default();
    h.store
        .apply_into(&mut applies, 3, &entries(2, &ops))
        .expect("apply");
    h.store.write_applies(applies).expect("write");
    h.store.flush_state().expect("flush");
    let h = h.crash_and_reopen();
    assert_eq!(value_of(&h.store, 3, "x").as_deref(), Some("durable"));
    assert_eq!(h.store.apply_state(3).expect("state").index, 2);
}

#[test]
fn applies_in_an_unsynced_commit_are_lost_with_it_not_apart() {
    let h = mem_harness(Default::default());
    seed_log(&h.store, 4, 1, 1, &[entry(2, 1)]);
    let mut applies = ApplyBatch::default();
    let ops = [put("y", "v")];
    h.store
        .apply_into(&mut applies, 4, &entries(2, &ops))
        .expect("apply");
    // Only a commit index: no sync, so a crash loses the write, the apply with it.
    let mut log = LogBatch::new();
    log.set_commit(4, hard_state(1, 1, 2));
    assert!(!log.needs_sync());
    h.store
        .commit_with_applies(&log, applies)
        .expect("commit with applies");
    assert_eq!(h.store.apply_state(4).expect("state").index, 2);
    let h = h.crash_and_reopen();
    assert_eq!(value_of(&h.store, 4, "y"), None);
    assert_eq!(h.store.apply_state(4).expect("state").index, 1);
    let g = h.store.group(4).expect("group");
    let hs = swarmkv_store::raft::Storage::initial_state(&g)
        .expect("initial state")
        .hard_state;
    assert_eq!(hs.commit, 1, "the commit index went with the apply");
}

#[test]
fn a_commit_index_alone_is_not_stored_and_reopening_raises_it_to_the_applied_index() {
    let h = mem_harness(Default::default());
    seed_log(&h.store, 5, 1, 1, &[entry(2, 1), entry(3, 1)]);
    let mut applies = ApplyBatch::default();
    let ops = [put("c", "1")];
    h.store
        .apply_into(&mut applies, 5, &entries(2, &ops))
        .expect("apply");
    let mut log = LogBatch::new();
    log.set_commit(5, hard_state(1, 1, 3));
    // A synced append in the same write makes the apply durable; the commit index is not.
    log.append(5, vec![entry(4, 1)]);
    h.store
        .commit_with_applies(&log, applies)
        .expect("commit with applies");
    let g = h.store.group(5).expect("group");
    let live = swarmkv_store::raft::Storage::initial_state(&g).expect("initial state");
    assert_eq!(
        live.hard_state.commit, 3,
        "readers see the commit index at once"
    );
    drop(g);
    h.store.flush_state().expect("flush the applied state");
    let h = h.crash_and_reopen();
    assert_eq!(h.store.apply_state(5).expect("state").index, 2);
    let g = h.store.group(5).expect("group");
    let hs = swarmkv_store::raft::Storage::initial_state(&g)
        .expect("initial state")
        .hard_state;
    // raft-rs refuses an applied index above the commit index: loading raises it.
    assert_eq!(
        hs.commit, 2,
        "commit raised to what was applied, not the unstored 3"
    );
    assert_eq!(hs.term, 1);
}

#[test]
fn applies_alone_are_written_by_an_empty_commit() {
    let h = mem_harness(Default::default());
    seed_log(&h.store, 9, 1, 1, &[]);
    let mut applies = ApplyBatch::default();
    let ops = [put("z", "1")];
    h.store
        .apply_into(&mut applies, 9, &entries(2, &ops))
        .expect("apply");
    h.store
        .commit_with_applies(&LogBatch::new(), applies)
        .expect("commit");
    assert_eq!(value_of(&h.store, 9, "z").as_deref(), Some("1"));
    assert_eq!(h.store.apply_state(9).expect("state").index, 2);
}

fn put_prev(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: true,
    }
}
