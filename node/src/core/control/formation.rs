//! Zero-config formation: a node without a cluster listens for a while, then joins a formed
//! cluster it hears of, or, as the lowest unformed peer (by PeerId bytes), forms one with
//! every unformed peer it has heard as an initial voter, so nodes started together serve
//! with full replication after one election. `expect` waits for that many nodes instead.
//!
//! The listening window ends once the set of unformed peers heard has not changed for
//! `settle_ms`, and at the latest after `discovery_ms`. A peer is heard as soon as it connects
//! (the network sends a heartbeat to every peer that connects, and one a second after that),
//! so a set that stays the same for a second holds every node that started within about a
//! second of the others, and a greeting missed at the moment of connection is made up by the
//! next heartbeat before the window ends: two nodes that can hear each other do not decide
//! with different views. A node that has heard nobody waits the whole window: its peers may
//! still be starting. A node that arrives after the cluster formed hears it and joins.

use std::collections::BTreeSet;

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

/// The unformed peers heard so far, and since when that set has stayed the same.
#[derive(Debug, Default)]
pub(super) struct Discovery {
    /// (PeerId bytes, node) of every fresh unformed peer, this node excluded.
    unformed: BTreeSet<(Vec<u8>, NodeId)>,
    /// When `unformed` last changed.
    since: u64,
}

impl Discovery {
    /// Takes the fresh unformed peers at `now`; returns how long their set has been stable.
    fn observe(&mut self, gossip: &Gossip, me: NodeId, now: u64) -> u64 {
        let unformed: BTreeSet<(Vec<u8>, NodeId)> = gossip
            .fresh(now)
            .filter(|(_, a)| a.cluster_id.is_none() && a.node != me)
            .map(|(p, a)| (p.to_vec(), a.node))
            .collect();
        if unformed != self.unformed {
            self.unformed = unformed;
            self.since = now;
        }
        now.saturating_sub(self.since)
    }
}

/// Decides formation from the fresh announcements; `listening_ms` is how long this node has
/// been listening.
pub(super) fn decide(
    gossip: &Gossip,
    discovery: &mut Discovery,
    params: &ControlParams,
    me: (NodeId, &[u8]),
    listening_ms: u64,
    now: u64,
) -> Formation {
    // A formed cluster is around: join it.
    if let Some((_, a)) = gossip.fresh(now).find(|(_, a)| a.cluster_id.is_some()) {
        return Formation::Join { via: a.node };
    }
    let stable_ms = discovery.observe(gossip, me.0, now);
    let settled = !discovery.unformed.is_empty() && stable_ms >= params.settle_ms;
    if listening_ms < params.discovery_ms && !settled {
        return Formation::Wait;
    }
    // Nobody has formed: the lowest PeerId among the unformed forms.
    let mut unformed: Vec<(&[u8], NodeId)> = discovery
        .unformed
        .iter()
        .map(|(p, n)| (p.as_slice(), *n))
        .collect();
    unformed.push((me.1, me.0));
    unformed.sort_unstable();
    unformed.dedup();
    if unformed.first().map(|(_, n)| *n) != Some(me.0) {
        return Formation::Wait;
    }
    let take = match params.expect {
        Some(n) if unformed.len() < n => return Formation::Wait,
        Some(n) => n,
        None => unformed.len(),
    };
    let mut nodes: Vec<NodeId> = unformed.into_iter().take(take).map(|(_, id)| id).collect();
    nodes.sort_unstable();
    Formation::Form {
        layout: ClusterLayout {
            nodes,
            partitions: params.partitions,
            replication: params.replication,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::control::Announce;

    fn unformed(node: NodeId) -> Announce {
        Announce {
            cluster_id: None,
            node,
            meta_leader: false,
            led: Vec::new(),
            targets: None,
        }
    }

    fn params() -> ControlParams {
        ControlParams {
            discovery_ms: 3_000,
            settle_ms: 1_000,
            ..ControlParams::default()
        }
    }

    fn hear(g: &mut Gossip, node: NodeId, now: u64) {
        g.hear(&[node as u8], &[], unformed(node), now);
    }

    #[test]
    fn nodes_started_together_form_once_the_set_is_stable_with_all_as_voters() {
        let p = params();
        let mut g = Gossip::new(p.announce_ttl_ms);
        let mut d = Discovery::default();
        let me = (1, &[1u8][..]);
        hear(&mut g, 2, 200);
        assert_eq!(decide(&g, &mut d, &p, me, 200, 200), Formation::Wait);
        hear(&mut g, 3, 400);
        assert_eq!(decide(&g, &mut d, &p, me, 400, 400), Formation::Wait);
        // The set changed at 400: not settled until 1,400.
        assert_eq!(decide(&g, &mut d, &p, me, 1_300, 1_300), Formation::Wait);
        hear(&mut g, 2, 1_300);
        hear(&mut g, 3, 1_300);
        let Formation::Form { layout } = decide(&g, &mut d, &p, me, 1_400, 1_400) else {
            panic!("the lowest node forms once the set is stable");
        };
        assert_eq!(layout.nodes, vec![1, 2, 3]);
    }

    #[test]
    fn only_the_lowest_unformed_peer_forms() {
        let p = params();
        let mut g = Gossip::new(p.announce_ttl_ms);
        let mut d = Discovery::default();
        hear(&mut g, 1, 0);
        hear(&mut g, 3, 0);
        for now in [1_000, 2_000, 3_000] {
            hear(&mut g, 1, now);
            hear(&mut g, 3, now);
            assert_eq!(
                decide(&g, &mut d, &p, (2, &[2u8]), now, now),
                Formation::Wait
            );
        }
    }

    #[test]
    fn a_node_that_heard_nobody_waits_the_whole_window_then_forms_alone() {
        let p = params();
        let g = Gossip::new(p.announce_ttl_ms);
        let mut d = Discovery::default();
        let me = (5, &[5u8][..]);
        assert_eq!(decide(&g, &mut d, &p, me, 2_999, 2_999), Formation::Wait);
        let Formation::Form { layout } = decide(&g, &mut d, &p, me, 3_000, 3_000) else {
            panic!("a lone node forms after the window");
        };
        assert_eq!(layout.nodes, vec![5]);
    }

    #[test]
    fn a_node_hearing_a_formed_cluster_joins_it() {
        let p = params();
        let mut g = Gossip::new(p.announce_ttl_ms);
        let mut d = Discovery::default();
        let mut formed = unformed(9);
        formed.cluster_id = Some(7);
        g.hear(&[9], &[], formed, 100);
        assert_eq!(
            decide(&g, &mut d, &p, (1, &[1u8]), 100, 100),
            Formation::Join { via: 9 }
        );
    }

    #[test]
    fn expect_waits_for_that_many_nodes_and_takes_the_lowest() {
        let p = ControlParams {
            expect: Some(3),
            ..params()
        };
        let mut g = Gossip::new(p.announce_ttl_ms);
        let mut d = Discovery::default();
        let me = (1, &[1u8][..]);
        hear(&mut g, 2, 0);
        assert_eq!(decide(&g, &mut d, &p, me, 3_000, 3_000), Formation::Wait);
        for n in [3, 4] {
            hear(&mut g, n, 3_000);
        }
        hear(&mut g, 2, 3_000);
        let Formation::Form { layout } = decide(&g, &mut d, &p, me, 3_100, 3_100) else {
            panic!("expect forms once it has enough nodes");
        };
        assert_eq!(layout.nodes, vec![1, 2, 3]);
    }
}
