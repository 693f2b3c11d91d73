//! The core's side of leases: lease requests become proposals to the meta group, applied
//! lease records update the [`LeaseTable`], and each tick the meta leader proposes the
//! revocations and checkpoints that are due. The timing rule is in [`super::lease`].

use swarmkv_store::{Backend, CasAction, KvOp, KvOutcome, KvResult};

use super::lease::{LeaseInfo, LeaseMiss, LeaseRecord, LeaseRequest, LeaseTable, LeaseWrite};
use super::{ClientError, Command, Core, CoreError, Reply, RequestId, Response};
use super::{LeaseId, META_GROUP};

/// What an applied meta write did to its key: (key, write). A conditional write whose
/// comparison failed is `Refused`; ops that write no single key give an empty key.
pub(super) fn meta_write<'a>(
    op: &'a KvOp,
    result: Option<&KvResult>,
) -> (&'a [u8], LeaseWrite<'a>) {
    match op {
        KvOp::Cas { key, action, .. } => {
            let succeeded = matches!(
                result,
                Some(Ok(KvOutcome::Cas {
                    succeeded: true,
                    ..
                }))
            );
            let write = match action {
                _ if !succeeded => LeaseWrite::Refused,
                CasAction::Put(v) => LeaseWrite::Put(v),
                CasAction::Delete => LeaseWrite::Delete,
            };
            (key.as_slice(), write)
        }
        KvOp::Put { key, value, .. } => (key.as_slice(), LeaseWrite::Put(value)),
        KvOp::Delete { key, .. } => (key.as_slice(), LeaseWrite::Delete),
        _ => (&[][..], LeaseWrite::Refused),
    }
}

/// Feeds one applied meta write and its result to the lease table (writes of other meta
/// records only move its bookkeeping of applied entries forward).
pub(super) fn note_meta_write(
    table: &mut LeaseTable,
    entry: (u64, u64),
    op: &KvOp,
    result: Option<&KvResult>,
    now: u64,
    leader_term: Option<u64>,
) {
    let (key, write) = meta_write(op, result);
    table.on_apply(entry, key, write, now, leader_term);
}

impl<B: Backend> Core<B> {
    /// Rebuilds the lease table from the meta replica's stored records (at start, and after
    /// the meta group installed a snapshot).
    pub(super) fn reload_leases(&mut self) -> Result<(), CoreError> {
        if !self.replicas.contains_key(&META_GROUP) {
            self.leases.reload(std::iter::empty(), self.now_ms);
            return Ok(());
        }
        let page = self
            .store
            .scan_prefix(META_GROUP, LeaseRecord::prefix(), 0)?;
        self.leases.reload(
            page.records
                .iter()
                .map(|(k, r)| (k.as_slice(), r.value.as_slice(), r.mod_rev)),
            self.now_ms,
        );
        Ok(())
    }

    /// True when this node leads the meta group and its lease table is current: it committed
    /// an entry of its own term and applied everything committed. A new leader may not have
    /// applied its predecessor's last writes yet; until it has, its table could call a lease
    /// just granted unknown, or one just kept alive expired.
    pub(super) fn leases_current(&self) -> bool {
        self.replicas.get(&META_GROUP).is_some_and(|r| {
            let raft = &r.node.raft;
            r.is_leader
                && raft.commit_to_current_term()
                && raft.raft_log.applied >= raft.raft_log.committed
        })
    }

    /// Meta leader only: proposes the revocations and checkpoints that are due now.
    pub(super) fn propose_due_leases(&mut self) {
        if !self.leases_current() {
            return;
        }
        let now = self.now_ms;
        for (lease, op, revoking) in self.leases.due(now) {
            if revoking {
                log::info!("lease {lease:x} expired: revoking it");
            }
            if let Some(index) = self.propose_lease_write(op) {
                self.leases.note_proposed(lease, index, revoking, now);
            }
        }
    }

    /// Proposes a lease write to the meta group (this node leads it); the log index it got.
    fn propose_lease_write(&mut self, op: KvOp) -> Option<u64> {
        let r = self.replicas.get_mut(&META_GROUP).filter(|r| r.is_leader)?;
        let data = Command::Kv { op, session: None }.encode();
        r.node.propose(Vec::new(), data).ok()?;
        self.stats.proposals += 1;
        Some(r.node.raft.raft_log.last_index())
    }

    /// Turns the answer to a lease request's proposal into the lease's state.
    pub(super) fn lease_reply(&mut self, id: RequestId, reply: Reply) -> Reply {
        let Some(lease) = self.leases.take_waiting(id) else {
            return reply;
        };
        if let Response::Write(KvOutcome::Cas {
            succeeded: false, ..
        }) = reply?
        {
            // The record changed between the check and the apply (a concurrent write of the
            // same lease, or an id taken meanwhile): nothing happened; the retry sees the
            // new state.
            return Err(ClientError::Unavailable {
                reason: format!("lease {lease:x} changed concurrently; retry"),
            });
        }
        let now = self.now_ms;
        match self.leases.info(lease, now) {
            Some(info) => Ok(Response::Lease(info)),
            // A revocation applied (or the lease expired meanwhile).
            None => Ok(Response::Lease(LeaseInfo {
                id: lease,
                ttl_ms: self.leases.record(lease).map_or(0, |r| r.ttl_ms),
                remaining_ms: 0,
            })),
        }
    }

