//! The node handle's commands (`node.rs` sends them): requests from this process, status,
//! bootstrap, isolation for tests, decommission, shutdown.

use std::time::Instant;

use swarmkv_net::PeerId;

use super::{backup, watch, Cmd, DecommissionError, Driver, NodeError, NodeStatus, Origin};
use super::{node_id_of, SHUTDOWN_GRACE};
use crate::core::NodeId;
use crate::wire::{Answer, Call, KvAnswer, KvCall};

impl Driver {
    pub(super) fn on_cmd(&mut self, cmd: Cmd) {
        // The core stamps what arrives with the time (see `Core::advance_clock`).
        self.disk.core.advance_clock(self.now_ms());
        match cmd {
            Cmd::Request { req, reply } => self.submit(req, Origin::Local(reply), 0),
            Cmd::Bootstrap {
                peers,
                partitions,
                replication,
                reply,
            } => {
                let r = self.bootstrap(peers, partitions, replication);
                let _ = reply.send(r);
            }
            Cmd::Status { reply } => {
                let groups = self
                    .disk
                    .core
                    .groups()
                    .into_iter()
                    .filter_map(|g| self.disk.core.group_status(g))
                    .collect();
                let _ = reply.send(NodeStatus {
                    node: self.io.node,
                    peer: self.io.net.local_peer_id(),
                    settings: self.disk.core.settings().cloned(),
                    meta_leader: self.disk.core.is_leader(crate::core::META_GROUP),
                    groups,
                    peers: self.io.peers.iter().map(|(n, p)| (*n, *p)).collect(),
                });
            }
            Cmd::Isolate { isolated } => {
                self.io.isolated = isolated;
                // Cut off, this node hears no one: as if every peer failed (which wakes its
                // quiesced groups), until the cut heals.
                let peers: Vec<NodeId> = self.io.peers.keys().copied().collect();
                for id in peers {
                    let live = !isolated && !self.io.control.is_unreachable(id);
                    self.disk.core.set_node_live(id, live);
                }
            }
            Cmd::Decommission { node, reply } => {
                self.decommission_anywhere(node, move |r| {
                    let _ = reply.send(r);
                });
            }
            Cmd::Lease { req, reply } => self.lease_anywhere(req, Origin::Local(reply), 0),
            Cmd::Election { req, reply } => self.election_anywhere(req, Origin::Local(reply), 0),
            Cmd::Watch { req, reply } => {
                self.watch_anywhere(req, watch::WatchOrigin::Local(reply), 0)
            }
            Cmd::Report { reply } => {
                let _ = reply.send(self.report());
            }
            Cmd::View { reply } => {
                let _ = reply.send(self.cluster_view());
            }
            Cmd::BackupFreeze { group, reply } => {
                self.freeze_anywhere(group, backup::BackupOrigin::Local(reply), 0)
            }
            Cmd::BackupChunk {
                node,
                group,
                index,
                seq,
                reply,
            } => {
                self.backup_chunk_from(node, group, index, seq, backup::BackupOrigin::Local(reply))
            }
            Cmd::Shutdown { reply } => {
                if self.io.draining.is_none() {
                    log::info!("shutting down: handing leaderships away");
                    self.io.draining = Some(Instant::now() + SHUTDOWN_GRACE);
                    self.io.control.start_draining();
                }
                self.io.stopped.push(reply);
            }
        }
    }

    /// Decommissions `node` here if this node is the meta leader, else through it.
    pub(super) fn decommission_anywhere(
        &mut self,
        node: NodeId,
        done: impl FnOnce(Result<(), DecommissionError>) + Send + 'static,
    ) {
        if self.disk.core.is_leader(crate::core::META_GROUP) {
            done(self.decommission(node));
            return;
        }
        let Some(peer) = self.meta_leader_peer() else {
            done(Err(DecommissionError::Unavailable(
                "no meta leader known yet".into(),
            )));
            return;
        };
        let net = self.io.net.clone();
        tokio::spawn(async move {
            let call = KvCall::V1(Call::Decommission { node });
            let r = match net.kv_request(peer, call.encode()).await {
                Ok(b) => match KvAnswer::decode(&b) {
                    Ok(KvAnswer::V2(Answer::Ok)) => Ok(()),
                    Ok(KvAnswer::V2(Answer::UnknownNode(n))) => {
                        Err(DecommissionError::UnknownNode(n))
                    }
                    Ok(KvAnswer::V2(other)) => {
                        Err(DecommissionError::Unavailable(format!("{other:?}")))
                    }
                    Err(e) => Err(DecommissionError::Unavailable(e.to_string())),
                },
                Err(e) => Err(DecommissionError::Unavailable(e.to_string())),
            };
            done(r);
        });
    }

    pub(super) fn bootstrap(
        &mut self,
        peers: Vec<PeerId>,
        partitions: u32,
        replication: usize,
    ) -> Result<(), NodeError> {
        let mut nodes = Vec::new();
        for p in peers {
            let id = node_id_of(&p);
            self.io.peers.insert(id, p);
            self.note_peer(p);
            nodes.push(id);
        }
        nodes.sort_unstable();
        nodes.dedup();
        let (layout, cluster_id) = Driver::layout_for(nodes, partitions, replication);
        self.on_bootstrap(layout, cluster_id)?;
        Ok(())
    }
}
