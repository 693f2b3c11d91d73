//! What a node knows of its peers from their announcements and from the network's failure
//! detector: who said what and when, who is unreachable, and which peer identity and
//! addresses belong to which node.

use std::collections::{BTreeMap, BTreeSet};

use super::announce::Announce;
use crate::core::{GroupId, NodeId};

/// A peer's identity on the network (its PeerId bytes) and where it listens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer: Vec<u8>,
    pub addrs: Vec<String>,
}

/// The latest announcement of one node.
struct Heard {
    peer: Vec<u8>,
    announce: Announce,
    at: u64,
}

/// The peers as this node hears them.
pub(super) struct Gossip {
    ttl_ms: u64,
    heard: BTreeMap<NodeId, Heard>,
    /// When each node was last heard from (announcement or join request).
    pub last_seen: BTreeMap<NodeId, u64>,
    /// Nodes the network reports suspect or down, until they speak again.
    pub unreachable: BTreeSet<NodeId>,
    /// Nodes whose announcements went stale: the core was told they are not live.
    silent: BTreeSet<NodeId>,
    pub peers: BTreeMap<NodeId, PeerInfo>,
}

impl Gossip {
    pub fn new(ttl_ms: u64) -> Gossip {
        Gossip {
            ttl_ms,
            heard: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            unreachable: BTreeSet::new(),
            silent: BTreeSet::new(),
            peers: BTreeMap::new(),
        }
    }

    /// Records an announcement heard at `now`. Returns true when its sender had gone silent.
    pub fn hear(&mut self, peer: &[u8], addrs: &[String], a: Announce, now: u64) -> bool {
        let node = a.node;
        self.last_seen.insert(node, now);
        self.peers.insert(
            node,
            PeerInfo {
                peer: peer.to_vec(),
                addrs: addrs.to_vec(),
            },
        );
        self.heard.insert(
            node,
            Heard {
                peer: peer.to_vec(),
                announce: a,
                at: now,
            },
        );
        self.silent.remove(&node)
    }

    /// Forgets what a node that went down announced.
    pub fn forget(&mut self, node: NodeId) {
        self.heard.remove(&node);
    }

    /// Announcements heard recently enough to trust, with their senders' peer identities.
    pub fn fresh(&self, now: u64) -> impl Iterator<Item = (&[u8], &Announce)> {
        self.heard
            .values()
            .filter(move |h| now.saturating_sub(h.at) < self.ttl_ms)
            .map(|h| (h.peer.as_slice(), &h.announce))
    }

    /// Fresh announcements with the core time each was heard at.
    pub fn fresh_heard(&self, now: u64) -> impl Iterator<Item = (&Announce, u64)> {
        self.heard
            .values()
            .filter(move |h| now.saturating_sub(h.at) < self.ttl_ms)
            .map(|h| (&h.announce, h.at))
    }

    /// Fresh announcements of nodes the network does not report unreachable.
    pub fn reachable(&self, now: u64) -> impl Iterator<Item = &Announce> {
        self.fresh(now)
            .map(|(_, a)| a)
            .filter(|a| !self.unreachable.contains(&a.node))
    }

    /// Nodes whose announcements have just gone stale (each reported once until it speaks
    /// again).
    pub fn newly_silent(&mut self, now: u64) -> Vec<NodeId> {
        let stale: Vec<NodeId> = self
            .heard
            .iter()
            .filter(|(n, h)| now.saturating_sub(h.at) >= self.ttl_ms && !self.silent.contains(n))
            .map(|(n, _)| *n)
            .collect();
        self.silent.extend(stale.iter().copied());
        stale
    }

    /// The node that announces itself as the meta group's leader.
    pub fn meta_leader(&self, now: u64) -> Option<NodeId> {
        self.fresh(now)
            .find(|(_, a)| a.meta_leader)
            .map(|(_, a)| a.node)
    }

    /// The leader of `group` according to the reachable peers' announcements.
    pub fn leader_of(&self, group: GroupId, now: u64) -> Option<NodeId> {
        self.reachable(now)
            .find(|a| a.led.iter().any(|(g, _)| *g == group))
            .map(|a| a.node)
    }
}