    /// Takes a lease request. Only the meta leader serves them; the answer comes out of
    /// [`Core::poll_reply`]: at once for a time-to-live query or a refusal, after the record
    /// applied for the others.
    pub fn handle_lease(&mut self, id: RequestId, req: LeaseRequest) {
        let now = self.now_ms;
        let Some(r) = self.replicas.get(&META_GROUP) else {
            self.replies.push_back((
                id,
                Err(ClientError::Unavailable {
                    reason: "no meta replica on this node".into(),
                }),
            ));
            return;
        };
        if !r.is_leader {
            let leader = r.leader_hint();
            let err = match leader {
                Some(_) => ClientError::NotLeader { leader },
                None => ClientError::Unavailable {
                    reason: "the meta group has no leader right now".into(),
                },
            };
            self.replies.push_back((id, Err(err)));
            return;
        }
        if !self.leases_current() {
            self.replies.push_back((
                id,
                Err(ClientError::Unavailable {
                    reason: "the coordinator is catching up with the meta group's log".into(),
                }),
            ));
            return;
        }
        let not_found = |lease| Err(ClientError::LeaseNotFound(lease));
        let (lease, op, revoking) = match req {
            LeaseRequest::TimeToLive { id: lease } => {
                let reply = match self.leases.info(lease, now) {
                    Some(info) => Ok(Response::Lease(info)),
                    None => not_found(lease),
                };
                self.replies.push_back((id, reply));
                return;
            }
            LeaseRequest::Grant { ttl_ms } => {
                let min = self.config.min_lease_ttl_ms();
                if ttl_ms < min {
                    self.replies.push_back((
                        id,
                        Err(ClientError::BadRequest(format!(
                            "a lease's TTL must be at least {min} ms (four election timeouts), \
                             or it could not outlive a failover of the node that keeps leases"
                        ))),
                    ));
                    return;
                }
                // The id is the log index the grant's entry will take: an index commits at
                // most once in the meta group's history, so an id is never reused, not even
                // after the lease was forgotten and the node restarted (partitions keep
                // tombstones of revoked ids, which a reused id would run into).
                let lease: LeaseId = self
                    .replicas
                    .get(&META_GROUP)
                    .map_or(0, |r| r.node.raft.raft_log.last_index() + 1);
                (lease, LeaseTable::grant(lease, ttl_ms), false)
            }
            LeaseRequest::KeepAlive { id: lease } => match self.leases.keep_alive(lease, now) {
                Ok(op) => (lease, op, false),
                Err(LeaseMiss::NotFound) => {
                    self.replies.push_back((id, not_found(lease)));
                    return;
                }
            },
            LeaseRequest::Revoke { id: lease } => match self.leases.revoke(lease) {
                Ok(op) => (lease, op, true),
                Err(LeaseMiss::NotFound) => {
                    self.replies.push_back((id, not_found(lease)));
                    return;
                }
            },
        };
        if let Some(index) = self.propose_meta_write(id, op) {
            self.leases.wait(id, lease);
            self.leases.note_proposed(lease, index, revoking, now);
        }
    }

    /// Meta leader only: revoked leases whose keys the coordinator must still delete in every
    /// partition (then [`Core::forget_lease`]).
    pub fn revoked_leases(&self) -> Vec<LeaseId> {
        if !self.is_leader(META_GROUP) {
            return Vec::new();
        }
        self.leases.revoked()
    }

    /// Meta leader only: every partition deleted the keys of revoked lease `id`; propose to
    /// forget it. Returns false when this node cannot propose.
    pub fn forget_lease(&mut self, id: LeaseId) -> bool {
        if self.elections.has_records_of(id) {
            // Its election candidates go first (the tick deletes them): forgetting the lease
            // before would leave them without a lease to die with.
            return false;
        }
        let Some(op) = self.leases.forget(id) else {
            return false;
        };
        match self.propose_lease_write(op) {
            Some(index) => {
                self.leases.note_proposed(id, index, true, self.now_ms);
                true
            }
            None => false,
        }
    }

    /// Proposes a coordinator write (of a lease or an election record) to the meta group
    /// and tracks it as client request `id`, like a partition write: the reply comes when
    /// it applies, or a timeout. `None` when there is no meta replica or Raft refused the
    /// proposal; the refusal is then already queued as the reply.
    pub(super) fn propose_meta_write(&mut self, id: RequestId, op: KvOp) -> Option<u64> {
        let data = Command::Kv { op, session: None }.encode();
        self.propose_tracked(META_GROUP, id, data)
    }

    /// The lease as this node's meta replica sees it now (only the meta leader's view counts).
    pub fn lease_info(&self, id: LeaseId) -> Option<LeaseInfo> {
        self.leases.info(id, self.now_ms)
    }
}
