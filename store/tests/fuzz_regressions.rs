//! Inputs the fuzz targets (`fuzz/`) found crashing the store's readers, each decoded here
//! through the public API: they must stay typed errors that name the record, never a panic.

use swarmkv_store::raft::eraftpb::{Entry, HardState};
use swarmkv_store::raft::Storage;
use swarmkv_store::{
    Backend, MemBackend, RaftLog, RaftLogBatch, RaftLogConfig, Store, StoreConfig, StoreError,
};

/// A backend holding a three-entry log of group 2 with the given hard state.
fn log_with_hard_state(hs: &HardState) -> anyhow::Result<MemBackend> {
    let mem = MemBackend::new();
    let mut log = RaftLog::open(mem.raft_log_fs()?, RaftLogConfig::default())?;
    let entries: Vec<Entry> = (1..=3)
        .map(|index| Entry {
            index,
            term: 1,
            ..Default::default()
        })
        .collect();
    let mut b = RaftLogBatch::default();
    b.append(2, &entries);
    b.set_hard_state(2, hs);
    log.write(&b, true)?;
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

/// stored_records: a stored configuration that raft-rs cannot rebuild (it replays the lists as
/// configuration changes and compares the result) made it abort the process at startup
/// ("invalid restore: voters: ... != ..."). `check_conf_state`, which the store applies to
/// every stored configuration, must accept exactly what raft-rs restores: compared here on
/// random configurations over ids 0 to 3 (0, raft-rs's "no node", included; repeats, overlaps,
/// joint or not), seeded.
#[test]
fn the_conf_state_check_accepts_exactly_what_raft_restores() {
    use rand::{Rng, SeedableRng};
    use swarmkv_store::check_conf_state;
    use swarmkv_store::raft::eraftpb::ConfState;
    use swarmkv_store::raft::storage::MemStorage;
    use swarmkv_store::raft::{Config, RawNode};

    let seed: u64 = std::env::var("SWARMKV_CONF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (replay with SWARMKV_CONF_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut outcomes = [0usize; 3];
    let mut mismatch = None;
    for _ in 0..3000 {
        let list = |rng: &mut rand::rngs::StdRng| -> Vec<u64> {
            let n = rng.gen_range(0..=3);
            (0..n).map(|_| rng.gen_range(0..=3)).collect()
        };
        let mut cs = ConfState::default();
        cs.set_voters(list(&mut rng));
        cs.set_learners(list(&mut rng));
        if rng.gen_bool(0.5) {
            cs.set_voters_outgoing(list(&mut rng));
            cs.set_learners_next(list(&mut rng));
        }
        cs.set_auto_leave(rng.gen_bool(0.2));
        let accepted = check_conf_state(&cs).is_ok();
        let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let config = Config {
                id: 1,
                ..Default::default()
            };
            RawNode::new(
                &config,
                MemStorage::new_with_conf_state(cs.clone()),
                &logger,
            )
            .is_ok()
        }));
        let aborted = restored.is_err();
        outcomes[match restored {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(_) => 2,
        }] += 1;
        // Accepted but raft-rs aborts: the crash. Refused but raft-rs restores it: a node
        // that would refuse to start on a valid state.
        if (accepted && aborted) || (!accepted && matches!(restored, Ok(true))) {
            mismatch = Some((cs, accepted, restored.ok()));
            break;
        }
    }
    std::panic::set_hook(quiet);
    eprintln!(
        "restored {}, refused with an error {}, aborted {}",
        outcomes[0], outcomes[1], outcomes[2]
    );
    if let Some((cs, accepted, restored)) = mismatch {
        panic!("check says {accepted}, raft-rs restore ok = {restored:?} for {cs:?} (seed {seed})");
    }
    assert!(outcomes[0] > 0 && outcomes[2] > 0, "both kinds were tried");
}

/// stored_records: a truncated state at the largest index overflowed the first index after
/// it while the group was opened (a panic in builds with overflow checks).
#[test]
fn a_truncated_index_at_the_largest_index_is_corrupt_not_an_overflow() -> anyhow::Result<()> {
    let mem = MemBackend::new();
    let mut log = RaftLog::open(mem.raft_log_fs()?, RaftLogConfig::default())?;
    let mut b = RaftLogBatch::default();
    b.compact(2, u64::MAX, 1);
    log.write(&b, true)?;
    drop(log);
    let store = Store::with_backend(mem, StoreConfig::default())?;
    match store.group(2) {
        Err(StoreError::Corrupt { location, .. }) => {
            assert_eq!(location, format!("group 2 entry {}", u64::MAX));
        }
        Err(other) => panic!("expected a corrupt truncated state, got {other}"),
        Ok(_) => panic!("expected a corrupt truncated state, got a storage"),
    }
    Ok(())
}
