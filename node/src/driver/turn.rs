//! The driver's side of a core turn (`core/turn.rs`): Raft batches to the network, snapshot
//! streams, and answers to the callers, forwarded toward the leader where that helps.

use std::collections::HashMap;

use protobuf::Message as _;
use swarmkv_net::{NetHandle, PeerId};
use swarmkv_store::raft::eraftpb::Message;
use swarmkv_store::SledStore;

use super::{deliver, lease, Driver, Internal, Io, Pending, FORWARD_TIMEOUT, MAX_BATCH_BYTES};
use crate::core::control::Control;
use crate::core::{
    ClientError, CoreError, GroupId, NodeId, Reply, Request, RequestId, SnapshotSend,
};
use crate::metrics::{op_of, Metrics};
use crate::wire::{Answer, Call, KvAnswer, KvCall};

/// One turn's Raft batches, one per peer.
type Batches = Vec<(NodeId, Vec<(GroupId, Message)>)>;

impl Driver {
    /// One turn of the core in the order `core/turn.rs` documents: what may leave before the
    /// Readies are durable is queued for the network and answered (a leader's appends: the
    /// followers write them while this node does), then the Readies are persisted with one
    /// sync, then the rest leaves and the snapshot streams start.
    pub(super) async fn turn(&mut self) -> Result<(), CoreError> {
        let now = self.now_ms();
        // The entries this turn appends are stamped with it (a lease's deadline counts from
        // then): the last tick may be long past.
        self.disk.core.advance_clock(now);
        let mut turn = self.disk.core.begin_turn()?;
        let syncs = turn.needs_sync();
        let early: Batches = std::iter::from_fn(|| turn.poll_transmit()).collect();
        let answers: Vec<_> = std::iter::from_fn(|| turn.poll_reply()).collect();
        let sends_early = !early.is_empty() || !answers.is_empty();
        // The turn holds the core until its persist: these reach only the network and the
        // callers (through the fields they name).
        let unknown = send_raft(&self.io.net, &self.io.peers, self.io.isolated, early).await;
        self.io.routes(now).deliver(answers);
        // A turn that fsyncs after queueing messages or answers is kept off the async
        // workers' backs where the runtime allows: the network tasks send them while the disk
        // works. One with nothing to send first (a follower writing what its leader sent) or
        // nothing to sync persists in place: handing the worker to another thread would cost
        // thread switches and gain nothing.
        let persist = move || turn.persist();
        let mut done = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) if syncs && sends_early => {
                tokio::task::block_in_place(persist)
            }
            _ => persist(),
        }?;
        for to in unknown {
            done.report_unreachable(to);
        }
        let late: Batches = std::iter::from_fn(|| done.poll_transmit()).collect();
        let snapshots: Vec<_> = std::iter::from_fn(|| done.poll_snapshot()).collect();
        let answers: Vec<_> = std::iter::from_fn(|| done.poll_reply()).collect();
        for to in send_raft(&self.io.net, &self.io.peers, self.io.isolated, late).await {
            self.disk.core.report_unreachable(to);
        }
        self.start_snapshots(snapshots);
        self.io.routes(now).deliver(answers);
        Ok(())
    }

    fn start_snapshots(&mut self, snapshots: Vec<SnapshotSend>) {
        for s in snapshots {
            let Some(peer) = self.io.peers.get(&s.to).copied() else {
                self.disk.core.report_snapshot(s.group, s.to, false);
                continue;
            };
            if self.io.isolated {
                self.disk.core.report_snapshot(s.group, s.to, false);
                continue;
            }
            // Each stream reads the partition's chunks and holds the follower's link: past
            // the limit, Raft hears "not sent" and tries again later.
            let Some(slot) = self.io.limits.snapshot_slot() else {
                log::debug!(
                    "snapshot of group {} to {:x} deferred: too many in flight",
                    s.group,
                    s.to
                );
                self.disk.core.report_snapshot(s.group, s.to, false);
                continue;
            };
            let net = self.io.net.clone();
            let store = self.disk.store.clone();
            let done = self.io.internal_tx.clone();
            tokio::spawn(async move {
                let ok = send_snapshot(&net, &store, peer, &s).await;
                drop(slot);
                if let Err(e) = &ok {
                    log::info!("snapshot of group {} to {peer} failed: {e}", s.group);
                }
                let _ = done
                    .send(Internal::SnapshotDone {
                        group: s.group,
                        to: s.to,
                        ok: ok.is_ok(),
                    })
                    .await;
            });
        }
    }
}

