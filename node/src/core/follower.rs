//! Linearizable reads in batches, and a follower's own reads and writes through Raft.
//!
//! - Batched ReadIndex: the reads a replica receives between two turns wait in
//!   `Replica::reads_next`; the next turn makes ONE `read_index` call for all of them, with a
//!   context naming this node, its boot and a per-replica sequence number. The leader confirms
//!   its leadership with one heartbeat round for the whole batch instead of one per read, and
//!   every read of the batch becomes ready at the index that round returns. A read that
//!   arrives after the call waits for the next one: the round may have started before it did,
//!   and its index might then miss a write acknowledged before the read began.
//! - Reads on a follower: a voter that follows a known leader makes the same call; raft-rs
//!   forwards it to the leader (`MsgReadIndex`) and hands back the leader's commit index as
//!   confirmed by its heartbeat round. The follower serves the reads from its own state
//!   machine once it has applied that index, so the request body never crosses the network.
//! - Writes on a follower: the follower proposes, and raft-rs forwards the proposal to the
//!   leader inside the ordinary batched Raft messages. The entry carries its [`Origin`] in
//!   its context; when the follower applies an entry of its own origin whose request is still
//!   waiting, it answers it with the apply's result. raft-rs sends a forwarded proposal
//!   without a term; this node stamps it with the follower's term, and a leader takes it only
//!   in that very term and only once per origin (`Core::admit_forwarded_proposal`): a
//!   duplicated or long-delayed `MsgPropose` must not append the same write twice.
//! - What never answers: a leader drops a forwarded proposal or read it cannot take (it lost
//!   leadership, is transferring it, has not yet committed in its term) without a word, and
//!   the transport may lose either. So any change of the follower's term or leader fails what
//!   it has pending (writes `LeaderChanged`: ambiguous, a session makes the resend safe; reads
//!   `NotLeader`: nothing happened); a read batch that heard nothing for an election timeout
//!   asks again with the same context (a later index is as good: the reads are still
//!   waiting); and the request deadline still applies to everything.

use std::collections::BTreeSet;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use swarmkv_store::Backend;

use super::replica::{ReadBatch, Replica};
use super::{
    ClientError, Command, Core, GroupId, InFlight, NodeId, Origin, RequestBody, RequestId,
};

/// How many forwarded proposals' origins a leader remembers per group and term (a duplicate
/// arrives within moments of the original; older ones are forgotten first).
const SEEN_ORIGINS: usize = 16_384;

/// Length of a ReadIndex context: node id, boot count, batch sequence number.
const READ_CTX_LEN: usize = 24;

/// The ReadIndex context of batch `seq` of this node (`node`, `boot`). A leader keeps one
/// pending read per context and every follower's contexts reach it, so the node id makes them
/// unique across nodes and the boot count across restarts (an answer to a batch of the
/// previous start must not complete a new batch that reuses its number).
pub(super) fn read_ctx(node: NodeId, boot: u64, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(READ_CTX_LEN);
    ctx.extend_from_slice(&node.to_be_bytes());
    ctx.extend_from_slice(&boot.to_be_bytes());
    ctx.extend_from_slice(&seq.to_be_bytes());
    ctx
}

/// The batch sequence number of a ReadIndex context this node (`node`, `boot`) made; `None`
/// for any other context.
pub(super) fn read_seq_of(ctx: &[u8], node: NodeId, boot: u64) -> Option<u64> {
    if ctx.len() != READ_CTX_LEN {
        return None;
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&ctx[8 * i..8 * i + 8]);
        u64::from_be_bytes(w)
    };
    (word(0) == node && word(1) == boot).then(|| word(2))
}

/// What a follower replica has pending that a change of term or leader fails.
struct FollowerOps {
    writes: Vec<RequestId>,
    reads: Vec<RequestId>,
    hint: Option<NodeId>,
}

/// Takes `r`'s pending follower writes and sent read batches (reads that already have their
/// index stay: that index was confirmed by a leader and stays valid).
fn take_follower_ops<B: Backend>(r: &mut Replica<B>) -> FollowerOps {
    FollowerOps {
        writes: std::mem::take(&mut r.follower_writes).into_iter().collect(),
        reads: std::mem::take(&mut r.reads_pending)
            .into_values()
            .flat_map(|b| b.reads)
            .map(|(id, _)| id)
            .collect(),
        hint: r.leader_hint(),
    }
}

