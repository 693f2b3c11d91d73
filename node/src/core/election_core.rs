//! The core's side of elections: election requests become meta-group proposals or
//! linearizable reads at the meta leader, applied candidate records update the
//! [`ElectionTable`], observers wait for a change of leader, and each tick the meta leader
//! deletes the candidates of dead leases. The rules are in [`super::election`].

use swarmkv_store::{Backend, KvOp, KvOutcome, KvResult};

use super::election::{
    candidate_of, name_prefix, name_prefix_end, validate_name, ElectionRequest, ElectionTable,
    Waiting, MAX_ELECTION_VALUE, MAX_OBSERVE_WAIT_MS,
};
use super::{ClientError, Consistency, Core, Reply, RequestBody, RequestId, Response, META_GROUP};

/// Feeds one applied meta write at `index` and its result to the election table (writes of
/// other records are ignored).
pub(super) fn note_meta_write(
    table: &mut ElectionTable,
    index: u64,
    op: &KvOp,
    result: Option<&KvResult>,
) {
    let (key, write) = super::lease_core::meta_write(op, result);
    table.on_apply(index, key, write);
}

impl<B: Backend> Core<B> {
    /// Rebuilds the election table from the meta replica's stored records (at start, and
    /// after the meta group installed a snapshot).
    pub(super) fn reload_elections(&mut self) -> Result<(), super::CoreError> {
        if !self.replicas.contains_key(&META_GROUP) {
            self.elections.reload(std::iter::empty());
            return Ok(());
        }
        let page = self
            .store
            .scan_prefix(META_GROUP, ElectionTable::prefix(), 0)?;
        self.elections.reload(
            page.records
                .iter()
                .map(|(k, r)| (k.as_slice(), r.value.as_slice(), r.mod_rev)),
        );
        Ok(())
    }

    /// Meta leader only, each tick: proposes the deletion of every candidate whose lease is
    /// dead, and answers the observers whose wait is over.
    pub(super) fn propose_due_elections(&mut self) {
        if !self.leases_current() {
            return;
        }
        let now = self.now_ms;
        // A candidate dies with its lease's revocation (proposed when its deadline passes),
        // never earlier: see the module doc of `election` for why that matters.
        let leases = &self.leases;
        let dead = self
            .elections
            .dead_records(|l| leases.record(l).is_some_and(|r| !r.revoked), now);
        for (name, token, op) in dead {
            log::info!("election {name}: candidate {token:x} lost its lease; deleting it");
            self.propose_meta(op);
        }
        self.wake_observers();
    }

    /// Meta leader only: starts the read of every parked observer whose leader changed or
    /// whose wait is over.
    pub(super) fn wake_observers(&mut self) {
        if !self.is_leader(META_GROUP) {
            return;
        }
        for (id, name) in self.elections.ready_observers(self.now_ms) {
            self.read_leader(id, name);
        }
    }

    /// A linearizable read of the leader of `name` for request `id`: a ReadIndex on the meta
    /// group, then a scan of its lowest candidate record.
    fn read_leader(&mut self, id: RequestId, name: String) {
        if !self.is_leader(META_GROUP) {
            let leader = self.replicas.get(&META_GROUP).and_then(|r| r.leader_hint());
            self.replies
                .push_back((id, Err(ClientError::NotLeader { leader })));
            return;
        }
        let body = RequestBody::Scan {
            start: name_prefix(&name),
            end: Some(name_prefix_end(&name)),
            limit: 1,
            consistency: Consistency::Linearizable,
        };
        self.queue_read(META_GROUP, id, body);
        self.elections.wait(id, Waiting::Leader);
    }

    /// Turns the answer to an election request's proposal or read into its election answer.
    pub(super) fn election_reply(&mut self, id: RequestId, reply: Reply) -> Reply {
        let Some(what) = self.elections.take_waiting(id) else {
            return reply;
        };
        let resp = reply?;
        if let Response::Write(KvOutcome::Cas {
            succeeded: false, ..
        }) = resp
        {
            // The record changed between the check and the apply: nothing happened; the
            // retry sees the new state.
            return Err(ClientError::Unavailable {
                reason: "the candidate record changed concurrently; retry".into(),
            });
        }
        match (what, resp) {
            (Waiting::Campaign { name, token, .. }, _) | (Waiting::Proclaim { name, token }, _) => {
                match self.elections.get(&name, token) {
                    Some(c) => Ok(Response::Election(Some(c))),
                    // Deleted in the same turn (its lease ended): the caller must not lead.
                    None => Err(ClientError::NotLeading { name, token }),
                }
            }
            (Waiting::Resign, _) => Ok(Response::Election(None)),
            (Waiting::Leader, Response::Scan { records, .. }) => Ok(Response::Election(
                records.first().and_then(|(k, r)| candidate_of(k, r)),
            )),
            (Waiting::Leader, other) => Err(ClientError::Disconnected(format!(
                "unexpected answer to an election read: {other:?}"
            ))),
        }
    }

