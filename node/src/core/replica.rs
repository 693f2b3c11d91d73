//! One local replica of a Raft group and the requests waiting on it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::RawNode;
use swarmkv_store::{Backend, GroupStorage};

use super::command::Origin;
use super::types::{NodeId, RequestBody, RequestId};

/// A proposal waiting to be applied: answered when the entry at its index applies, with
/// success if the entry is still ours (same term), else `ProposalDropped`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Proposal {
    pub term: u64,
    pub request: RequestId,
}

/// Linearizable reads that share one ReadIndex call: they all arrived before the call, so the
/// index its heartbeat round confirms is at least as recent as each of them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadBatch {
    pub reads: Vec<(RequestId, RequestBody)>,
    /// When the call was (last) made: a batch that heard nothing for a while asks again (see
    /// `Core::resend_stale_reads`).
    pub sent_ms: u64,
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
    /// Linearizable reads that arrived since the last ReadIndex call: the next turn makes one
    /// call for all of them (`Core::issue_reads`). Reads that arrive after a call never join
    /// it: its heartbeat round may have started before they did.
    pub reads_next: Vec<(RequestId, RequestBody)>,
    /// Batches sent through ReadIndex, by the sequence number in their context.
    pub reads_pending: BTreeMap<u64, ReadBatch>,
    /// The sequence number of the last ReadIndex call.
    pub read_seq: u64,
    pub reads_ready: Vec<ReadyRead>,
    /// Writes this follower proposed (raft-rs forwards them to the leader); each is answered
    /// when the entry carrying its origin applies here, or fails when `follower_epoch` moves.
    pub follower_writes: BTreeSet<RequestId>,
    /// The (term, leader) the follower's writes and read batches were sent under. A leader
    /// drops a forwarded proposal or read it cannot take without a word, so any change of
    /// term or leader fails what is pending (the caller retries) instead of leaving it to
    /// the deadline.
    pub follower_epoch: (u64, NodeId),
    /// As leader: the origins of the followers' proposals taken in term `seen_term`, oldest
    /// first, so that a duplicated `MsgPropose` does not append the same write twice (see
    /// `Core::admit_forwarded_proposal`).
    pub seen_origins: BTreeSet<Origin>,
    pub seen_order: VecDeque<Origin>,
    pub seen_term: u64,
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
    /// Set on the preferred leader of a group this node has just bootstrapped: it repeats its
    /// pre-vote every tick until the group has a leader, or until this time (one election
    /// timeout after the bootstrap), when the election timer alone takes over. The other
    /// initial nodes bootstrap a moment later, and a pre-vote that reaches a node before its
    /// replica exists is dropped: without the repeat, the group would wait a whole election
    /// timeout (1-2 s) for its first leader.
    pub opening_until: Option<u64>,
    /// Core time at which this replica last applied a configuration change (or was created or
    /// loaded). An announcement heard before it may describe an older configuration, one from
    /// before this node was added: it does not count as the leader reporting this node's
    /// removal (`control/leftovers.rs`).
    pub conf_applied_ms: u64,
}

impl<B: Backend> Replica<B> {
    pub fn new(node: RawNode<GroupStorage<B>>) -> Replica<B> {
        Replica {
            node,
            proposals: BTreeMap::new(),
            reads_next: Vec::new(),
            reads_pending: BTreeMap::new(),
            read_seq: 0,
            reads_ready: Vec::new(),
            follower_writes: BTreeSet::new(),
            follower_epoch: (0, 0),
            seen_origins: BTreeSet::new(),
            seen_order: VecDeque::new(),
            seen_term: 0,
            leader: None,
            is_leader: false,
            commit_dirty: false,
            compact_to: None,
            step_down: false,
            vote_floor: None,
            quiesced: false,
            idle_ticks: 0,
            idle_index: 0,
            opening_until: None,
            conf_applied_ms: 0,
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

    /// The term and leader as raft-rs knows them now (see [`Replica::follower_epoch`]).
    pub fn epoch(&self) -> (u64, NodeId) {
        (self.node.raft.term, self.node.raft.leader_id)
    }

    /// The leader this follower can hand a proposal or a ReadIndex to: a voter of the group
    /// following a known leader other than itself. Learners and leftovers (not in the
    /// configuration) return `None`: they may be far behind or never apply, so their callers
    /// are sent to the leader as before.
    pub fn follows(&self, me: NodeId) -> Option<NodeId> {
        let raft = &self.node.raft;
        let leader = raft.leader_id;
        (raft.state == raft::StateRole::Follower
            && leader != raft::INVALID_ID
            && leader != me
            && raft.prs().conf().voters().contains(me))
        .then_some(leader)
    }

    /// The leader hint to give a caller: the known leader, if it is not this node.
    pub fn leader_hint(&self) -> Option<NodeId> {
        self.leader.filter(|l| *l != 0)
    }
}