impl<B: Backend> Core<B> {
    /// Queues a linearizable read of `group` for the next ReadIndex call (see the module
    /// documentation).
    pub(super) fn queue_read(&mut self, group: GroupId, id: RequestId, body: RequestBody) {
        let Some(r) = self.replicas.get_mut(&group) else {
            self.replies.push_back((
                id,
                Err(ClientError::Unavailable {
                    reason: format!("no replica of group {group} here"),
                }),
            ));
            return;
        };
        r.reads_next.push((id, body));
        self.reads_to_issue.insert(group);
        let deadline_ms = self.now_ms + self.config.request_timeout_ms;
        self.in_flight.insert(id, InFlight { deadline_ms });
    }

    /// A request to a voter that follows a known leader (checked by the caller): a write is
    /// proposed with this node as its origin, a linearizable read queued for the next
    /// ReadIndex call.
    pub(super) fn handle_follower_request(
        &mut self,
        id: RequestId,
        group: GroupId,
        body: RequestBody,
    ) {
        self.settle_follower_epoch(group);
        let (me, boot) = (self.id, self.boot);
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        match body {
            RequestBody::Write { op, session } => {
                if let Err(e) = op.validate(&self.store.config().limits) {
                    self.replies.push_back((id, Err(ClientError::Rejected(e))));
                    return;
                }
                let origin = Origin {
                    node: me,
                    boot,
                    request: id,
                };
                let data = Command::Kv { op, session }.encode();
                match r.node.propose(origin.encode(), data) {
                    Ok(()) => {
                        r.follower_writes.insert(id);
                        self.stats.proposals += 1;
                        self.stats.follower_proposals += 1;
                        let deadline_ms = self.now_ms + self.config.request_timeout_ms;
                        self.in_flight.insert(id, InFlight { deadline_ms });
                    }
                    Err(e) => {
                        self.replies.push_back((
                            id,
                            Err(ClientError::Unavailable {
                                reason: format!("proposal refused: {e}"),
                            }),
                        ));
                    }
                }
            }
            body => self.queue_read(group, id, body),
        }
    }

    /// Makes one ReadIndex call per group for the reads queued since the last turn. A replica
    /// that can no longer ask (no leader known, a candidate, a learner) answers them
    /// `NotLeader`/`Unavailable`, so the caller retries elsewhere.
    pub(super) fn issue_reads(&mut self) {
        let now = self.now_ms;
        for g in std::mem::take(&mut self.reads_to_issue) {
            self.settle_follower_epoch(g);
            let (me, boot) = (self.id, self.boot);
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            if r.reads_next.is_empty() {
                continue;
            }
            let reads = std::mem::take(&mut r.reads_next);
            if r.node.raft.state != StateRole::Leader && r.follows(me).is_none() {
                let leader = r.leader_hint().or_else(|| {
                    self.targets
                        .get(&g)
                        .and_then(|t| t.replicas.iter().find(|n| **n != me).copied())
                });
                let err = match leader {
                    Some(_) => ClientError::NotLeader { leader },
                    None => ClientError::Unavailable {
                        reason: format!("group {g} has no leader right now"),
                    },
                };
                for (id, _) in reads {
                    self.reply(id, Err(err.clone()));
                }
                continue;
            }
            r.read_seq += 1;
            let seq = r.read_seq;
            r.node.read_index(read_ctx(me, boot, seq));
            r.reads_pending.insert(
                seq,
                ReadBatch {
                    reads,
                    sent_ms: now,
                },
            );
        }
    }

    /// Fails what `group`'s replica has pending as a follower if its term or leader moved
    /// since it was sent (see the module documentation), and starts the new epoch.
    pub(super) fn settle_follower_epoch(&mut self, group: GroupId) {
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        let epoch = r.epoch();
        if r.follower_epoch == epoch {
            return;
        }
        r.follower_epoch = epoch;
        let ops = take_follower_ops(r);
        self.fail_follower_ops(ops);
    }

