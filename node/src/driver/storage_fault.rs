//! A node whose storage fails (disk full, an I/O error) is *sidelined* until it works again.
//!
//! # Why not carry on, and why not exit
//! sled makes an I/O error sticky (every later operation fails with it), and after a failed
//! persist the core's in-memory Raft state is ahead of what is durable: acknowledging anything
//! from it could lie. Exiting would be safe but leaves the operator a dead process for a
//! problem (a full disk) that usually goes away. So the node does what a crash and restart
//! would do, without the process dying:
//!
//! 1. The requests in flight get [`ClientError::Storage`], which is ambiguous: a write may have
//!    been committed by the other replicas before this one failed to persist it, so clients
//!    resend it with its session (applied at most once) to another node.
//! 2. The core and the store are dropped. Nothing is acknowledged or sent for any group while
//!    sidelined: inbound Raft messages are dropped, so the other replicas elect leaders among
//!    themselves (the node has in effect stepped down), and every request is refused with the
//!    retryable [`ClientError::Unavailable`]. The status report carries the failure
//!    (`storage_error`), which makes `/healthz` and `/readyz` answer 503.
//! 3. Every [`RETRY`] the store is reopened and a probe record written and synced. When that
//!    works, a new core is built from what is durable, exactly as at a restart, and the node
//!    rejoins its groups; the other replicas bring it up to date.
//!
//! What was acknowledged before the failure was durable before it was acknowledged, so it
//! survives all of this; what was not acknowledged may or may not be there, which the
//! ambiguous error told the caller.

use std::time::{Duration, Instant};

use swarmkv_net::NetEvent;

use swarmkv_store::{SledBackend, SledStore};

use super::{deliver, open_store, respond, Cmd, Disk, Driver, Io};
use crate::core::{ClientError, Core, CoreError};
use crate::wire::{Answer, Call, KvCall};

/// How often a sidelined node tries its storage again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The meta record a sidelined node writes and syncs to learn that its storage works again.
const PROBE_META: &str = "storage_probe";

/// A node whose storage failed: the driver's [`Io`], without its [`super::Disk`].
struct Sidelined {
    io: Io,
    /// Why the node is sidelined (the first failure, then the latest failed retry).
    error: String,
    since: Instant,
    settings: Option<crate::core::ClusterSettings>,
}

fn refusal(error: &str) -> ClientError {
    ClientError::Unavailable {
        reason: format!(
            "this node's storage failed ({error}); it serves nothing until it recovers"
        ),
    }
}

impl Driver {
    /// Sidelines the node after storage error `e` until its storage works again; `None` if it
    /// was asked to stop meanwhile (then it has stopped).
    pub(super) async fn sideline(mut self, e: CoreError) -> Option<Driver> {
        let error = e.to_string();
        log::error!(
            "node {:x}: storage failed: {error}; refusing all requests and retrying the storage every {} ms",
            self.io.node,
            RETRY.as_millis()
        );
        for (_, p) in self.io.pending.drain() {
            deliver(p.origin, Err(ClientError::Storage(error.clone())));
        }
        for origin in self.io.leases.drain_pending() {
            deliver(origin, Err(ClientError::Storage(error.clone())));
        }
        self.io.metrics.set_storage_failed(true);
        let settings = self.disk.core.settings().cloned();
        let Driver { disk, io } = self;
        // Both the core and the store hold the failed sled database; it must be closed before
        // it can be reopened.
        drop(disk);
        let mut s = Sidelined {
            io,
            error,
            since: Instant::now(),
            settings,
        };
        // The network keeps repeating the last announcement in its heartbeats: replace it by
        // one that leads nothing, or peers would go on sending this node the requests of
        // groups it led (and it would refuse them) until the heartbeats stop.
        let silent = crate::wire::Announce {
            cluster_id: s.settings.as_ref().map(|c| c.cluster_id),
            node: s.io.node,
            meta_leader: false,
            led: Vec::new(),
            targets: None,
        };
        if let Err(e) = s.io.net.set_app_payload(silent.encode()).await {
            log::warn!("cannot withdraw this node's announcement: {e}");
        }
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.tick().await;
        loop {
            let p = &mut s.io;
            tokio::select! {
                _ = retry.tick() => {
                    if p.draining.is_some() {
                        s.stop().await;
                        return None;
                    }
                    match s.try_recover().await {
                        Ok((core, store)) => return Some(Driver {
                            disk: Disk { core, store },
                            io: s.io,
                        }),
                        Err(e) => {
                            if e != s.error {
                                log::warn!("node {:x}: storage still failing: {e}", s.io.node);
                            }
                            s.error = e;
                        }
                    }
                }
                cmd = p.cmds.recv() => match cmd {
                    Some(cmd) => s.on_cmd(cmd),
                    None => {
                        s.stop().await;
                        return None;
                    }
                },
                ev = p.events.recv() => match ev {
                    Some(ev) => s.on_event(ev),
                    None => {
                        s.stop().await;
                        return None;
                    }
                },
                // Snapshot transfers, joins and lease cleanups of the discarded core: the new
                // core starts them again from durable state where they still matter.
                Some(_) = p.internal.recv() => {}
            }
        }
    }
}

