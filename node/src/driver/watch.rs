//! The node's side of watches: a long-poll on one partition's event history, answered by a
//! replica of the partition from its local applied state.
//!
//! A [`WatchRequest`] asks for the events of a partition with a revision above `after`, for a
//! key range. If this node has a replica of the partition, a task reads the replica's history
//! (`swarmkv_store::history`); when nothing matches yet it waits for the replica's next apply
//! (woken by the apply itself, no polling) until the request's wait runs out, and answers
//! `Events { events, through }`: every matching event with a revision in `(after, through]`,
//! where `through` is how far this replica has applied. Without a local replica, the node
//! passes the call to one (the partition's leader as gossip names it, else a member of its
//! target), at most [`crate::wire::MAX_HOPS`] times.
//!
//! # Why a lagging replica can neither skip nor repeat events for the caller
//!
//! - A revision is the Raft index of the committed entry that made the change. Every replica
//!   applies the same committed entries in the same order with the same deterministic state
//!   machine, so *the events at revision r are the same on every replica that applied r*. A
//!   replica only ever applies committed entries, so it never shows an event that could later
//!   be undone.
//! - A replica's history is written in the same atomic write as its applied index, so at any
//!   instant it holds exactly the events of the revisions in `(compacted, applied]`: an answer
//!   covering `(after, through]` with `through <= applied` and `after >= compacted` is
//!   complete for that interval, and the read holds the group's lock against applies.
//! - So an answer from any replica is a complete, exact slice `(after, through]` of the one
//!   sequence of events of the partition. The caller keeps, per partition, the revision it has
//!   delivered up to, asks for events after it, and moves it to `max(position, through)`. A
//!   replica that is behind the caller (`applied <= after`) returns no events and a `through`
//!   at or below the caller's position, which the caller ignores: it never goes backwards.
//!   Consecutive answers cover adjacent intervals, from whichever replica: nothing is skipped
//!   and nothing repeated. (A replica that lost unsynced applies in a crash re-applies the same
//!   entries and records the same events again; it is merely behind for a while.)
//! - A replica whose history no longer reaches back to `after` (retention, or a snapshot it
//!   installed) answers `Compacted` instead of a partial slice. A follower passes such a call
//!   to the leader first, whose history usually reaches further back; only if that one cannot
//!   serve it either does the caller hear `Compacted` and must re-read.
//! - A page never splits a revision's events (a range delete makes several at once), so
//!   `through` always ends on a revision boundary.

use std::time::{Duration, Instant};

use swarmkv_net::PeerId;
use swarmkv_store::{HistoryQuery, HistoryRead, SledStore};

use super::{Driver, IntoAnswer, Origin, FORWARD_TIMEOUT};
use crate::core::group_of_partition;
use crate::wire::{Answer, Call, KvAnswer, KvCall, WatchReply, WatchRequest};

/// The longest a long-poll waits for an event before answering with none.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(5);
/// A page stops at the first revision boundary past this many events...
const PAGE_EVENTS: usize = 1000;
/// ... or past this many bytes of events.
const PAGE_BYTES: usize = 1 << 20;

/// Where a watch answer goes.
pub(crate) type WatchOrigin = Origin<WatchReply>;

impl IntoAnswer for WatchReply {
    fn into_answer(self) -> Answer {
        Answer::Watch(self)
    }
}