    /// Takes an election request. Only the meta leader serves them; the answer comes out of
    /// [`Core::poll_reply`]: at once for refusals, after the record applied for campaigns,
    /// proclaims and resignations, after a ReadIndex for leader queries, and when the leader
    /// changes (or the wait ends) for observers.
    pub fn handle_election(&mut self, id: RequestId, req: ElectionRequest) {
        if let Err(e) = self.meta_leader_ready() {
            self.replies.push_back((id, Err(e)));
            return;
        }
        let name = match &req {
            ElectionRequest::Campaign { name, .. }
            | ElectionRequest::Proclaim { name, .. }
            | ElectionRequest::Resign { name, .. }
            | ElectionRequest::Leader { name }
            | ElectionRequest::Observe { name, .. } => name.clone(),
        };
        if let Err(why) = validate_name(&name) {
            self.replies
                .push_back((id, Err(ClientError::BadRequest(why))));
            return;
        }
        let now = self.now_ms;
        let (op, what) = match req {
            ElectionRequest::Leader { name } => {
                self.read_leader(id, name);
                return;
            }
            ElectionRequest::Observe {
                name,
                known,
                wait_ms,
            } => {
                if self.elections.changed(&name, known) || wait_ms == 0 {
                    self.read_leader(id, name);
                } else {
                    let wait = wait_ms.min(MAX_OBSERVE_WAIT_MS);
                    self.elections.park(id, name, known, now + wait);
                }
                return;
            }
            ElectionRequest::Campaign { name, value, lease } => {
                if value.len() > MAX_ELECTION_VALUE {
                    self.replies.push_back((
                        id,
                        Err(ClientError::BadRequest(format!(
                            "a candidate's value has at most {MAX_ELECTION_VALUE} bytes"
                        ))),
                    ));
                    return;
                }
                if self.leases.info(lease, now).is_none() {
                    self.replies
                        .push_back((id, Err(ClientError::LeaseNotFound(lease))));
                    return;
                }
                if let Some(c) = self.elections.of_lease(&name, lease) {
                    // A resend (or a second campaign on the same lease): one candidacy.
                    self.replies
                        .push_back((id, Ok(Response::Election(Some(c)))));
                    return;
                }
                if self.elections.campaign_in_flight(&name, lease) {
                    self.replies.push_back((
                        id,
                        Err(ClientError::Unavailable {
                            reason: "a campaign of this lease is in flight; retry".into(),
                        }),
                    ));
                    return;
                }
                // The token is the log index the record's entry will take.
                let token = self
                    .replicas
                    .get(&META_GROUP)
                    .map_or(0, |r| r.node.raft.raft_log.last_index() + 1);
                let op = ElectionTable::campaign_write(&name, token, lease, value);
                (op, Waiting::Campaign { name, lease, token })
            }
            ElectionRequest::Proclaim {
                name,
                token,
                lease,
                value,
            } => {
                if value.len() > MAX_ELECTION_VALUE {
                    self.replies.push_back((
                        id,
                        Err(ClientError::BadRequest(format!(
                            "a candidate's value has at most {MAX_ELECTION_VALUE} bytes"
                        ))),
                    ));
                    return;
                }
                let leads = self
                    .elections
                    .leader(&name)
                    .filter(|c| c.token == token && c.lease == lease);
                let Some(c) = leads.filter(|_| self.leases.info(lease, now).is_some()) else {
                    self.replies
                        .push_back((id, Err(ClientError::NotLeading { name, token })));
                    return;
                };
                let op = ElectionTable::proclaim_write(&c, value);
                (op, Waiting::Proclaim { name, token })
            }
            ElectionRequest::Resign { name, token, lease } => {
                let Some(c) = self
                    .elections
                    .get(&name, token)
                    .filter(|c| c.lease == lease)
                else {
                    // Already gone: resigning again is a success.
                    self.replies.push_back((id, Ok(Response::Election(None))));
                    return;
                };
                (ElectionTable::resign_write(&c), Waiting::Resign)
            }
        };
        if self.propose_meta_write(id, op).is_some() {
            self.elections.wait(id, what);
        }
    }

    /// Ok when this node leads the meta group and its tables are current (see
    /// `leases_current`); else the refusal to answer.
    fn meta_leader_ready(&self) -> Result<(), ClientError> {
        let Some(r) = self.replicas.get(&META_GROUP) else {
            return Err(ClientError::Unavailable {
                reason: "no meta replica on this node".into(),
            });
        };
        if !r.is_leader {
            return Err(match r.leader_hint() {
                Some(l) => ClientError::NotLeader { leader: Some(l) },
                None => ClientError::Unavailable {
                    reason: "the meta group has no leader right now".into(),
                },
            });
        }
        if !self.leases_current() {
            return Err(ClientError::Unavailable {
                reason: "the coordinator is catching up with the meta group's log".into(),
            });
        }
        Ok(())
    }
}