/// Sends every peer its Raft batch (split only near the frame limit); returns the peers it
/// has no address for, which the caller must report unreachable to the core.
async fn send_raft(
    net: &NetHandle,
    peers: &HashMap<NodeId, PeerId>,
    isolated: bool,
    batches: Batches,
) -> Vec<NodeId> {
    let mut unknown = Vec::new();
    if isolated {
        return unknown;
    }
    for (to, msgs) in batches {
        let Some(peer) = peers.get(&to).copied() else {
            unknown.push(to);
            continue;
        };
        let mut batch = Vec::with_capacity(msgs.len());
        let mut size = 0;
        for (g, m) in msgs {
            let Ok(bytes) = m.write_to_bytes() else {
                continue;
            };
            size += bytes.len() + 16;
            batch.push((g, bytes));
            if size >= MAX_BATCH_BYTES {
                let full = std::mem::take(&mut batch);
                size = 0;
                if let Err(e) = net.send_raft(peer, full).await {
                    log::debug!("raft batch to {peer} not sent: {e}");
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = net.send_raft(peer, batch).await {
                log::debug!("raft batch to {peer} not sent: {e}");
            }
        }
    }
    unknown
}

/// What answering a request needs of the driver: everything but the core, which a turn
/// holds while it answers.
struct Routes<'a> {
    pending: &'a mut HashMap<RequestId, Pending>,
    leases: &'a mut lease::LeaseDriver,
    control: &'a Control,
    peers: &'a HashMap<NodeId, PeerId>,
    net: &'a NetHandle,
    metrics: &'a std::sync::Arc<Metrics>,
    node: NodeId,
    now: u64,
}

impl Io {
    /// The fields answering needs, borrowed apart from the core.
    fn routes(&mut self, now: u64) -> Routes<'_> {
        Routes {
            pending: &mut self.pending,
            leases: &mut self.leases,
            control: &self.control,
            peers: &self.peers,
            net: &self.net,
            metrics: &self.metrics,
            node: self.node,
            now,
        }
    }
}

impl Routes<'_> {
    /// Answers requests, passing `NotLeader` answers on to the leader where that can help.
    fn deliver(&mut self, answers: Vec<(RequestId, Reply)>) {
        for (id, reply) in answers {
            if let Some(origin) = self.leases.take(id) {
                deliver(origin, reply);
                continue;
            }
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            let can_forward = p.hops < crate::wire::MAX_HOPS;
            let mut reply = reply;
            if let Err(ClientError::NotLeader { leader }) = &reply {
                // Gossip may know the leader better than a hint pointing at any replica.
                let group = crate::core::group_of_partition(p.req.partition);
                if let Some(l) = self.control.gossip_leader(group, self.now) {
                    if Some(l) != *leader && l != self.node {
                        reply = Err(ClientError::NotLeader { leader: Some(l) });
                    }
                }
            }
            if let Err(ClientError::NotLeader { leader: Some(l) }) = &reply {
                if can_forward && *l != self.node && self.control.is_unreachable(*l) {
                    // The hint names a node that is gone: its followers will elect another
                    // leader shortly; the caller retries meanwhile.
                    deliver(
                        p.origin,
                        Err(ClientError::Unavailable {
                            reason: format!(
                                "the partition's last known leader {l:x} is unreachable"
                            ),
                        }),
                    );
                    continue;
                }
                if can_forward && *l != self.node {
                    if let Some(peer) = self.peers.get(l).copied() {
                        let net = self.net.clone();
                        let hops = p.hops + 1;
                        let metrics = self.metrics.clone();
                        tokio::spawn(async move {
                            let op = op_of(&p.req.body);
                            let reply = forward(&net, peer, p.req, hops).await;
                            metrics.observe_request(op, p.started.elapsed());
                            deliver(p.origin, reply);
                        });
                        continue;
                    }
                }
            }
            self.metrics
                .observe_request(op_of(&p.req.body), p.started.elapsed());
            deliver(p.origin, reply);
        }
    }
}

async fn send_snapshot(
    net: &NetHandle,
    store: &SledStore,
    peer: PeerId,
    s: &SnapshotSend,
) -> Result<(), String> {
    for seq in 0..s.chunks {
        let data = store
            .snapshot_chunk(s.group, s.index, seq)
            .map_err(|e| e.to_string())?;
        let chunk = swarmkv_net::SnapshotChunk {
            group: s.group,
            snapshot_id: s.index,
            seq: u64::from(seq),
            last: seq + 1 == s.chunks,
            data,
        };
        net.send_snapshot_chunk(peer, chunk)
            .await
            .map_err(|e| e.to_string())?;
    }
    let bytes = s.message.write_to_bytes().map_err(|e| e.to_string())?;
    net.send_raft(peer, vec![(s.group, bytes)])
        .await
        .map_err(|e| e.to_string())
}

async fn forward(net: &NetHandle, peer: PeerId, req: Request, hops: u8) -> Reply {
    let call = KvCall::V1(Call::Request { req, hops });
    let answer = tokio::time::timeout(FORWARD_TIMEOUT, net.kv_request(peer, call.encode())).await;
    let Ok(answer) = answer else {
        return Err(ClientError::Disconnected(format!(
            "no answer from {peer} in time"
        )));
    };
    match answer {
        Ok(bytes) => match KvAnswer::decode(&bytes)? {
            KvAnswer::V2(Answer::Reply(r)) => r,
            KvAnswer::V2(other) => Err(ClientError::Disconnected(format!(
                "unexpected answer {other:?}"
            ))),
        },
        // Never sent: nothing happened, the caller may retry at once.
        Err(
            e @ (swarmkv_net::NetError::Unreachable { .. }
            | swarmkv_net::NetError::NotConnected(_)
            | swarmkv_net::NetError::ForeignPeer(_)
            | swarmkv_net::NetError::QueueFull { .. }),
        ) => Err(ClientError::Unavailable {
            reason: format!("forwarding to {peer}: {e}"),
        }),
        Err(e) => Err(ClientError::Disconnected(format!(
            "forwarding to {peer}: {e}"
        ))),
    }
}
