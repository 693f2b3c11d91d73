//! One local replica of a Raft group and the requests waiting on it.

use std::collections::{BTreeMap, HashMap};

use raft::RawNode;
use swarmkv_store::{Backend, GroupStorage};

use super::types::{NodeId, RequestBody, RequestId};

/// A proposal waiting to be applied: answered when the entry at its index applies, with
/// success if the entry is still ours (same term), else `ProposalDropped`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Proposal {
    pub term: u64,
    pub request: RequestId,
}

/// A linearizable read that has its read index and waits for the state machine to reach it.
#[derive(Clone, Debug)]
pub(crate) struct ReadyRead {
    pub index: u64,
    pub request: RequestId,
    pub body: RequestBody,
}

pub(crate) struct Replica<B: Backend> {
    pub node: RawNode<GroupStorage<B>>,
    pub proposals: BTreeMap<u64, Proposal>,
    /// Reads sent through ReadIndex, by context (the request id).
    pub reads_pending: HashMap<RequestId, RequestBody>,
    pub reads_ready: Vec<ReadyRead>,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    /// The commit index moved without a hard-state write: persist it in the next batch.
    pub commit_dirty: bool,
    /// Log compaction to do in the next batch.
    pub compact_to: Option<u64>,
    /// The configuration no longer counts this leader as a voter: step down after this turn.
    pub step_down: bool,
    /// The last log position (term, index) of this node's previous replica of the group, when
    /// this one was recreated after a removal. Until its own log reaches it, this replica
    /// refuses to vote for a candidate whose log is behind it: the old replica may have
    /// acknowledged entries that were committed with its help, and a blank replica's vote
    /// would let a candidate that lacks them win (a stale leader that never saw the removal
    /// still counts this node as a voter).
    pub vote_floor: Option<(u64, u64)>,
    /// Quiesced (see `core/quiesce.rs`): not ticked until something wakes it. Kept in step
    /// with `Quiescence::awake` by `quiesce::wake` and the quiesce paths.
    pub quiesced: bool,
    /// Ticks in a row this leader has had nothing to do, and its last index when it started
    /// counting (a write in between starts the count over).
    pub idle_ticks: usize,
    pub idle_index: u64,
}

impl<B: Backend> Replica<B> {
    pub fn new(node: RawNode<GroupStorage<B>>) -> Replica<B> {
        Replica {
            node,
            proposals: BTreeMap::new(),
            reads_pending: HashMap::new(),
            reads_ready: Vec::new(),
            leader: None,
            is_leader: false,
            commit_dirty: false,
            compact_to: None,
            step_down: false,
            vote_floor: None,
            quiesced: false,
            idle_ticks: 0,
            idle_index: 0,
        }
    }

    /// Whether this replica may answer a (pre-)vote request from a candidate whose log ends
    /// at (`log_term`, `index`); see [`Replica::vote_floor`].
    pub fn may_vote_for(&mut self, log_term: u64, index: u64) -> bool {
        let Some(floor) = self.vote_floor else {
            return true;
        };
        let log = &self.node.raft.raft_log;
        if (log.last_term(), log.last_index()) >= floor {
            // Caught up past the old replica: Raft's own up-to-date check covers the rest.
            self.vote_floor = None;
            return true;
        }
        (log_term, index) >= floor
    }

    /// The leader hint to give a caller: the known leader, if it is not this node.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader.filter(|l| *l != 0)
    }
}
