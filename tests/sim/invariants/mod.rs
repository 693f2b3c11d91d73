//! The safety properties the simulator checks, one file per property. Each keeps what it has
//! seen so far and is fed after every node turn (a node's state right after `process()`), or
//! at the end of a run for the properties about the whole history.

pub mod acknowledged_writes;
pub mod applied_state;
pub mod committed_entries;
pub mod election_safety;
pub mod leader_membership;
pub mod log_matching;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use swarmkv::core::{Core, GroupId, NodeId};
use swarmkv_store::raft::eraftpb::Entry;
use swarmkv_store::raft::{GetEntriesContext, Storage};
use swarmkv_store::MemBackend;

/// A broken property: which one, and what was seen.
#[derive(Debug, Clone)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

impl Violation {
    pub fn new(property: &'static str, detail: impl Into<String>) -> Violation {
        Violation {
            property,
            detail: detail.into(),
        }
    }
}

/// A stable digest of an entry's payload (type and data), to compare entries across replicas
/// without keeping copies. `DefaultHasher::new()` has fixed keys, so it is deterministic.
pub fn entry_digest(e: &Entry) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (e.get_entry_type() as i32).hash(&mut h);
    e.data.as_ref().hash(&mut h);
    h.finish()
}

/// Every invariant's memory, fed node by node.
#[derive(Default)]
pub struct Observer {
    pub election: election_safety::ElectionSafety,
    pub log: log_matching::LogMatching,
    pub committed: committed_entries::CommittedEntries,
    pub applied: applied_state::AppliedState,
    /// Per node (and incarnation), per group: highest log index already compared as committed.
    cursors: BTreeMap<(NodeId, u64), BTreeMap<GroupId, u64>>,
}

impl Observer {
    /// Checks one node right after its turn. `incarnation` changes at every restart, so that
    /// what a crash lost is looked at afresh.
    pub fn observe(&mut self, core: &Core<MemBackend>, incarnation: u64) -> Result<(), Violation> {
        let id = core.id();
        let groups = core.groups();
        let cursors = self.cursors.entry((id, incarnation)).or_default();
        cursors.retain(|g, _| groups.contains(g));
        for g in groups {
            let Some(status) = core.group_status(g) else {
                continue;
            };
            self.election.observe(g, status.term, &status.role, id)?;
            let storage = core
                .store()
                .group(g)
                .map_err(|e| Violation::new("storage", format!("group {g}: {e}")))?;
            let first = storage.first_index().unwrap_or(1);
            let last = storage.last_index().unwrap_or(0);
            let commit = status.commit.min(last);
            let cursor = cursors.entry(g).or_insert(0);
            let from = (*cursor + 1).max(first);
            if from <= last {
                let entries = storage
                    .entries(from, last + 1, None, GetEntriesContext::empty(false))
                    .map_err(|e| Violation::new("storage", format!("group {g}: {e}")))?;
                for e in &entries {
                    let digest = entry_digest(e);
                    self.log.observe(g, e.index, e.term, digest, id)?;
                    if e.index <= commit {
                        self.committed.observe(g, e, digest, id)?;
                    }
                }
            }
            *cursor = (*cursor).max(commit);
            let apply = storage.apply_state();
            leader_membership::check(g, &status.role, &apply.conf_state, id)?;
            self.applied
                .observe(core.store(), g, apply.index, id, incarnation)?;
        }
        Ok(())
    }
}
