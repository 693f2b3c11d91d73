//! Inputs the fuzz targets (`fuzz/`) found crashing the store's readers, each decoded here
//! through the public API: they must stay typed errors that name the record, never a panic.

use protobuf::Message as _;
use swarmkv_store::raft::eraftpb::{Entry, HardState};
use swarmkv_store::raft::Storage;
use swarmkv_store::{
    keys, Backend, BackendBatch, MemBackend, Store, StoreConfig, StoreError, TreeId,
};

/// A backend holding a three-entry log of group 2 with the given hard state.
fn log_with_hard_state(hs: &HardState) -> anyhow::Result<MemBackend> {
    let mem = MemBackend::new();
    let mut b = BackendBatch::default();
    for index in 1..=3 {
        let e = Entry {
            index,
            term: 1,
            ..Default::default()
        };
        b.put(TreeId::Raft, keys::entry_key(2, index), e.write_to_bytes()?);
    }
    b.put(
        TreeId::Raft,
        keys::group_tag(2, keys::TAG_HARD_STATE),
        hs.write_to_bytes()?,
    );
    mem.write(&b)?;
    mem.sync()?;
    Ok(mem)
}

/// stored_records: a hard state whose commit index lies past the log's last entry made
/// raft-rs abort the process ("hs.commit ... is out of range") when the node opened the group.
#[test]
fn a_commit_index_past_the_log_is_a_corrupt_hard_state_not_a_raft_panic() -> anyhow::Result<()> {
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 14_669_012_692_493_202_713,
        ..Default::default()
    };
    let store = Store::with_backend(log_with_hard_state(&hs)?, StoreConfig::default())?;
    match store.group(2) {
        Err(StoreError::Corrupt {
            tree,
            location,
            detail,
        }) => {
            assert_eq!(tree, "raft");
            assert_eq!(location, "group 2 hard state");
            assert!(detail.contains("outside the log [0, 3]"), "{detail}");
        }
        Err(other) => panic!("expected a corrupt hard state, got {other}"),
        Ok(_) => panic!("expected a corrupt hard state, got a storage"),
    }
    Ok(())
}

/// The same log with a commit index inside it opens and serves raft-rs.
#[test]
fn a_commit_index_inside_the_log_opens() -> anyhow::Result<()> {
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 3,
        ..Default::default()
    };
    let store = Store::with_backend(log_with_hard_state(&hs)?, StoreConfig::default())?;
    let storage = store.group(2)?;
    assert_eq!(storage.initial_state()?.hard_state.commit, 3);
    assert_eq!(storage.last_index()?, 3);
    Ok(())
}
