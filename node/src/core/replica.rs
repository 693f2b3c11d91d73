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
        }
    }

    /// The leader hint to give a caller: the known leader, if it is not this node.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader.filter(|l| *l != 0)
    }
}
