//! The node's side of a backup: freezing a group on a replica that answered a linearizable
//! barrier, and serving the frozen chunks.
//!
//! [`Call::BackupFreeze`] is answered by a replica of the group: this node's if it has one,
//! else one it passes the call to (the leader gossip names, else a member of the target), at
//! most [`crate::wire::MAX_HOPS`] times. The replica first runs a barrier (a ReadIndex read,
//! `Core::handle_barrier`), then freezes its applied state (`Store::create_snapshot`, the
//! freeze Raft snapshots use), so the frozen copy holds every write acknowledged before the
//! call. The answer names the node that froze it; the caller reads the chunks from that node
//! with [`Call::BackupChunk`]. A frozen copy lives until the group is frozen again at a later
//! index (another backup, or a Raft snapshot for a lagging follower): a chunk call then
//! answers `Unavailable` and the backup must start that group again.

use std::time::Duration;

use swarmkv_net::{NetHandle, PeerId};
use swarmkv_store::SledStore;
use tokio::sync::oneshot;

use super::{Driver, IntoAnswer, Origin, FORWARD_TIMEOUT};
use crate::core::{GroupId, NodeId};
use crate::wire::{Answer, BackupReply, Call, KvAnswer, KvCall};

/// A freeze writes the whole group to the snapshot tree; a large one takes a while.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a backup answer goes.
pub(crate) type BackupOrigin = Origin<BackupReply>;

impl IntoAnswer for BackupReply {
    fn into_answer(self) -> Answer {
        Answer::Backup(self)
    }
}

impl Driver {
    /// Freezes `group` on this node's replica after a barrier, or passes the call to a node
    /// that has a replica.
    pub(crate) fn freeze_anywhere(&mut self, group: GroupId, origin: BackupOrigin, hops: u8) {
        let Some(settings) = self.disk.core.settings() else {
            origin.deliver(BackupReply::Unavailable(
                "the node is not part of a cluster yet".into(),
            ));
            return;
        };
        if group > u64::from(settings.partitions) {
            origin.deliver(BackupReply::Unavailable(format!(
                "no group {group} (the cluster has {} partitions)",
                settings.partitions
            )));
            return;
        }
        let me = self.io.node;
        let can_forward = hops < crate::wire::MAX_HOPS;
        let usable = |n: &NodeId| *n != me && !self.io.control.is_unreachable(*n);
        let leader = self
            .gossip_leader(group)
            .filter(usable)
            .and_then(|n| self.io.peers.get(&n).copied())
            .filter(|_| can_forward);
        let net = self.io.net.clone();
        if self.disk.core.group_status(group).is_some() {
            let id = self.io.next_id;
            self.io.next_id += 1;
            let (tx, rx) = oneshot::channel();
            self.io.leases.track(id, Origin::Local(tx));
            self.disk.core.handle_barrier(id, group);
            let store = self.disk.store.clone();
            tokio::spawn(async move {
                let reply = match rx.await {
                    Ok(Ok(_)) => freeze_local(store, group, me).await,
                    // This replica could not confirm it is current (no leader known, a
                    // learner): the leader can.
                    Ok(Err(e)) => match leader {
                        Some(peer) => {
                            forward(
                                &net,
                                peer,
                                Call::BackupFreeze {
                                    group,
                                    hops: hops + 1,
                                },
                            )
                            .await
                        }
                        None => BackupReply::Unavailable(e.to_string()),
                    },
                    Err(_) => BackupReply::Unavailable("the node stopped".into()),
                };
                origin.deliver(reply);
            });
            return;
        }
        let target = leader.or_else(|| {
            self.disk
                .core
                .targets()
                .get(&group)
                .and_then(|t| t.replicas.iter().copied().find(usable))
                .and_then(|n| self.io.peers.get(&n).copied())
                .filter(|_| can_forward)
        });
        let Some(peer) = target else {
            origin.deliver(BackupReply::Unavailable(format!(
                "no reachable replica of group {group} known here"
            )));
            return;
        };
        tokio::spawn(async move {
            let reply = forward(
                &net,
                peer,
                Call::BackupFreeze {
                    group,
                    hops: hops + 1,
                },
            )
            .await;
            origin.deliver(reply);
        });
    }

    /// Reads chunk `seq` of the copy of `group` frozen at `index` on `node` (this one, or a
    /// peer asked with [`Call::BackupChunk`]).
    pub(crate) fn backup_chunk_from(
        &self,
        node: NodeId,
        group: GroupId,
        index: u64,
        seq: u32,
        origin: BackupOrigin,
    ) {
        if node == self.io.node {
            self.serve_backup_chunk(group, index, seq, origin);
            return;
        }
        let Some(peer) = self.io.peers.get(&node).copied() else {
            origin.deliver(BackupReply::Unavailable(format!(
                "node {node:x} is not connected"
            )));
            return;
        };
        let net = self.io.net.clone();
        tokio::spawn(async move {
            let call = Call::BackupChunk {
                node,
                group,
                index,
                seq,
            };
            let reply = forward(&net, peer, call).await;
            origin.deliver(reply);
        });
    }

    /// Answers with chunk `seq` of this node's copy of `group` frozen at `index`.
    fn serve_backup_chunk(&self, group: GroupId, index: u64, seq: u32, origin: BackupOrigin) {
        let store = self.disk.store.clone();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || store.snapshot_chunk(group, index, seq));
            let reply = match read.await {
                Ok(Ok(bytes)) => BackupReply::Chunk(bytes),
                Ok(Err(e)) => BackupReply::Unavailable(format!(
                    "chunk {seq} of group {group} at index {index}: {e}"
                )),
                Err(e) => BackupReply::Unavailable(format!("reading the chunk: {e}")),
            };
            origin.deliver(reply);
        });
    }
}

/// Freezes this node's replica of `group` (off the async workers: it writes the whole group).
async fn freeze_local(store: SledStore, group: GroupId, me: NodeId) -> BackupReply {
    match tokio::task::spawn_blocking(move || store.create_snapshot(group)).await {
        Ok(Ok((descriptor, _))) => BackupReply::Frozen {
            node: me,
            descriptor,
        },
        Ok(Err(e)) => BackupReply::Unavailable(format!("freezing group {group}: {e}")),
        Err(e) => BackupReply::Unavailable(format!("freezing group {group}: {e}")),
    }
}

/// Passes a backup call to `peer`.
async fn forward(net: &NetHandle, peer: PeerId, call: Call) -> BackupReply {
    let call = KvCall::V1(call);
    let answer = tokio::time::timeout(
        FREEZE_TIMEOUT + FORWARD_TIMEOUT,
        net.kv_request(peer, call.encode()),
    );
    match answer.await {
        Err(_) => BackupReply::Unavailable(format!("no answer from {peer} in time")),
        Ok(Err(e)) => BackupReply::Unavailable(format!("passing the call to {peer}: {e}")),
        Ok(Ok(bytes)) => match KvAnswer::decode(&bytes) {
            Ok(KvAnswer::V2(Answer::Backup(reply))) => reply,
            Ok(KvAnswer::V2(other)) => {
                BackupReply::Unavailable(format!("unexpected answer from {peer}: {other:?}"))
            }
            Err(e) => BackupReply::Unavailable(e.to_string()),
        },
    }
}
