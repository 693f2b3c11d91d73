//! One turn of the node loop, in the one order every user of the core follows: the node's
//! driver, the simulator, the core tests and the fuzzers. As in raft-rs's Ready protocol, a
//! turn is:
//!
//! 1. [`Core::begin_turn`]: take every group's Ready and stage its writes in one batch.
//! 2. [`Turn::poll_transmit`] and [`Turn::poll_reply`]: hand out what may leave before the
//!    Readies are durable: a leader's appends and heartbeats (raft-rs counts the leader's own
//!    copy only once it is persisted, so sending first lets the followers' fsyncs overlap the
//!    leader's), and the answers to committed writes and confirmed reads (already durable on
//!    a quorum). The caller queues them without waiting for the network.
//! 3. [`Turn::persist`]: write the batch, apply, and serve the reads that caught up. With
//!    [`super::CoreConfig::pipelined_sync`] the write is usually not synced here: the Readies
//!    wait for a sync the driver runs off the turn (`pipeline`). Otherwise, or for a Ready
//!    that cannot wait (a snapshot, a configuration change), this step syncs in place and
//!    waits for the disk ([`Turn::needs_sync`] says whether it will, so the driver can take
//!    it off its async worker).
//! 4. [`Persisted`]: hand out what may leave now (messages, snapshots to stream, answers)
//!    and take the peers the caller could not address ([`Persisted::report_unreachable`]).
//! 5. [`Core::take_sync_job`]: the sync for the driver's writer, when Readies wait for one
//!    and none is in flight; its end, [`Core::on_synced`], releases what waited for it.
//!
//! The control plane's actions ([`super::control::Control::poll_action`]) follow the turn.
//!
//! A [`Turn`] borrows the core mutably, so nothing else can reach the core between the stage
//! and the persist, which the Ready protocol requires; the types make the order the only one
//! that compiles.

use raft::eraftpb::Message;
use swarmkv_store::Backend;

use super::requests::serve_read;
use raft::eraftpb::{Entry, EntryType, MessageType};
use raft::StateRole;
use swarmkv_store::LogBatch;

use super::replica::ReadyRead;
use super::{
    follower, quiesce, ClientError, Core, CoreError, GroupId, NodeId, Reply, RequestId,
    SnapshotSend, META_GROUP,
};

/// A turn between its stage and its persist (see the module documentation).
#[must_use = "a staged turn must be persisted"]
pub struct Turn<'a, B: Backend> {
    core: &'a mut Core<B>,
    staged: Staged,
}

/// A turn after its sync: what is left to hand out.
pub struct Persisted<'a, B: Backend> {
    core: &'a mut Core<B>,
}

impl<B: Backend> Core<B> {
    /// Starts a turn: takes every group's Ready. An error is a storage failure: the node must
    /// stop acknowledging anything.
    pub fn begin_turn(&mut self) -> Result<Turn<'_, B>, CoreError> {
        let staged = self.stage()?;
        Ok(Turn { core: self, staged })
    }
}

impl<'a, B: Backend> Turn<'a, B> {
    /// Whether [`Turn::persist`] waits for the disk; a turn that only applies and answers
    /// does not.
    pub fn needs_sync(&self) -> bool {
        self.staged.needs_sync()
    }

    /// The next batch of Raft messages that may leave before the sync, for one peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<(GroupId, Message)>)> {
        self.core.poll_transmit()
    }

    /// The next answer that may leave before the sync.
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(RequestId, Reply)> {
        self.core.poll_reply()
    }

    /// Writes the staged Readies in one batch (synced here, or left to the driver's writer:
    /// see the module documentation), applies, and serves the reads that caught up. An error
    /// is a storage failure: the node must stop acknowledging anything.
    pub fn persist(self) -> Result<Persisted<'a, B>, CoreError> {
        let Turn { core, staged } = self;
        core.persist(staged)?;
        core.serve_caught_up_reads();
        Ok(Persisted { core })
    }
}

impl<B: Backend> Persisted<'_, B> {
    /// The next batch of Raft messages for one peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<(GroupId, Message)>)> {
        self.core.poll_transmit()
    }

    /// The next snapshot to stream to a peer.
    #[must_use]
    pub fn poll_snapshot(&mut self) -> Option<SnapshotSend> {
        self.core.poll_snapshot()
    }

    /// The next answer to a request.
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(RequestId, Reply)> {
        self.core.poll_reply()
    }

    /// A peer the caller could not send this turn's messages to (no address, or gone).
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.core.report_unreachable(to);
    }

    /// The core, for reading its state once the turn's output is handed out.
    pub fn core(&self) -> &Core<B> {
        self.core
    }
}

