//! Client requests: refused, served at once (serializable reads), or proposed and waited
//! for (writes and linearizable reads), and how the answers are queued.

use swarmkv_store::{Backend, Store, StoreError};

use super::replica::Proposal;
use super::{
    group_of_partition, quiesce, routing, ClientError, Command, Consistency, Core, GroupId,
    InFlight, Reply, Request, RequestBody, RequestId, Response,
};

impl<B: Backend> Core<B> {
    /// Takes a client request. The answer comes out of [`Core::poll_reply`], at once for
    /// refusals and serializable reads, after apply for writes and linearizable reads.
    pub fn handle_request(&mut self, id: RequestId, req: Request) {
        let Some(settings) = &self.settings else {
            self.replies.push_back((
                id,
                Err(ClientError::Unavailable {
                    reason: "this node is not part of a cluster yet".into(),
                }),
            ));
            return;
        };
        if req.partition >= settings.partitions {
            self.replies.push_back((
                id,
                Err(ClientError::BadRequest(format!(
                    "partition {} of {}",
                    req.partition, settings.partitions
                ))),
            ));
            return;
        }
        if let Some(key) = routing::misrouted_key(&req.body, req.partition, settings.partitions) {
            let reason = format!(
                "the key {:?} belongs to partition {}, not {}",
                String::from_utf8_lossy(key),
                routing::partition_of(key, settings.partitions),
                req.partition
            );
            self.replies
                .push_back((id, Err(ClientError::BadRequest(reason))));
            return;
        }
        let group = group_of_partition(req.partition);
        let Some(r) = self.replicas.get_mut(&group) else {
            // Not a replica here: point at one that is.
            let hint = self
                .targets
                .get(&group)
                .and_then(|t| t.replicas.iter().find(|n| **n != self.id).copied());
            let err = match hint {
                Some(_) => ClientError::NotLeader { leader: hint },
                None => ClientError::Unavailable {
                    reason: format!("no replica of partition {} is known", req.partition),
                },
            };
            self.replies.push_back((id, Err(err)));
            return;
        };
        let serializable = matches!(
            req.body,
            RequestBody::Get {
                consistency: Consistency::Serializable,
                ..
            } | RequestBody::Scan {
                consistency: Consistency::Serializable,
                ..
            }
        );
        if serializable {
            let reply = serve_read(&self.store, group, &req.body);
            self.replies.push_back((id, reply));
            return;
        }
        // Any request wakes the replica: a leader serves it, and a follower that cannot (the
        // caller is sent to the leader) gets to notice a leader that stopped answering.
        quiesce::wake(&mut self.quiesce, group, r, false);
        let me = self.id;
        if r.follows(me).is_some() {
            // A voter following a known leader serves the request itself, through Raft.
            self.handle_follower_request(id, group, req.body);
            return;
        }
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        if !r.is_leader {
            // No leader known here (an election, or this replica is a leftover the group has
            // moved on from): point at another replica the target names.
            let leader = r.leader_hint().or_else(|| {
                self.targets
                    .get(&group)
                    .and_then(|t| t.replicas.iter().find(|n| **n != self.id).copied())
            });
            let err = match leader {
                Some(_) => ClientError::NotLeader { leader },
                None => ClientError::Unavailable {
                    reason: format!("partition {} has no leader right now", req.partition),
                },
            };
            self.replies.push_back((id, Err(err)));
            return;
        }
        match req.body {
            RequestBody::Write { op, session } => {
                if let Err(e) = op.validate(&self.store.config().limits) {
                    self.replies.push_back((id, Err(ClientError::Rejected(e))));
                    return;
                }
                let data = Command::Kv { op, session }.encode();
                self.propose_tracked(group, id, data);
            }
            body => self.queue_read(group, id, body),
        }
    }

    /// Takes a request its sender addressed to this node as the partition's leader (a client
    /// that routes by a table of leaders). A leader takes it as [`Core::handle_request`] does;
    /// any other replica answers `NotLeader` with the leader it knows at once and does
    /// nothing, so the sender corrects its table instead of every later request taking the
    /// follower's detour through Raft. Requests this node would refuse anyway (not in a
    /// cluster, a bad partition, no replica here) go through [`Core::handle_request`]'s
    /// checks.
    pub fn handle_request_at_leader(&mut self, id: RequestId, req: Request) {
        let group = group_of_partition(req.partition);
        let me = self.id;
        let hint = match self.replicas.get(&group) {
            Some(r) if !r.is_leader => r.follows(me).or_else(|| r.leader_hint()),
            _ => return self.handle_request(id, req),
        };
        let hint = hint.filter(|l| *l != me).or_else(|| {
            self.targets
                .get(&group)
                .and_then(|t| t.replicas.iter().find(|n| **n != me).copied())
        });
        let err = match hint {
            Some(_) => ClientError::NotLeader { leader: hint },
            None => ClientError::Unavailable {
                reason: format!("partition {} has no leader right now", req.partition),
            },
        };
        self.replies.push_back((id, Err(err)));
    }

    /// Proposes `data` to `group`, which this node leads, and tracks it as client request
    /// `id`: the reply comes when the entry applies, or a timeout. Returns the entry's index;
    /// `None` when there is no replica or Raft refused the proposal (the refusal is then
    /// already queued as the reply).
    pub(super) fn propose_tracked(
        &mut self,
        group: GroupId,
        id: RequestId,
        data: Vec<u8>,
    ) -> Option<u64> {
        let deadline_ms = self.now_ms + self.config.request_timeout_ms;
        let r = self.replicas.get_mut(&group)?;
        match r.node.propose(Vec::new(), data) {
            Ok(()) => {
                let index = r.node.raft.raft_log.last_index();
                let term = r.node.raft.term;
                r.proposals.insert(index, Proposal { term, request: id });
                self.stats.proposals += 1;
                self.in_flight.insert(id, InFlight { deadline_ms });
                Some(index)
            }
            Err(e) => {
                self.replies.push_back((
                    id,
                    Err(ClientError::Unavailable {
                        reason: format!("proposal refused: {e}"),
                    }),
                ));
                None
            }
        }
    }

    pub(super) fn reply(&mut self, id: RequestId, reply: Reply) {
        let reply = self.lease_reply(id, reply);
        let reply = self.election_reply(id, reply);
        if self.in_flight.remove(&id).is_some() {
            self.replies.push_back((id, reply));
        }
    }
}

pub(super) fn serve_read<B: Backend>(
    store: &Store<B>,
    group: GroupId,
    body: &RequestBody,
) -> Reply {
    let storage_err = |e: StoreError| ClientError::Storage(e.to_string());
    match body {
        RequestBody::Get { key, .. } => store
            .get(group, key)
            .map(Response::Get)
            .map_err(storage_err),
        RequestBody::Scan {
            start, end, limit, ..
        } => {
            // The core applies and serves reads on one thread: nothing applies between
            // reading the applied index and the records, so they are one point of the log.
            let revision = store.apply_state(group).map_err(storage_err)?.index;
            store
                .scan(group, start, end.as_deref(), *limit)
                .map(|p| Response::Scan {
                    records: p.records,
                    more: p.more,
                    revision,
                })
                .map_err(storage_err)
        }
        RequestBody::Write { .. } => Err(ClientError::BadRequest("a write is not a read".into())),
    }
}
