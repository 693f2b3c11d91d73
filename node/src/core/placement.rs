//! Static placement: which nodes hold which partitions, for a cluster bootstrapped with a
//! fixed node list (the control plane replaces it with dynamic placement).

use serde::{Deserialize, Serialize};

use super::types::NodeId;

/// The shape of a cluster fixed at bootstrap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    /// Initial nodes, in the order the placement uses.
    pub nodes: Vec<NodeId>,
    /// Number of hash partitions (fixed for the cluster's life).
    pub partitions: u32,
    /// Replicas per partition (capped by the number of nodes).
    pub replication: usize,
}

impl ClusterLayout {
    /// The replica set of partition `p`: `replication` consecutive nodes starting at
    /// `p mod n`, so replicas spread evenly and the first replica (the preferred leader)
    /// rotates over the nodes.
    pub fn replicas(&self, p: u32) -> Vec<NodeId> {
        let n = self.nodes.len();
        if n == 0 {
            return Vec::new();
        }
        let r = self.replication.clamp(1, n);
        (0..r).map(|i| self.nodes[(p as usize + i) % n]).collect()
    }

    /// Partitions that have a replica on `node`.
    pub fn partitions_of(&self, node: NodeId) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.replicas(*p).contains(&node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_preferred_leaders_spread_evenly() {
        let l = ClusterLayout {
            nodes: vec![10, 20, 30, 40],
            partitions: 64,
            replication: 3,
        };
        for n in &l.nodes {
            assert_eq!(l.partitions_of(*n).len(), 48);
            let led = (0..64).filter(|p| l.replicas(*p)[0] == *n).count();
            assert_eq!(led, 16);
        }
        let small = ClusterLayout {
            nodes: vec![1],
            partitions: 4,
            replication: 3,
        };
        assert_eq!(small.replicas(2), vec![1]);
    }
}
