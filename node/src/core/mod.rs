//! The multi-Raft core: sans-IO. It never imports tokio, libp2p or sled (a test enforces it):
//! time, randomness, messages and requests come in through `handle_*` calls, and messages,
//! snapshots to send and replies go out through `poll_*` calls, so a simulator can drive it
//! deterministically. Persistence goes through the `swarmkv_store::Backend` it is generic over.
//!
//! # Layout
//! - [`types`]: requests, responses, typed client errors (also the kv wire payload).
//! - [`routing`]: key to partition (stable hash).
//! - [`placement`]: which nodes hold which groups (static layout, coordinator planning).
//! - [`meta`]: the meta group's records (registry, targets, settings).
//! - [`lease`]: leases kept in the meta group and timed by its leader; `lease_core` wires
//!   them into the turn.
//! - `quiesce`: idle groups stop ticking and heartbeating until traffic or a failure wakes
//!   them.
//! - `reconcile`: a group leader's steps toward its target replica set (conf changes).
//! - [`election`]: leader election as a service, candidates kept in the meta group and bound
//!   to leases; `election_core` wires them into the turn.
//! - [`command`]: the payload of Raft entries (and the origin of a follower's proposal).
//! - `follower`: linearizable reads batched into one ReadIndex call per turn, and a
//!   follower's own reads and writes through Raft (no forward of the request).
//! - [`config`]: timing and sizing.
//! - [`control`]: the control plane (formation, coordination, liveness, leftovers, leader
//!   balancing) over a core it is handed.
//! - `replica`: one local Raft group and the requests waiting on it.
//! - `turn`: one turn in its one order ([`Core::begin_turn`], [`Turn`], [`Persisted`]).
//! - this file: [`Core`]: inputs, staging all groups' Readies, persisting them at once,
//!   applying and replying.

pub mod command;
pub mod config;
pub mod control;
pub mod election;
mod election_core;
mod follower;
pub mod lease;
mod lease_core;
pub mod meta;
pub mod placement;
mod quiesce;
mod reconcile;
mod replica;
pub mod routing;
mod turn;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeV2, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use swarmkv_store::{ApplyBatch, ApplyEntry, ApplyOp, Backend, LogBatch, Store, StoreError};

pub use command::{Command, CommandError, Origin};
pub use config::CoreConfig;
pub use election::{Candidate, ElectionRequest};
pub use lease::{lease_hex, parse_lease_id, LeaseId, LeaseInfo, LeaseRecord, LeaseRequest};
pub use meta::{ClusterSettings, MetaState, NodeRecord, NodeState, Target, META_GROUP};
pub use placement::{plan_targets, ClusterLayout, DEFAULT_PARTITIONS, DEFAULT_REPLICATION};
pub use turn::{Persisted, Turn};
pub use types::*;

use replica::{Proposal, ReadyRead, Replica};

/// Index and term at which a new group's replicas start (from an empty snapshot carrying the
/// initial configuration, as TiKV does), so that no replica ever needs an empty log.
pub const INITIAL_INDEX: u64 = 5;
pub const INITIAL_TERM: u64 = 5;
const SETTINGS_META: &str = "cluster";
/// The targets of the layout this node was bootstrapped with, kept until the coordinator has
/// written them to the meta group (a restart before that must not forget them).
const LAYOUT_TARGETS_META: &str = "layout-targets";
/// How many times this node's core has started (see [`Origin::boot`]).
const BOOT_META: &str = "boot";

/// Errors that stop the core: storage failures (the node must stop acknowledging) and bad
/// setup calls.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the cluster layout is invalid: {0}")]
    BadLayout(String),
    #[error("stored node metadata is corrupt: {0}")]
    CorruptMeta(String),
}

/// A snapshot the driver must stream to a peer (its chunks, then `message`), then report
/// with [`Core::report_snapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotSend {
    pub to: NodeId,
    pub group: GroupId,
    /// The Raft `MsgSnapshot` to deliver after the chunks.
    pub message: Message,
    /// Snapshot index and number of chunks (from the descriptor).
    pub index: u64,
    pub chunks: u32,
}

/// Raft's view of one local group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub voters: Vec<NodeId>,
}

