//! What the network hands the node loop: Raft batches, kv-stream calls from peers and light
//! clients, snapshot chunks, the failure detector's verdicts and heartbeats; and the node
//! loop's own internal notices.

use protobuf::Message as _;
use swarmkv_net::NetEvent;
use swarmkv_store::raft::eraftpb::Message;

use super::{backup, node_id_of, respond, watch, DecommissionError, Driver, Internal, Origin};
use crate::wire::{Announce, Answer, Call, ClusterInfo, KvCall};

impl Driver {
    pub(super) fn on_event(&mut self, ev: NetEvent) {
        // The core stamps what arrives with the time (see `Core::advance_clock`).
        self.disk.core.advance_clock(self.now_ms());
        match ev {
            NetEvent::Raft { peer, batch } => {
                let from = node_id_of(&peer);
                self.io.peers.entry(from).or_insert(peer);
                self.io.control.handle_peer_up(&mut self.disk.core, from);
                if self.io.isolated {
                    return;
                }
                for (group, bytes) in batch {
                    match Message::parse_from_bytes(&bytes) {
                        Ok(m) => self.disk.core.handle_raft(from, group, m),
                        Err(e) => log::warn!("undecodable raft message from {peer}: {e}"),
                    }
                }
            }
            NetEvent::KvRequest {
                peer,
                payload,
                responder,
            } => match KvCall::decode(&payload) {
                Ok(KvCall::V1(Call::Request { req, hops })) => {
                    self.submit(req, Origin::Remote(responder), hops)
                }
                Ok(KvCall::V1(Call::AtLeader { req })) => {
                    self.submit_at_leader(req, Origin::Remote(responder))
                }
                Ok(KvCall::V1(Call::Info)) => {
                    let info = ClusterInfo {
                        node: self.io.node,
                        partitions: self.disk.core.settings().map(|s| s.partitions),
                    };
                    respond(responder, Answer::Info(info));
                }
                Ok(KvCall::V1(Call::Join { record })) => self.on_join(record, responder),
                Ok(KvCall::V1(Call::Status)) => {
                    let report = self.report();
                    respond(responder, Answer::Status(report));
                }
                Ok(KvCall::V1(Call::ClusterView)) => {
                    respond(responder, Answer::ClusterView(self.cluster_view()));
                }
                Ok(KvCall::V1(Call::BackupFreeze { group, hops })) => {
                    self.freeze_anywhere(group, backup::BackupOrigin::Remote(responder), hops)
                }
                Ok(KvCall::V1(Call::BackupChunk {
                    node,
                    group,
                    index,
                    seq,
                })) => self.backup_chunk_from(
                    node,
                    group,
                    index,
                    seq,
                    backup::BackupOrigin::Remote(responder),
                ),
                Ok(KvCall::V1(Call::Bootstrap { layout, cluster_id })) => {
                    let answer = match self.on_bootstrap(layout, cluster_id) {
                        Ok(()) => Answer::Ok,
                        Err(e) => Answer::Malformed(e.to_string()),
                    };
                    respond(responder, answer);
                }
                Ok(KvCall::V1(Call::Lease { req, hops })) => {
                    self.lease_anywhere(req, Origin::Remote(responder), hops)
                }
                Ok(KvCall::V1(Call::Election { req, hops })) => {
                    self.election_anywhere(req, Origin::Remote(responder), hops)
                }
                Ok(KvCall::V1(Call::Watch { req, hops })) => {
                    self.watch_anywhere(req, watch::WatchOrigin::Remote(responder), hops)
                }
                Ok(KvCall::V1(Call::Decommission { node })) => {
                    self.decommission_anywhere(node, move |r| {
                        let answer = match r {
                            Ok(()) => Answer::Ok,
                            Err(DecommissionError::UnknownNode(n)) => Answer::UnknownNode(n),
                            Err(e) => Answer::Malformed(e.to_string()),
                        };
                        respond(responder, answer);
                    });
                }
                Err(e) => {
                    log::warn!("bad kv call from {peer}: {e}");
                    respond(responder, Answer::Malformed(e));
                }
            },
            NetEvent::SnapshotChunk { peer, chunk } => {
                if self.io.isolated {
                    return;
                }
                if let Err(e) = self.disk.store.receive_chunk(&chunk.data) {
                    log::warn!("snapshot chunk from {peer} refused: {e}");
                }
            }
            NetEvent::PeerUp { peer } => {
                let id = node_id_of(&peer);
                self.io.peers.insert(id, peer);
                self.note_peer(peer);
                // The failure detector's verdicts wake quiesced groups (core/quiesce.rs).
                self.io.control.handle_peer_up(&mut self.disk.core, id);
            }
            NetEvent::PeerDown { peer } => {
                self.io
                    .control
                    .handle_peer_down(&mut self.disk.core, node_id_of(&peer));
            }
            NetEvent::PeerSuspect { peer } => {
                self.io
                    .control
                    .handle_peer_suspect(&mut self.disk.core, node_id_of(&peer));
            }
            NetEvent::RaftSendFailed { peer, .. } => {
                self.disk.core.report_unreachable(node_id_of(&peer))
            }
            NetEvent::Heartbeat { info } => {
                if let Some(a) = Announce::decode(&info.app) {
                    // A heartbeat is proof of life too (the detector's PeerUp says the same
                    // once): the control plane tells the core.
                    self.on_announce(info.peer, &info.listen_addrs, a);
                }
                let id = node_id_of(&info.peer);
                let addrs: Vec<String> = info.listen_addrs.iter().map(|a| a.to_string()).collect();
                self.io.peers.insert(id, info.peer);
                let changed = self.io.addrs.get(&id) != Some(&addrs);
                if changed {
                    self.io.addrs.insert(id, addrs);
                    if let Err(e) = self.save_peers() {
                        log::warn!("cannot record peer addresses: {e}");
                    }
                }
            }
            NetEvent::ForeignPeer {
                peer,
                cluster_name,
                cluster_id,
            } => {
                if !self.io.foreign.iter().any(|(p, _, _)| *p == peer) {
                    log::warn!(
                        "refusing {peer}: it belongs to cluster {cluster_name} ({cluster_id:x?}), not ours"
                    );
                    self.io.foreign.push((peer, cluster_name, cluster_id));
                }
            }
            NetEvent::FrameRejected {
                peer,
                protocol,
                reason,
            } => log::warn!("{protocol} frame from {peer} rejected: {reason}"),
            NetEvent::Listening { addr } => log::info!("listening on {addr}"),
        }
    }

    pub(super) fn on_internal(&mut self, i: Internal) {
        self.disk.core.advance_clock(self.now_ms());
        match i {
            Internal::SnapshotDone { group, to, ok } => {
                self.disk.core.report_snapshot(group, to, ok)
            }
            Internal::Joined(settings) => self.on_joined(settings),
            Internal::LeaseDeleted { lease, confirmed } => self.on_lease_deleted(lease, confirmed),
        }
    }
}
