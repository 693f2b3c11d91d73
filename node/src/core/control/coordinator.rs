//! The coordinator: the meta group's leader writes down what the initial nodes agreed on
//! (settings, targets, node records), decides liveness (a registered node silent for
//! `dead_after` is dead, one that speaks again is live), completes decommissions, and plans
//! targets, a bounded number of moving groups at a time and only on a complete registry.

use std::collections::{BTreeMap, BTreeSet};

use swarmkv_store::Backend;

use super::announce::targets_epoch;
use super::gossip::Gossip;
use super::params::ControlParams;
use crate::core::{
    plan_targets, Core, GroupId, MetaState, NodeId, NodeRecord, NodeState, Target, META_GROUP,
};

/// One round of coordination, on the meta leader only. Returns the epoch of the targets it
/// installed in the core, if it ran.
pub(super) fn coordinate<B: Backend>(
    core: &mut Core<B>,
    gossip: &mut Gossip,
    params: &ControlParams,
    now: u64,
) -> Option<u64> {
    if !core.is_leader(META_GROUP) {
        return None;
    }
    let settings = core.settings().cloned()?;
    let meta = match core.meta_state() {
        Ok(m) => m,
        Err(e) => {
            log::warn!("cannot read the meta state: {e}");
            return None;
        }
    };
    // A cluster that just formed writes down what every initial node agreed on. Each record
    // is checked every round, so a proposal lost to a leader change is redone.
    if meta.settings.is_none() {
        core.propose_meta(MetaState::put_settings(&settings));
    }
    let targets = core.targets().clone();
    for (g, t) in &targets {
        if !meta.targets.contains_key(g) {
            core.propose_meta(MetaState::put_target(*g, t));
        }
    }
    let initial: BTreeSet<NodeId> = targets.values().flat_map(|t| t.replicas.clone()).collect();
    let unregistered: Vec<NodeId> = initial
        .into_iter()
        .filter(|id| !meta.nodes.contains_key(id))
        .collect();
    for &id in &unregistered {
        let info = gossip.peers.get(&id).cloned().unwrap_or_default();
        let record = NodeRecord {
            id,
            peer: info.peer,
            addrs: info.addrs,
            state: NodeState::Live,
        };
        core.propose_meta(MetaState::put_node(&record));
    }
    // A node that announces this cluster without a record gets one: an initial node that no
    // target names (a layout with more nodes than replicas to place), or a joined node whose
    // registration was lost to a meta leader change. Without a record it would never be
    // given a replica.
    let announced: Vec<NodeId> = gossip
        .fresh(now)
        .filter(|(_, a)| a.cluster_id == Some(settings.cluster_id))
        .map(|(_, a)| a.node)
        .filter(|id| !meta.nodes.contains_key(id) && !unregistered.contains(id))
        .collect();
    for id in announced {
        let info = gossip.peers.get(&id).cloned().unwrap_or_default();
        log::info!("registering node {id:x}, which announces this cluster");
        let record = NodeRecord {
            id,
            peer: info.peer,
            addrs: info.addrs,
            state: NodeState::Live,
        };
        core.propose_meta(MetaState::put_node(&record));
    }
    // Plan only on a complete registry: placement counts a node without a record as not
    // live, so planning while some initial nodes' records are still missing (lost to a meta
    // leader change, or not applied yet) would move every group onto the registered few.
    if meta.settings.is_none() || meta.targets.len() < targets.len() || !unregistered.is_empty() {
        return None;
    }
    judge_liveness(core, gossip, &meta, params.dead_after_ms, now);
    // Placement: a bounded number of groups move at a time. A group whose target names a
    // node that is no longer live is not counted: its move cannot finish, and only a new plan
    // (which replaces that node first) unblocks it. Counting such groups let a dead node's
    // groups use up the whole budget, and nothing was ever planned again.
    let live = meta.live_nodes();
    let moving = meta
        .targets
        .iter()
        .filter(|(_, t)| t.replicas.iter().all(|r| live.contains(r)))
        .filter(|(g, t)| !group_matches_target(core, gossip, **g, t, now))
        .count();
    let budget = params.max_moves.saturating_sub(moving);
    if budget > 0 {
        let dead = meta.dead_nodes();
        for (g, t) in plan_targets(&meta.targets, &live, &dead, settings.replication, budget) {
            log::info!("target of group {g}: {:x?} (v{})", t.replicas, t.version);
            core.propose_meta(MetaState::put_target(g, &t));
        }
    }
    let epoch = targets_epoch(&meta.targets);
    core.set_targets(meta.targets);
    Some(epoch)
}

