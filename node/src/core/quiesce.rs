//! Quiescence: idle groups stop ticking and heartbeating, as CockroachDB's quiesced ranges and
//! TiKV's hibernate regions do, so that a node holding a thousand idle partitions costs next to
//! nothing.
//!
//! # Protocol
//! - A leader quiesces its group once everything has been settled for `quiesce_after_ticks`
//!   ticks in a row: its log is committed and applied up to its last entry, an entry of its own
//!   term; nothing waits (proposals, reads, a configuration change or a joint configuration, a
//!   leadership transfer, a snapshot); every other member (voters and learners) has
//!   acknowledged the last index, reported it committed, replicates normally and is not known
//!   to be down. It then sends each member a quiesce heartbeat (a Raft `MsgHeartbeat` whose
//!   context is [`QUIESCE_CTX`] and whose `index`/`log_term` name its last entry) and stops
//!   ticking.
//! - A follower that receives a quiesce heartbeat from its leader of its current term, while
//!   holding exactly that log, committed and applied, and not believing the leader's node
//!   down, stops ticking too and does not answer. Otherwise it steps the message as an ordinary
//!   heartbeat; its answer wakes the leader, which catches it up and tries again later.
//! - Anything wakes a replica: a client request to any of its replicas (a follower woken by a
//!   request it cannot serve notices a leader that stopped answering), any Raft message other
//!   than a quiesce heartbeat it accepts (an awake member's pre-vote wakes the rest of the
//!   group), a configuration step or leadership transfer, and the failure or return of a
//!   member's node ([`Core::set_node_live`], fed by the node-level failure detector: gossip
//!   heartbeats and connections, not per-group heartbeats). Anything that leaves work in a
//!   quiesced replica's Ready wakes it too, as a safety net (`Core::stage` visits every group
//!   once a second; otherwise only the awake ones).
//! - Safety does not depend on quiescence, which only skips ticks: no read is served on a
//!   leader's lease (ReadIndex confirms leadership with a heartbeat round, after waking), and a
//!   woken leader gets a full election timeout to hear from a quorum before check-quorum judges
//!   it (its followers' activity flags were last reset before it went quiet).
//! - The meta group never quiesces: its leader times leases and elections.

use std::collections::BTreeSet;

use raft::eraftpb::{Message, MessageType};
use raft::{ProgressState, StateRole, INVALID_INDEX};
use swarmkv_store::Backend;

use super::replica::Replica;
use super::types::{GroupId, NodeId};
use super::{Core, META_GROUP};

/// The context of a quiesce heartbeat (never 8 bytes long, so it cannot be taken for a
/// ReadIndex request id).
pub(crate) const QUIESCE_CTX: &[u8] = b"swarmkv/quiesce";

/// Which replicas tick and which nodes the failure detector reports down.
#[derive(Default)]
pub(crate) struct Quiescence {
    /// Groups whose local replica is not quiesced: the only ones a tick visits.
    pub awake: BTreeSet<GroupId>,
    /// Nodes the failure detector reports down (see [`Core::set_node_live`]).
    pub down: BTreeSet<NodeId>,
    /// The targets changed since `reconcile` last looked at the quiesced leaders.
    pub targets_changed: bool,
    /// Core time of the last turn that visited every group, and of the last reconcile pass
    /// that looked at the quiesced leaders.
    pub last_sweep_ms: u64,
    pub last_reconcile_ms: u64,
}

/// How often a turn visits every group, quiesced or not: a safety net that wakes a quiesced
/// replica something left work in without waking it (none is known; the cost is one
/// `has_ready` per group per period).
const SWEEP_MS: u64 = 1_000;
/// How often `reconcile` looks at quiesced leaders whose targets did not change.
const RECONCILE_QUIESCED_MS: u64 = 5_000;

