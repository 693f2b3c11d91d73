//! The control plane, sans-IO: zero-config formation (discover, then join a formed cluster
//! or, as the lowest unformed peer, form one), the coordinator duties of the meta group's
//! leader (register nodes, mark the silent dead, plan targets), spreading targets through
//! announcements, leftover collection, leader balancing and draining.
//!
//! [`Control`] works on a [`Core`] it is handed with every call, so a storage fault can
//! replace the core while the control plane keeps what it heard. Time is an argument (`now`,
//! in the milliseconds [`Core::handle_tick`] uses), randomness comes from a seed, and what
//! the node must do on the network leaves through [`Control::poll_action`]. The driver
//! performs the actions over libp2p; the simulator carries them over its virtual network.
//!
//! # Layout
//! - `params.rs`: periods and limits.
//! - `announce.rs`: the heartbeat payload.
//! - `gossip.rs`: what the peers announced, who is unreachable.
//! - `formation.rs`: join or form, and when the listening ends.
//! - `coordinator.rs`: the meta leader's registry, liveness verdicts and placement.
//! - `leftovers.rs`: dropping replicas the cluster no longer wants here.
//! - `leaders.rs`: leader balancing and draining.

mod announce;
mod coordinator;
mod formation;
mod gossip;
mod leaders;
mod leftovers;
mod params;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmkv_store::Backend;

pub use announce::{targets_epoch, Announce};
pub use gossip::PeerInfo;
pub use params::ControlParams;

use formation::{Discovery, Formation};
use gossip::Gossip;
use leftovers::Leftovers;

use crate::core::{
    ClusterLayout, ClusterSettings, Core, CoreError, GroupId, MetaState, NodeId, NodeRecord,
    NodeState, META_GROUP,
};

/// Why a node could not be decommissioned. Nothing was decided against the caller: an
/// unknown node is a wrong request; anything else may be retried (decommissioning is
/// idempotent, so a retry after an ambiguous failure is safe).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecommissionError {
    /// The cluster has no member with this id: a typo, or a node that never joined.
    #[error("unknown node {0:016x}: not a member of the cluster")]
    UnknownNode(NodeId),
    /// The request could not be carried out now: no meta leader known, leadership moving,
    /// the node stopping or the meta leader unreachable. Retrying is safe.
    #[error("cannot decommission now: {0}")]
    Unavailable(String),
}

/// What the control plane asks of the network, in the order it decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlAction {
    /// Publish this announcement in the heartbeats from now on.
    Publish(Announce),
    /// Ask `via` (a member of a formed cluster) to register this node; the answer goes to
    /// [`Control::handle_join_answer`].
    Join { via: NodeId, record: NodeRecord },
    /// Tell `to`, an initial member of the cluster this node formed, to bootstrap with it.
    Bootstrap {
        to: NodeId,
        layout: ClusterLayout,
        cluster_id: u64,
    },
    /// Connect to a node first heard of through gossip.
    Dial { node: NodeId, addrs: Vec<String> },
    /// This node formed or joined cluster `cluster_id`: refuse other clusters' peers from now
    /// on and record the peers.
    Formed { cluster_id: u64 },
}

/// How the node answers a join request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinVerdict {
    /// Registered (or already a live member): here are the cluster's settings.
    Joined(ClusterSettings),
    /// Ask the meta leader, which this node is not.
    Forward(NodeId),
    /// Not now, with why.
    Refused(String),
}