impl Sidelined {
    /// Reopens the store, proves it can write durably, and builds a new core on it.
    async fn try_recover(&self) -> Result<(Core<SledBackend>, SledStore), String> {
        let p = &self.io;
        let store = open_store(&p.config.data_dir, p.config.store.clone())
            .await
            .map_err(|e| e.to_string())?;
        let stamp = (self.since.elapsed().as_millis() as u64).to_be_bytes();
        store
            .put_meta(PROBE_META, &stamp)
            .map_err(|e| e.to_string())?;
        {
            let m = p.metrics.clone();
            store.set_sync_observer(std::sync::Arc::new(move |d| m.observe_sync(d)));
        }
        let now = p.start.elapsed().as_millis() as u64;
        let mut core = Core::new(p.node, store.clone(), p.config.core.clone(), now)
            .map_err(|e| e.to_string())?;
        // A node sidelined before it formed its cluster from a restored backup stages it
        // again (what was staged went with the old store's handle).
        super::node::seed_restore(&mut core, &store, &p.config.data_dir)
            .map_err(|e| e.to_string())?;
        log::info!(
            "node {:x}: storage works again after {:.1} s; rejoining its groups",
            p.node,
            self.since.elapsed().as_secs_f64()
        );
        p.metrics.set_storage_failed(false);
        Ok((core, store))
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let p = &mut self.io;
        match cmd {
            Cmd::Request { reply, .. } | Cmd::Lease { reply, .. } | Cmd::Election { reply, .. } => {
                let _ = reply.send(Err(refusal(&self.error)));
            }
            Cmd::Bootstrap { reply, .. } => {
                let _ = reply.send(Err(super::NodeError::StorageFailed(self.error.clone())));
            }
            Cmd::Status { reply } => {
                let _ = reply.send(super::NodeStatus {
                    node: p.node,
                    peer: p.net.local_peer_id(),
                    settings: self.settings.clone(),
                    meta_leader: false,
                    groups: Vec::new(),
                    peers: p.peers.iter().map(|(n, peer)| (*n, *peer)).collect(),
                });
            }
            Cmd::Report { reply } => {
                let _ = reply.send(self.report());
            }
            Cmd::View { reply } => {
                let _ = reply.send(super::ClusterView {
                    node: p.node,
                    nodes: Vec::new(),
                    groups: Vec::new(),
                });
            }
            Cmd::Decommission { reply, .. } => {
                let _ = reply.send(Err(super::DecommissionError::Unavailable(format!(
                    "this node's storage failed ({})",
                    self.error
                ))));
            }
            Cmd::Watch { reply, .. } => {
                let _ = reply.send(crate::wire::WatchReply::Unavailable(format!(
                    "this node's storage failed ({})",
                    self.error
                )));
            }
            Cmd::BackupFreeze { reply, .. } | Cmd::BackupChunk { reply, .. } => {
                let _ = reply.send(crate::wire::BackupReply::Unavailable(format!(
                    "this node's storage failed ({})",
                    self.error
                )));
            }
            Cmd::Isolate { isolated } => p.isolated = isolated,
            Cmd::Shutdown { reply } => {
                p.stopped.push(reply);
                if p.draining.is_none() {
                    p.draining = Some(Instant::now());
                }
            }
        }
    }

    fn on_event(&mut self, ev: NetEvent) {
        let p = &mut self.io;
        match ev {
            NetEvent::KvRequest {
                payload, responder, ..
            } => {
                let answer = match KvCall::decode(&payload) {
                    Ok(KvCall::V1(Call::Status)) => Answer::Status(self.report()),
                    Ok(KvCall::V1(Call::Info)) => Answer::Info(crate::wire::ClusterInfo {
                        node: p.node,
                        partitions: self.settings.as_ref().map(|s| s.partitions),
                    }),
                    Ok(_) => Answer::Reply(Err(refusal(&self.error))),
                    Err(e) => Answer::Malformed(e),
                };
                respond(responder, answer);
            }
            NetEvent::PeerUp { peer } => {
                p.peers.insert(super::node_id_of(&peer), peer);
            }
            NetEvent::Heartbeat { info } => {
                p.peers.insert(super::node_id_of(&info.peer), info.peer);
            }
            // Raft traffic and snapshot chunks are dropped: a sidelined node takes part in no
            // group, so the others elect and commit without it.
            _ => {}
        }
    }

    fn report(&self) -> crate::wire::StatusReport {
        let p = &self.io;
        crate::wire::StatusReport {
            node: p.node,
            peer: p.net.local_peer_id().to_string(),
            cluster_id: self.settings.as_ref().map(|s| s.cluster_id),
            partitions: self.settings.as_ref().map(|s| s.partitions),
            meta_leader: false,
            groups: Vec::new(),
            peers: p.peers.keys().copied().collect(),
            foreign: p
                .foreign
                .iter()
                .map(|(peer, name, id)| (peer.to_string(), name.clone(), *id))
                .collect(),
            storage_error: Some(self.error.clone()),
        }
    }

    /// Stops the sidelined node: nothing to sync (the store is closed), so just the network.
    async fn stop(&mut self) {
        let p = &mut self.io;
        log::info!("node {:x}: stopping while its storage is failed", p.node);
        let _ = p.net.shutdown().await;
        for s in p.stopped.drain(..) {
            let _ = s.send(());
        }
    }
}
