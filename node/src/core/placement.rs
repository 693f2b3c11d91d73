//! Placement: which nodes should hold which groups.
//!
//! Two forms: the static [`ClusterLayout`] a cluster can be bootstrapped with, and
//! [`plan_targets`], which the coordinator (the meta group's leader) runs to move the target
//! replica sets toward the live nodes with as few moves as possible.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::meta::{Target, META_GROUP, META_VOTERS};
use super::types::{group_of_partition, GroupId, NodeId};

/// Default number of partitions of a new cluster.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// Default replicas per partition.
pub const DEFAULT_REPLICATION: usize = 3;

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

    /// The meta group's voters: the first (up to) five nodes.
    pub fn meta_voters(&self) -> Vec<NodeId> {
        self.nodes.iter().take(META_VOTERS).copied().collect()
    }

    /// Partitions that have a replica on `node`.
    pub fn partitions_of(&self, node: NodeId) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.replicas(*p).contains(&node))
            .collect()
    }

    /// Every group's replica set, the meta group included.
    pub fn targets(&self) -> BTreeMap<GroupId, Target> {
        let mut t = BTreeMap::new();
        t.insert(
            META_GROUP,
            Target {
                replicas: self.meta_voters(),
                version: 1,
            },
        );
        for p in 0..self.partitions {
            t.insert(
                group_of_partition(p),
                Target {
                    replicas: self.replicas(p),
                    version: 1,
                },
            );
        }
        t
    }
}

