//! The `cluster` part of `GET /v1/status`: every node and every partition as the serving node
//! sees them, with each partition's health. It is what the status page draws.
//!
//! Unlike the rest of the status (this node's own replicas), it covers the partitions this
//! node holds no replica of, from the leaders' heartbeats; see
//! [`ClusterView`](crate::driver::ClusterView) for how fresh each part is.

use serde::Serialize;

use crate::core::{group_of_partition, partition_of_group, NodeState};
use crate::driver::ClusterView;

use super::error::node_hex;
use super::status::HEALTHY_VOTERS;

/// The cluster as the serving node sees it.
#[derive(Debug, Serialize)]
pub struct ClusterJson {
    /// Every node known, ordered by id.
    pub nodes: Vec<NodeJson>,
    /// One entry per partition, in order (empty before the node is part of a cluster).
    pub partitions: Vec<PartitionJson>,
    pub summary: ClusterSummaryJson,
    /// The meta group (registry and placement), when the serving node knows its voters.
    pub meta: Option<MetaGroupJson>,
}

/// The meta group: its leader (the coordinator) and voters, as for a partition.
#[derive(Debug, Serialize)]
pub struct MetaGroupJson {
    pub leader: Option<String>,
    pub voters: Vec<String>,
    /// How many of the voters the serving node hears from (itself included).
    pub reachable_voters: usize,
}

/// One node.
#[derive(Debug, Serialize)]
pub struct NodeJson {
    pub id: String,
    /// Its PeerId, when known.
    pub peer: Option<String>,
    /// Its listen addresses (multiaddrs).
    pub addrs: Vec<String>,
    /// Its state in the cluster's registry: `live`, `dead` (silent past the grace period, its
    /// replicas move away), `decommissioning`, `decommissioned`, or `unknown` (not registered
    /// yet, or the serving node holds no copy of the registry).
    pub state: &'static str,
    /// Whether the serving node hears its heartbeats now.
    pub reachable: bool,
    /// Whether it is the serving node.
    pub is_self: bool,
    /// Whether it leads the meta group (the coordinator).
    pub is_meta_leader: bool,
    /// How many partitions it leads (0 while it is silent).
    pub leads: usize,
}

/// One partition.
#[derive(Debug, Serialize)]
pub struct PartitionJson {
    pub partition: u32,
    /// The leader as far as the serving node knows (a node that just went silent may still
    /// be named until the group elects another: `health` then says `no_leader`).
    pub leader: Option<String>,
    pub voters: Vec<String>,
    /// How many of the voters the serving node hears from (itself included): a voter that
    /// went silent still counts in the Raft configuration until it is replaced, but no longer
    /// protects the data.
    pub reachable_voters: usize,
    /// `healthy` (a reachable leader and at least three reachable voters),
    /// `under_replicated` (a reachable leader, fewer reachable voters) or `no_leader` (none
    /// known, or a silent one).
    pub health: &'static str,
}

/// Counts over [`ClusterJson`].
#[derive(Debug, Serialize)]
pub struct ClusterSummaryJson {
    pub nodes: usize,
    /// Nodes whose heartbeats the serving node hears (itself included).
    pub reachable: usize,
    pub partitions: usize,
    /// Partitions with a leader the serving node hears from.
    pub with_leader: usize,
    /// Partitions with a leader but fewer than three reachable voters.
    pub under_replicated: usize,
}

