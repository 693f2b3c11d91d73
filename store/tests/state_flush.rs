//! When the state layer reaches sled (`Store::flush_state_if_due`): in the caller's thread, or
//! on a thread of its own (`StoreConfig::state_flush_in_background`, the node's setting), whose
//! outcome the next call reports.

mod common;

use std::time::{Duration, Instant};

use common::*;
use swarmkv_store::{keys, Backend, StoreConfig, TreeId};

const G: u64 = 7;

fn config(background: bool) -> StoreConfig {
    StoreConfig {
        state_flush_ms: 100,
        state_flush_in_background: background,
        ..StoreConfig::default()
    }
}

/// The record of `key` as sled holds it, without the state layer in front.
fn in_sled<B: Backend>(store: &swarmkv_store::Store<B>, key: &str) -> bool {
    store
        .backend()
        .get(TreeId::Kv, &keys::data_key(G, key.as_bytes()))
        .expect("engine read")
        .is_some()
}

#[test]
fn in_the_callers_thread_a_due_flush_is_done_on_return() {
    let h = sled_harness(config(false));
    apply_ops(&h.store, G, &[put("a", "1"), put("b", "2")]);
    // The first call starts the clock.
    assert_eq!(h.store.flush_state_if_due(1_000).unwrap(), None);
    assert!(
        !in_sled(&h.store, "a"),
        "not due yet, the write waits in memory"
    );
    let flushed = h.store.flush_state_if_due(1_100).unwrap().expect("due");
    assert!(flushed.keys >= 2, "{flushed:?}");
    assert!(in_sled(&h.store, "a") && in_sled(&h.store, "b"));
}

#[test]
fn a_background_flush_reaches_sled_and_the_next_call_reports_it() {
    let h = sled_harness(config(true));
    apply_ops(&h.store, G, &[put("a", "1"), put("b", "2")]);
    assert_eq!(h.store.flush_state_if_due(1_000).unwrap(), None);
    // Due: started on its own thread; its outcome comes with a later call.
    let mut reported = h.store.flush_state_if_due(1_100).unwrap();
    // Writes made while it runs stay readable and wait for the next flush.
    apply_ops(&h.store, G, &[put("c", "3")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while reported.is_none() {
        assert!(
            Instant::now() < deadline,
            "the background flush never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
        // Not due again for another 100 ms of the caller's clock: only a report comes back.
        reported = h.store.flush_state_if_due(1_150).unwrap();
    }
    assert!(reported.is_some_and(|f| f.keys >= 2), "{reported:?}");
    assert!(in_sled(&h.store, "a") && in_sled(&h.store, "b"));
    let value = |k: &str| h.store.get(G, k.as_bytes()).unwrap().map(|r| r.value);
    assert_eq!(value("c"), Some(b"3".to_vec()));

    // The next due call starts the flush that carries "c"; a clean stop waits for it.
    let _ = h.store.flush_state_if_due(1_200).unwrap();
    let h = h.reopen();
    assert_eq!(h.store.apply_state(G).unwrap().index, 3);
    assert_eq!(
        h.store.get(G, b"c").unwrap().map(|r| r.value),
        Some(b"3".to_vec())
    );
}

#[test]
fn background_flushes_move_every_write_and_report_each_key_once() {
    let h = sled_harness(config(true));
    // Enough records that the flush takes a while.
    for chunk in 0..20 {
        let ops: Vec<_> = (0..200)
            .map(|i| put(&format!("k{chunk:02}-{i:04}"), &"v".repeat(200)))
            .collect();
        apply_ops(&h.store, G, &ops);
    }
    assert_eq!(h.store.flush_state_if_due(0).unwrap(), None);
    let mut total = 0;
    let mut now = 100;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every call is due by the clock; each flush's keys are reported once, and together they
    // are every key written.
    while !in_sled(&h.store, "k19-0199") || h.store.state_pending_bytes() > 0 || total < 4_000 {
        assert!(Instant::now() < deadline, "flushed {total} keys only");
        if let Some(f) = h.store.flush_state_if_due(now).unwrap() {
            total += f.keys;
        }
        now += 100;
        std::thread::sleep(Duration::from_millis(1));
    }
    // 4,000 records, plus the group's applied state and its history chunks once per flush.
    assert!((4_000..=4_100).contains(&total), "{total}");
}