    /// Fails every follower operation `r` has pending (its replica is being dropped).
    pub(super) fn fail_replica_follower_ops(&mut self, r: &mut Replica<B>) {
        let ops = take_follower_ops(r);
        self.fail_follower_ops(ops);
    }

    fn fail_follower_ops(&mut self, ops: FollowerOps) {
        for id in ops.writes {
            self.reply(id, Err(ClientError::LeaderChanged));
        }
        for id in ops.reads {
            self.reply(id, Err(ClientError::NotLeader { leader: ops.hint }));
        }
    }

    /// Stamps the proposals this node's replica of `group` forwards to its leader with its
    /// current term (raft-rs leaves it 0), so the leader can tell a stale copy.
    pub(super) fn stamp_forwarded_proposals(&self, group: GroupId, msgs: &mut [Message]) {
        let Some(r) = self.replicas.get(&group) else {
            return;
        };
        for m in msgs
            .iter_mut()
            .filter(|m| m.get_msg_type() == MessageType::MsgPropose)
        {
            m.term = r.node.raft.term;
        }
    }

    /// Whether `group`'s replica steps a `MsgPropose` a follower forwarded (stamped with the
    /// follower's term): only a leader of that very term takes it, and only the entries whose
    /// origin it has not taken yet in that term. The message is left as raft-rs expects a
    /// forwarded proposal (term 0). A dropped proposal's follower fails it when it hears of
    /// the next term or leader, or at its deadline.
    pub(super) fn admit_forwarded_proposal(&mut self, group: GroupId, msg: &mut Message) -> bool {
        let Some(r) = self.replicas.get_mut(&group) else {
            return false;
        };
        let term = r.node.raft.term;
        if msg.term != term || r.node.raft.state != StateRole::Leader {
            return false;
        }
        if r.seen_term != term {
            r.seen_term = term;
            r.seen_origins.clear();
            r.seen_order.clear();
        }
        let mut entries = std::mem::take(&mut msg.entries).into_vec();
        entries.retain(|e| {
            let Some(o) = Origin::decode(&e.context) else {
                return true;
            };
            if !r.seen_origins.insert(o) {
                return false;
            }
            r.seen_order.push_back(o);
            if r.seen_order.len() > SEEN_ORIGINS {
                if let Some(old) = r.seen_order.pop_front() {
                    r.seen_origins.remove(&old);
                }
            }
            true
        });
        if entries.is_empty() {
            return false;
        }
        msg.entries = entries.into();
        msg.term = 0;
        true
    }

    /// Once per tick: read batches that heard nothing for an election timeout ask again with
    /// the same context (a leader drops a ReadIndex it receives before it has committed in its
    /// term, and the transport may lose one), and what expired is forgotten.
    pub(super) fn resend_stale_reads(&mut self) {
        let now = self.now_ms;
        let resend_ms = self.config.election_ticks.max(2) as u64 * self.config.tick_ms.max(1);
        let (me, boot) = (self.id, self.boot);
        for g in &self.quiesce.awake {
            let Some(r) = self.replicas.get_mut(g) else {
                continue;
            };
            if !r.follower_writes.is_empty() {
                r.follower_writes
                    .retain(|id| self.in_flight.contains_key(id));
            }
            if r.reads_pending.is_empty() {
                continue;
            }
            let mut resend = BTreeSet::new();
            r.reads_pending.retain(|seq, b| {
                b.reads.retain(|(id, _)| self.in_flight.contains_key(id));
                if !b.reads.is_empty() && now.saturating_sub(b.sent_ms) >= resend_ms {
                    b.sent_ms = now;
                    resend.insert(*seq);
                }
                !b.reads.is_empty()
            });
            for seq in resend {
                r.node.read_index(read_ctx(me, boot, seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_contexts_name_node_boot_and_batch() {
        let ctx = read_ctx(7, 2, 41);
        assert_eq!(read_seq_of(&ctx, 7, 2), Some(41));
        // Another node's batch, or this node's before a restart, is not ours.
        assert_eq!(read_seq_of(&ctx, 8, 2), None);
        assert_eq!(read_seq_of(&ctx, 7, 1), None);
        // The contexts reads used before batching (the request id alone) are not either.
        assert_eq!(read_seq_of(&41u64.to_be_bytes(), 7, 2), None);
    }
}
