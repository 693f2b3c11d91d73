//! What a node refuses to take on: requests beyond its admission budget, snapshot streams
//! beyond its concurrency limit, and (once its registry is closed) connections from peers
//! that are not members.
//!
//! Each limit turns exhaustion into a typed refusal the other side can act on: a client
//! hears [`ClientError::Busy`] and comes back later; Raft hears that a snapshot could not be
//! sent and retries it on its own schedule; a stranger's connection is denied by the network
//! layer (see `swarmkv_net`'s gate).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmkv_net::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::{Admission, Permit};
use super::Driver;
use crate::core::{ClientError, Request};

/// How often the allow list is recomputed from the registry while new nodes are refused.
const REGISTRY_CHECK: Duration = Duration::from_secs(1);

/// The limits of one node, built from its [`NodeLimits`].
pub(crate) struct Limits {
    admission: Admission,
    retry_after_ms: u64,
    snapshot_slots: Arc<Semaphore>,
    allow_new_nodes: bool,
    /// The allow list last given to the network layer (`None`: open).
    allowed: Option<HashSet<PeerId>>,
    next_registry_check: Instant,
}

/// The limits a node enforces; every field has a default sized for a LAN node.
#[derive(Clone, Debug)]
pub struct NodeLimits {
    /// Client requests held at once (waiting for Raft or forwarded to a leader), from every
    /// source together. Beyond it requests are refused with [`ClientError::Busy`].
    pub max_in_flight: usize,
    /// Bytes of keys and values of those requests at once.
    pub max_in_flight_bytes: usize,
    /// The delay a refused client is told to wait.
    pub busy_retry_after: Duration,
    /// Snapshots streamed to followers at once; more wait for Raft's next attempt.
    pub max_snapshot_sends: usize,
    /// Whether peers that are not in the cluster's registry may connect (and so join). With
    /// `false`, once the node is part of a cluster only registered nodes can connect: new
    /// nodes and libp2p light clients (`--peer`) are refused; use the HTTP gateway.
    pub allow_new_nodes: bool,
    /// libp2p connections at most, all peers together (nodes, light clients, strangers
    /// still proving their cluster).
    pub max_connections: u32,
}

impl Default for NodeLimits {
    fn default() -> NodeLimits {
        NodeLimits {
            max_in_flight: 4096,
            max_in_flight_bytes: 64 << 20,
            busy_retry_after: Duration::from_secs(1),
            max_snapshot_sends: 4,
            allow_new_nodes: true,
            max_connections: 512,
        }
    }
}

impl Limits {
    pub(crate) fn new(config: &NodeLimits) -> Limits {
        Limits {
            admission: Admission::new(config.max_in_flight, config.max_in_flight_bytes),
            retry_after_ms: config.busy_retry_after.as_millis() as u64,
            snapshot_slots: Arc::new(Semaphore::new(config.max_snapshot_sends.max(1))),
            allow_new_nodes: config.allow_new_nodes,
            allowed: None,
            next_registry_check: Instant::now(),
        }
    }

    /// A permit for `req`, or the `Busy` refusal to answer it with.
    pub(crate) fn admit(&self, req: &Request) -> Result<Permit, ClientError> {
        self.admission.try_admit(req).ok_or(ClientError::Busy {
            retry_after_ms: self.retry_after_ms,
        })
    }

    /// A slot to stream one snapshot in, if one is free.
    pub(crate) fn snapshot_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.snapshot_slots.clone().try_acquire_owned().ok()
    }
}

impl Driver {
    /// With new nodes refused, keeps the network's allow list equal to the cluster's members
    /// (checked every [`REGISTRY_CHECK`], pushed only when it changes).
    pub(super) async fn refresh_allowed_peers(&mut self) {
        let now = Instant::now();
        if self.io.limits.allow_new_nodes || now < self.io.limits.next_registry_check {
            return;
        }
        self.io.limits.next_registry_check = now + REGISTRY_CHECK;
        if self.disk.core.settings().is_none() {
            // Not in a cluster yet: there is no registry to close, and the node must be able
            // to find the cluster it joins.
            return;
        }
        let Ok(meta) = self.disk.core.meta_state() else {
            return;
        };
        // Members are the registry's nodes, and also every node a group names: right after
        // formation the layout's nodes replicate groups before each has been registered,
        // and refusing one of them would keep it from ever registering.
        let mut allowed: HashSet<PeerId> = meta
            .nodes
            .values()
            .filter_map(|n| PeerId::from_bytes(&n.peer).ok())
            .collect();
        let named = meta
            .targets
            .values()
            .flat_map(|t| t.replicas.iter().copied())
            .chain(
                self.disk
                    .core
                    .groups()
                    .into_iter()
                    .filter_map(|g| self.disk.core.group_status(g))
                    .flat_map(|g| g.voters),
            );
        for node in named {
            if let Some(peer) = self.io.peers.get(&node) {
                allowed.insert(*peer);
            }
        }
        if allowed.is_empty() || self.io.limits.allowed.as_ref() == Some(&allowed) {
            return;
        }
        match self.io.net.set_allowed_peers(Some(allowed.clone())).await {
            Ok(()) => {
                if self.io.limits.allowed.is_none() {
                    log::info!(
                        "registry closed: only its {} nodes may connect (--allow-new-nodes false)",
                        allowed.len()
                    );
                }
                self.io.limits.allowed = Some(allowed);
            }
            Err(e) => log::warn!("cannot close the network to unregistered peers: {e}"),
        }
    }
}