/// The cluster id of a cluster bootstrapped explicitly from a list of peers: the same on
/// every initial node.
pub fn static_cluster_id(nodes: &[NodeId]) -> u64 {
    let mut bytes = Vec::new();
    for n in nodes {
        bytes.extend_from_slice(&n.to_be_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
}

/// The control plane's memory and decisions. See the module documentation.
pub struct Control {
    params: ControlParams,
    me: NodeId,
    peer: Vec<u8>,
    addrs: Vec<String>,
    rng: StdRng,
    started: u64,
    gossip: Gossip,
    /// When the join in flight was sent.
    joining_since: Option<u64>,
    /// When the coordinator last ran and the announcement was last published; `None` until
    /// the first tick, which publishes at once: a peer that connects in the first moments
    /// must hear whether this node has a cluster, not an empty heartbeat.
    last_coordination: Option<u64>,
    last_reconcile: u64,
    last_transfer: u64,
    draining: bool,
    /// The newest targets epoch adopted.
    targets_epoch: u64,
    dialed: BTreeSet<NodeId>,
    /// The unformed peers heard while this node has no cluster.
    discovery: Discovery,
    leftovers: Leftovers,
    actions: VecDeque<ControlAction>,
}

impl Control {
    /// The control plane of node `me`, whose network identity is `peer`, started at `now`.
    pub fn new(me: NodeId, peer: Vec<u8>, params: ControlParams, seed: u64, now: u64) -> Control {
        Control {
            gossip: Gossip::new(params.announce_ttl_ms),
            params,
            me,
            peer,
            addrs: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            started: now,
            joining_since: None,
            last_coordination: None,
            last_reconcile: now,
            last_transfer: now,
            draining: false,
            targets_epoch: 0,
            dialed: BTreeSet::new(),
            discovery: Discovery::default(),
            leftovers: Leftovers::default(),
            actions: VecDeque::new(),
        }
    }

    pub fn params(&self) -> &ControlParams {
        &self.params
    }

    /// The next thing to do on the network.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<ControlAction> {
        self.actions.pop_front()
    }

    // ----- inputs -----

    /// The addresses this node listens on (for its own node record).
    pub fn set_own_addrs(&mut self, addrs: Vec<String>) {
        self.addrs = addrs;
    }

    /// Learns a node's network identity and addresses outside gossip (an explicit bootstrap,
    /// a connection), for the node records the coordinator writes.
    pub fn handle_peer_info(&mut self, node: NodeId, info: PeerInfo) {
        let entry = self.gossip.peers.entry(node).or_default();
        if !info.peer.is_empty() {
            entry.peer = info.peer;
        }
        if !info.addrs.is_empty() {
            entry.addrs = info.addrs;
        }
    }

    /// An announcement heard at `now` from `peer` listening on `addrs`: remember it, adopt
    /// newer targets, dial a new peer, and tell the core its sender is alive.
    pub fn handle_announce<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        peer: &[u8],
        addrs: &[String],
        a: Announce,
        now: u64,
    ) {
        let node = a.node;
        if node == self.me {
            return;
        }
        if let Some((epoch, targets)) = &a.targets {
            if *epoch > self.targets_epoch
                && core.settings().is_some()
                && !core.is_leader(META_GROUP)
            {
                self.targets_epoch = *epoch;
                core.set_targets(targets.iter().cloned().collect());
            }
        }
        if self.dialed.insert(node) && !addrs.is_empty() {
            self.actions.push_back(ControlAction::Dial {
                node,
                addrs: addrs.to_vec(),
            });
        }
        self.gossip.hear(peer, addrs, a, now);
        // A heartbeat is proof of life (it wakes the quiesced groups the node is in).
        core.set_node_live(node, true);
    }

    /// The network connected to `node`, or heard Raft traffic from it.
    pub fn handle_peer_up<B: Backend>(&mut self, core: &mut Core<B>, node: NodeId) {
        self.gossip.unreachable.remove(&node);
        core.set_node_live(node, true);
    }

    /// The network's failure detector suspects `node`: requests are not forwarded to it and
    /// the quiesced groups it is in wake up.
    pub fn handle_peer_suspect<B: Backend>(&mut self, core: &mut Core<B>, node: NodeId) {
        self.gossip.unreachable.insert(node);
        core.set_node_live(node, false);
    }

    /// The connection to `node` is gone: forget what it announced as well.
    pub fn handle_peer_down<B: Backend>(&mut self, core: &mut Core<B>, node: NodeId) {
        self.gossip.forget(node);
        self.handle_peer_suspect(core, node);
        core.report_unreachable(node);
    }

    /// The answer to this node's join request (`None`: refused or failed; it tries again).
    pub fn handle_join_answer<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        settings: Option<ClusterSettings>,
    ) -> Result<(), CoreError> {
        self.joining_since = None;
        let Some(s) = settings else { return Ok(()) };
        let id = s.cluster_id;
        core.join(s)?;
        log::info!("joined cluster {id:x}");
        self.actions
            .push_back(ControlAction::Formed { cluster_id: id });
        Ok(())
    }

    /// Bootstraps the core as an initial member of a cluster (told by the node that formed
    /// it, or by an operator).
    pub fn handle_bootstrap<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        layout: ClusterLayout,
        cluster_id: u64,
    ) -> Result<(), CoreError> {
        core.bootstrap(layout, cluster_id)?;
        self.actions.push_back(ControlAction::Formed { cluster_id });
        Ok(())
    }

    /// A node asks to join at `now`: the meta leader registers it; others name the meta
    /// leader to forward to.
    pub fn handle_join<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        record: NodeRecord,
        now: u64,
    ) -> JoinVerdict {
        let Some(settings) = core.settings().cloned() else {
            return JoinVerdict::Refused("this node has no cluster yet".into());
        };
        if !core.is_leader(META_GROUP) {
            return match self.meta_leader(core, now) {
                Some(m) => JoinVerdict::Forward(m),
                None => JoinVerdict::Refused("no meta leader known yet".into()),
            };
        }
        self.gossip.last_seen.insert(record.id, now);
        self.handle_peer_info(
            record.id,
            PeerInfo {
                peer: record.peer.clone(),
                addrs: record.addrs.clone(),
            },
        );
        let known = core
            .meta_state()
            .map(|m| {
                m.nodes
                    .get(&record.id)
                    .is_some_and(|n| n.state == NodeState::Live)
            })
            .unwrap_or(false);
        if !known && !core.propose_meta(MetaState::put_node(&record)) {
            return JoinVerdict::Refused("registration refused".into());
        }
        JoinVerdict::Joined(settings)
    }

    /// An operator asks to drain `node`; only the meta leader can.
    pub fn decommission<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        node: NodeId,
    ) -> Result<(), DecommissionError> {
        if !core.is_leader(META_GROUP) {
            return Err(DecommissionError::Unavailable("not the meta leader".into()));
        }
        let meta = core
            .meta_state()
            .map_err(|e| DecommissionError::Unavailable(e.to_string()))?;
        let Some(mut r) =
            coordinator::decommission_record(&meta, core.targets(), &self.gossip, node)
        else {
            return Err(DecommissionError::UnknownNode(node));
        };
        if matches!(r.state, NodeState::Decommissioned) {
            return Ok(());
        }
        r.state = NodeState::Decommissioning;
        if core.propose_meta(MetaState::put_node(&r)) {
            Ok(())
        } else {
            Err(DecommissionError::Unavailable("proposal refused".into()))
        }
    }

    /// From now on the node hands its leaderships away instead of balancing them.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// One step of draining; true when no leadership is left to hand over.
    pub fn drain_step<B: Backend>(&mut self, core: &mut Core<B>) -> bool {
        leaders::drain_step(core, &self.gossip)
    }

    /// The control plane's periodic work at `now`: coordinate (on the meta leader), publish
    /// the announcement, balance leaders, notice silent peers, form or join (without a
    /// cluster), reconcile groups toward their targets and collect leftovers (with one).
    pub fn handle_tick<B: Backend>(
        &mut self,
        core: &mut Core<B>,
        now: u64,
    ) -> Result<(), CoreError> {
        for node in self.gossip.newly_silent(now) {
            core.set_node_live(node, false);
        }
        let due = self
            .last_coordination
            .is_none_or(|t| now.saturating_sub(t) >= self.params.coordinator_period_ms);
        if due {
            self.last_coordination = Some(now);
            if core.settings().is_some() {
                if let Some(epoch) =
                    coordinator::coordinate(core, &mut self.gossip, &self.params, now)
                {
                    self.targets_epoch = epoch;
                }
            }
            // Unformed nodes announce too: that is how they find each other.
            let a = self.announcement(core);
            self.actions.push_back(ControlAction::Publish(a));
            if core.settings().is_some()
                && !self.draining
                && now.saturating_sub(self.last_transfer) >= self.params.balance_period_ms
                && leaders::balance(core, &self.gossip, now)
            {
                self.last_transfer = now;
            }
        }
        if core.settings().is_none() {
            if self.params.auto_form {
                self.form(core, now)?;
            }
            return Ok(());
        }
        if now.saturating_sub(self.last_reconcile) >= self.params.reconcile_period_ms {
            self.last_reconcile = now;
            core.reconcile();
            let grace = self.params.leftover_grace_ms;
            for g in self.leftovers.collect(core, &self.gossip, grace, now)? {
                log::info!("dropped leftover replica of group {g}");
            }
        }
        Ok(())
    }

    fn form<B: Backend>(&mut self, core: &mut Core<B>, now: u64) -> Result<(), CoreError> {
        if let Some(since) = self.joining_since {
            if now.saturating_sub(since) < self.params.join_timeout_ms {
                return Ok(());
            }
            self.joining_since = None;
        }
        let listening = now.saturating_sub(self.started);
        let decision = if core.restoring() {
            // A restored node forms its new cluster alone, at once, and joins nobody: only
            // it holds the backup (see `core::backup`).
            Formation::Form {
                layout: ClusterLayout {
                    nodes: vec![self.me],
                    partitions: self.params.partitions,
                    replication: self.params.replication,
                },
            }
        } else {
            formation::decide(
                &self.gossip,
                &mut self.discovery,
                &self.params,
                (self.me, &self.peer),
                listening,
                now,
            )
        };
        match decision {
            Formation::Wait => {}
            Formation::Join { via } => {
                self.joining_since = Some(now);
                let record = NodeRecord {
                    id: self.me,
                    peer: self.peer.clone(),
                    addrs: self.addrs.clone(),
                    state: NodeState::Live,
                };
                self.actions.push_back(ControlAction::Join { via, record });
            }
            Formation::Form { layout } => {
                let cluster_id = self.rng.gen::<u64>().max(1);
                log::info!(
                    "forming cluster {cluster_id:x} with {} node(s), {} partitions",
                    layout.nodes.len(),
                    layout.partitions
                );
                core.bootstrap(layout.clone(), cluster_id)?;
                self.actions.push_back(ControlAction::Formed { cluster_id });
                for &to in layout.nodes.iter().filter(|n| **n != self.me) {
                    self.actions.push_back(ControlAction::Bootstrap {
                        to,
                        layout: layout.clone(),
                        cluster_id,
                    });
                }
            }
        }
        Ok(())
    }

    /// This node's announcement: its cluster, the groups it leads, and the targets if it
    /// leads the meta group.
    fn announcement<B: Backend>(&self, core: &Core<B>) -> Announce {
        let meta_leader = core.is_leader(META_GROUP);
        let led = core
            .groups()
            .into_iter()
            .filter_map(|g| core.group_status(g))
            .filter(|s| s.leader == Some(self.me))
            .map(|s| (s.group, s.voters))
            .collect();
        let targets = meta_leader.then(|| {
            (
                targets_epoch(core.targets()),
                core.targets()
                    .iter()
                    .map(|(g, t)| (*g, t.clone()))
                    .collect(),
            )
        });
        Announce {
            cluster_id: core.settings().map(|s| s.cluster_id),
            node: self.me,
            meta_leader,
            led,
            targets,
        }
    }

    // ----- lookups -----

    /// Fresh announcements at `now`, with their senders' peer identities.
    pub fn fresh(&self, now: u64) -> impl Iterator<Item = (&[u8], &Announce)> {
        self.gossip.fresh(now)
    }

    /// Whether the network reports `node` suspect or down.
    pub fn is_unreachable(&self, node: NodeId) -> bool {
        self.gossip.unreachable.contains(&node)
    }

    /// What this node knows of `node`'s network identity.
    pub fn peer_info(&self, node: NodeId) -> Option<&PeerInfo> {
        self.gossip.peers.get(&node)
    }

    /// Every node whose identity this node knows.
    pub fn known_peers(&self) -> &BTreeMap<NodeId, PeerInfo> {
        &self.gossip.peers
    }

    /// The node that leads the meta group, other than this one: as gossip announces it, or
    /// else as this node's own meta replica knows it (just after a start the gossip may not
    /// have announced it yet, while Raft already has).
    pub fn meta_leader<B: Backend>(&self, core: &Core<B>, now: u64) -> Option<NodeId> {
        self.gossip
            .meta_leader(now)
            .filter(|n| *n != self.me)
            .or_else(|| {
                core.leaders()
                    .into_iter()
                    .find(|(g, _)| *g == META_GROUP)
                    .and_then(|(_, l)| l)
                    .filter(|n| *n != self.me)
            })
    }

    /// The leader of `group` according to the reachable peers' announcements.
    pub fn gossip_leader(&self, group: GroupId, now: u64) -> Option<NodeId> {
        self.gossip.leader_of(group, now)
    }
}