/// Counters of what the core did since it started (the driver exports them as metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Writes proposed to Raft.
    pub proposals: u64,
    /// Committed entries applied to state machines.
    pub applied: u64,
    /// Times a local replica became leader or stopped being leader.
    pub leader_changes: u64,
    /// Raft messages handed to the driver for sending.
    pub messages_out: u64,
    /// Raft messages stepped.
    pub messages_in: u64,
    /// Turns that persisted something (Raft state or applies).
    pub persist_turns: u64,
    /// Syncs of the Raft log.
    pub log_syncs: u64,
    /// Entries appended to the Raft log.
    pub log_entries: u64,
    /// Bytes written to the Raft log.
    pub log_bytes: u64,
    /// Flushes of the state layer to sled.
    pub state_flushes: u64,
    /// Keys written to sled by those flushes.
    pub state_flush_keys: u64,
}

struct InFlight {
    deadline_ms: u64,
}

/// The Readies of one turn between [`Core::stage`] and [`Core::persist`]: their store batch
/// and what is left to do with each once it is durable.
struct Staged {
    batch: LogBatch,
    readies: Vec<(GroupId, raft::Ready, Vec<Entry>)>,
    reload_leases: bool,
}

impl Staged {
    /// Whether persisting this turn waits for the disk (the driver then gets the turn off
    /// the async workers' backs); a turn that only applies and answers does not.
    fn needs_sync(&self) -> bool {
        self.batch.needs_sync()
    }
}

/// The local replicas of one node and everything waiting on them.
pub struct Core<B: Backend> {
    id: NodeId,
    store: Store<B>,
    config: CoreConfig,
    settings: Option<ClusterSettings>,
    /// Where every group's replicas should be, as last learned from the meta group.
    targets: BTreeMap<GroupId, Target>,
    replicas: BTreeMap<GroupId, Replica<B>>,
    rng: StdRng,
    logger: slog::Logger,
    now_ms: u64,
    last_tick_ms: u64,
    outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    snapshots_out: VecDeque<SnapshotSend>,
    replies: VecDeque<(RequestId, Reply)>,
    in_flight: BTreeMap<RequestId, InFlight>,
    stats: CoreStats,
    /// Leases as this node's meta replica knows them (see [`lease`]).
    leases: lease::LeaseTable,
    /// Election candidates as this node's meta replica knows them (see [`election`]).
    elections: election::ElectionTable,
    /// Which replicas tick, and the nodes the failure detector reports down (see `quiesce`).
    quiesce: quiesce::Quiescence,
    /// The applies of the current half turn, written together at its end (one store write for
    /// every group, not one each).
    applies: ApplyBatch,
    /// This start's boot count (see [`Origin::boot`]).
    boot: u64,
    /// Groups whose replica has reads waiting for the next ReadIndex call (see `follower`).
    reads_to_issue: BTreeSet<GroupId>,
}