/// Wakes `r` (the replica of `g`) if it is quiesced. A leader also forgets how long it has
/// gone without hearing from a quorum (check-quorum would otherwise judge it on the flags it
/// reset before going quiet), and with `ping` heartbeats its followers at once.
pub(crate) fn wake<B: Backend>(
    q: &mut Quiescence,
    g: GroupId,
    r: &mut Replica<B>,
    ping: bool,
) -> bool {
    if !r.quiesced {
        return false;
    }
    r.quiesced = false;
    r.idle_ticks = 0;
    q.awake.insert(g);
    if r.node.raft.state == StateRole::Leader {
        r.node.raft.election_elapsed = 0;
        if ping {
            r.node.ping();
        }
    }
    true
}

/// Whether `node` is a member of `r`'s group (voter, learner, either half of a joint
/// configuration) or the leader it follows.
fn involves<B: Backend>(r: &Replica<B>, node: NodeId) -> bool {
    let conf = r.node.raft.prs().conf();
    r.leader == Some(node)
        || conf.voters().contains(node)
        || conf.learners().contains(&node)
        || conf.learners_next().contains(&node)
}

/// Whether the leader replica `r` has nothing left to do: see the module documentation.
/// (Messages it has yet to send, such as heartbeats, are not work: the leader quiesces once
/// they are out.)
fn settled<B: Backend>(r: &Replica<B>, me: NodeId, down: &BTreeSet<NodeId>) -> bool {
    let raft = &r.node.raft;
    if raft.state != StateRole::Leader
        || !r.is_leader
        || !r.proposals.is_empty()
        || !r.reads_next.is_empty()
        || !r.reads_pending.is_empty()
        || !r.reads_ready.is_empty()
        || !r.follower_writes.is_empty()
        || r.step_down
        || r.compact_to.is_some()
        || r.commit_dirty
        || raft.lead_transferee.is_some()
        || raft.has_pending_conf()
        || raft.pending_read_count() > 0
        || raft.ready_read_count() > 0
    {
        return false;
    }
    let log = &raft.raft_log;
    let last = log.last_index();
    if log.committed != last || log.applied != last || log.last_term() != raft.term {
        return false;
    }
    let followers_settled = raft.prs().iter().all(|(id, pr)| {
        *id == me
            || (!down.contains(id)
                && pr.matched == last
                && pr.committed_index >= last
                && pr.state == ProgressState::Replicate
                && pr.pending_snapshot == 0
                && pr.pending_request_snapshot == INVALID_INDEX)
    });
    followers_settled && raft.prs().conf().to_conf_state().voters_outgoing.is_empty()
}

impl<B: Backend> Core<B> {
    /// Tells the core what the node-level failure detector (gossip heartbeats, connections)
    /// believes of `node`. A change wakes every quiesced local replica of a group `node` is a
    /// member or the leader of: a follower whose leader's node failed must elect a new leader
    /// without per-group heartbeats to miss, and a leader whose follower came back catches it
    /// up. Reporting a node down when it is not costs only wake-ups.
    pub fn set_node_live(&mut self, node: NodeId, live: bool) {
        if node == self.id {
            return;
        }
        let changed = if live {
            self.quiesce.down.remove(&node)
        } else {
            self.quiesce.down.insert(node)
        };
        if !changed {
            return;
        }
        for (g, r) in self.replicas.iter_mut() {
            if r.quiesced && involves(r, node) {
                wake(&mut self.quiesce, *g, r, true);
            }
        }
    }

    /// How many local replicas are quiesced (the `swarmkv_quiesced_groups` metric).
    pub fn quiesced_groups(&self) -> usize {
        self.replicas.len().saturating_sub(self.quiesce.awake.len())
    }

    /// Whether the local replica of `group` is quiesced.
    pub fn is_quiesced(&self, group: GroupId) -> bool {
        self.replicas.get(&group).is_some_and(|r| r.quiesced)
    }

    /// The groups a turn asks for a Ready: those reached since the last turn (see
    /// `replicas`), or all of them once per [`SWEEP_MS`].
    pub(crate) fn turn_groups(&mut self) -> Vec<GroupId> {
        let touched = self.replicas.take_touched();
        if self.now_ms.saturating_sub(self.quiesce.last_sweep_ms) >= SWEEP_MS {
            self.quiesce.last_sweep_ms = self.now_ms;
            return self.replicas.keys().copied().collect();
        }
        touched
    }

