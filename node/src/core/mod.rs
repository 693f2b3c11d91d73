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
//! - `replicas`: the node's replicas, and which of them the next turn asks for a Ready.
//! - `step`: the clock's and the network's inputs (ticks, Raft messages, send reports).
//! - `requests`: client requests, served at once or proposed and waited for.
//! - `backup`: the barrier a backup freezes a group after, and a restored node's seed.
//! - `lifecycle`: replicas created, bootstrapped and dropped, and their tombstones.
//! - `turn`: one turn in its one order ([`Core::begin_turn`], [`Turn`], [`Persisted`]):
//!   staging every group's Ready, writing them in one batch, handing out the output.
//! - `pipeline`: the batches' syncs off the turn ([`SyncJob`], [`Core::on_synced`]), and the
//!   Readies and messages that wait for them.
//! - `apply`: committed entries applied to the state machines, and the answers they give.
//! - this file: [`Core`], its construction and what it tells about itself.

mod apply;
mod backup;
pub mod command;
pub mod config;
pub mod control;
pub mod election;
mod election_core;
mod follower;
pub mod lease;
mod lease_core;
mod lifecycle;
pub mod meta;
mod pipeline;
pub mod placement;
mod quiesce;
mod reconcile;
mod replica;
mod replicas;
mod requests;
pub mod routing;
mod step;
mod turn;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;
use swarmkv_store::{ApplyBatch, Backend, Store, StoreError};

pub use command::{Command, CommandError, Origin};
pub use config::CoreConfig;
pub use election::{Candidate, ElectionRequest};
pub use lease::{lease_hex, parse_lease_id, LeaseId, LeaseInfo, LeaseRecord, LeaseRequest};
pub use meta::{ClusterSettings, MetaState, NodeRecord, NodeState, Target, META_GROUP};
pub use pipeline::{SyncDone, SyncJob};
pub use placement::{plan_targets, ClusterLayout, DEFAULT_PARTITIONS, DEFAULT_REPLICATION};
pub use turn::{Persisted, Turn};
pub use types::*;

use replicas::Replicas;

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
    /// Of those, the writes a follower proposed (raft-rs passes them to the leader): what a
    /// client that sends each write to its partition's leader saves.
    pub follower_proposals: u64,
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
    /// Turns taken ([`Core::begin_turn`]).
    pub turns: u64,
    /// Replicas those turns asked for a Ready: the ones reached since the turn before, and
    /// every replica once a second.
    pub ready_checks: u64,
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

/// The local replicas of one node and everything waiting on them.
pub struct Core<B: Backend> {
    id: NodeId,
    store: Store<B>,
    config: CoreConfig,
    settings: Option<ClusterSettings>,
    /// Where every group's replicas should be, as last learned from the meta group.
    targets: BTreeMap<GroupId, Target>,
    replicas: Replicas<B>,
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
    /// The staged snapshots a restored node's groups start from (see `backup`).
    restore_seed: Option<BTreeMap<GroupId, swarmkv_store::SnapshotDescriptor>>,
    /// Readies written and waiting for a sync off the turn (see `pipeline`).
    pipeline: pipeline::Pipeline,
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
            replicas: Replicas::new(),
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
            restore_seed: None,
            pipeline: pipeline::Pipeline::default(),
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

    /// Core time at which the local replica of `group` last applied a configuration change
    /// (or was created or loaded).
    pub fn conf_applied_ms(&self, group: GroupId) -> Option<u64> {
        self.replicas.get(&group).map(|r| r.conf_applied_ms)
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
}
