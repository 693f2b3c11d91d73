//! The driver's side of leases: lease requests go to the meta leader (served by its core, or
//! forwarded there), and the coordinator deletes the keys of revoked leases in every
//! partition before it lets the meta group forget them.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use swarmkv_store::{KvOp, KvOutcome};
use tokio::sync::oneshot;

use super::{deliver, Driver, Internal, Origin, FORWARD_TIMEOUT};
use crate::core::{
    ClientError, LeaseId, LeaseRequest, Reply, Request, RequestBody, RequestId, Response,
    META_GROUP,
};
use crate::wire::{Answer, Call, KvAnswer, KvCall};

/// A deletion round that has not reported back within this time is started again.
const CLEANUP_STALE: Duration = Duration::from_secs(10);
/// The pause before the partitions that did not confirm a deletion are asked again.
const CLEANUP_RETRY: Duration = Duration::from_millis(200);

/// The deletion of one revoked lease's keys, partition by partition.
struct Cleanup {
    /// Partitions that confirmed the deletion.
    done: BTreeSet<u32>,
    /// When the round in flight started (`None`: none in flight).
    in_flight: Option<Instant>,
    /// Not before this instant is a new round started.
    next: Instant,
}

/// Lease requests waiting on this node's core, and key deletions in progress.
#[derive(Default)]
pub(crate) struct LeaseDriver {
    /// Lease requests this node's core serves, by request id.
    pending: HashMap<RequestId, Origin>,
    /// Revoked leases whose keys are being deleted.
    cleaning: HashMap<LeaseId, Cleanup>,
}

impl LeaseDriver {
    /// The origin of a lease request's answer, if `id` is one.
    pub(crate) fn take(&mut self, id: RequestId) -> Option<Origin> {
        self.pending.remove(&id)
    }

    /// Remembers where the answer to meta request `id` (a lease or election request this
    /// node's core serves) goes.
    pub(crate) fn track(&mut self, id: RequestId, origin: Origin) {
        self.pending.insert(id, origin);
    }

    /// Every lease request waiting on this node's core (which is being discarded).
    pub(crate) fn drain_pending(&mut self) -> Vec<Origin> {
        self.pending.drain().map(|(_, o)| o).collect()
    }
}

impl Driver {
    /// Serves a lease request here if this node leads the meta group, else forwards it to the
    /// meta leader gossip names.
    pub(crate) fn lease_anywhere(&mut self, req: LeaseRequest, origin: Origin, hops: u8) {
        if self.disk.core.is_leader(META_GROUP) {
            let id = self.io.next_id;
            self.io.next_id += 1;
            self.io.leases.pending.insert(id, origin);
            self.disk.core.handle_lease(id, req);
            return;
        }
        self.forward_to_meta_leader(
            Call::Lease {
                req,
                hops: hops + 1,
            },
            origin,
            hops,
        );
    }

    /// Passes `call` (a meta request that already passed `hops` nodes) to the meta leader
    /// gossip names, and its answer back to `origin`.
    pub(crate) fn forward_to_meta_leader(&self, call: Call, origin: Origin, hops: u8) {
        let Some(peer) = self
            .meta_leader_peer()
            .filter(|_| hops < crate::wire::MAX_HOPS)
        else {
            deliver(
                origin,
                Err(ClientError::Unavailable {
                    reason: "no meta leader known yet".into(),
                }),
            );
            return;
        };
        let net = self.io.net.clone();
        tokio::spawn(async move {
            let call = KvCall::V1(call);
            let answer =
                tokio::time::timeout(FORWARD_TIMEOUT, net.kv_request(peer, call.encode())).await;
            let reply: Reply = match answer {
                Err(_) => Err(ClientError::Disconnected(format!(
                    "no answer from the meta leader {peer} in time"
                ))),
                Ok(Err(e)) => Err(ClientError::Unavailable {
                    reason: format!("forwarding to the meta leader {peer}: {e}"),
                }),
                Ok(Ok(bytes)) => match KvAnswer::decode(&bytes) {
                    Ok(KvAnswer::V2(Answer::Reply(r))) => r,
                    Ok(KvAnswer::V2(other)) => Err(ClientError::Disconnected(format!(
                        "unexpected answer {other:?}"
                    ))),
                    Err(e) => Err(e),
                },
            };
            deliver(origin, reply);
        });
    }

