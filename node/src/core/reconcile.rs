//! A group leader's steps toward the group's target replica set.
//!
//! The coordinator only edits targets in the meta group; every group's leader moves its own
//! configuration toward its target, one Raft configuration change at a time: add the missing
//! nodes as learners, promote them with joint consensus (ConfChangeV2) once they have caught up
//! (through a snapshot if needed) while removing the replicas the target dropped, then remove
//! leftover learners. A leader that is itself leaving hands leadership to a caught-up voter
//! first. The same logic serves up-replication, self-healing, rebalancing and decommission.

use std::collections::BTreeSet;

use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
use swarmkv_store::Backend;

use super::types::{GroupId, NodeId};
use super::Core;

/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_SLACK: u64 = 64;

fn change(node_id: NodeId, change_type: ConfChangeType) -> ConfChangeSingle {
    ConfChangeSingle {
        change_type,
        node_id,
        ..Default::default()
    }
}

/// What a leader decided to do for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    AddLearner(NodeId),
    /// Promote caught-up learners and remove dropped voters in one joint change.
    Promote {
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    },
    RemoveLearner(NodeId),
    TransferLeadership(NodeId),
}

impl<B: Backend> Core<B> {
    /// Takes at most one configuration step in every group this node leads whose replicas
    /// differ from their target. Returns the steps proposed (for logs and tests).
    pub fn reconcile(&mut self) -> Vec<(GroupId, Step)> {
        let mut steps = Vec::new();
        // A quiesced leader's configuration cannot have moved: look at it only when the
        // targets did (or on an occasional full pass).
        let every = self.reconcile_quiesced();
        let groups: Vec<GroupId> = self.replicas.keys().copied().collect();
        for g in groups {
            let Some(target) = self.targets.get(&g).cloned() else {
                continue;
            };
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            if !r.is_leader || target.replicas.is_empty() || (r.quiesced && !every) {
                continue;
            }
            let raft = &r.node.raft;
            // One change at a time: wait for the previous one (and for leaving a joint
            // configuration, which raft-rs proposes by itself).
            let cs = raft.prs().conf().to_conf_state();
            if raft.has_pending_conf() || !cs.voters_outgoing.is_empty() {
                continue;
            }
            let voters: BTreeSet<NodeId> = cs.voters.iter().copied().collect();
            let learners: BTreeSet<NodeId> = cs.learners.iter().copied().collect();
            let want: BTreeSet<NodeId> = target.replicas.iter().copied().collect();
            let last = raft.raft_log.last_index();
            // A learner that never acknowledged anything (matched 0) holds nothing durable,
            // however short the log is: promoting it would count an empty (or down) node
            // toward the quorum.
            let caught_up = |n: &NodeId| {
                raft.prs()
                    .get(*n)
                    .is_some_and(|p| p.matched > 0 && p.matched + CAUGHT_UP_SLACK >= last)
            };
            let step = if let Some(n) = want
                .iter()
                .find(|n| !voters.contains(n) && !learners.contains(n))
            {
                Some(Step::AddLearner(*n))
            } else {
                let promote: Vec<NodeId> = learners
                    .iter()
                    .filter(|n| want.contains(n) && caught_up(n))
                    .copied()
                    .collect();
                let waiting = want
                    .iter()
                    .any(|n| !voters.contains(n) && !promote.contains(n));
                let remove: Vec<NodeId> = if waiting {
                    Vec::new()
                } else {
                    voters
                        .iter()
                        .filter(|n| !want.contains(n))
                        .copied()
                        .collect()
                };
                if remove.contains(&self.id) {
                    // Leave last: hand leadership to a caught-up voter that stays. When no
                    // voter stays (a group formed on one node whose target moved entirely
                    // elsewhere), first promote the caught-up learners while keeping this
                    // node: a leader that removed itself would leave no one to hand over to.
                    match want
                        .iter()
                        .find(|n| voters.contains(n) && **n != self.id && caught_up(n))
                    {
                        Some(n) => Some(Step::TransferLeadership(*n)),
                        None if !promote.is_empty() => Some(Step::Promote {
                            add: promote,
                            remove: Vec::new(),
                        }),
                        None => None,
                    }
                } else if !promote.is_empty() || !remove.is_empty() {
                    Some(Step::Promote {
                        add: promote,
                        remove,
                    })
                } else {
                    learners
                        .iter()
                        .find(|n| !want.contains(n))
                        .map(|n| Step::RemoveLearner(*n))
                }
            };
            let Some(step) = step else { continue };
            let cc = match &step {
                Step::AddLearner(n) => vec![change(*n, ConfChangeType::AddLearnerNode)],
                Step::Promote { add, remove } => add
                    .iter()
                    .map(|n| change(*n, ConfChangeType::AddNode))
                    .chain(
                        remove
                            .iter()
                            .map(|n| change(*n, ConfChangeType::RemoveNode)),
                    )
                    .collect(),
                Step::RemoveLearner(n) => vec![change(*n, ConfChangeType::RemoveNode)],
                Step::TransferLeadership(n) => {
                    super::quiesce::wake(&mut self.quiesce, g, r, false);
                    r.node.transfer_leader(*n);
                    steps.push((g, step));
                    continue;
                }
            };
            let ccv2 = ConfChangeV2 {
                transition: ConfChangeTransition::Auto,
                changes: cc.into(),
                ..Default::default()
            };
            super::quiesce::wake(&mut self.quiesce, g, r, false);
            match r.node.propose_conf_change(Vec::new(), ccv2) {
                Ok(()) => {
                    log::info!("group {g}: {step:?} toward {:?}", target.replicas);
                    steps.push((g, step));
                }
                Err(e) => log::warn!("group {g}: cannot propose {step:?}: {e}"),
            }
        }
        steps
    }
}
