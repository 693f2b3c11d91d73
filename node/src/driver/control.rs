//! The control plane as the node loop runs it: zero-config formation (discover, then join a
//! formed cluster or, as the lowest unformed PeerId, form one), the coordinator duties of the
//! meta group's leader (register nodes, mark the silent dead, plan targets), spreading targets
//! through heartbeats, and letting every group leader reconcile toward its target.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use swarmkv_net::PeerId;

use super::{node_id_of, respond, DecommissionError, Driver, Internal};
use crate::core::{
    plan_targets, ClusterLayout, ClusterSettings, GroupId, MetaState, NodeId, NodeRecord,
    NodeState, Target, META_GROUP,
};
use crate::wire::{Announce, Answer, Call, KvAnswer, KvCall};

/// How many groups may be moving toward a new target at once, cluster-wide: enough that a
/// new cluster of 64 partitions reaches full replication in seconds, few enough that a
/// rebalance of a loaded cluster copies a bounded amount of data at a time.
const MAX_MOVES: usize = 16;
const COORDINATOR_PERIOD: Duration = Duration::from_millis(300);
const RECONCILE_PERIOD: Duration = Duration::from_millis(200);
/// An announcement older than this is ignored for routing.
const ANNOUNCE_TTL: Duration = Duration::from_secs(3);
/// A replica this young is never dropped as a leftover. A node that just joined (or was
/// rebuilt) gets replicas from leaders before its own meta replica has caught up with the
/// targets that want them, so its stale targets make a new learner look unwanted, and the
/// leaders announce voters only. Dropping such a replica and having it recreated empty at
/// once left the meta group's new learner stuck (tests/repair.rs, under load). Waiting only
/// delays the collection of a real leftover.
const LEFTOVER_GRACE: Duration = Duration::from_secs(10);

/// Formation and coordination settings.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Form or join a cluster on its own (zero-config). Off: wait for an explicit bootstrap.
    pub auto_form: bool,
    /// Wait for this many nodes (this one included) and start them all as voters.
    pub expect: Option<usize>,
    /// How long a new node listens for peers before it decides to join or form.
    pub discovery: Duration,
    /// Partitions of a cluster this node forms.
    pub partitions: u32,
    /// Replication factor of a cluster this node forms.
    pub replication: usize,
    /// A node silent this long is marked dead and its replicas are replaced.
    pub dead_after: Duration,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            auto_form: true,
            expect: None,
            discovery: Duration::from_secs(3),
            partitions: crate::core::DEFAULT_PARTITIONS,
            replication: crate::core::DEFAULT_REPLICATION,
            dead_after: Duration::from_secs(60),
        }
    }
}

/// The control plane's memory.
pub(crate) struct Control {
    pub config: ControlConfig,
    started: Instant,
    /// Latest announcement of each peer, with when it arrived.
    pub seen: HashMap<PeerId, Announce>,
    pub seen_at: HashMap<PeerId, Instant>,
    /// When each node was last heard from.
    pub last_seen: HashMap<NodeId, Instant>,
    /// A join or formation is in flight.
    pub forming: bool,
    last_coordination: Instant,
    last_reconcile: Instant,
    last_transfer: Instant,
    /// The newest targets epoch adopted.
    pub targets_epoch: u64,
    dialed: HashSet<PeerId>,
    /// When the leftover check first saw each local replica (see [`LEFTOVER_GRACE`]).
    replica_seen: HashMap<GroupId, Instant>,
}

impl Control {
    /// Announcements heard recently enough to trust (a dead peer's last words are not).
    pub fn fresh(&self) -> impl Iterator<Item = (&PeerId, &Announce)> {
        let now = Instant::now();
        self.seen.iter().filter(move |(p, _)| {
            self.seen_at
                .get(*p)
                .is_some_and(|t| now.duration_since(*t) < ANNOUNCE_TTL)
        })
    }

    /// Forgets what a peer that went down announced.
    pub fn forget(&mut self, peer: &PeerId) {
        self.seen.remove(peer);
        self.seen_at.remove(peer);
    }

