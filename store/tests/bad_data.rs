//! Damaged data is reported as a typed error naming what and where, never a panic.

mod common;

use common::*;
use swarmkv_store::raft::{GetEntriesContext, Storage};
use swarmkv_store::{
    keys, Backend, BackendBatch, LogBatch, Store, StoreConfig, StoreError, TreeId,
};

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

#[test]
fn an_undecodable_entry_is_reported_with_group_and_index() {
    let h = mem_harness(StoreConfig::default());
    seed_log(&h.store, 3, 2, 2, &[entry(3, 3), entry(4, 3), entry(5, 3)]);
    let mem = h.mem.clone().unwrap();
    let mut b = BackendBatch::default();
    b.put(
        TreeId::Raft,
        keys::entry_key(3, 4),
        vec![0xff, 0xff, 0xff, 0x01],
    );
    mem.write(&b).unwrap();
    mem.sync().unwrap();
    drop(h.store);
    let store = Store::with_backend(mem, StoreConfig::default()).unwrap();
    let s = store.group(3).unwrap();
    match s.entries(3, 6, u64::MAX, ctx()) {
        Err(swarmkv_store::raft::Error::Store(swarmkv_store::raft::StorageError::Other(e))) => {
            let msg = e.to_string();
            assert!(msg.contains("group 3 entry 4"), "{msg}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn a_hole_in_the_log_is_found_when_the_group_loads() {
    let h = mem_harness(StoreConfig::default());
    seed_log(&h.store, 3, 2, 2, &[entry(3, 3), entry(4, 3), entry(5, 3)]);
    let mem = h.mem.clone().unwrap();
    let mut b = BackendBatch::default();
    b.delete(TreeId::Raft, keys::entry_key(3, 4));
    mem.write(&b).unwrap();
    drop(h.store);
    let store = Store::with_backend(mem, StoreConfig::default()).unwrap();
    match store.group(3) {
        Err(StoreError::LogHole {
            group: 3,
            expected: 4,
            found: 5,
        }) => {}
        Err(other) => panic!("expected a log hole, got {other}"),
        Ok(_) => panic!("expected a log hole, got a storage"),
    }
    // Other groups are unaffected.
    assert!(store.group(4).is_ok());
}

#[test]
fn an_undecodable_kv_record_names_its_key() {
    let h = mem_harness(StoreConfig::default());
    let mem = h.mem.clone().unwrap();
    let mut b = BackendBatch::default();
    b.put(TreeId::Kv, keys::data_key(8, b"user/\x01"), vec![0xff; 3]);
    mem.write(&b).unwrap();
    match h.store.get(8, b"user/\x01") {
        Err(StoreError::Corrupt { tree, location, .. }) => {
            assert_eq!(tree, "kv");
            assert!(
                location.contains("group 8 key \"user/\\x01\""),
                "{location}"
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(matches!(
        h.store.scan(8, b"", None, 0),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_missing_tree_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, StoreConfig::default()).unwrap();
        let mut b = LogBatch::new();
        b.append(1, vec![entry(1, 1)]);
        store.commit(&b).unwrap();
    }
    {
        let db = sled::open(&dir).unwrap();
        assert!(db.drop_tree("kv").unwrap());
        db.flush().unwrap();
    }
    match Store::open(&dir, StoreConfig::default()) {
        Err(StoreError::MissingTree { tree: "kv", path }) => assert_eq!(path, dir),
        Err(other) => panic!("expected a missing tree, got {other}"),
        Ok(_) => panic!("opened a database without its kv tree"),
    }
}

#[test]
fn another_format_version_is_refused_at_open() {
    // 1: the format before one session record per client; 99: a future one.
    for found in [1u32, 99] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        drop(Store::open(&dir, StoreConfig::default()).unwrap());
        {
            let db = sled::open(&dir).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(b"format", &found.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(&dir, StoreConfig::default()).err();
        assert!(
            matches!(
                err,
                Some(StoreError::FormatVersion {
                    found: f,
                    supported: swarmkv_store::FORMAT_VERSION,
                    ..
                }) if f == found
            ),
            "format {found}: {err:?}"
        );
    }
}

#[test]
fn a_second_open_of_a_live_directory_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let _first = Store::open(&dir, StoreConfig::default()).unwrap();
    let second = Store::open(&dir, StoreConfig::default());
    assert!(second.is_err());
}

#[test]
fn a_damaged_data_file_is_an_error_at_open_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, StoreConfig::default()).unwrap();
        for i in 1..=200u64 {
            let mut b = LogBatch::new();
            b.append(1, vec![entry_with_data(i, 1, &[i as u8; 200])]);
            store.commit(&b).unwrap();
        }
    }
    let path = dir.join("db");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    // Damage a stretch in the middle of the log.
    for b in &mut bytes[len / 3..len / 3 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let opened = std::panic::catch_unwind(|| {
        let store = Store::open(&dir, StoreConfig::default())?;
        let g = store.group(1)?;
        let last = g.last_index().map_err(|e| StoreError::Corrupt {
            tree: "raft",
            location: "last".into(),
            detail: e.to_string(),
        })?;
        Ok::<u64, StoreError>(last)
    });
    match opened {
        // Either sled reports the damage, or (sled 0.34 takes a bad record for a torn tail
        // and drops the log from there on) the durable mark shows the store lost writes it
        // had made durable: the store closed cleanly, so its mark covers every write.
        Ok(Err(e)) => {
            println!("damaged file reported: {e}");
            assert!(e.is_damage(), "not reported as damage: {e}");
        }
        Ok(Ok(last)) => panic!("damage went unnoticed: sled kept the log to index {last} of 200"),
        Err(_) => panic!("opening a damaged database panicked"),
    }
}