/// The Readies of one turn between [`Core::stage`] and [`Core::persist`]: their store batch
/// and what is left to do with each once it is durable.
pub(super) struct Staged {
    batch: LogBatch,
    readies: Vec<(GroupId, raft::Ready, Vec<Entry>)>,
    reload_leases: bool,
    /// The batch's sync is left to the driver's writer (see `pipeline`).
    deferred: bool,
    /// Persisting syncs in place: the batch needs it, or Readies written before wait for a
    /// sync that this turn's persist must make first.
    syncs_in_place: bool,
}

impl Staged {
    /// Whether persisting this turn waits for the disk (the driver then gets the turn off
    /// the async workers' backs); a turn that only applies and answers does not, nor one
    /// whose sync is left to the driver's writer.
    fn needs_sync(&self) -> bool {
        self.syncs_in_place
    }
}

impl<B: Backend> Core<B> {
    pub(super) fn queue_messages(&mut self, group: GroupId, mut msgs: Vec<Message>) {
        self.stamp_forwarded_proposals(group, &mut msgs);
        self.stats.messages_out += msgs.len() as u64;
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let data = &m.get_snapshot().data;
                let (index, chunks) = match swarmkv_store::SnapshotDescriptor::decode(data) {
                    Ok(d) => (d.index, d.chunks),
                    Err(_) => (m.get_snapshot().get_metadata().index, 0),
                };
                self.snapshots_out.push_back(SnapshotSend {
                    to: m.to,
                    group,
                    message: m,
                    index,
                    chunks,
                });
                continue;
            }
            self.outbox.entry(m.to).or_default().push((group, m));
        }
    }

    /// The first half of a turn: takes every group's Ready and queues the messages that may
    /// leave before the Readies are durable (a leader's appends and heartbeats: raft-rs counts
    /// the leader's own copy only once it is persisted, so sending first lets the followers'
    /// fsyncs overlap the leader's). It also applies the committed entries and answers their
    /// requests (and the reads they caught up with): they are durable on a quorum already, so
    /// their callers need not wait for this turn's sync. [`Turn`] hands them out, then calls
    /// [`Core::persist`] before any other call can reach the core. An error is a storage
    /// failure.
    fn stage(&mut self) -> Result<Staged, CoreError> {
        let mut batch = LogBatch::new();
        let mut readies = Vec::new();
        let mut reload_leases = false;
        // The reads that arrived since the last turn leave in one ReadIndex call per group.
        self.issue_reads();
        // The groups reached since the last turn (the others have no new work), and every
        // group now and then.
        let groups = self.turn_groups();
        self.stats.turns += 1;
        self.stats.ready_checks += groups.len() as u64;
        for g in &groups {
            let Some(r) = self.replicas.get_mut_untouched(g) else {
                continue;
            };
            if let Some(ci) = r.compact_to.take() {
                batch.compact(*g, ci);
            }
            if r.commit_dirty {
                r.commit_dirty = false;
                batch.set_commit(*g, r.node.raft.hard_state());
            }
            if !r.node.has_ready() {
                continue;
            }
            // Something left work in a quiesced replica without waking it: wake it now.
            if quiesce::wake(&mut self.quiesce, *g, r, false) {
                log::debug!("group {g}: woken by pending work");
            }
            // A replica that became leader without a vote from anyone (the only voter) may
            // still have Readies waiting for their sync; raft-rs asserts that a new leader has
            // none with entries: they are made durable first.
            if r.node.raft.state == StateRole::Leader && !r.is_leader && self.pipeline.holds(*g) {
                self.settle_in_place()?;
            }
            let Some(r) = self.replicas.get_mut_untouched(g) else {
                continue;
            };
            let mut rd = r.node.ready();
            if let Some(ss) = rd.ss() {
                let was_leader = r.is_leader;
                r.leader = Some(ss.leader_id).filter(|l| *l != 0);
                r.is_leader = ss.raft_state == StateRole::Leader;
                if was_leader != r.is_leader {
                    self.stats.leader_changes += 1;
                    if *g == META_GROUP && r.is_leader {
                        self.leases.on_become_leader();
                    } else if *g == META_GROUP {
                        self.leases.on_lose_leadership();
                        // Parked observers ask the new meta leader.
                        let leader = r.leader_hint();
                        for id in self.elections.on_lose_leadership() {
                            self.replies
                                .push_back((id, Err(ClientError::NotLeader { leader })));
                        }
                    }
                }
                if was_leader && !r.is_leader {
                    // Writes in flight may still commit through the next leader, or not: tell
                    // their callers now (ambiguous; a session makes the resend safe) rather
                    // than let them wait for a timeout.
                    let writes: Vec<RequestId> = std::mem::take(&mut r.proposals)
                        .into_values()
                        .map(|p| p.request)
                        .collect();
                    for id in writes {
                        if self.in_flight.remove(&id).is_some() {
                            self.replies
                                .push_back((id, Err(ClientError::LeaderChanged)));
                        }
                    }
                    // Reads in flight can no longer be confirmed here; they are safe to retry.
                    let hint = r.leader_hint();
                    let reads: Vec<RequestId> = std::mem::take(&mut r.reads_pending)
                        .into_values()
                        .flat_map(|b| b.reads)
                        .map(|(id, _)| id)
                        .collect();
                    let ready: Vec<RequestId> =
                        r.reads_ready.drain(..).map(|x| x.request).collect();
                    for id in reads.into_iter().chain(ready) {
                        if self.in_flight.remove(&id).is_some() {
                            self.replies
                                .push_back((id, Err(ClientError::NotLeader { leader: hint })));
                        }
                    }
                }
            }
            let msgs = rd.take_messages();
            self.queue_messages(*g, msgs);
            let Some(r) = self.replicas.get_mut_untouched(g) else {
                continue;
            };
            for rs in rd.read_states() {
                let Some(seq) = follower::read_seq_of(&rs.request_ctx, self.id, self.boot) else {
                    continue;
                };
                if let Some(batch) = r.reads_pending.remove(&seq) {
                    r.reads_ready
                        .extend(batch.reads.into_iter().map(|(request, body)| ReadyRead {
                            index: rs.index,
                            request,
                            body,
                        }));
                }
            }
            if !rd.snapshot().is_empty() {
                batch.apply_snapshot(*g, rd.snapshot().clone());
                if *g == META_GROUP {
                    reload_leases = true;
                }
            }
            if *g == META_GROUP {
                for e in rd.entries() {
                    self.leases.note_appended(e.index, self.now_ms);
                }
            }
            // Applied after the Ready is persisted and advanced: a committed configuration
            // change that removes this leader must not take effect before raft-rs records the
            // leader's own appends (it looks up the leader's progress, which the removal drops).
            let committed = rd.take_committed_entries();
            if !rd.entries().is_empty() {
                batch.append(*g, rd.entries().to_vec());
            }
            if let Some(hs) = rd.hs() {
                if rd.must_sync() {
                    batch.set_hard_state(*g, hs.clone());
                } else {
                    // Only the commit index moved: raft-rs allows this write to reach the disk
                    // with a later sync (a lost commit index is learned again from the leader).
                    batch.set_commit(*g, hs.clone());
                }
            }
            // raft-rs hands out only entries this replica has persisted too (and a quorum, as
            // they are committed): apply them now, before this turn's sync, so that a write's
            // caller does not wait for the sync of the writes that came after it. A
            // configuration change waits until after the persist (see above).
            let committed = if committed
                .iter()
                .all(|e| e.get_entry_type() == EntryType::EntryNormal)
            {
                self.apply_committed(*g, committed)?;
                Vec::new()
            } else {
                committed
            };
            // After the applies: a follower's write that applied in this Ready is answered
            // with its result, not failed for the leader change that came with it.
            self.settle_follower_epoch(*g);
            readies.push((*g, rd, committed));
        }
        // The applies are written with the persist's log batch (one store write for both):
        // their answers may leave before that, as they are computed and durable in the log on
        // a quorum; the reads they caught up with wait for the write (`serve_caught_up_reads`
        // after the persist).
        self.serve_caught_up_reads();
        // A turn's sync is left to the driver's writer unless one of its Readies must be
        // persisted in place (see `pipeline`): a snapshot, a configuration change to apply
        // after the persist, leases to reload from what it installs.
        let must_wait = reload_leases
            || readies
                .iter()
                .any(|(_, rd, committed)| !rd.snapshot().is_empty() || !committed.is_empty());
        let deferred = self.config.pipelined_sync
            && !must_wait
            && (batch.needs_sync() || self.pipeline.busy());
        let syncs_in_place = !deferred && (batch.needs_sync() || self.pipeline.busy());
        Ok(Staged {
            batch,
            readies,
            reload_leases,
            deferred,
            syncs_in_place,
        })
    }

    /// The second half of a turn (see [`Core::stage`]): writes the staged Readies in one
    /// store batch, synced here only if one of them needs it and cannot wait for the driver's
    /// writer (`pipeline`); then queues what may leave, applies committed entries and answers
    /// requests. Returns an error only when storage failed; the node must then stop.
    fn persist(&mut self, staged: Staged) -> Result<(), CoreError> {
        let Staged {
            mut batch,
            readies,
            reload_leases,
            deferred,
            syncs_in_place: _,
        } = staged;
        if deferred {
            batch.defer_sync();
        }
        let applies = std::mem::take(&mut self.applies);
        if !batch.is_empty() || !applies.is_empty() {
            let done = self.store.commit_with_applies(&batch, applies)?;
            self.stats.persist_turns += 1;
            self.stats.log_syncs += done.syncs as u64;
            self.stats.log_entries += done.entries as u64;
            self.stats.log_bytes += done.bytes as u64;
        }
        if !deferred {
            // This turn's advance tells raft-rs that every earlier Ready of its groups is
            // persisted: make it true for the ones still waiting for their sync.
            self.settle_in_place()?;
        }
        if reload_leases {
            self.reload_leases()?;
            self.reload_elections()?;
        }
        for (g, mut rd, ready_committed) in readies {
            if deferred {
                // Written, not durable: raft-rs hears of it when the writer's sync returns,
                // and the messages that need it durable wait for that.
                let number = rd.number();
                let persisted = rd.take_persisted_messages();
                let Some(r) = self.replicas.get_mut(&g) else {
                    continue;
                };
                r.node.advance_append_async(rd);
                self.wait_for_sync(g, number, persisted);
                // Only entries of normal type are in a deferred turn, applied in the stage.
                self.apply_committed(g, ready_committed)?;
                self.finish_ready(g);
                continue;
            }
            let persisted = rd.take_persisted_messages();
            self.queue_messages(g, persisted);
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            let mut light = r.node.advance_append(rd);
            if light.commit_index().is_some() {
                r.commit_dirty = true;
            }
            let msgs = light.take_messages();
            let committed = light.take_committed_entries();
            self.queue_messages(g, msgs);
            self.apply_committed(g, ready_committed)?;
            self.apply_committed(g, committed)?;
            self.finish_ready(g);
        }
        self.write_applies()?;
        // The partitions' writes reach sled in batches (about every 100 ms), behind the log.
        if let Some(flushed) = self.store.flush_state_if_due(self.now_ms)? {
            self.stats.state_flushes += 1;
            self.stats.state_flush_keys += flushed.keys as u64;
        }
        Ok(())
    }

    /// The end of a Ready, its committed entries applied: raft-rs hears so, and a leader
    /// that was asked to step down does.
    fn finish_ready(&mut self, g: GroupId) {
        if let Some(r) = self.replicas.get_mut(&g) {
            r.node.advance_apply();
            if std::mem::take(&mut r.step_down) && r.node.raft.state == StateRole::Leader {
                let term = r.node.raft.term;
                r.node.raft.become_follower(term + 1, raft::INVALID_ID);
            }
        }
    }

    /// Writes the applies gathered so far in this half turn (see [`Core::stage`]).
    pub(super) fn write_applies(&mut self) -> Result<(), CoreError> {
        if !self.applies.is_empty() {
            self.store
                .write_applies(std::mem::take(&mut self.applies))?;
        }
        Ok(())
    }

    /// The next batch of Raft messages for one peer (all groups' traffic to it).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<(GroupId, Message)>)> {
        let to = *self.outbox.keys().next()?;
        self.outbox.remove(&to).map(|m| (to, m))
    }

    /// The next snapshot to stream to a peer.
    #[must_use]
    pub fn poll_snapshot(&mut self) -> Option<SnapshotSend> {
        self.snapshots_out.pop_front()
    }

    /// The next answer to a request.
    #[must_use]
    pub fn poll_reply(&mut self) -> Option<(RequestId, Reply)> {
        self.replies.pop_front()
    }

    /// Serves reads that were waiting for applies that a previous turn made (reads whose
    /// index was already applied when their read state arrived).
    fn serve_caught_up_reads(&mut self) {
        let groups: Vec<GroupId> = self
            .replicas
            .iter()
            .filter(|(_, r)| !r.reads_ready.is_empty())
            .map(|(g, _)| *g)
            .collect();
        for g in groups {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            let applied = r.node.store().apply_state().index;
            let (now, later): (Vec<_>, Vec<_>) =
                r.reads_ready.drain(..).partition(|rr| rr.index <= applied);
            r.reads_ready = later;
            for rr in now {
                let reply = serve_read(&self.store, g, &rr.body);
                self.reply(rr.request, reply);
            }
        }
    }
}
