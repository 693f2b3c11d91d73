//! The driver's side of leases: lease requests go to the meta leader (served by its core, or
//! forwarded there), and the coordinator deletes the keys of revoked leases in every
//! partition before it lets the meta group forget them.

use std::collections::HashMap;
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
const CLEANUP_RETRY: Duration = Duration::from_secs(5);

/// Lease requests waiting on this node's core, and key deletions in progress.
#[derive(Default)]
pub(crate) struct LeaseDriver {
    /// Lease requests this node's core serves, by request id.
    pending: HashMap<RequestId, Origin>,
    /// Revoked leases whose keys are being deleted, with when that round started.
    cleaning: HashMap<LeaseId, Instant>,
}

impl LeaseDriver {
    /// The origin of a lease request's answer, if `id` is one.
    pub(crate) fn take(&mut self, id: RequestId) -> Option<Origin> {
        self.pending.remove(&id)
    }
}

impl Driver {
    /// Serves a lease request here if this node leads the meta group, else forwards it to the
    /// meta leader gossip names.
    pub(crate) fn lease_anywhere(&mut self, req: LeaseRequest, origin: Origin, hops: u8) {
        if self.core.is_leader(META_GROUP) {
            let id = self.next_id;
            self.next_id += 1;
            self.leases.pending.insert(id, origin);
            self.core.handle_lease(id, req);
            return;
        }
        let peer = self
            .control
            .meta_leader_peer()
            .filter(|p| *p != self.net.local_peer_id());
        let Some(peer) = peer.filter(|_| hops < crate::wire::MAX_HOPS) else {
            deliver(
                origin,
                Err(ClientError::Unavailable {
                    reason: "no meta leader known yet".into(),
                }),
            );
            return;
        };
        let net = self.net.clone();
        tokio::spawn(async move {
            let call = KvCall::V1(Call::Lease {
                req,
                hops: hops + 1,
            });
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
                    Ok(KvAnswer::V1(Answer::Reply(r))) => r,
                    Ok(KvAnswer::V1(other)) => Err(ClientError::Disconnected(format!(
                        "unexpected answer {other:?}"
                    ))),
                    Err(e) => Err(e),
                },
            };
            deliver(origin, reply);
        });
    }

    /// Coordinator duty, on every control tick: delete the keys of each revoked lease in
    /// every partition (idempotent `DeleteLease` writes through the partitions' leaders);
    /// when all partitions confirmed, the meta group forgets the lease.
    pub(crate) fn lease_cleanup(&mut self) {
        let revoked = self.core.revoked_leases();
        let now = Instant::now();
        self.leases.cleaning.retain(|l, started| {
            revoked.contains(l) && now.duration_since(*started) < CLEANUP_RETRY
        });
        let Some(partitions) = self.core.settings().map(|s| s.partitions) else {
            return;
        };
        for lease in revoked {
            if self.leases.cleaning.contains_key(&lease) {
                continue;
            }
            self.leases.cleaning.insert(lease, now);
            let mut answers = Vec::with_capacity(partitions as usize);
            for partition in 0..partitions {
                let (tx, rx) = oneshot::channel();
                let req = Request {
                    partition,
                    body: RequestBody::Write {
                        op: KvOp::DeleteLease { lease },
                        session: None,
                    },
                };
                self.submit(req, Origin::Local(tx), 0);
                answers.push(rx);
            }
            let done = self.internal_tx.clone();
            tokio::spawn(async move {
                let mut deleted = 0;
                let mut failed = 0;
                for a in join_all(answers).await {
                    match a {
                        Ok(Ok(Response::Write(KvOutcome::DeleteLease { deleted: n, .. }))) => {
                            deleted += n
                        }
                        _ => failed += 1,
                    }
                }
                if failed > 0 {
                    log::info!(
                        "lease {lease:x}: {failed} partitions did not confirm the deletion yet"
                    );
                    return;
                }
                log::info!("lease {lease:x}: {deleted} keys deleted in every partition");
                let _ = done.send(Internal::LeaseCleared(lease)).await;
            });
        }
    }

    /// Every partition deleted the keys of `lease`: forget it in the meta group.
    pub(crate) fn on_lease_cleared(&mut self, lease: LeaseId) {
        if self.core.forget_lease(lease) {
            // The record's deletion applies shortly; `cleaning` keeps the lease from being
            // processed again meanwhile.
            self.leases.cleaning.insert(lease, Instant::now());
        } else {
            self.leases.cleaning.remove(&lease);
        }
    }
}