impl ClusterJson {
    /// The JSON of `view` for a cluster of `partitions` partitions (`None`: not in a cluster).
    pub fn new(view: &ClusterView, partitions: Option<u32>) -> ClusterJson {
        let reachable: Vec<_> = view
            .nodes
            .iter()
            .filter(|n| n.reachable)
            .map(|n| n.id)
            .collect();
        let partitions: Vec<PartitionJson> = (0..partitions.unwrap_or(0))
            .map(|p| {
                let group = view
                    .groups
                    .iter()
                    .find(|g| g.group == group_of_partition(p));
                let leader = group.and_then(|g| g.leader);
                let voters = group.map(|g| g.voters.as_slice()).unwrap_or_default();
                let reachable_voters = voters.iter().filter(|v| reachable.contains(v)).count();
                // A leader this node does not hear from serves nobody: until the group
                // elects another, the partition has no leader to speak of.
                let health = match leader.filter(|l| reachable.contains(l)) {
                    None => "no_leader",
                    Some(_) if reachable_voters < HEALTHY_VOTERS => "under_replicated",
                    Some(_) => "healthy",
                };
                PartitionJson {
                    partition: p,
                    leader: leader.map(node_hex),
                    voters: voters.iter().copied().map(node_hex).collect(),
                    reachable_voters,
                    health,
                }
            })
            .collect();
        let nodes: Vec<NodeJson> = view
            .nodes
            .iter()
            .map(|n| NodeJson {
                id: node_hex(n.id),
                peer: n.peer.clone(),
                addrs: n.addrs.clone(),
                state: match n.state {
                    Some(NodeState::Live) => "live",
                    Some(NodeState::Dead) => "dead",
                    Some(NodeState::Decommissioning) => "decommissioning",
                    Some(NodeState::Decommissioned) => "decommissioned",
                    None => "unknown",
                },
                reachable: n.reachable,
                is_self: n.id == view.node,
                is_meta_leader: n.meta_leader,
                // A silent node leads nothing it can serve (see `health`).
                leads: if n.reachable {
                    view.groups
                        .iter()
                        .filter(|g| partition_of_group(g.group).is_some() && g.leader == Some(n.id))
                        .count()
                } else {
                    0
                },
            })
            .collect();
        let summary = ClusterSummaryJson {
            nodes: nodes.len(),
            reachable: nodes.iter().filter(|n| n.reachable).count(),
            partitions: partitions.len(),
            with_leader: partitions
                .iter()
                .filter(|p| p.health != "no_leader")
                .count(),
            under_replicated: partitions
                .iter()
                .filter(|p| p.health == "under_replicated")
                .count(),
        };
        let meta = view
            .groups
            .iter()
            .find(|g| g.group == crate::core::META_GROUP && !g.voters.is_empty())
            .map(|g| MetaGroupJson {
                leader: g.leader.map(node_hex),
                voters: g.voters.iter().copied().map(node_hex).collect(),
                reachable_voters: g.voters.iter().filter(|v| reachable.contains(v)).count(),
            });
        ClusterJson {
            nodes,
            partitions,
            summary,
            meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{GroupView, NodeView};

    fn node(id: u64, state: Option<NodeState>, reachable: bool) -> NodeView {
        NodeView {
            id,
            peer: None,
            addrs: Vec::new(),
            state,
            reachable,
            meta_leader: id == 1,
        }
    }

    fn group(group: u64, leader: Option<u64>, voters: &[u64]) -> GroupView {
        GroupView {
            group,
            leader,
            voters: voters.to_vec(),
            target: Vec::new(),
        }
    }

    #[test]
    fn every_partition_is_listed_with_its_health_and_leaders_are_counted_per_node() {
        let view = ClusterView {
            node: 1,
            nodes: vec![
                node(1, Some(NodeState::Live), true),
                node(2, Some(NodeState::Dead), false),
                node(3, None, true),
                node(4, Some(NodeState::Live), true),
            ],
            groups: vec![
                // The meta group counts for no node's partitions.
                group(0, Some(1), &[1, 2, 3]),
                group(group_of_partition(0), Some(1), &[1, 3, 4]),
                group(group_of_partition(1), Some(3), &[1, 3]),
                // Three voters, but node 2 is silent.
                group(group_of_partition(2), Some(1), &[1, 2, 3]),
                group(group_of_partition(3), None, &[1, 2, 3]),
                // Led by node 2, which went silent.
                group(group_of_partition(5), Some(2), &[1, 2, 3]),
                // Partition 4 is not known at all.
            ],
        };
        let json = ClusterJson::new(&view, Some(6));
        let health: Vec<&str> = json.partitions.iter().map(|p| p.health).collect();
        assert_eq!(
            health,
            [
                "healthy",
                "under_replicated",
                "under_replicated",
                "no_leader",
                "no_leader",
                "no_leader"
            ]
        );
        let reachable: Vec<usize> = json.partitions.iter().map(|p| p.reachable_voters).collect();
        assert_eq!(reachable, [3, 2, 2, 2, 0, 2]);
        let leads: Vec<usize> = json.nodes.iter().map(|n| n.leads).collect();
        assert_eq!(leads, [2, 0, 1, 0]);
        let states: Vec<&str> = json.nodes.iter().map(|n| n.state).collect();
        assert_eq!(states, ["live", "dead", "unknown", "live"]);
        assert!(json.nodes[0].is_self && json.nodes[0].is_meta_leader);
        let s = &json.summary;
        let counts = (s.nodes, s.reachable, s.partitions, s.with_leader);
        assert_eq!(counts, (4, 3, 6, 3));
        assert_eq!(s.under_replicated, 2);
        assert!(ClusterJson::new(&view, None).partitions.is_empty());
        // The meta group is listed on its own, with the voters `swarmkv repair` checks.
        let meta = json
            .meta
            .as_ref()
            .map(|m| (m.voters.len(), m.reachable_voters));
        assert_eq!(meta, Some((3, 2)));
    }
}