/// Liveness verdicts and decommission completion, proposed as node records.
fn judge_liveness<B: Backend>(
    core: &mut Core<B>,
    gossip: &mut Gossip,
    meta: &MetaState,
    dead_after_ms: u64,
    now: u64,
) {
    let me = core.id();
    for n in meta.nodes.values() {
        // A live node never heard from since this coordinator started gets the full grace
        // period, counted from now. A dead one stays dead until it is heard: a coordinator
        // that has just started (a restart, or a new meta leader) has heard no one yet, and
        // must not bring back a node the previous coordinator judged dead.
        let heard = if n.id == me {
            Some(now)
        } else if n.state == NodeState::Live {
            Some(*gossip.last_seen.entry(n.id).or_insert(now))
        } else {
            gossip.last_seen.get(&n.id).copied()
        };
        let silent = heard.is_none_or(|t| now.saturating_sub(t) > dead_after_ms);
        let new_state = match (n.state, silent) {
            (NodeState::Live, true) => Some(NodeState::Dead),
            (NodeState::Dead, false) => Some(NodeState::Live),
            _ => None,
        };
        if let Some(state) = new_state {
            log::info!("node {:x} is now {state:?}", n.id);
            let mut r = n.clone();
            r.state = state;
            core.propose_meta(MetaState::put_node(&r));
        }
        if n.state == NodeState::Decommissioning
            && !meta.targets.values().any(|t| t.replicas.contains(&n.id))
        {
            let mut r = n.clone();
            r.state = NodeState::Decommissioned;
            core.propose_meta(MetaState::put_node(&r));
        }
    }
}

/// Whether a group's current voters (as its leader announces them) equal its target.
fn group_matches_target<B: Backend>(
    core: &Core<B>,
    gossip: &Gossip,
    group: GroupId,
    target: &Target,
    now: u64,
) -> bool {
    let mut want = target.replicas.clone();
    want.sort_unstable();
    if let Some(s) = core.group_status(group) {
        if s.leader == Some(core.id()) {
            let mut v = s.voters.clone();
            v.sort_unstable();
            return v == want;
        }
    }
    // The group first: sorting a copy of every announced group's voters for each target was
    // most of an idle meta leader's CPU (1,024 targets x every led group).
    gossip.fresh(now).any(|(_, a)| {
        a.led
            .iter()
            .filter(|(g, _)| *g == group)
            .any(|(_, voters)| {
                let mut v = voters.clone();
                v.sort_unstable();
                v == want
            })
    })
}

/// The record of `node` to decommission: its registered record, or, for an initial member
/// whose registration is still being written, a fresh one.
pub(super) fn decommission_record(
    meta: &MetaState,
    targets: &BTreeMap<GroupId, Target>,
    gossip: &Gossip,
    node: NodeId,
) -> Option<NodeRecord> {
    meta.nodes.get(&node).cloned().or_else(|| {
        targets
            .values()
            .any(|t| t.replicas.contains(&node))
            .then(|| {
                let info = gossip.peers.get(&node).cloned().unwrap_or_default();
                NodeRecord {
                    id: node,
                    peer: info.peer,
                    addrs: info.addrs,
                    state: NodeState::Live,
                }
            })
    })
}