fn logger() -> slog::Logger {
    use slog::Drain;
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

impl<B: Backend> Core<B> {
    /// Opens the core of node `id` on `store`, recreating every replica the store holds
    /// (a restart) and the cluster settings it was formed or joined with.
    pub fn new(
        id: NodeId,
        store: Store<B>,
        config: CoreConfig,
        now_ms: u64,
    ) -> Result<Core<B>, CoreError> {
        let settings: Option<ClusterSettings> = match store.get_meta(SETTINGS_META)? {
            Some(b) => Some(
                postcard::from_bytes(&b)
                    .map_err(|e| CoreError::CorruptMeta(format!("cluster settings: {e}")))?,
            ),
            None => None,
        };
        // Counted durably before anything is proposed: a follower's entries carry it.
        let boot = match store.get_meta(BOOT_META)? {
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| CoreError::CorruptMeta(format!("boot count of {} bytes", b.len())))?
                .wrapping_add(1),
            None => 1,
        };
        store.put_meta(BOOT_META, &boot.to_be_bytes())?;
        let rng = StdRng::seed_from_u64(config.seed ^ id.rotate_left(17));
        let election_ms = config.election_ticks.max(2) as u64 * config.tick_ms.max(1);
        let mut core = Core {
            id,
            store,
            config,
            settings,
            targets: BTreeMap::new(),
            replicas: BTreeMap::new(),
            rng,
            logger: logger(),
            now_ms,
            last_tick_ms: now_ms,
            outbox: BTreeMap::new(),
            snapshots_out: VecDeque::new(),
            replies: VecDeque::new(),
            in_flight: BTreeMap::new(),
            stats: CoreStats::default(),
            leases: lease::LeaseTable::new(election_ms),
            elections: election::ElectionTable::new(election_ms),
            quiesce: quiesce::Quiescence::default(),
            applies: ApplyBatch::default(),
            boot,
            reads_to_issue: BTreeSet::new(),
        };
        for g in core.store.groups()? {
            core.open_replica(g)?;
        }
        core.reload_leases()?;
        core.reload_elections()?;
        if core.settings.is_some() {
            if let Ok(m) = core.meta_state() {
                core.targets = m.targets;
            }
            if core.targets.is_empty() {
                if let Some(b) = core.store.get_meta(LAYOUT_TARGETS_META)? {
                    core.targets = postcard::from_bytes(&b)
                        .map_err(|e| CoreError::CorruptMeta(format!("layout targets: {e}")))?;
                }
            }
        }
        Ok(core)
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The store the core persists to (the driver reads snapshot chunks from it).
    pub fn store(&self) -> &Store<B> {
        &self.store
    }

    /// What the core did so far.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Length of one Raft tick: the driver calls [`Core::handle_tick`] at this period.
    pub fn tick_ms(&self) -> u64 {
        self.config.tick_ms
    }

    /// The cluster's settings, once this node formed or joined one.
    pub fn settings(&self) -> Option<&ClusterSettings> {
        self.settings.as_ref()
    }

    /// Records the settings of the cluster this node joined (durably).
    pub fn join(&mut self, settings: ClusterSettings) -> Result<(), CoreError> {
        if let Some(existing) = &self.settings {
            if existing.cluster_id != settings.cluster_id {
                return Err(CoreError::BadLayout(format!(
                    "this node belongs to cluster {:x}, not {:x}",
                    existing.cluster_id, settings.cluster_id
                )));
            }
            return Ok(());
        }
        let encoded =
            postcard::to_stdvec(&settings).map_err(|e| CoreError::BadLayout(e.to_string()))?;
        self.store.put_meta(SETTINGS_META, &encoded)?;
        self.settings = Some(settings);
        Ok(())
    }

    /// Replaces the cached target replica sets (learned from the meta group or its gossip);
    /// used for routing hints and by [`Core::reconcile`].
    pub fn set_targets(&mut self, targets: BTreeMap<GroupId, Target>) {
        if targets != self.targets {
            // Quiesced leaders are reconciled only when their targets may have moved.
            self.quiesce.targets_changed = true;
        }
        self.targets = targets;
    }

    /// The cached target replica sets.
    pub fn targets(&self) -> &BTreeMap<GroupId, Target> {
        &self.targets
    }

    /// The meta group's state as this node's replica of it has applied it (empty when the
    /// node holds no meta replica). Only the meta leader's copy is guaranteed current.
    pub fn meta_state(&self) -> Result<MetaState, CoreError> {
        if !self.replicas.contains_key(&META_GROUP) {
            return Ok(MetaState::default());
        }
        let page = self.store.scan_prefix(META_GROUP, MetaState::prefix(), 0)?;
        Ok(MetaState::from_records(
            page.records
                .iter()
                .map(|(k, r)| (k.as_slice(), r.value.as_slice())),
        ))
    }

    /// True when this node leads `group`.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.replicas.get(&group).is_some_and(|r| r.is_leader)
    }

    /// Proposes a write to the meta group (fire and forget: the coordinator re-reads the
    /// applied state). Returns false when this node does not lead the meta group.
    pub fn propose_meta(&mut self, op: swarmkv_store::KvOp) -> bool {
        let Some(r) = self.replicas.get_mut(&META_GROUP) else {
            return false;
        };
        if !r.is_leader {
            return false;
        }
        let data = Command::Kv { op, session: None }.encode();
        r.node.propose(Vec::new(), data).is_ok()
    }

    fn raft_config(&mut self, applied: u64) -> raft::Config {
        let base = self.config.election_ticks.max(2);
        raft::Config {
            id: self.id,
            election_tick: base,
            heartbeat_tick: self.config.heartbeat_ticks.max(1),
            min_election_tick: base,
            max_election_tick: 2 * base,
            applied,
            max_size_per_msg: self.config.max_size_per_msg,
            max_inflight_msgs: self.config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        }
    }

    fn open_replica(&mut self, group: GroupId) -> Result<(), CoreError> {
        let storage = self.store.group(group)?;
        let hs = storage.hard_state();
        let applied = storage.apply_state().index.min(hs.commit);
        let cfg = self.raft_config(applied);
        let node = RawNode::new(&cfg, storage, &self.logger)?;
        let mut replica = Replica::new(node);
        replica.vote_floor = self.tombstone(group)?.map(|t| (t.last_term, t.last_index));
        self.replicas.insert(group, replica);
        self.quiesce.awake.insert(group);
        Ok(())
    }

    /// What this node remembers of its last destroyed replica of `group`, if any.
    fn tombstone(&self, group: GroupId) -> Result<Option<Tombstone>, CoreError> {
        let Some(b) = self.store.get_meta(&tombstone_meta(group))? else {
            return Ok(None);
        };
        // Tombstones written before the log position was kept hold (term, vote) only.
        let tomb = postcard::from_bytes::<Tombstone>(&b).or_else(|_| {
            postcard::from_bytes::<(u64, u64)>(&b).map(|(term, vote)| Tombstone {
                term,
                vote,
                last_term: 0,
                last_index: 0,
            })
        });
        tomb.map(Some)
            .map_err(|e| CoreError::CorruptMeta(format!("tombstone of group {group}: {e}")))
    }

    /// Creates this node's replicas of a new cluster (the meta group and the partitions the
    /// layout places here). Every initial node calls it with the same layout; calling it again
    /// (or after a restart) changes nothing.
    pub fn bootstrap(&mut self, layout: ClusterLayout, cluster_id: u64) -> Result<(), CoreError> {
        if layout.nodes.is_empty() || layout.partitions == 0 || layout.replication == 0 {
            return Err(CoreError::BadLayout(format!("{layout:?}")));
        }
        self.join(ClusterSettings {
            cluster_id,
            partitions: layout.partitions,
            replication: layout.replication,
        })?;
        let targets = layout.targets();
        let encoded =
            postcard::to_stdvec(&targets).map_err(|e| CoreError::BadLayout(e.to_string()))?;
        self.store.put_meta(LAYOUT_TARGETS_META, &encoded)?;
        let mut batch = LogBatch::new();
        let mut new_groups = Vec::new();
        for (g, t) in &targets {
            if !t.replicas.contains(&self.id) || self.replicas.contains_key(g) {
                continue;
            }
            let mut snap = Snapshot::default();
            let m = snap.mut_metadata();
            m.index = INITIAL_INDEX;
            m.term = INITIAL_TERM;
            m.mut_conf_state().voters = t.replicas.clone();
            batch.apply_snapshot(*g, snap);
            new_groups.push((*g, t.replicas[0] == self.id));
        }
        self.store.commit(&batch)?;
        for (g, preferred) in new_groups {
            self.open_replica(g)?;
            if preferred {
                // The preferred leader campaigns at once so a new cluster serves quickly;
                // pre-vote makes this harmless if it loses.
                if let Some(r) = self.replicas.get_mut(&g) {
                    r.node.campaign()?;
                }
            }
        }
        if self.targets.is_empty() {
            self.targets = targets;
        }
        Ok(())
    }

    /// Advances the clock; ticks every replica once per elapsed tick and expires requests
    /// past their deadline (answering `Timeout`).
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms.max(self.now_ms);
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

    /// Creates an empty replica of `group` for `msg`'s leader. If this node held a replica of
    /// the group before (it was removed, or dropped a leftover), the new one starts from the
    /// old one's term and vote, and a message of an older term creates nothing (returns
    /// false): a leader of an older configuration that never learned of the removal must not
    /// find a blank voter to count toward its quorum, nor may a vote be given twice in a term.
    fn create_replica(&mut self, group: GroupId, msg: &Message) -> Result<bool, CoreError> {
        if let Some(Tombstone { term, vote, .. }) = self.tombstone(group)? {
            if msg.term < term {
                return Ok(false);
            }
            let mut batch = LogBatch::new();
            batch.set_hard_state(
                group,
                HardState {
                    term,
                    vote,
                    commit: 0,
                    ..Default::default()
                },
            );
            self.store.commit(&batch)?;
        }
        self.open_replica(group)?;
        Ok(true)
    }

    /// Destroys a local replica and its data, keeping its term and vote as a tombstone (see
    /// [`Core::create_replica`]).
    fn destroy_replica(&mut self, group: GroupId, r: Replica<B>) -> Result<(), CoreError> {
        let hs = r.node.raft.hard_state();
        let log = &r.node.raft.raft_log;
        let mut tomb = Tombstone {
            term: hs.term,
            vote: hs.vote,
            last_term: log.last_term(),
            last_index: log.last_index(),
        };
        // A replica recreated and destroyed again before it caught up keeps the older,
        // further position: its acknowledgements are what the floor protects.
        if let Some(old) = self.tombstone(group)? {
            if (old.last_term, old.last_index) > (tomb.last_term, tomb.last_index) {
                tomb.last_term = old.last_term;
                tomb.last_index = old.last_index;
            }
        }
        drop(r);
        let tomb = postcard::to_stdvec(&tomb).unwrap_or_default();
        self.store.put_meta(&tombstone_meta(group), &tomb)?;
        self.store.destroy_group(group)?;
        Ok(())
    }

    fn may_create(&self, group: GroupId, msg: &Message) -> bool {
        let Some(settings) = &self.settings else {
            return false;
        };
        let valid_group = group == META_GROUP
            || partition_of_group(group).is_some_and(|p| p < settings.partitions);
        valid_group
            && msg.to == self.id
            && msg.term > 0
            && matches!(
                msg.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
            )
    }

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
        let deadline_ms = self.now_ms + self.config.request_timeout_ms;
        match req.body {
            RequestBody::Write { op, session } => {
                if let Err(e) = op.validate(&self.store.config().limits) {
                    self.replies.push_back((id, Err(ClientError::Rejected(e))));
                    return;
                }
                let data = Command::Kv { op, session }.encode();
                match r.node.propose(Vec::new(), data) {
                    Ok(()) => {
                        let index = r.node.raft.raft_log.last_index();
                        let term = r.node.raft.term;
                        r.proposals.insert(index, Proposal { term, request: id });
                        self.stats.proposals += 1;
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

    /// Drops this node's replica of `group` and its data, because the group's leader reports
    /// a configuration without this node (a replica removed while its node was down never
    /// hears of its removal). The caller must know that from the leader, not guess it.
    pub fn drop_replica(&mut self, group: GroupId) -> Result<(), CoreError> {
        if self.replicas.get(&group).is_some_and(|r| r.is_leader) {
            return Ok(());
        }
        // A learner being brought in is missing from the leader's voters too, yet the leader
        // counts on what it acknowledged (it promotes it on that): never drop a replica whose
        // configuration names this node a learner.
        // Nor one whose configuration is joint with this node among the outgoing voters: the
        // leader that announced the new configuration may have committed the change to leave
        // the joint configuration without the new voters knowing it yet. They still need the
        // outgoing voters' majority to elect a leader, and if that leader is gone for good the
        // group could never elect one again.
        if self.replicas.get(&group).is_some_and(|r| {
            let cs = r.node.raft.prs().conf().to_conf_state();
            cs.learners.contains(&self.id)
                || cs.learners_next.contains(&self.id)
                || cs.voters_outgoing.contains(&self.id)
        }) {
            return Ok(());
        }
        if let Some(mut r) = self.replicas.remove(&group) {
            self.quiesce.awake.remove(&group);
            log::info!(
                "node {:x}: dropping leftover replica of group {group}",
                self.id
            );
            for (_, p) in std::mem::take(&mut r.proposals) {
                self.reply(p.request, Err(ClientError::LeaderChanged));
            }
            self.fail_replica_follower_ops(&mut r);
            let reads: Vec<RequestId> = r
                .reads_next
                .drain(..)
                .map(|(id, _)| id)
                .chain(r.reads_ready.drain(..).map(|rr| rr.request))
                .collect();
            for id in reads {
                self.reply(
                    id,
                    Err(ClientError::Unavailable {
                        reason: format!("this node's replica of group {group} was dropped"),
                    }),
                );
            }
            self.destroy_replica(group, r)?;
        }
        Ok(())
    }

    /// Tells Raft that `to` could not be reached, so replication to it slows to probing.
    pub fn report_unreachable(&mut self, to: NodeId) {
        // A quiesced group sends nothing, so nothing of it failed to arrive; the failure
        // detector's verdict wakes it if `to` is really gone (`set_node_live`).
        for r in self.replicas.values_mut().filter(|r| !r.quiesced) {
            r.node.report_unreachable(to);
        }
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

    /// Leader of each local group as this node sees it: (group, leader, is this node).
    pub fn leaders(&self) -> Vec<(GroupId, Option<NodeId>)> {
        self.replicas
            .iter()
            .map(|(g, r)| (*g, r.leader_hint()))
            .collect()
    }

    /// Raft's view of a local group, for status pages and debugging.
    pub fn group_status(&self, group: GroupId) -> Option<GroupStatus> {
        let r = self.replicas.get(&group)?;
        let raft = &r.node.raft;
        Some(GroupStatus {
            group,
            role: format!("{:?}", raft.state),
            term: raft.term,
            leader: r.leader_hint(),
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            last_index: raft.raft_log.last_index(),
            voters: raft.prs().conf().voters().ids().iter().collect(),
        })
    }

    /// Groups with a replica here.
    pub fn groups(&self) -> Vec<GroupId> {
        self.replicas.keys().copied().collect()
    }

    fn reply(&mut self, id: RequestId, reply: Reply) {
        let reply = self.lease_reply(id, reply);
        let reply = self.election_reply(id, reply);
        if self.in_flight.remove(&id).is_some() {
            self.replies.push_back((id, reply));
        }
    }

    fn queue_messages(&mut self, group: GroupId, mut msgs: Vec<Message>) {
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
        // The awake groups (quiesced ones have no work), and every group now and then.
        let groups = self.turn_groups();
        for g in &groups {
            let Some(r) = self.replicas.get_mut(g) else {
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
            let Some(r) = self.replicas.get_mut(g) else {
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
        Ok(Staged {
            batch,
            readies,
            reload_leases,
        })
    }

    /// The second half of a turn (see [`Core::stage`]): persists the staged Readies in one
    /// store batch (synced only if one of them needs it), then queues what may only leave after
    /// that, applies committed entries and answers requests. Returns an error only when storage
    /// failed; the node must then stop.
    fn persist(&mut self, staged: Staged) -> Result<(), CoreError> {
        let Staged {
            batch,
            readies,
            reload_leases,
        } = staged;
        let applies = std::mem::take(&mut self.applies);
        if !batch.is_empty() || !applies.is_empty() {
            let done = self.store.commit_with_applies(&batch, applies)?;
            self.stats.persist_turns += 1;
            self.stats.log_syncs += done.syncs as u64;
            self.stats.log_entries += done.entries as u64;
            self.stats.log_bytes += done.bytes as u64;
        }
        if reload_leases {
            self.reload_leases()?;
            self.reload_elections()?;
        }
        for (g, mut rd, ready_committed) in readies {
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
            if let Some(r) = self.replicas.get_mut(&g) {
                r.node.advance_apply();
                if std::mem::take(&mut r.step_down) && r.node.raft.state == StateRole::Leader {
                    let term = r.node.raft.term;
                    r.node.raft.become_follower(term + 1, raft::INVALID_ID);
                }
            }
        }
        self.write_applies()?;
        // The partitions' writes reach sled in batches (about every 100 ms), behind the log.
        if let Some(flushed) = self.store.flush_state_if_due(self.now_ms)? {
            self.stats.state_flushes += 1;
            self.stats.state_flush_keys += flushed.keys as u64;
        }
        Ok(())
    }

    /// Writes the applies gathered so far in this half turn (see [`Core::stage`]).
    fn write_applies(&mut self) -> Result<(), CoreError> {
        if !self.applies.is_empty() {
            self.store
                .write_applies(std::mem::take(&mut self.applies))?;
        }
        Ok(())
    }

    fn apply_committed(&mut self, g: GroupId, entries: Vec<Entry>) -> Result<(), CoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // The applied index read below must be the group's latest.
        if self.applies.contains(g) {
            self.write_applies()?;
        }
        let Some(r) = self.replicas.get_mut(&g) else {
            return Ok(());
        };
        let applied = r.node.store().apply_state().index;
        enum Decoded {
            Noop,
            Kv(swarmkv_store::KvOp, Option<swarmkv_store::Session>),
            Bad(String),
            Conf(raft::eraftpb::ConfState),
        }
        let mut decoded = Vec::with_capacity(entries.len());
        // Entries this node proposed as a follower, by index, to answer once applied.
        let mut mine: BTreeMap<u64, RequestId> = BTreeMap::new();
        for e in &entries {
            if e.index <= applied {
                // Re-delivered after a restart: the state machine already has it.
                continue;
            }
            if let Some(o) = Origin::decode(&e.context) {
                if o.node == self.id && o.boot == self.boot && r.follower_writes.remove(&o.request)
                {
                    mine.insert(e.index, o.request);
                }
            }
            let d = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => Decoded::Noop,
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Ok(Command::Kv { op, session }) => Decoded::Kv(op, session),
                    Err(err) => Decoded::Bad(err.to_string()),
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(raft::Error::from)?;
                    Decoded::Conf(r.node.apply_conf_change(&cc)?)
                }
                EntryType::EntryConfChangeV2 => {
                    // Includes the empty entry that leaves a joint configuration.
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(raft::Error::from)?;
                    match r.node.apply_conf_change(&cc) {
                        Ok(cs) => Decoded::Conf(cs),
                        Err(err) => {
                            // Refused (e.g. it no longer fits the configuration): a no-op on
                            // every replica alike.
                            log::warn!("group {g}: conf change at {} refused: {err}", e.index);
                            Decoded::Noop
                        }
                    }
                }
            };
            decoded.push((e.index, e.term, d));
        }
        let apply: Vec<ApplyEntry<'_>> = decoded
            .iter()
            .map(|(index, term, d)| ApplyEntry {
                index: *index,
                term: *term,
                op: match d {
                    Decoded::Noop | Decoded::Bad(_) => ApplyOp::Noop,
                    Decoded::Kv(op, None) => ApplyOp::Kv(op),
                    Decoded::Kv(op, Some(s)) => ApplyOp::KvOnce(op, *s),
                    Decoded::Conf(cs) => ApplyOp::ConfChange(cs),
                },
            })
            .collect();
        let results = self.store.apply_into(&mut self.applies, g, &apply)?;
        self.stats.applied += apply.len() as u64;
        if g == META_GROUP {
            let leader_term = r.is_leader.then(|| r.node.raft.term);
            for ((index, term, d), result) in decoded.iter().zip(&results) {
                if let Decoded::Kv(op, _) = d {
                    lease_core::note_meta_write(
                        &mut self.leases,
                        (*index, *term),
                        op,
                        result.as_ref(),
                        self.now_ms,
                        leader_term,
                    );
                    election_core::note_meta_write(
                        &mut self.elections,
                        *index,
                        op,
                        result.as_ref(),
                    );
                }
            }
        }
        let me = self.id;
        let still_member = |cs: &raft::eraftpb::ConfState| {
            cs.voters.contains(&me)
                || cs.learners.contains(&me)
                || cs.voters_outgoing.contains(&me)
                || cs.learners_next.contains(&me)
        };
        if let Some((_, _, Decoded::Conf(cs))) = decoded
            .iter()
            .rev()
            .find(|(_, _, d)| matches!(d, Decoded::Conf(_)))
        {
            // Removed: the replica stays, passive (raft-rs never lets a node outside the
            // configuration campaign), until a leader of the group reports a configuration
            // without it and the target does not want it either (`Core::drop_replica`). Its
            // vote may still be needed: the others apply the change only once they learn that
            // it committed, and until then they count the configuration before it. A leader
            // that left a joint configuration it was only an outgoing voter of, and dropped its
            // replica at once, left the followers that had not yet heard of the commit in the
            // joint configuration, whose outgoing half then had only one live voter: no
            // election could succeed again (sim seed 401311).
            if !still_member(cs) {
                log::info!(
                    "node {:x}: no longer in group {g}'s configuration; the replica stays until \
                     the group's leader reports that",
                    self.id
                );
            }
            // A leader the configuration no longer counts as a voter (it was elected on a
            // configuration it had not yet seen replaced, e.g. after a restart that lost its
            // applied state) would lead a group it is not part of for good: raft-rs leaves
            // that to the application. Step down, as etcd does, so that the voters elect one
            // of themselves and the leader's reconcile can add this node back.
            // (After this turn's advance: raft-rs forbids a term change inside a Ready.)
            let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
            r.step_down = !voter && r.node.raft.state == StateRole::Leader;
        }
        let mut answers = Vec::new();
        for ((index, term, d), result) in decoded.iter().zip(results) {
            let applied_reply = || match (result.clone(), d) {
                (Some(Ok(outcome)), _) => Ok(Response::Write(outcome)),
                (Some(Err(e)), _) => Err(ClientError::Rejected(e)),
                (None, Decoded::Bad(why)) => Err(ClientError::BadRequest(why.clone())),
                (None, _) => Err(ClientError::ProposalDropped),
            };
            // Every proposal at or below this index is settled now.
            while let Some((&pi, &p)) = r.proposals.first_key_value() {
                if pi > *index {
                    break;
                }
                r.proposals.remove(&pi);
                let reply = if pi == *index && p.term == *term {
                    applied_reply()
                } else {
                    Err(ClientError::ProposalDropped)
                };
                answers.push((p.request, reply));
            }
            if let Some(request) = mine.remove(index) {
                answers.push((request, applied_reply()));
            }
        }
        // Compact once enough applied entries piled up.
        let applied_now = decoded.last().map_or(applied, |(i, _, _)| *i);
        let first = r.node.store().first_index().unwrap_or(1);
        if applied_now.saturating_sub(first) >= self.config.compact_threshold {
            r.compact_to = Some(
                applied_now
                    .saturating_sub(self.config.compact_keep)
                    .max(first),
            );
        }
        // Serve the reads the state machine has now caught up with.
        let mut still = Vec::new();
        let mut reads = Vec::new();
        for rr in r.reads_ready.drain(..) {
            if rr.index <= applied_now {
                reads.push(rr);
            } else {
                still.push(rr);
            }
        }
        r.reads_ready = still;
        for (id, reply) in answers {
            self.reply(id, reply);
        }
        if !reads.is_empty() {
            // The reads must see these applies, which are only gathered so far: a read whose
            // index is among them would otherwise miss a write it must see (followers' reads
            // often wait for exactly the entries this apply brings).
            self.write_applies()?;
        }
        for rr in reads {
            let reply = serve_read(&self.store, g, &rr.body);
            self.reply(rr.request, reply);
        }
        if g == META_GROUP {
            // Observers whose leader just changed get their answer now, not at the next tick.
            self.wake_observers();
        }
        Ok(())
    }

    /// Serves reads that were waiting for applies that a previous turn made (reads whose
    /// index was already applied when their read state arrived).
    fn serve_caught_up_reads(&mut self) {
        // A quiesced replica has no reads waiting (a read wakes it).
        let groups: Vec<GroupId> = self.quiesce.awake.iter().copied().collect();
        for g in groups {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            if r.reads_ready.is_empty() {
                continue;
            }
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

/// The store meta record of a dropped replica's last term and vote.
/// What a node keeps of a replica it destroyed: the term and vote it must not go back on,
/// and how far its log reached (see `Replica::vote_floor`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Tombstone {
    term: u64,
    vote: u64,
    last_term: u64,
    last_index: u64,
}

fn tombstone_meta(group: GroupId) -> String {
    format!("tombstone/{group}")
}

fn serve_read<B: Backend>(store: &Store<B>, group: GroupId, body: &RequestBody) -> Reply {
    let storage_err = |e: StoreError| ClientError::Storage(e.to_string());
    match body {
        RequestBody::Get { key, .. } => store
            .get(group, key)
            .map(Response::Get)
            .map_err(storage_err),
        RequestBody::Scan {
            start, end, limit, ..
        } => store
            .scan(group, start, end.as_deref(), *limit)
            .map(|p| Response::Scan {
                records: p.records,
                more: p.more,
            })
            .map_err(storage_err),
        RequestBody::Write { .. } => Err(ClientError::BadRequest("a write is not a read".into())),
    }
}
