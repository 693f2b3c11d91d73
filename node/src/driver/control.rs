//! The control plane's IO: the decisions are in `core::control` (sans-IO, driven by the
//! simulator too); this file feeds it the network's inputs with the node's clock and performs
//! the actions it asks for (publish the announcement, send join and bootstrap requests, dial
//! peers, fix the cluster id, record the peers).

use std::time::Duration;

use swarmkv_net::{Multiaddr, PeerId};

use super::{node_id_of, respond, DecommissionError, Driver, Internal};
use crate::core::control::{Announce, ControlAction, ControlParams, JoinVerdict, PeerInfo};
use crate::core::{ClusterLayout, ClusterSettings, GroupId, NodeId, NodeRecord, META_GROUP};
use crate::wire::{Answer, Call, KvAnswer, KvCall};

/// Formation and coordination settings of a node.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Form or join a cluster on its own (zero-config). Off: wait for an explicit bootstrap.
    pub auto_form: bool,
    /// Wait for this many nodes (this one included) and start them all as voters.
    pub expect: Option<usize>,
    /// How long a new node listens for peers, at most, before it decides to join or form
    /// (it decides earlier once the peers it hears stay the same for a second).
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
        let p = ControlParams::default();
        ControlConfig {
            auto_form: p.auto_form,
            expect: p.expect,
            discovery: Duration::from_millis(p.discovery_ms),
            partitions: p.partitions,
            replication: p.replication,
            dead_after: Duration::from_millis(p.dead_after_ms),
        }
    }
}

impl ControlConfig {
    /// The core's control parameters: these settings, with the default periods and limits.
    pub fn params(&self) -> ControlParams {
        ControlParams {
            auto_form: self.auto_form,
            expect: self.expect,
            discovery_ms: self.discovery.as_millis() as u64,
            partitions: self.partitions,
            replication: self.replication,
            dead_after_ms: self.dead_after.as_millis() as u64,
            ..ControlParams::default()
        }
    }
}

impl Driver {
    /// The peer that leads the meta group, other than this node (see
    /// [`crate::core::control::Control::meta_leader`]).
    pub(crate) fn meta_leader_peer(&self) -> Option<PeerId> {
        let now = self.now_ms();
        let leader = self.io.control.meta_leader(&self.disk.core, now)?;
        self.io.peers.get(&leader).copied()
    }

    /// Called on every tick of the node loop.
    pub(crate) async fn control_tick(&mut self) {
        let now = self.now_ms();
        if let Err(e) = self.io.control.handle_tick(&mut self.disk.core, now) {
            log::warn!("control plane: {e}");
        }
        if self.disk.core.settings().is_some() && self.disk.core.is_leader(META_GROUP) {
            self.lease_cleanup();
        }
        let up = self.io.control.fresh(now).count();
        self.io.metrics.set_peers_up(up);
        self.perform_control_actions().await;
    }