/// Moves `current` targets toward `live` nodes: replicas on nodes that are not live are
/// replaced, groups below `replication` (capped by the live count; the meta group by
/// [`META_VOTERS`]) gain replicas, and replicas move from the most to the least loaded nodes
/// until loads differ by at most one. A replica on a `down` node (judged dead, not leaving)
/// stays in a group that would otherwise be left with two voters: dropped, the group would
/// wait for that node to be judged live again before it regained the replica, and a second
/// loss in the meantime (in the meta group, nobody would be left to judge it) would be fatal. At most
/// `max_changes` groups change per call, so the cluster moves a bounded amount of data at a
/// time. Returns only the groups that changed.
pub fn plan_targets(
    current: &BTreeMap<GroupId, Target>,
    live: &[NodeId],
    down: &[NodeId],
    replication: usize,
    max_changes: usize,
) -> BTreeMap<GroupId, Target> {
    let live: BTreeSet<NodeId> = live.iter().copied().collect();
    let mut out = BTreeMap::new();
    if live.is_empty() {
        return out;
    }
    let mut load: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    for t in current.values() {
        for r in &t.replicas {
            if let Some(l) = load.get_mut(r) {
                *l += 1;
            }
        }
    }
    let least_loaded = |load: &BTreeMap<NodeId, usize>, exclude: &[NodeId]| {
        load.iter()
            .filter(|(n, _)| !exclude.contains(n))
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, _)| *n)
    };
    // 1. Replace dead replicas and fill groups up to their replication.
    for (g, t) in current {
        if out.len() >= max_changes {
            return out;
        }
        let size = if *g == META_GROUP {
            META_VOTERS
        } else {
            replication.max(1)
        };
        let want = size.min(live.len());
        let mut replicas: Vec<NodeId> = t
            .replicas
            .iter()
            .copied()
            .filter(|r| live.contains(r))
            .collect();
        while replicas.len() < want {
            let Some(n) = least_loaded(&load, &replicas) else {
                break;
            };
            replicas.push(n);
            if let Some(l) = load.get_mut(&n) {
                *l += 1;
            }
        }
        while replicas.len() > want {
            // Over-replicated (replication was lowered, or too many meta voters).
            if let Some(r) = replicas.pop() {
                if let Some(l) = load.get_mut(&r) {
                    *l = l.saturating_sub(1);
                }
            }
        }
        // One, in a group left with two live replicas, and never more replicas than the group
        // had: there the kept replica costs nothing now (three voters with one down tolerate
        // no further loss, as two do) and restores the group's margin the moment its node
        // returns. A larger group keeps a margin without it.
        let room = usize::from(replicas.len() == 2)
            .min(size.min(t.replicas.len()).saturating_sub(replicas.len()));
        let kept: Vec<NodeId> = t
            .replicas
            .iter()
            .copied()
            .filter(|r| down.contains(r) && !live.contains(r))
            .take(room)
            .collect();
        // The current order first (it names the preferred leader), then the new replicas.
        let mut next: Vec<NodeId> = t
            .replicas
            .iter()
            .copied()
            .filter(|r| replicas.contains(r) || kept.contains(r))
            .collect();
        next.extend(replicas.iter().filter(|r| !t.replicas.contains(r)));
        if next != t.replicas {
            out.insert(
                *g,
                Target {
                    replicas: next,
                    version: t.version + 1,
                },
            );
        }
    }
    // 2. Rebalance data partitions: move one replica from the most to the least loaded node
    //    while their loads differ by more than one.
    while out.len() < max_changes {
        let Some((&hi, &hi_load)) = load
            .iter()
            .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
        else {
            break;
        };
        let Some((&lo, &lo_load)) = load.iter().min_by_key(|(n, l)| (**l, **n)) else {
            break;
        };
        if hi_load <= lo_load + 1 {
            break;
        }
        let candidate = current.iter().find(|(g, t)| {
            **g != META_GROUP
                && !out.contains_key(*g)
                && t.replicas.contains(&hi)
                && !t.replicas.contains(&lo)
        });
        let Some((g, t)) = candidate else { break };
        let replicas = t
            .replicas
            .iter()
            .map(|r| if *r == hi { lo } else { *r })
            .collect();
        out.insert(
            *g,
            Target {
                replicas,
                version: t.version + 1,
            },
        );
        if let Some(l) = load.get_mut(&hi) {
            *l -= 1;
        }
        if let Some(l) = load.get_mut(&lo) {
            *l += 1;
        }
    }
    out
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

    fn apply(current: &mut BTreeMap<GroupId, Target>, changes: BTreeMap<GroupId, Target>) {
        for (g, t) in changes {
            current.insert(g, t);
        }
    }

    fn loads(current: &BTreeMap<GroupId, Target>) -> BTreeMap<NodeId, usize> {
        let mut l = BTreeMap::new();
        for (g, t) in current {
            if *g != META_GROUP {
                for r in &t.replicas {
                    *l.entry(*r).or_insert(0) += 1;
                }
            }
        }
        l
    }

    #[test]
    fn a_one_node_cluster_grows_to_three_replicas_and_then_spreads_over_five() {
        let mut t = ClusterLayout {
            nodes: vec![1],
            partitions: 16,
            replication: 3,
        }
        .targets();
        for _ in 0..100 {
            let c = plan_targets(&t, &[1, 2, 3], &[], 3, 4);
            if c.is_empty() {
                break;
            }
            apply(&mut t, c);
        }
        assert!(t.values().all(|x| x.replicas.len() == 3));
        for _ in 0..100 {
            let c = plan_targets(&t, &[1, 2, 3, 4, 5], &[], 3, 4);
            if c.is_empty() {
                break;
            }
            apply(&mut t, c);
        }
        let l = loads(&t);
        let (min, max) = (l.values().min().copied(), l.values().max().copied());
        // 16 partitions x 3 replicas over 5 nodes: 9 or 10 each.
        assert!(min >= Some(9) && max <= Some(10), "{l:?}");
        assert_eq!(t[&META_GROUP].replicas.len(), 5);
    }

    #[test]
    fn a_dead_node_is_replaced_and_nothing_else_moves() {
        let mut t = ClusterLayout {
            nodes: vec![1, 2, 3, 4],
            partitions: 8,
            replication: 3,
        }
        .targets();
        let before = t.clone();
        let c = plan_targets(&t, &[1, 2, 3], &[4], 3, 100);
        for (g, new) in &c {
            let old = &before[g];
            assert!(
                old.replicas.contains(&4),
                "group {g} changed without a dead replica"
            );
            assert!(!new.replicas.contains(&4));
            assert_eq!(new.version, old.version + 1);
        }
        apply(&mut t, c);
        assert!(t.values().all(|x| !x.replicas.contains(&4)));
        assert!(t
            .iter()
            .filter(|(g, _)| **g != META_GROUP)
            .all(|(_, x)| x.replicas.len() == 3));
    }

    #[test]
    fn a_dead_node_without_a_replacement_keeps_its_replicas() {
        let t = ClusterLayout {
            nodes: vec![1, 2, 3],
            partitions: 4,
            replication: 3,
        }
        .targets();
        // Node 3 is judged dead and nobody can take its place: nothing moves.
        assert!(plan_targets(&t, &[1, 2], &[3], 3, 100).is_empty());
        // A decommissioned node (not down) is still moved away, even with nobody to replace it.
        let c = plan_targets(&t, &[1, 2], &[], 3, 100);
        assert_eq!(c.len(), t.len());
        assert!(c
            .values()
            .all(|x| x.replicas.len() == 2 && !x.replicas.contains(&3)));
        // A fourth node arrives: the dead node's replicas go to it.
        let c = plan_targets(&t, &[1, 2, 4], &[3], 3, 100);
        assert_eq!(c.len(), t.len());
        assert!(c
            .values()
            .all(|x| x.replicas.len() == 3 && x.replicas.contains(&4)));
    }
}