    /// Whether this `reconcile` pass looks at quiesced leaders too.
    pub(crate) fn reconcile_quiesced(&mut self) -> bool {
        let due =
            self.now_ms.saturating_sub(self.quiesce.last_reconcile_ms) >= RECONCILE_QUIESCED_MS;
        if std::mem::take(&mut self.quiesce.targets_changed) || due {
            self.quiesce.last_reconcile_ms = self.now_ms;
            return true;
        }
        false
    }

    /// Called once per tick, before the awake replicas tick: counts how long each awake leader
    /// has been settled and quiesces those settled long enough.
    pub(crate) fn quiesce_idle_leaders(&mut self) {
        let after = self.config.quiesce_after_ticks;
        if after == 0 {
            return;
        }
        let mut ready = Vec::new();
        for g in &self.quiesce.awake {
            if *g == META_GROUP {
                continue;
            }
            let Some(r) = self.replicas.get_mut(g) else {
                continue;
            };
            let last = r.node.raft.raft_log.last_index();
            if r.is_leader && last == r.idle_index && settled(r, self.id, &self.quiesce.down) {
                r.idle_ticks += 1;
                // What stepping messages since the last turn left to do is done first.
                if r.idle_ticks >= after && !r.node.has_ready() {
                    ready.push(*g);
                }
            } else {
                r.idle_index = last;
                r.idle_ticks = 0;
            }
        }
        for g in ready {
            self.quiesce_leader(g);
        }
    }

    fn quiesce_leader(&mut self, g: GroupId) {
        let me = self.id;
        let Some(r) = self.replicas.get_mut(&g) else {
            return;
        };
        let raft = &r.node.raft;
        let (term, last, last_term) = (
            raft.term,
            raft.raft_log.last_index(),
            raft.raft_log.last_term(),
        );
        let msgs: Vec<Message> = raft
            .prs()
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != me)
            .map(|to| {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgHeartbeat);
                m.from = me;
                m.to = to;
                m.term = term;
                m.commit = last;
                m.index = last;
                m.log_term = last_term;
                m.context = QUIESCE_CTX.to_vec().into();
                m
            })
            .collect();
        r.quiesced = true;
        r.idle_ticks = 0;
        self.quiesce.awake.remove(&g);
        log::debug!("group {g}: quiesced at index {last} of term {term}");
        self.queue_messages(g, msgs);
    }

    /// A quiesce heartbeat from `from` for `group`: returns true when this follower quiesced
    /// (or stays quiesced) on it, and the message is consumed. Otherwise the caller steps it
    /// as an ordinary heartbeat (context cleared), which wakes the replica and answers the
    /// leader.
    pub(crate) fn accept_quiesce(&mut self, group: GroupId, from: NodeId, msg: &Message) -> bool {
        if self.config.quiesce_after_ticks == 0
            || group == META_GROUP
            || self.quiesce.down.contains(&from)
        {
            return false;
        }
        let Some(r) = self.replicas.get_mut(&group) else {
            return false;
        };
        let raft = &r.node.raft;
        let log = &raft.raft_log;
        let ok = raft.state == StateRole::Follower
            && raft.term == msg.term
            && raft.leader_id == from
            && log.last_index() == msg.index
            && log.last_term() == msg.log_term
            && log.committed == msg.index
            && log.applied == log.committed
            && !r.commit_dirty
            && r.compact_to.is_none()
            && r.reads_next.is_empty()
            && r.reads_pending.is_empty()
            && r.reads_ready.is_empty()
            && r.follower_writes.is_empty()
            && !r.node.has_ready();
        if !ok {
            return false;
        }
        // As an ordinary heartbeat would: the leader was just heard from.
        r.node.raft.election_elapsed = 0;
        if !r.quiesced {
            r.quiesced = true;
            r.idle_ticks = 0;
            self.quiesce.awake.remove(&group);
            log::debug!("group {group}: follower quiesced at index {}", msg.index);
        }
        true
    }
}

/// Whether `msg` is a quiesce heartbeat.
pub(crate) fn is_quiesce_heartbeat(msg: &Message) -> bool {
    msg.get_msg_type() == MessageType::MsgHeartbeat && msg.get_context() == QUIESCE_CTX
}
