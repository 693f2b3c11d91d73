//! The virtual network: packets delivered at a virtual time after a random delay, lost,
//! duplicated, reordered (by the delay), and dropped across partition cuts (one-way cuts are
//! single directed pairs, so symmetric, one-way and bridge partitions are all sets of cuts).

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::Rng;
use swarmkv::core::control::Announce;
use swarmkv::core::{
    ClusterLayout, ClusterSettings, ElectionRequest, GroupId, LeaseRequest, NodeId, NodeRecord,
    Request, RequestId, SnapshotSend,
};
use swarmkv_store::raft::eraftpb::Message;

/// What travels between nodes (and from clients to nodes).
#[derive(Clone, Debug)]
pub enum Payload {
    /// One turn's Raft messages for one peer, as the driver batches them.
    Raft(Vec<(GroupId, Message)>),
    /// A snapshot stream (chunks, then the message), as one unit.
    Snapshot(SnapshotSend),
    /// A client request; `true` when the client sent it to the node it believes leads the
    /// partition, to be served only there (`Core::handle_request_at_leader`, as a libp2p
    /// client's `Call::AtLeader`).
    Request(RequestId, Request, bool),
    /// A lock client's lease request.
    Lease(RequestId, LeaseRequest),
    /// A lock client's election request.
    Election(RequestId, ElectionRequest),
    /// A node's control-plane announcement, as its gossip heartbeats carry it.
    Announce(Announce),
    /// A join request for the cluster, answered to `reply_to` (passed on to the meta leader
    /// at most `hops` more times).
    Join {
        record: NodeRecord,
        reply_to: NodeId,
        hops: u8,
    },
    /// The answer to a join request (`None`: refused).
    Joined(Option<ClusterSettings>),
    /// The node that formed a cluster tells an initial member to bootstrap.
    Bootstrap {
        layout: ClusterLayout,
        cluster_id: u64,
    },
}

/// A packet in flight.
#[derive(Clone, Debug)]
pub struct Packet {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's incarnation when it sent (a snapshot's source must still be that node).
    pub from_incarnation: u64,
    pub payload: Payload,
}

/// Delays, loss and cuts.
pub struct Net {
    queue: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    /// Directed pairs (from, to) that cannot talk.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a Raft packet is delivered twice.
    pub dup: f64,
    /// Largest ordinary delay, in ms.
    pub max_delay: u64,
    /// Probability of a long extra delay (reordering well past later packets).
    pub spike: f64,
    pub sent: u64,
    pub lost: u64,
}

impl Net {
    pub fn new(loss: f64, dup: f64, max_delay: u64, spike: f64) -> Net {
        Net {
            queue: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            loss,
            dup,
            max_delay: max_delay.max(1),
            spike,
            sent: 0,
            lost: 0,
        }
    }

    /// True when `from` cannot reach `to`.
    pub fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Replaces the cuts.
    pub fn set_cuts(&mut self, cuts: BTreeSet<(NodeId, NodeId)>) {
        self.cut = cuts;
    }

    pub fn has_cuts(&self) -> bool {
        !self.cut.is_empty()
    }

    fn delay(&self, rng: &mut StdRng) -> u64 {
        let mut d = rng.gen_range(1..=self.max_delay);
        if rng.gen_bool(self.spike) {
            d += rng.gen_range(50..400);
        }
        d
    }

    /// Sends a packet: Raft traffic and heartbeats may be lost (not client requests, whose
    /// loss the client would see as a timeout anyway, nor the control plane's requests, which
    /// travel over a reliable stream) and Raft traffic duplicated.
    pub fn send(&mut self, rng: &mut StdRng, now: u64, packet: Packet) {
        self.sent += 1;
        if self.blocked(packet.from, packet.to) {
            self.lost += 1;
            return;
        }
        let is_raft = matches!(packet.payload, Payload::Raft(_));
        let lossy = is_raft || matches!(packet.payload, Payload::Announce(_));
        if lossy && rng.gen_bool(self.loss) {
            self.lost += 1;
            return;
        }
        if is_raft && rng.gen_bool(self.dup) {
            let at = now + self.delay(rng);
            self.push(at, packet.clone());
        }
        let at = now + self.delay(rng);
        self.push(at, packet);
    }

    /// Queues a packet for delivery at `at` exactly.
    pub fn push(&mut self, at: u64, packet: Packet) {
        self.seq += 1;
        self.queue.insert((at, self.seq), packet);
    }

    /// Takes every packet due by `now`, in delivery order.
    pub fn due(&mut self, now: u64) -> Vec<Packet> {
        let later = self.queue.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.queue, later);
        due.into_values().collect()
    }
}