impl Driver {
    /// Serves a watch long-poll from this node's replica of the partition, or passes it to a
    /// node that has one.
    pub(crate) fn watch_anywhere(&mut self, req: WatchRequest, origin: WatchOrigin, hops: u8) {
        let Some(settings) = self.disk.core.settings() else {
            origin.deliver(WatchReply::Unavailable(
                "the node is not part of a cluster yet".into(),
            ));
            return;
        };
        if req.partition >= settings.partitions {
            origin.deliver(WatchReply::Unavailable(format!(
                "no partition {} (the cluster has {})",
                req.partition, settings.partitions
            )));
            return;
        }
        let group = group_of_partition(req.partition);
        let can_forward = hops < crate::wire::MAX_HOPS;
        let me = self.io.node;
        let usable = |n: &crate::core::NodeId| *n != me && !self.io.control.is_unreachable(*n);
        if let Some(status) = self.disk.core.group_status(group) {
            // The leader's history usually reaches furthest back: the place to ask when this
            // replica's does not.
            let leader = status
                .leader
                .filter(usable)
                .and_then(|l| self.io.peers.get(&l).copied())
                .filter(|_| can_forward);
            let store = self.disk.store.clone();
            let net = self.io.net.clone();
            tokio::spawn(async move {
                let reply = serve_local(&store, group, &req).await;
                match (reply, leader) {
                    (WatchReply::Compacted { .. }, Some(peer)) => {
                        let reply = forward(&net, peer, req, hops + 1).await;
                        origin.deliver(reply);
                    }
                    (reply, _) => origin.deliver(reply),
                }
            });
            return;
        }
        // No replica here: the leader gossip names, else any member of the target.
        let target = self
            .gossip_leader(group)
            .filter(usable)
            .or_else(|| {
                self.disk
                    .core
                    .targets()
                    .get(&group)
                    .and_then(|t| t.replicas.iter().copied().find(usable))
            })
            .and_then(|n| self.io.peers.get(&n).copied())
            .filter(|_| can_forward);
        let Some(peer) = target else {
            origin.deliver(WatchReply::Unavailable(format!(
                "no reachable replica of partition {} known here",
                req.partition
            )));
            return;
        };
        let net = self.io.net.clone();
        tokio::spawn(async move {
            let reply = forward(&net, peer, req, hops + 1).await;
            origin.deliver(reply);
        });
    }
}

/// Answers `req` from the local replica of `group`, waiting for applies up to the request's
/// wait (capped at [`MAX_WATCH_WAIT`]).
async fn serve_local(store: &SledStore, group: u64, req: &WatchRequest) -> WatchReply {
    let wait = Duration::from_millis(u64::from(req.wait_ms)).min(MAX_WATCH_WAIT);
    let deadline = Instant::now() + wait;
    let Some(mut after) = req.after else {
        // Start now: the position to watch from is what this replica has applied.
        return match store.apply_state(group) {
            Ok(a) => WatchReply::Events {
                events: Vec::new(),
                through: a.index,
            },
            Err(e) => WatchReply::Unavailable(format!("reading the replica's state: {e}")),
        };
    };
    let mut through = 0;
    loop {
        let query = HistoryQuery {
            after,
            start: &req.start,
            end: req.end.as_deref(),
            max_events: PAGE_EVENTS,
            max_bytes: PAGE_BYTES,
        };
        match store.history(group, &query) {
            Err(e) => return WatchReply::Unavailable(format!("reading the history: {e}")),
            Ok(HistoryRead::Compacted { compacted, .. }) => {
                return WatchReply::Compacted { compacted };
            }
            Ok(HistoryRead::Page(p)) => {
                if !p.events.is_empty() {
                    return WatchReply::Events {
                        events: p.events,
                        through: p.through,
                    };
                }
                // Nothing matching up to `p.through`: the answer covers that much already.
                through = through.max(p.through);
                after = after.max(p.through);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return WatchReply::Events {
                events: Vec::new(),
                through,
            };
        }
        // Woken by the apply that passes `after` (or by an install or removal of the replica).
        let _ = tokio::time::timeout(deadline - now, store.applied_past(group, after)).await;
    }
}

/// Passes a watch call to `peer`.
async fn forward(
    net: &swarmkv_net::NetHandle,
    peer: PeerId,
    req: WatchRequest,
    hops: u8,
) -> WatchReply {
    let wait = Duration::from_millis(u64::from(req.wait_ms)).min(MAX_WATCH_WAIT);
    let call = KvCall::V1(Call::Watch { req, hops });
    let answer = tokio::time::timeout(wait + FORWARD_TIMEOUT, net.kv_request(peer, call.encode()));
    match answer.await {
        Err(_) => WatchReply::Unavailable(format!("no answer from {peer} in time")),
        Ok(Err(e)) => WatchReply::Unavailable(format!("passing the watch to {peer}: {e}")),
        Ok(Ok(bytes)) => match KvAnswer::decode(&bytes) {
            Ok(KvAnswer::V2(Answer::Watch(reply))) => reply,
            Ok(KvAnswer::V2(other)) => {
                WatchReply::Unavailable(format!("unexpected answer from {peer}: {other:?}"))
            }
            Err(e) => WatchReply::Unavailable(e.to_string()),
        },
    }
}
