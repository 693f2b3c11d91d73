//! The cluster as one node sees it: every node it knows with its registry state, and every
//! group with its leader and voters. What the gateway's status page draws.
//!
//! It is assembled from what the node already has, without asking anyone: the registry from
//! its meta replica (if it holds one), its own replicas' Raft state, and for the groups it
//! does not hold, the leaders' heartbeat announcements. So it is a view, not a consistent
//! snapshot: a leader that just died may be listed until the announcements expire (seconds).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::Driver;
use crate::core::{GroupId, NodeId, NodeState, META_GROUP};

/// The cluster as this node sees it (see the module documentation for where each part comes
/// from and how fresh it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The node that assembled the view.
    pub node: NodeId,
    /// Every node known, ordered by id.
    pub nodes: Vec<NodeView>,
    /// Every group known (the meta group and each partition's), ordered by id.
    pub groups: Vec<GroupView>,
}

/// One node in a [`ClusterView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    /// Its PeerId as text, when known.
    pub peer: Option<String>,
    /// Its listen addresses (multiaddrs), as it last announced or registered them.
    pub addrs: Vec<String>,
    /// Its state in the cluster's registry; `None` when this node holds no meta replica or
    /// the node is not registered yet.
    pub state: Option<NodeState>,
    /// Whether this node hears its heartbeats now (always true for this node itself).
    pub reachable: bool,
    /// Whether it leads the meta group (the coordinator), as far as this node knows.
    pub meta_leader: bool,
}

/// One Raft group in a [`ClusterView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub group: GroupId,
    /// The leader: this node's replica's belief, else the node announcing that it leads.
    pub leader: Option<NodeId>,
    /// The voters, from the same source as the leader (empty when neither is known).
    pub voters: Vec<NodeId>,
    /// The replica set the coordinator wants (empty when not known here).
    pub target: Vec<NodeId>,
}

impl Driver {
    /// Assembles the [`ClusterView`] from what this node knows now.
    pub(super) fn cluster_view(&self) -> ClusterView {
        // Groups: this node's replicas first (Raft's own view), then the announcements.
        let mut groups: BTreeMap<GroupId, GroupView> = BTreeMap::new();
        for (g, t) in self.disk.core.targets() {
            groups.insert(*g, unknown(*g, t.replicas.clone()));
        }
        let mut announced: BTreeMap<GroupId, (NodeId, Vec<NodeId>)> = BTreeMap::new();
        let now = self.now_ms();
        for (_, a) in self.io.control.fresh(now) {
            if self.io.control.is_unreachable(a.node) {
                continue;
            }
            for (g, voters) in &a.led {
                announced.insert(*g, (a.node, voters.clone()));
            }
        }
        for (g, (leader, voters)) in &announced {
            let v = groups.entry(*g).or_insert_with(|| unknown(*g, Vec::new()));
            v.leader = Some(*leader);
            v.voters = voters.clone();
        }
        for status in self
            .disk
            .core
            .groups()
            .into_iter()
            .filter_map(|g| self.disk.core.group_status(g))
        {
            let v = groups
                .entry(status.group)
                .or_insert_with(|| unknown(status.group, Vec::new()));
            if status.leader.is_some() || !announced.contains_key(&status.group) {
                v.leader = status.leader;
                v.voters = status.voters;
            }
        }

        // Nodes: the registry, this node, whoever announces, and whoever a group names.
        let registry = self
            .disk
            .core
            .meta_state()
            .map(|m| m.nodes)
            .unwrap_or_default();
        let fresh: BTreeSet<NodeId> = self
            .io
            .control
            .fresh(now)
            .map(|(_, a)| a.node)
            .filter(|n| !self.io.control.is_unreachable(*n))
            .collect();
        let meta_leader = groups.get(&META_GROUP).and_then(|g| g.leader);
        let mut ids: BTreeSet<NodeId> = registry.keys().copied().collect();
        ids.insert(self.io.node);
        ids.extend(fresh.iter().copied());
        for g in groups.values() {
            ids.extend(g.leader);
            ids.extend(g.voters.iter().copied());
            ids.extend(g.target.iter().copied());
        }
        let nodes = ids
            .into_iter()
            .map(|id| {
                let record = registry.get(&id);
                let peer = if id == self.io.node {
                    Some(self.io.net.local_peer_id().to_string())
                } else {
                    self.io.peers.get(&id).map(|p| p.to_string())
                };
                let addrs = self
                    .io
                    .addrs
                    .get(&id)
                    .filter(|a| !a.is_empty())
                    .or(record.map(|r| &r.addrs))
                    .cloned()
                    .unwrap_or_default();
                NodeView {
                    id,
                    peer,
                    addrs,
                    state: record.map(|r| r.state),
                    reachable: id == self.io.node || fresh.contains(&id),
                    meta_leader: meta_leader == Some(id),
                }
            })
            .collect();

        ClusterView {
            node: self.io.node,
            nodes,
            groups: groups.into_values().collect(),
        }
    }
}

/// A group whose leader and voters are not known yet.
fn unknown(group: GroupId, target: Vec<NodeId>) -> GroupView {
    GroupView {
        group,
        leader: None,
        voters: Vec::new(),
        target,
    }
}
