//! The core's inputs from the clock and the network: ticks, Raft messages, and what the
//! driver reports back about sending (snapshots, unreachable peers, leadership transfers).

use raft::eraftpb::{Message, MessageType};
use raft::{ProgressState, SnapshotStatus};
use rand::Rng;
use swarmkv_store::Backend;

use super::{quiesce, ClientError, Core, GroupId, NodeId, RequestId};

impl<B: Backend> Core<B> {
    /// Tells the core the time without ticking. The caller does it before every input, not
    /// only on its timer: a tick can come late (a busy or paused process, a timer burst), and
    /// whatever the core stamps with the time meanwhile must not be stamped too early. A
    /// lease's deadline counts from when its record was received: stamped with the time of
    /// the last tick, it would run out early, while its holder counts from when it sent the
    /// request and still believes it holds the lock. Time never goes back.
    pub fn advance_clock(&mut self, now_ms: u64) {
        self.now_ms = now_ms.max(self.now_ms);
    }

    /// Advances the clock; ticks every replica once per elapsed tick and expires requests
    /// past their deadline (answering `Timeout`).
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.advance_clock(now_ms);
        let tick = self.config.tick_ms.max(1);
        let mut ticks = 0;
        if self.now_ms.saturating_sub(self.last_tick_ms) >= tick {
            self.quiesce_idle_leaders();
        }
        while self.now_ms.saturating_sub(self.last_tick_ms) >= tick && ticks < 10 {
            self.last_tick_ms += tick;
            ticks += 1;
            let base = self.config.election_ticks.max(2);
            // Quiesced replicas do not tick (see `quiesce`).
            for g in &self.quiesce.awake {
                let Some(r) = self.replicas.get_mut(g) else {
                    continue;
                };
                // raft-rs redraws the election timeout from an unseeded RNG whenever it resets
                // the election clock; redraw it from ours at once, so runs are reproducible.
                if r.node.raft.election_elapsed == 0 {
                    let t = self.rng.gen_range(base..2 * base);
                    r.node.raft.set_randomized_election_timeout(t);
                }
                r.node.tick();
            }
        }
        if ticks > 0 {
            self.repeat_opening_campaigns();
        }
        if self.now_ms.saturating_sub(self.last_tick_ms) >= tick {
            // The caller fell far behind: don't replay a burst of ticks (it would trigger
            // elections), just resynchronise.
            self.last_tick_ms = self.now_ms;
        }
        let now = self.now_ms;
        let expired: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.reply(id, Err(ClientError::Timeout));
        }
        self.resend_stale_reads();
        self.propose_due_leases();
        self.propose_due_elections();
    }

    /// Steps a Raft message from a peer. Messages for groups this node does not hold, and
    /// messages raft-rs refuses, are dropped (Raft tolerates loss).
    pub fn handle_raft(&mut self, from: NodeId, group: GroupId, msg: Message) {
        if !self.replicas.contains_key(&group) && self.may_create(group, &msg) {
            // A leader added this node to the group: start an empty replica, which the
            // leader fills with a snapshot.
            match self.create_replica(group, &msg) {
                Ok(true) => {}
                Ok(false) => {
                    log::debug!("group {group}: message of term {} from {from} is older than this node's last replica; dropped", msg.term);
                    return;
                }
                Err(e) => {
                    log::warn!("cannot create a replica of group {group}: {e}");
                    return;
                }
            }
            log::info!(
                "node {:x}: new replica of group {group} (leader {from:x})",
                self.id
            );
        }
        let Some(r) = self.replicas.get_mut(&group) else {
            log::debug!("dropping a message from {from} for group {group}, not held here");
            return;
        };
        let mut msg = msg;
        if msg.get_msg_type() == MessageType::MsgHeartbeat {
            // A leader's heartbeat carries min(what it believes we have, its commit). After this
            // replica was dropped and recreated empty, that belief is stale and raft-rs would
            // panic committing past our log; knowing less commit is always safe.
            let last = r.node.raft.raft_log.last_index();
            if msg.commit > last {
                msg.commit = last;
            }
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            match self.store.snapshot_ready(group, &msg.get_snapshot().data) {
                Ok(true) => {}
                Ok(false) => {
                    log::warn!(
                        "group {group}: snapshot from {from} arrived before its chunks; dropped"
                    );
                    return;
                }
                Err(e) => {
                    log::warn!("group {group}: bad snapshot from {from}: {e}");
                    return;
                }
            }
        }
        if msg.get_msg_type() == MessageType::MsgPropose
            && !self.admit_forwarded_proposal(group, &mut msg)
        {
            log::debug!("group {group}: stale or repeated proposal from {from} dropped");
            return;
        }
        if quiesce::is_quiesce_heartbeat(&msg) {
            if self.accept_quiesce(group, from, &msg) {
                return;
            }
            msg.context = Default::default();
        }
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        quiesce::wake(&mut self.quiesce, group, r, false);
        if matches!(
            msg.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && !r.may_vote_for(msg.log_term, msg.index)
        {
            log::debug!(
                "group {group}: no vote for {from}: its log ends before what this node's \
                 previous replica of the group had"
            );
            return;
        }
        self.stats.messages_in += 1;
        if let Err(e) = r.node.step(msg) {
            log::debug!("group {group}: message from {from} refused: {e}");
        }
    }

    /// Tells Raft how sending a snapshot to `to` ended.
    pub fn report_snapshot(&mut self, group: GroupId, to: NodeId, delivered: bool) {
        if let Some(r) = self.replicas.get_mut(&group) {
            quiesce::wake(&mut self.quiesce, group, r, false);
            let status = if delivered {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            r.node.report_snapshot(to, status);
        }
    }

    /// True when this node leads `group` and `to` can take the leadership without making
    /// proposals wait long: Raft replicates to it normally and has heard from it within the
    /// current election timeout (check-quorum's activity flag). A voter cut off but not yet
    /// judged down by the failure detector fails the second test: handed the leadership, it
    /// would pause the group's proposals for an election timeout, round after round.
    pub fn can_take_leadership(&self, group: GroupId, to: NodeId) -> bool {
        let Some(r) = self.replicas.get(&group).filter(|r| r.is_leader) else {
            return false;
        };
        r.node
            .raft
            .prs()
            .get(to)
            .is_some_and(|pr| pr.recent_active && pr.state == ProgressState::Replicate)
    }

    /// Asks the leader of `group` (this node) to hand leadership to `to` (a voter). Raft waits
    /// until `to` has caught up; proposals pause meanwhile (at most an election timeout).
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> bool {
        match self.replicas.get_mut(&group) {
            Some(r) if r.is_leader && to != self.id => {
                quiesce::wake(&mut self.quiesce, group, r, false);
                r.node.transfer_leader(to);
                true
            }
            _ => false,
        }
    }

    /// Tells Raft that `to` could not be reached, so replication to it slows to probing.
    pub fn report_unreachable(&mut self, to: NodeId) {
        // A quiesced group sends nothing, so nothing of it failed to arrive; the failure
        // detector's verdict wakes it if `to` is really gone (`set_node_live`).
        for (_, r) in self.replicas.iter_mut().filter(|(_, r)| !r.quiesced) {
            r.node.report_unreachable(to);
        }
    }
}