    /// Coordinator duty, on every control tick: delete the keys of each revoked lease in
    /// every partition (idempotent `DeleteLease` writes through the partitions' leaders,
    /// partitions that did not confirm asked again shortly); when all partitions confirmed,
    /// the meta group forgets the lease. A new coordinator starts over from the revoked
    /// records, which is safe because the deletions are idempotent.
    pub(crate) fn lease_cleanup(&mut self) {
        let revoked = self.disk.core.revoked_leases();
        let now = Instant::now();
        self.io.leases.cleaning.retain(|l, _| revoked.contains(l));
        let Some(partitions) = self.disk.core.settings().map(|s| s.partitions) else {
            return;
        };
        for lease in revoked {
            let c = self
                .io
                .leases
                .cleaning
                .entry(lease)
                .or_insert_with(|| Cleanup {
                    done: BTreeSet::new(),
                    in_flight: None,
                    next: now,
                });
            let stale = c
                .in_flight
                .is_some_and(|t| now.duration_since(t) >= CLEANUP_STALE);
            if (c.in_flight.is_some() && !stale) || now < c.next {
                continue;
            }
            if c.done.len() == partitions as usize {
                // Every partition confirmed; forgetting the record was proposed and did not
                // apply (a leader change): propose it again.
                c.in_flight = Some(now);
                self.disk.core.forget_lease(lease);
                continue;
            }
            c.in_flight = Some(now);
            let todo: Vec<u32> = (0..partitions).filter(|p| !c.done.contains(p)).collect();
            let mut answers = Vec::with_capacity(todo.len());
            for partition in todo {
                let (tx, rx) = oneshot::channel();
                let req = Request {
                    partition,
                    body: RequestBody::Write {
                        op: KvOp::DeleteLease { lease },
                        session: None,
                    },
                };
                self.submit(req, Origin::Local(tx), 0);
                answers.push(async move { (partition, rx.await) });
            }
            let done = self.io.internal_tx.clone();
            tokio::spawn(async move {
                let mut confirmed = Vec::new();
                let mut deleted = 0;
                for (partition, a) in join_all(answers).await {
                    match a {
                        Ok(Ok(Response::Write(KvOutcome::DeleteLease { deleted: n, .. }))) => {
                            deleted += n;
                            confirmed.push(partition);
                        }
                        Ok(Err(e)) => {
                            log::debug!(
                                "lease {lease:x}: partition {partition} did not delete yet: {e}"
                            )
                        }
                        other => log::debug!(
                            "lease {lease:x}: partition {partition} did not delete yet: {other:?}"
                        ),
                    }
                }
                if deleted > 0 {
                    log::info!("lease {lease:x}: {deleted} keys deleted");
                }
                let _ = done.send(Internal::LeaseDeleted { lease, confirmed }).await;
            });
        }
    }

    /// Partitions `confirmed` deleted the keys of `lease`; once all have, the meta group
    /// forgets it, else the others are asked again shortly.
    pub(crate) fn on_lease_deleted(&mut self, lease: LeaseId, confirmed: Vec<u32>) {
        let Some(partitions) = self.disk.core.settings().map(|s| s.partitions) else {
            return;
        };
        let Some(c) = self.io.leases.cleaning.get_mut(&lease) else {
            return;
        };
        c.done.extend(confirmed);
        // Once forgetting is proposed, the round stays in flight until the record's deletion
        // applies (then `revoked_leases` no longer names it) or the round goes stale.
        if c.done.len() == partitions as usize && self.disk.core.forget_lease(lease) {
            return;
        }
        c.in_flight = None;
        c.next = Instant::now() + CLEANUP_RETRY;
    }
}
