//! Helpers shared by the store's integration tests.
#![allow(dead_code, unused_macros)]

use swarmkv_store::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use swarmkv_store::{
    ApplyEntry, ApplyOp, Backend, KvOp, KvOutcome, LogBatch, MemBackend, SledBackend, Store,
    StoreConfig,
};

/// Defines `mod $name` with the test body run on a sled store and on a memory store (the
/// test file declares `#[macro_use] mod common;` and imports `common::*` and `StoreConfig`).
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn sled() {
                let h = sled_harness(StoreConfig::default());
                ($body)(&h.store);
            }
            #[test]
            fn memory() {
                let h = mem_harness(StoreConfig::default());
                ($body)(&h.store);
            }
        }
    };
}

/// A store under test with whatever keeps it alive (a temporary directory for sled).
pub struct Harness<B: Backend> {
    pub store: Store<B>,
    pub dir: Option<tempfile::TempDir>,
    pub mem: Option<MemBackend>,
    pub config: StoreConfig,
}

pub fn sled_harness(config: StoreConfig) -> Harness<SledBackend> {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory inside the temporary one, so that the durable mark beside it stays inside.
    let store = Store::open(&dir.path().join("store"), config.clone()).expect("open sled store");
    Harness {
        store,
        dir: Some(dir),
        mem: None,
        config,
    }
}

pub fn mem_harness(config: StoreConfig) -> Harness<MemBackend> {
    let mem = MemBackend::new();
    let store = Store::with_backend(mem.clone(), config.clone()).expect("open memory store");
    Harness {
        store,
        dir: None,
        mem: Some(mem),
        config,
    }
}

impl Harness<SledBackend> {
    /// Closes and reopens the database, as a restart does. Every handle on the old store
    /// (group storages included) must be dropped first: sled locks its directory.
    pub fn reopen(self) -> Self {
        let Harness {
            store, dir, config, ..
        } = self;
        // A clean stop, as the node's: the state layer reaches sled.
        store.sync().expect("sync before reopening");
        drop(store);
        let path = dir.as_ref().expect("sled harness").path().join("store");
        // sled's background threads may hold the directory lock for a moment after the last
        // handle is dropped, especially on a loaded machine: retry briefly.
        let mut attempt = 0;
        let store = loop {
            match Store::open(&path, config.clone()) {
                Ok(s) => break s,
                Err(e) if attempt < 50 => {
                    eprintln!("reopen attempt {attempt}: {e}");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        Harness {
            store,
            dir,
            mem: None,
            config,
        }
    }
}

impl Harness<MemBackend> {
    /// Simulates kill -9 and restart: unsynced writes are lost.
    pub fn crash_and_reopen(self) -> Self {
        let Harness {
            store, mem, config, ..
        } = self;
        drop(store);
        let mem = mem.expect("memory harness");
        mem.crash(0);
        let store = Store::with_backend(mem.clone(), config.clone()).expect("reopen");
        Harness {
            store,
            dir: None,
            mem: Some(mem),
            config,
        }
    }
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

pub fn entry_with_data(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

pub fn conf_state(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    }
}

/// A snapshot with empty data: how a new group starts (empty partition at `index`).
pub fn empty_snapshot(index: u64, term: u64, voters: &[u64]) -> Snapshot {
    let mut s = Snapshot::default();
    let m = s.mut_metadata();
    m.index = index;
    m.term = term;
    m.set_conf_state(conf_state(voters));
    s
}

pub fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// Starts `group` at (index, term) as raft-rs tests do with a dummy entry, then appends
/// `entries`, applying nothing.
pub fn seed_log<B: Backend>(
    store: &Store<B>,
    group: u64,
    index: u64,
    term: u64,
    entries: &[Entry],
) {
    let mut b = LogBatch::new();
    b.apply_snapshot(group, empty_snapshot(index, term, &[1, 2, 3]));
    b.append(group, entries.to_vec());
    store.commit(&b).expect("seed log");
}

/// Applies `ops` to `group` at consecutive indices after its applied index (term 1), returning
/// each result.
pub fn apply_ops<B: Backend>(store: &Store<B>, group: u64, ops: &[KvOp]) -> Vec<KvOutcome> {
    let start = store.apply_state(group).expect("apply state").index + 1;
    let entries: Vec<ApplyEntry<'_>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| ApplyEntry {
            index: start + i as u64,
            term: 1,
            op: ApplyOp::Kv(op),
        })
        .collect();
    store
        .apply(group, &entries)
        .expect("apply")
        .into_iter()
        .map(|r| r.expect("kv result").expect("operation accepted"))
        .collect()
}

/// Applies empty entries up to `index` and flushes the state layer (compaction never passes
/// what the engine holds durably).
pub fn apply_noops_to<B: Backend>(store: &Store<B>, group: u64, index: u64, term: u64) {
    let start = store.apply_state(group).expect("apply state").index + 1;
    let entries: Vec<ApplyEntry<'_>> = (start..=index)
        .map(|i| ApplyEntry {
            index: i,
            term,
            op: ApplyOp::Noop,
        })
        .collect();
    store.apply(group, &entries).expect("apply noops");
    // Durable, so that the log may be compacted up to it.
    store.flush_state().expect("flush the state layer");
}

pub fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: false,
    }
}
