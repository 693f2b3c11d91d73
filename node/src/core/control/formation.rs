//! Zero-config formation: a node without a cluster listens for a while, then joins a formed
//! cluster it hears of, or, as the lowest unformed peer (by PeerId bytes), forms one, with
//! `expect` waiting for that many nodes and starting them all as voters.

use super::gossip::Gossip;
use super::params::ControlParams;
use crate::core::{ClusterLayout, NodeId};

/// What an unformed node does now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Formation {
    /// Keep listening.
    Wait,
    /// Ask this member of a formed cluster to let this node in.
    Join { via: NodeId },
    /// Form a cluster of these initial nodes (this one included).
    Form { layout: ClusterLayout },
}

/// Decides formation from the fresh announcements.
pub(super) fn decide(
    gossip: &Gossip,
    params: &ControlParams,
    me: (NodeId, &[u8]),
    listening_ms: u64,
    now: u64,
) -> Formation {
    // A formed cluster is around: join it.
    if let Some((_, a)) = gossip.fresh(now).find(|(_, a)| a.cluster_id.is_some()) {
        return Formation::Join { via: a.node };
    }
    if listening_ms < params.discovery_ms {
        return Formation::Wait;
    }
    // Nobody has formed: the lowest PeerId among the unformed forms.
    let mut unformed: Vec<(&[u8], NodeId)> = gossip
        .fresh(now)
        .filter(|(_, a)| a.cluster_id.is_none())
        .map(|(p, a)| (p, a.node))
        .collect();
    unformed.push((me.1, me.0));
    unformed.sort_unstable();
    unformed.dedup();
    if unformed.first().map(|(_, n)| *n) != Some(me.0) {
        return Formation::Wait;
    }
    let members: Vec<NodeId> = match params.expect {
        Some(n) if unformed.len() < n => return Formation::Wait,
        Some(n) => unformed.into_iter().take(n).map(|(_, id)| id).collect(),
        None => vec![me.0],
    };
    let mut nodes = members;
    nodes.sort_unstable();
    Formation::Form {
        layout: ClusterLayout {
            nodes,
            partitions: params.partitions,
            replication: params.replication,
        },
    }
}