    /// The peer that announces itself as the meta group's leader.
    pub fn meta_leader_peer(&self) -> Option<PeerId> {
        self.fresh().find(|(_, a)| a.meta_leader).map(|(p, _)| *p)
    }

    pub fn new(config: ControlConfig) -> Control {
        let now = Instant::now();
        Control {
            config,
            started: now,
            seen: HashMap::new(),
            seen_at: HashMap::new(),
            last_seen: HashMap::new(),
            forming: false,
            last_coordination: now,
            last_reconcile: now,
            last_transfer: now,
            targets_epoch: 0,
            dialed: HashSet::new(),
            replica_seen: HashMap::new(),
        }
    }
}

fn epoch(targets: &BTreeMap<GroupId, Target>) -> u64 {
    targets.values().map(|t| t.version).sum()
}

/// The cluster id of a cluster bootstrapped explicitly from a list of peers: the same on
/// every initial node.
pub(crate) fn static_cluster_id(nodes: &[NodeId]) -> u64 {
    let mut bytes = Vec::new();
    for n in nodes {
        bytes.extend_from_slice(&n.to_be_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
}

impl Driver {
    /// The peer that leads the meta group, other than this node: as the gossip announces it,
    /// or else as this node's own meta replica knows it (just after a start the gossip may not
    /// have announced it yet, while Raft already has).
    pub(crate) fn meta_leader_peer(&self) -> Option<PeerId> {
        let me = self.net.local_peer_id();
        self.control
            .meta_leader_peer()
            .filter(|p| *p != me)
            .or_else(|| {
                let (_, leader) = self
                    .core
                    .leaders()
                    .into_iter()
                    .find(|(g, _)| *g == META_GROUP)?;
                self.peers.get(&leader?).copied().filter(|p| *p != me)
            })
    }

    /// Called on every tick of the node loop.
    pub(crate) async fn control_tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.control.last_coordination) >= COORDINATOR_PERIOD {
            self.control.last_coordination = now;
            if self.core.settings().is_some() {
                self.coordinate(now);
            }
            // Unformed nodes announce too: that is how they find each other.
            self.announce().await;
            let up = self.control.fresh().count();
            self.metrics.set_peers_up(up);
            if self.core.settings().is_some() && self.draining.is_none() {
                self.balance_leaders(now);
            }
        }
        if self.core.settings().is_none() {
            if self.control.config.auto_form && !self.control.forming {
                self.try_form(now);
            }
        } else {
            if self.core.is_leader(crate::core::META_GROUP) {
                self.lease_cleanup();
            }
            if now.duration_since(self.control.last_reconcile) >= RECONCILE_PERIOD {
                self.control.last_reconcile = now;
                self.core.reconcile();
                self.collect_leftovers();
            }
        }
    }

    fn try_form(&mut self, now: Instant) {
        let c = &self.control;
        // A formed cluster is around: join it.
        let formed_peer = c
            .fresh()
            .find(|(_, a)| a.cluster_id.is_some())
            .map(|(p, _)| *p);
        if let Some(peer) = formed_peer {
            self.control.forming = true;
            let record = self.my_record();
            let net = self.net.clone();
            let done = self.internal_tx.clone();
            tokio::spawn(async move {
                let call = KvCall::V1(Call::Join { record });
                let settings = match net.kv_request(peer, call.encode()).await {
                    Ok(bytes) => match KvAnswer::decode(&bytes) {
                        Ok(KvAnswer::V1(Answer::Joined(s))) => Some(s),
                        other => {
                            log::info!("join through {peer} not accepted yet: {other:?}");
                            None
                        }
                    },
                    Err(e) => {
                        log::info!("join through {peer} failed: {e}");
                        None
                    }
                };
                let _ = done.send(Internal::Joined(settings)).await;
            });
            return;
        }
        if now.duration_since(c.started) < c.config.discovery {
            return;
        }
        // Nobody has formed: the lowest PeerId among the unformed forms.
        let me = self.net.local_peer_id();
        let mut unformed: Vec<PeerId> = c
            .fresh()
            .filter(|(_, a)| a.cluster_id.is_none())
            .map(|(p, _)| *p)
            .collect();
        unformed.push(me);
        unformed.sort_by_key(|p| p.to_bytes());
        unformed.dedup();
        if unformed.first() != Some(&me) {
            return;
        }
        let members: Vec<PeerId> = match c.config.expect {
            Some(n) if unformed.len() < n => return,
            Some(n) => unformed.into_iter().take(n).collect(),
            None => vec![me],
        };
        let cluster_id = rand::random::<u64>().max(1);
        let mut nodes: Vec<NodeId> = members.iter().map(node_id_of).collect();
        nodes.sort_unstable();
        let layout = ClusterLayout {
            nodes,
            partitions: c.config.partitions,
            replication: c.config.replication,
        };
        log::info!(
            "forming cluster {cluster_id:x} with {} node(s), {} partitions",
            members.len(),
            layout.partitions
        );
        for p in &members {
            self.peers.insert(node_id_of(p), *p);
        }
        if let Err(e) = self.core.bootstrap(layout.clone(), cluster_id) {
            log::error!("cannot form a cluster: {e}");
            return;
        }
        self.formed(cluster_id);
        for p in members.into_iter().filter(|p| *p != me) {
            let net = self.net.clone();
            let call = KvCall::V1(Call::Bootstrap {
                layout: layout.clone(),
                cluster_id,
            });
            tokio::spawn(async move {
                if let Err(e) = net.kv_request(p, call.encode()).await {
                    log::warn!("telling {p} to bootstrap failed: {e}");
                }
            });
        }
    }

    /// After forming or joining: the network refuses other clusters from now on.
    pub(crate) fn formed(&mut self, cluster_id: u64) {
        let net = self.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net.set_cluster_id(Some(cluster_id)).await {
                log::warn!("cannot set the cluster id: {e}");
            }
        });
        if let Err(e) = self.save_peers() {
            log::warn!("cannot record peers: {e}");
        }
    }

    pub(crate) fn on_joined(&mut self, settings: Option<ClusterSettings>) {
        self.control.forming = false;
        let Some(s) = settings else { return };
        let id = s.cluster_id;
        match self.core.join(s) {
            Ok(()) => {
                log::info!("joined cluster {id:x}");
                self.formed(id);
            }
            Err(e) => log::warn!("cannot join cluster {id:x}: {e}"),
        }
    }

    fn my_record(&self) -> NodeRecord {
        let peer = self.net.local_peer_id();
        NodeRecord {
            id: self.node,
            peer: peer.to_bytes(),
            addrs: self.addrs.get(&self.node).cloned().unwrap_or_default(),
            state: NodeState::Live,
        }
    }

    /// A peer asks to join: the meta leader registers it; others forward to the meta leader.
    pub(crate) fn on_join(&mut self, record: NodeRecord, responder: swarmkv_net::KvResponder) {
        let Some(settings) = self.core.settings().cloned() else {
            respond(
                responder,
                Answer::Malformed("this node has no cluster yet".into()),
            );
            return;
        };
        if self.core.is_leader(META_GROUP) {
            if let Ok(peer) = PeerId::from_bytes(&record.peer) {
                self.peers.insert(record.id, peer);
            }
            self.control.last_seen.insert(record.id, Instant::now());
            let known = self
                .core
                .meta_state()
                .map(|m| {
                    m.nodes
                        .get(&record.id)
                        .is_some_and(|n| n.state == NodeState::Live)
                })
                .unwrap_or(false);
            if !known && !self.core.propose_meta(MetaState::put_node(&record)) {
                respond(responder, Answer::Malformed("registration refused".into()));
                return;
            }
            respond(responder, Answer::Joined(settings));
            return;
        }
        match self.meta_leader_peer() {
            Some(peer) => {
                let net = self.net.clone();
                tokio::spawn(async move {
                    let call = KvCall::V1(Call::Join { record });
                    let answer = match net.kv_request(peer, call.encode()).await {
                        Ok(bytes) => match KvAnswer::decode(&bytes) {
                            Ok(KvAnswer::V1(a)) => a,
                            Err(e) => Answer::Malformed(e.to_string()),
                        },
                        Err(e) => Answer::Malformed(format!("meta leader unreachable: {e}")),
                    };
                    respond(responder, answer);
                });
            }
            None => respond(
                responder,
                Answer::Malformed("no meta leader known yet".into()),
            ),
        }
    }

    /// Heartbeat from a peer: remember its announcement, adopt newer targets, dial it.
    pub(crate) fn on_announce(
        &mut self,
        peer: PeerId,
        addrs: &[swarmkv_net::Multiaddr],
        a: Announce,
    ) {
        let id = node_id_of(&peer);
        self.control.last_seen.insert(id, Instant::now());
        if let Some((ep, targets)) = &a.targets {
            if *ep > self.control.targets_epoch
                && self.core.settings().is_some()
                && !self.core.is_leader(META_GROUP)
            {
                self.control.targets_epoch = *ep;
                self.core.set_targets(targets.iter().cloned().collect());
            }
        }
        if self.control.dialed.insert(peer) {
            for addr in addrs.iter().cloned() {
                let net = self.net.clone();
                tokio::spawn(async move {
                    let _ = net.dial(addr).await;
                });
            }
        }
        self.control.seen.insert(peer, a);
        self.control.seen_at.insert(peer, Instant::now());
    }

    /// The coordinator: only on the meta group's leader.
    fn coordinate(&mut self, now: Instant) {
        if !self.core.is_leader(META_GROUP) {
            return;
        }
        let Some(settings) = self.core.settings().cloned() else {
            return;
        };
        let meta = match self.core.meta_state() {
            Ok(m) => m,
            Err(e) => {
                log::warn!("cannot read the meta state: {e}");
                return;
            }
        };
        // A cluster that just formed writes down what every initial node agreed on. Each
        // record is checked every round, so a proposal lost to a leader change is redone.
        if meta.settings.is_none() {
            self.core.propose_meta(MetaState::put_settings(&settings));
        }
        let targets = self.core.targets().clone();
        for (g, t) in &targets {
            if !meta.targets.contains_key(g) {
                self.core.propose_meta(MetaState::put_target(*g, t));
            }
        }
        let initial: std::collections::BTreeSet<NodeId> =
            targets.values().flat_map(|t| t.replicas.clone()).collect();
        let unregistered: Vec<NodeId> = initial
            .into_iter()
            .filter(|id| !meta.nodes.contains_key(id))
            .collect();
        for &id in &unregistered {
            let peer = self
                .peers
                .get(&id)
                .map(|p| p.to_bytes())
                .unwrap_or_default();
            let record = NodeRecord {
                id,
                peer,
                addrs: self.addrs.get(&id).cloned().unwrap_or_default(),
                state: NodeState::Live,
            };
            self.core.propose_meta(MetaState::put_node(&record));
        }
        // Plan only on a complete registry: placement counts a node without a record as not
        // live, so planning while some initial nodes' records were still missing (lost to a
        // meta leader change, or not applied yet) moved every group onto the registered few,
        // down to one replica (sim seed 409762).
        if meta.settings.is_none() || meta.targets.len() < targets.len() || !unregistered.is_empty()
        {
            return;
        }
        // Liveness: a registered node silent for longer than the grace period is dead; one
        // that speaks again is live.
        let dead_after = self.control.config.dead_after;
        for n in meta.nodes.values() {
            let heard = if n.id == self.node {
                Some(now)
            } else {
                self.control.last_seen.get(&n.id).copied()
            };
            // A node never heard from since this coordinator took over gets the full grace
            // period, counted from now.
            let heard = heard.unwrap_or_else(|| {
                self.control.last_seen.insert(n.id, now);
                now
            });
            let silent = now.duration_since(heard) > dead_after;
            let new_state = match (n.state, silent) {
                (NodeState::Live, true) => Some(NodeState::Dead),
                (NodeState::Dead, false) => Some(NodeState::Live),
                _ => None,
            };
            if let Some(state) = new_state {
                log::info!("node {:x} is now {state:?}", n.id);
                let mut r = n.clone();
                r.state = state;
                self.core.propose_meta(MetaState::put_node(&r));
            }
            if n.state == NodeState::Decommissioning
                && !meta.targets.values().any(|t| t.replicas.contains(&n.id))
            {
                let mut r = n.clone();
                r.state = NodeState::Decommissioned;
                self.core.propose_meta(MetaState::put_node(&r));
            }
        }
        // Placement: a bounded number of groups move at a time.
        let moving = meta
            .targets
            .iter()
            .filter(|(g, t)| !self.group_matches_target(**g, t))
            .count();
        let budget = MAX_MOVES.saturating_sub(moving);
        if budget > 0 {
            let live = meta.live_nodes();
            for (g, t) in plan_targets(&meta.targets, &live, settings.replication, budget) {
                log::info!("target of group {g}: {:?} (v{})", t.replicas, t.version);
                self.core.propose_meta(MetaState::put_target(g, &t));
            }
        }
        self.control.targets_epoch = epoch(&meta.targets);
        self.core.set_targets(meta.targets);
    }

    /// Whether a group's current voters (as its leader announces them) equal its target.
    fn group_matches_target(&self, group: GroupId, target: &Target) -> bool {
        let mut want = target.replicas.clone();
        want.sort_unstable();
        if let Some(s) = self.core.group_status(group) {
            if s.leader == Some(self.node) {
                let mut v = s.voters.clone();
                v.sort_unstable();
                return v == want;
            }
        }
        // The group first: sorting a copy of every announced group's voters for each target
        // was most of an idle meta leader's CPU (1,024 targets x every led group).
        self.control.fresh().any(|(_, a)| {
            a.led
                .iter()
                .filter(|(g, _)| *g == group)
                .any(|(_, voters)| {
                    let mut v = voters.clone();
                    v.sort_unstable();
                    v == want
                })
        })
    }

    /// Publishes this node's announcement in its heartbeats.
    async fn announce(&mut self) {
        let meta_leader = self.core.is_leader(META_GROUP);
        let led = self
            .core
            .groups()
            .into_iter()
            .filter_map(|g| self.core.group_status(g))
            .filter(|s| s.leader == Some(self.node))
            .map(|s| (s.group, s.voters))
            .collect();
        let targets = meta_leader.then(|| {
            (
                epoch(self.core.targets()),
                self.core
                    .targets()
                    .iter()
                    .map(|(g, t)| (*g, t.clone()))
                    .collect(),
            )
        });
        let a = Announce {
            cluster_id: self.core.settings().map(|s| s.cluster_id),
            node: self.node,
            meta_leader,
            led,
            targets,
        };
        if let Err(e) = self.net.set_app_payload(a.encode()).await {
            log::debug!("cannot publish the announcement: {e}");
        }
    }

    /// Leader balancing: a node leading clearly more groups than its share hands one
    /// leadership per round to a voter of that group that leads fewer.
    fn balance_leaders(&mut self, now: Instant) {
        if now.duration_since(self.control.last_transfer) < Duration::from_secs(1) {
            return;
        }
        let mut led: HashMap<NodeId, usize> = HashMap::new();
        for (_, a) in self.control.fresh() {
            if !self.unreachable.contains(&a.node) {
                led.insert(a.node, a.led.len());
            }
        }
        let mine: Vec<GroupId> = self
            .core
            .groups()
            .into_iter()
            .filter(|g| self.core.is_leader(*g))
            .collect();
        led.insert(self.node, mine.len());
        let total: usize = led.values().sum();
        let nodes = led.len().max(1);
        let share = total.div_ceil(nodes);
        if mine.len() <= share {
            return;
        }
        for g in mine {
            let Some(status) = self.core.group_status(g) else {
                continue;
            };
            let target = status
                .voters
                .iter()
                .filter(|v| **v != self.node && !self.unreachable.contains(v))
                .filter_map(|v| led.get(v).map(|l| (*l, *v)))
                .filter(|(l, _)| l + 1 < mine_len(&led, self.node))
                .min();
            if let Some((_, to)) = target {
                if self.core.transfer_leader(g, to) {
                    log::info!("group {g}: handing leadership to {to:x} to balance leaders");
                    self.control.last_transfer = now;
                    return;
                }
            }
        }
    }

    /// Graceful shutdown, step by step: hand every leadership away, then stop.
    /// Returns true when the node may stop.
    pub(crate) fn drain_step(&mut self) -> bool {
        let Some(deadline) = self.draining else {
            return false;
        };
        let mut leading = 0;
        for g in self.core.groups() {
            if !self.core.is_leader(g) {
                continue;
            }
            let Some(s) = self.core.group_status(g) else {
                continue;
            };
            // A group with no other live voter has nobody to hand over to: don't wait for it.
            if let Some(to) = s
                .voters
                .iter()
                .find(|v| **v != self.node && !self.unreachable.contains(v))
            {
                leading += 1;
                self.core.transfer_leader(g, *to);
            }
        }
        leading == 0 || Instant::now() >= deadline
    }

    /// Drops local replicas of groups whose leader announces a configuration without this
    /// node, when the target does not want this node either.
    fn collect_leftovers(&mut self) {
        let me = self.node;
        let now = Instant::now();
        let groups = self.core.groups();
        // `groups` is sorted (the replicas are a BTreeMap).
        self.control
            .replica_seen
            .retain(|g, _| groups.binary_search(g).is_ok());
        let mut leftovers = Vec::new();
        for g in groups {
            let first_seen = *self.control.replica_seen.entry(g).or_insert(now);
            if self.core.is_leader(g) || now.duration_since(first_seen) < LEFTOVER_GRACE {
                continue;
            }
            let wanted = self
                .core
                .targets()
                .get(&g)
                .is_none_or(|t| t.replicas.contains(&me));
            if wanted {
                continue;
            }
            let removed = self.control.fresh().any(|(_, a)| {
                a.led
                    .iter()
                    .any(|(lg, voters)| *lg == g && !voters.contains(&me))
            });
            if removed {
                leftovers.push(g);
            }
        }
        for g in leftovers {
            if let Err(e) = self.core.drop_replica(g) {
                log::warn!("cannot drop leftover replica of group {g}: {e}");
            }
        }
    }

    /// The leader of `group` according to the peers' announcements.
    pub(crate) fn gossip_leader(&self, group: GroupId) -> Option<NodeId> {
        self.control
            .fresh()
            .map(|(_, a)| a)
            .filter(|a| !self.unreachable.contains(&a.node))
            .find(|a| a.led.iter().any(|(g, _)| *g == group))
            .map(|a| a.node)
    }

    /// An operator asks to drain `node`.
    pub(crate) fn decommission(&mut self, node: NodeId) -> Result<(), DecommissionError> {
        if !self.core.is_leader(META_GROUP) {
            return Err(DecommissionError::Unavailable("not the meta leader".into()));
        }
        let meta = self
            .core
            .meta_state()
            .map_err(|e| DecommissionError::Unavailable(e.to_string()))?;
        let known = meta.nodes.get(&node).cloned().or_else(|| {
            // An initial member whose registration is still being written.
            self.core
                .targets()
                .values()
                .any(|t| t.replicas.contains(&node))
                .then(|| NodeRecord {
                    id: node,
                    peer: self
                        .peers
                        .get(&node)
                        .map(|p| p.to_bytes())
                        .unwrap_or_default(),
                    addrs: self.addrs.get(&node).cloned().unwrap_or_default(),
                    state: NodeState::Live,
                })
        });
        let Some(mut r) = known else {
            return Err(DecommissionError::UnknownNode(node));
        };
        if matches!(r.state, NodeState::Decommissioned) {
            return Ok(());
        }
        r.state = NodeState::Decommissioning;
        if self.core.propose_meta(MetaState::put_node(&r)) {
            Ok(())
        } else {
            Err(DecommissionError::Unavailable("proposal refused".into()))
        }
    }

    /// When the static bootstrap is used, the cluster id is derived from the members.
    pub(crate) fn layout_for(
        nodes: Vec<NodeId>,
        partitions: u32,
        replication: usize,
    ) -> (ClusterLayout, u64) {
        let id = static_cluster_id(&nodes);
        (
            ClusterLayout {
                nodes,
                partitions,
                replication,
            },
            id,
        )
    }
}

fn mine_len(led: &HashMap<NodeId, usize>, me: NodeId) -> usize {
    led.get(&me).copied().unwrap_or(0)
}