    /// Carries out what the control plane asked for.
    pub(crate) async fn perform_control_actions(&mut self) {
        while let Some(action) = self.io.control.poll_action() {
            match action {
                ControlAction::Publish(a) => {
                    if let Err(e) = self.io.net.set_app_payload(a.encode()).await {
                        log::debug!("cannot publish the announcement: {e}");
                    }
                }
                ControlAction::Join { via, record } => self.send_join(via, record),
                ControlAction::Bootstrap {
                    to,
                    layout,
                    cluster_id,
                } => self.send_bootstrap(to, layout, cluster_id),
                ControlAction::Dial { addrs, .. } => {
                    for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                        let net = self.io.net.clone();
                        tokio::spawn(async move {
                            let _ = net.dial(addr).await;
                        });
                    }
                }
                ControlAction::Formed { cluster_id } => self.formed(cluster_id),
            }
        }
    }

    fn send_join(&mut self, via: NodeId, record: NodeRecord) {
        let done = self.io.internal_tx.clone();
        let Some(peer) = self.io.peers.get(&via).copied() else {
            tokio::spawn(async move {
                let _ = done.send(Internal::Joined(None)).await;
            });
            return;
        };
        let net = self.io.net.clone();
        tokio::spawn(async move {
            let call = KvCall::V1(Call::Join { record });
            let settings = match net.kv_request(peer, call.encode()).await {
                Ok(bytes) => match KvAnswer::decode(&bytes) {
                    Ok(KvAnswer::V2(Answer::Joined(s))) => Some(s),
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
    }

    fn send_bootstrap(&mut self, to: NodeId, layout: ClusterLayout, cluster_id: u64) {
        let Some(p) = self.io.peers.get(&to).copied() else {
            log::warn!("cannot tell {to:x} to bootstrap: no peer id known");
            return;
        };
        let net = self.io.net.clone();
        let call = KvCall::V1(Call::Bootstrap { layout, cluster_id });
        tokio::spawn(async move {
            if let Err(e) = net.kv_request(p, call.encode()).await {
                log::warn!("telling {p} to bootstrap failed: {e}");
            }
        });
    }

    /// After forming or joining: the network refuses other clusters from now on.
    pub(crate) fn formed(&mut self, cluster_id: u64) {
        let net = self.io.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net.set_cluster_id(Some(cluster_id)).await {
                log::warn!("cannot set the cluster id: {e}");
            }
        });
        if let Err(e) = self.save_peers() {
            log::warn!("cannot record peers: {e}");
        }
        if let Some(path) = crate::backup::restore::pending(&self.io.config.data_dir) {
            // The groups started from it durably; the copy is no longer needed.
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("cluster {cluster_id:x} formed from the restored backup"),
                Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
            }
        }
    }

    /// The answer to this node's join request (the actions it leads to are performed on the
    /// next control tick).
    pub(crate) fn on_joined(&mut self, settings: Option<ClusterSettings>) {
        if let Err(e) = self
            .io
            .control
            .handle_join_answer(&mut self.disk.core, settings)
        {
            log::warn!("cannot join the cluster: {e}");
        }
    }

    /// A bootstrap call from the node that formed the cluster, or from an operator (the
    /// actions it leads to are performed on the next control tick).
    pub(crate) fn on_bootstrap(
        &mut self,
        layout: ClusterLayout,
        cluster_id: u64,
    ) -> Result<(), crate::core::CoreError> {
        self.io
            .control
            .handle_bootstrap(&mut self.disk.core, layout, cluster_id)
    }

    /// A peer asks to join: the meta leader registers it; others forward to the meta leader.
    pub(crate) fn on_join(&mut self, record: NodeRecord, responder: swarmkv_net::KvResponder) {
        if let Ok(peer) = PeerId::from_bytes(&record.peer) {
            self.io.peers.insert(record.id, peer);
        }
        let now = self.now_ms();
        let via = match self
            .io
            .control
            .handle_join(&mut self.disk.core, record.clone(), now)
        {
            JoinVerdict::Joined(settings) => {
                respond(responder, Answer::Joined(settings));
                return;
            }
            JoinVerdict::Refused(why) => {
                respond(responder, Answer::Malformed(why));
                return;
            }
            JoinVerdict::Forward(via) => via,
        };
        let Some(peer) = self.io.peers.get(&via).copied() else {
            respond(
                responder,
                Answer::Malformed("no meta leader known yet".into()),
            );
            return;
        };
        let net = self.io.net.clone();
        tokio::spawn(async move {
            let call = KvCall::V1(Call::Join { record });
            let answer = match net.kv_request(peer, call.encode()).await {
                Ok(bytes) => match KvAnswer::decode(&bytes) {
                    Ok(KvAnswer::V2(a)) => a,
                    Err(e) => Answer::Malformed(e.to_string()),
                },
                Err(e) => Answer::Malformed(format!("meta leader unreachable: {e}")),
            };
            respond(responder, answer);
        });
    }

    /// Heartbeat from a peer: the control plane remembers its announcement.
    pub(crate) fn on_announce(&mut self, peer: PeerId, addrs: &[Multiaddr], a: Announce) {
        let now = self.now_ms();
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        self.io
            .control
            .handle_announce(&mut self.disk.core, &peer.to_bytes(), &addrs, a, now);
    }

    /// A peer's identity learned outside gossip.
    pub(crate) fn note_peer(&mut self, peer: PeerId) {
        let id = node_id_of(&peer);
        self.io.control.handle_peer_info(
            id,
            PeerInfo {
                peer: peer.to_bytes(),
                addrs: self.io.addrs.get(&id).cloned().unwrap_or_default(),
            },
        );
    }

    /// Graceful shutdown, step by step: hand every leadership away, then stop.
    /// Returns true when the node may stop.
    pub(crate) fn drain_step(&mut self) -> bool {
        let Some(deadline) = self.io.draining else {
            return false;
        };
        self.io.control.drain_step(&mut self.disk.core) || std::time::Instant::now() >= deadline
    }

    /// The leader of `group` according to the peers' announcements.
    pub(crate) fn gossip_leader(&self, group: GroupId) -> Option<NodeId> {
        self.io.control.gossip_leader(group, self.now_ms())
    }

    /// An operator asks to drain `node`.
    pub(crate) fn decommission(&mut self, node: NodeId) -> Result<(), DecommissionError> {
        self.io.control.decommission(&mut self.disk.core, node)
    }

    /// When the static bootstrap is used, the cluster id is derived from the members.
    pub(crate) fn layout_for(
        nodes: Vec<NodeId>,
        partitions: u32,
        replication: usize,
    ) -> (ClusterLayout, u64) {
        let id = crate::core::control::static_cluster_id(&nodes);
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
