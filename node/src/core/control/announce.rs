//! What each node publishes in its gossip heartbeats: its cluster, the groups it leads with
//! their voters, and (the meta leader only) the targets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::{GroupId, NodeId, Target};

/// What a node says about itself in its membership heartbeats (the opaque app payload of the
/// network layer): its cluster, the groups it leads with their voters (routing and the
/// coordinator's progress tracking), and, from the meta leader, every group's target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Announce {
    pub cluster_id: Option<u64>,
    pub node: NodeId,
    pub meta_leader: bool,
    pub led: Vec<(GroupId, Vec<NodeId>)>,
    /// (epoch, targets): only the meta leader sends them.
    pub targets: Option<(u64, Vec<(GroupId, Target)>)>,
}

impl Announce {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Announce> {
        postcard::from_bytes(bytes).ok()
    }
}

/// A version of a whole set of targets: every change of a target raises its version, so the
/// sum only grows, and a node adopts announced targets only with a larger sum than its own.
pub fn targets_epoch(targets: &BTreeMap<GroupId, Target>) -> u64 {
    targets.values().map(|t| t.version).sum()
}
