//! The simulated cluster: real `Core`s over `MemBackend` stores, each with the shipped control
//! plane (`core::control::Control`), driven turn by turn the way `node/src/driver.rs` drives
//! them (inputs, tick, control plane, `process`, serve caught-up reads, then send messages,
//! stream snapshots, answer requests and carry out control actions), on a virtual clock and
//! the virtual network of `net.rs`, which also carries the nodes' announcements (as gossip
//! heartbeats would) and their join requests. Faults come from one seed, clients record a
//! history, and every invariant is checked after every node turn. The world decides nothing
//! for the cluster: formation of added nodes, registration, liveness verdicts, placement and
//! leftover collection are the shipped code's.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use swarmkv::core::control::{targets_epoch, Control, ControlAction, ControlParams, JoinVerdict};
use swarmkv::core::routing::partition_of;
use swarmkv::core::{
    plan_targets, ClientError, ClusterLayout, ClusterSettings, Core, CoreConfig, GroupId, NodeId,
    NodeRecord, NodeState, Reply, Request, RequestBody, RequestId, SyncJob, META_GROUP,
};
use swarmkv_store::{KvRecord, MemBackend, Store, StoreConfig};

use crate::client::{interpret, Client, ClientState, Interpretation, Objects, OpRecord, Outcome};
use crate::invariants::acknowledged_writes::{self, AckedWrite};
use crate::invariants::{Observer, Violation};
use crate::linearizability::{self, Input, Operation, Output, Verdict};
use crate::locks::{self, LockCall, LockClient};
use crate::net::{Net, Packet, Payload};
use crate::params::Params;

/// Length of one simulation step.
const QUANTUM_MS: u64 = 10;
/// Groups moving toward a new target at once.
const MAX_MOVES: usize = 4;
/// A node silent this long is marked dead: longer than most single faults (a crash, pause or
/// partition lasts up to 4 s), so the verdict comes mostly from a replaced node and from a
/// node that repeated faults keep silent.
const DEAD_AFTER_MS: u64 = 6_000;
/// How many times a join request may be passed on toward the meta leader.
const JOIN_HOPS: u8 = 2;
/// After the faults stop, clients keep working this long.
const HEAL_LOAD_MS: u64 = 2_000;
/// The cluster must have converged and answered everything this long after the faults stop.
const HEAL_MAX_MS: u64 = 60_000;
/// Attempts of one operation (retries follow hints, or resend an ambiguous write with its
/// session).
const MAX_ATTEMPTS: u32 = 5;
/// In a zero-config run the nodes start without a cluster and must have formed one, with all
/// of them as initial voters, by this time: the longest listening window plus time for the
/// bootstrap calls to arrive. Faults start after it.
const FORMATION_MS: u64 = 4_000;
/// The listening window of a node started after the initial ones (added, or restarted before
/// it joined): longer than any partition, so it joins the cluster rather than forming one
/// of its own while cut off, which a fresh node alone on its network does by design.
const LATE_DISCOVERY_MS: u64 = 60_000;
/// Search budget of the linearizability checker, per key.
const CHECK_STEPS: u64 = 2_000_000;
/// Lock clients' ids start above this (clear of the key-value clients').
const LOCKER_IDS: u64 = 2_000;
/// The sender id of client requests (never a node, never cut off).
const CLIENT: NodeId = 0;
/// The client that reads every key at the end.
const FINAL_READER: u64 = 1_000;

/// A broken property, with when it was seen.
#[derive(Debug, Clone)]
pub struct Failure {
    pub property: &'static str,
    pub detail: String,
    pub at_ms: u64,
}

/// What a passing run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Digest of the whole history: two runs of a seed must agree.
    pub fingerprint: u64,
    pub virtual_ms: u64,
    pub ops_ok: usize,
    pub ops_ambiguous: usize,
    pub ops_failed: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub pauses: usize,
    pub clock_stalls: usize,
    pub membership: &'static str,
    pub unknown_keys: usize,
    /// Transactions that held and wrote both keys of a pair.
    pub pair_writes: usize,
    /// Spans during which a lock client held the lock.
    pub lock_holds: usize,
    pub nodes: usize,
    /// (group, term) pairs that had a leader, distinct log entries seen, replica states
    /// compared: how much the invariants looked at.
    pub terms_led: usize,
    pub entries_seen: usize,
    pub states_compared: u64,
    /// The most replicas seen quiesced at once (how much quiescence was exercised).
    pub quiesced_max: usize,
    /// The nodes formed their cluster themselves (zero-config) rather than being bootstrapped.
    pub zero_config: bool,
}

/// A zero-config seed's formation, until it is checked.
struct Formation {
    /// The network's loss and spike probabilities, restored once the cluster formed: the
    /// nodes start together and hear each other, which is what formation promises to use.
    loss: f64,
    spike: f64,
    /// The (cluster id, initial nodes) of every cluster a node formed, as its bootstrap
    /// calls to the other initial nodes carry them.
    formed: BTreeSet<(u64, Vec<NodeId>)>,
}

struct Node {
    backend: MemBackend,
    core: Option<Core<MemBackend>>,
    /// The control plane of the running incarnation.
    control: Option<Control>,
    incarnation: u64,
    /// Replaced: stopped for good.
    retired: bool,
    /// Frozen (SIGSTOP): no turns, inbound packets wait.
    paused_until: u64,
    /// Its timer stalls: no ticks, then a burst.
    stall_until: u64,
    /// When a crashed node comes back.
    restart_at: Option<u64>,
    /// The Raft log sync its driver's writer runs, and when it returns (a crash loses it
    /// and every write it would have made durable).
    syncing: Option<(u64, SyncJob)>,
}

impl Node {
    fn up(&self) -> bool {
        self.core.is_some() && !self.retired
    }
}

/// One seeded run.
pub struct World {
    verbose: bool,
    /// In a verbose run: each replica's last traced role, term and configuration.
    traced: BTreeMap<(NodeId, GroupId), String>,
    p: Params,
    rng: StdRng,
    now: u64,
    config: CoreConfig,
    settings: ClusterSettings,
    nodes: BTreeMap<NodeId, Node>,
    net: Net,
    clients: Vec<Client>,
    history: Vec<OpRecord>,
    owners: BTreeMap<RequestId, usize>,
    lockers: Vec<LockClient>,
    /// Which lock client each lease or election request in flight belongs to.
    lock_owners: BTreeMap<RequestId, usize>,
    next_rid: RequestId,
    observer: Observer,
    /// The registry the cluster must reach: every node live, a replaced one dead, a
    /// decommissioned one decommissioned.
    wanted: BTreeMap<NodeId, NodeState>,
    /// A node the operator asked to decommission: the request is repeated to the meta leader
    /// until the registry records it.
    decommission: Option<NodeId>,
    control_params: ControlParams,
    /// Set in a zero-config seed until its formation is checked.
    formation: Option<Formation>,
    /// Revision at which each value was written, as answers and reads report it.
    revisions: BTreeMap<u64, u64>,
    acked: Vec<AckedWrite>,
    next_crash: u64,
    /// The writer's timing and the crash model of the Raft log's unsynced writes, drawn
    /// apart from `rng` so that they do not move the rest of a seed's schedule.
    disk_rng: StdRng,
    /// Longest time a writer's sync takes.
    sync_max_ms: u64,
    next_partition: u64,
    next_pause: u64,
    next_clock: u64,
    partition_until: u64,
    membership_at: u64,
    healed: bool,
    final_script: Vec<usize>,
    finals: BTreeMap<Vec<u8>, Option<KvRecord>>,
    summary: Summary,
}

/// The delay to a fault's next occurrence: `every` give or take half.
fn around(rng: &mut StdRng, every: u64) -> u64 {
    rng.gen_range(every / 2..every * 3 / 2)
}

fn first_at(rng: &mut StdRng, every: u64) -> u64 {
    if every == 0 {
        u64::MAX
    } else {
        rng.gen_range(0..2 * every)
    }
}

/// The control plane's settings in the simulation: the shipped periods, a small move budget,
/// silence thresholds scaled to the seed's failure detection delay, and the listening window
/// of nodes started late (see `LATE_DISCOVERY_MS`).
fn control_params(p: &Params) -> ControlParams {
    ControlParams {
        auto_form: true,
        expect: None,
        discovery_ms: LATE_DISCOVERY_MS,
        partitions: p.partitions,
        replication: p.replication,
        dead_after_ms: DEAD_AFTER_MS,
        max_moves: MAX_MOVES,
        announce_ttl_ms: 1_000 + p.detect_ms,
        leftover_grace_ms: 2_000,
        join_timeout_ms: 2_000,
        ..ControlParams::default()
    }
}

/// A node's identity on the virtual network (what a PeerId is on the real one).
fn peer_of(id: NodeId) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

impl World {
    /// Builds the cluster of `seed` (bootstrapped, or `zero_config`: left to form itself;
    /// nothing run yet).
    pub fn new(seed: u64, verbose: bool, zero_config: bool) -> Result<World, Failure> {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = Params::draw(&mut rng);
        // Most seeds sync the Raft log off the turn, as the node does; the others in place.
        let mut disk_rng = StdRng::seed_from_u64(seed ^ 0x5eed_d15c);
        let pipelined_sync = disk_rng.gen_bool(0.8);
        let sync_max_ms = [0, QUANTUM_MS, 3 * QUANTUM_MS][disk_rng.gen_range(0..3)];
        let mut ids = BTreeSet::new();
        while ids.len() < p.nodes {
            ids.insert(rng.gen_range(1..u64::MAX >> 8));
        }
        let mut ids: Vec<NodeId> = ids.into_iter().collect();
        ids.shuffle(&mut rng);
        let config = CoreConfig {
            tick_ms: p.tick_ms,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_size_per_msg: p.max_size_per_msg,
            max_inflight_msgs: p.max_inflight_msgs,
            compact_threshold: p.compact_threshold,
            compact_keep: p.compact_keep,
            request_timeout_ms: p.request_timeout_ms,
            seed: rng.gen(),
            quiesce_after_ticks: p.quiesce_after_ticks,
            pipelined_sync,
        };
        let layout = ClusterLayout {
            nodes: ids.clone(),
            partitions: p.partitions,
            replication: p.replication,
        };
        let settings = ClusterSettings {
            cluster_id: seed | 1,
            partitions: p.partitions,
            replication: p.replication,
        };
        let setup = |e: String| Failure {
            property: "setup",
            detail: e,
            at_ms: 0,
        };
        let mut p = p;
        let control_params = control_params(&p);
        let mut initial_params = control_params.clone();
        if zero_config {
            // The shipped listening window; the faults start once the cluster formed.
            initial_params.discovery_ms = ControlParams::default().discovery_ms;
            initial_params.settle_ms = ControlParams::default().settle_ms;
            p.fault_ms += FORMATION_MS;
        }
        let mut nodes = BTreeMap::new();
        for id in &ids {
            let backend = MemBackend::new();
            let store = Store::with_backend(backend.clone(), StoreConfig::default())
                .map_err(|e| setup(e.to_string()))?;
            let mut core =
                Core::new(*id, store, config.clone(), 0).map_err(|e| setup(e.to_string()))?;
            let mut control = Control::new(*id, peer_of(*id), initial_params.clone(), rng.gen(), 0);
            if !zero_config {
                control
                    .handle_bootstrap(&mut core, layout.clone(), settings.cluster_id)
                    .map_err(|e| setup(e.to_string()))?;
            }
            nodes.insert(
                *id,
                Node {
                    backend,
                    core: Some(core),
                    control: Some(control),
                    incarnation: 0,
                    retired: false,
                    paused_until: 0,
                    stall_until: 0,
                    restart_at: None,
                    syncing: None,
                },
            );
        }
        let clients = (1..=p.clients as u64).map(Client::new).collect();
        let lockers = (1..=p.lockers as u64)
            .map(|i| LockClient::new(LOCKER_IDS + i, p.lock_ttl_ms))
            .collect();
        let mut net = Net::new(p.loss, p.dup, p.max_delay, p.spike);
        let start = if zero_config { FORMATION_MS } else { 0 };
        let after_formation = |t: u64| t.saturating_add(start);
        let next_crash = after_formation(first_at(&mut rng, p.crash_every));
        let next_partition = after_formation(first_at(&mut rng, p.partition_every));
        let next_pause = after_formation(first_at(&mut rng, p.pause_every));
        let next_clock = after_formation(first_at(&mut rng, p.clock_every));
        let membership_at = if p.membership == 0 {
            u64::MAX
        } else {
            let fault_ms = p.fault_ms - start;
            after_formation(rng.gen_range(fault_ms / 4..fault_ms * 3 / 4))
        };
        let formation = zero_config.then(|| {
            let f = Formation {
                loss: net.loss,
                spike: net.spike,
                formed: BTreeSet::new(),
            };
            net.loss = 0.0;
            net.spike = 0.0;
            f
        });
        let wanted = ids.iter().map(|id| (*id, NodeState::Live)).collect();
        let summary = Summary {
            nodes: p.nodes,
            membership: "none",
            zero_config,
            ..Summary::default()
        };
        let w = World {
            verbose,
            traced: BTreeMap::new(),
            p,
            rng,
            now: 0,
            config,
            settings,
            nodes,
            net,
            clients,
            history: Vec::new(),
            owners: BTreeMap::new(),
            lockers,
            lock_owners: BTreeMap::new(),
            next_rid: 1,
            observer: Observer::default(),
            wanted,
            decommission: None,
            control_params,
            formation,
            revisions: BTreeMap::new(),
            acked: Vec::new(),
            next_crash,
            disk_rng,
            sync_max_ms,
            next_partition,
            next_pause,
            next_clock,
            partition_until: 0,
            membership_at,
            healed: false,
            final_script: Vec::new(),
            finals: BTreeMap::new(),
            summary,
        };
        if verbose {
            eprintln!("seed {seed}: {:?}", w.p);
            eprintln!("pipelined sync {pipelined_sync}, syncs take up to {sync_max_ms} ms");
            eprintln!("nodes {:x?}", ids);
            for (id, n) in &w.nodes {
                let groups = n.core.as_ref().map(|c| c.groups()).unwrap_or_default();
                eprintln!("  {id:x}: groups {groups:?}");
            }
        }
        Ok(w)
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[{:>6} ms] {}", self.now, what());
        }
    }

    fn fail(&self, property: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            property,
            detail: detail.into(),
            at_ms: self.now,
        }
    }

    fn violation(&self, v: Violation) -> Failure {
        self.fail(v.property, v.detail)
    }

    fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up())
            .map(|(id, _)| *id)
            .collect()
    }

    fn active_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.retired)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Runs the seed to the end: faults, heal, final reads, then the whole-history checks.
    pub fn run(mut self) -> Result<Summary, Failure> {
        loop {
            self.now += QUANTUM_MS;
            if self.now < self.p.fault_ms {
                self.inject_faults()?;
            } else if !self.healed {
                self.heal()?;
            }
            self.restart_due()?;
            if self.now >= self.partition_until && self.net.has_cuts() && self.healed {
                self.net.set_cuts(BTreeSet::new());
            }
            for packet in self.net.due(self.now) {
                self.deliver(packet)?;
            }
            self.drive_clients()?;
            self.drive_lockers()?;
            self.operator();
            let mut order = self.up_ids();
            order.shuffle(&mut self.rng);
            for id in order {
                self.turn(id)?;
            }
            if self.now >= FORMATION_MS {
                if let Some(f) = self.formation.take() {
                    self.check_formation(f)?;
                }
            }
            let quiesced: usize = self
                .nodes
                .values()
                .filter_map(|n| n.core.as_ref())
                .map(|c| c.quiesced_groups())
                .sum();
            self.summary.quiesced_max = self.summary.quiesced_max.max(quiesced);
            if self.healed && self.finished()? {
                break;
            }
            if self.now > self.p.fault_ms + HEAL_MAX_MS {
                let mut detail = format!(
                    "not converged {} ms after the faults stopped: {}",
                    HEAL_MAX_MS,
                    self.convergence_gap()
                );
                if self.verbose {
                    detail.push_str(&self.dump());
                }
                return Err(self.fail("convergence after heal", detail));
            }
        }
        self.check_history()?;
        self.summary.virtual_ms = self.now;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for op in &self.history {
            (op.client, op.key, op.call, op.ret).hash(&mut h);
            format!("{:?}", op.outcome).hash(&mut h);
        }
        self.net.sent.hash(&mut h);
        self.summary.fingerprint = h.finish();
        self.summary.terms_led = self.observer.election.terms_led();
        self.summary.entries_seen = self.observer.log.entries_seen();
        self.summary.states_compared = self.observer.applied.compared;
        for op in &self.history {
            let both = |i: &Input| {
                matches!(
                    i,
                    Input::Txn {
                        then: [Some(_), Some(_)],
                        ..
                    }
                )
            };
            match op.outcome {
                Outcome::Ok(Output::Txn {
                    succeeded: true, ..
                }) if both(&op.input) => {
                    self.summary.ops_ok += 1;
                    self.summary.pair_writes += 1;
                }
                Outcome::Ok(_) => self.summary.ops_ok += 1,
                Outcome::Ambiguous(_) => self.summary.ops_ambiguous += 1,
                _ => self.summary.ops_failed += 1,
            }
        }
        Ok(self.summary)
    }

    /// A zero-config seed's nodes, started together, formed exactly one cluster, with every
    /// one of them as an initial voter; then the network gets its seed's loss back.
    fn check_formation(&mut self, f: Formation) -> Result<(), Failure> {
        let mut initial: Vec<NodeId> = self.nodes.keys().copied().collect();
        initial.sort_unstable();
        let clusters: BTreeMap<NodeId, Option<u64>> = self
            .nodes
            .iter()
            .map(|(id, n)| {
                (
                    *id,
                    n.core
                        .as_ref()
                        .and_then(|c| c.settings())
                        .map(|s| s.cluster_id),
                )
            })
            .collect();
        let ids: BTreeSet<Option<u64>> = clusters.values().copied().collect();
        let one = ids.len() == 1 && !ids.contains(&None);
        let all_voters = f.formed.len() == 1 && f.formed.iter().all(|(_, nodes)| *nodes == initial);
        if !one || !all_voters {
            return Err(self.fail(
                "zero-config formation",
                format!(
                    "nodes {initial:x?} started together; clusters by node {clusters:x?}, \
                     formed (cluster, initial nodes) {:x?}",
                    f.formed
                ),
            ));
        }
        self.log(|| format!("formed one cluster of {} nodes", initial.len()));
        self.net.loss = f.loss;
        self.net.spike = f.spike;
        Ok(())
    }

    // ----- faults -----

    fn inject_faults(&mut self) -> Result<(), Failure> {
        let now = self.now;
        if now >= self.next_crash {
            self.next_crash = now + around(&mut self.rng, self.p.crash_every);
            self.crash_one();
        }
        if now >= self.next_partition {
            self.next_partition = now + around(&mut self.rng, self.p.partition_every);
            self.partition();
        }
        if now >= self.partition_until && self.net.has_cuts() {
            self.log(|| "partition healed".into());
            self.net.set_cuts(BTreeSet::new());
        }
        if now >= self.next_pause {
            self.next_pause = now + around(&mut self.rng, self.p.pause_every);
            let up = self.up_ids();
            if let Some(id) = up.choose(&mut self.rng).copied() {
                let d = self.rng.gen_range(200..3_000);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.paused_until = now + d;
                }
                self.summary.pauses += 1;
                self.log(|| format!("pause {id:x} for {d} ms"));
            }
        }
        if now >= self.next_clock {
            self.next_clock = now + around(&mut self.rng, self.p.clock_every);
            let up = self.up_ids();
            if let Some(id) = up.choose(&mut self.rng).copied() {
                let d = self.rng.gen_range(300..3_000);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.stall_until = now + d;
                }
                self.summary.clock_stalls += 1;
                self.log(|| format!("clock of {id:x} stalls for {d} ms"));
            }
        }
        if now >= self.membership_at {
            self.membership_at = u64::MAX;
            self.change_membership()?;
        }
        Ok(())
    }

    fn crash_one(&mut self) {
        let up = self.up_ids();
        let active = self.active_ids().len();
        // Keep a majority of the nodes up, so that the run makes progress between faults.
        if active - up.len() >= (active - 1) / 2 {
            return;
        }
        let Some(id) = up.choose(&mut self.rng).copied() else {
            return;
        };
        let down_for = self.rng.gen_range(200..3_000);
        self.crash(id, Some(self.now + down_for));
    }

    fn crash(&mut self, id: NodeId, restart_at: Option<u64>) {
        let keep_all = self.rng.gen_bool(self.p.keep_unsynced);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.core = None;
        n.control = None;
        n.syncing = None;
        let unsynced = n.backend.unsynced_batches();
        let keep = if keep_all {
            self.rng.gen_range(0..=unsynced)
        } else {
            0
        };
        // The disk may have written any prefix of the log's unsynced writes.
        let log_unsynced = n.backend.unsynced_log_bytes();
        let keep_log = match self.disk_rng.gen_range(0..3) {
            0 => 0,
            1 => self.disk_rng.gen_range(0..=log_unsynced),
            _ => log_unsynced,
        };
        n.backend.crash_keeping(keep, keep_log);
        n.incarnation += 1;
        n.restart_at = restart_at;
        n.paused_until = 0;
        n.stall_until = 0;
        self.summary.crashes += 1;
        self.log(|| {
            format!(
                "crash {id:x} (kept {keep} of {unsynced} unsynced batches, {keep_log} of \
                 {log_unsynced} unsynced log bytes)"
            )
        });
    }

    fn restart_due(&mut self) -> Result<(), Failure> {
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.retired && n.core.is_none())
            .filter(|(_, n)| n.restart_at.is_some_and(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.restart(id)?;
        }
        Ok(())
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Failure> {
        let now = self.now;
        let config = self.config.clone();
        let seed = self.rng.gen();
        let control = Control::new(id, peer_of(id), self.control_params.clone(), seed, now);
        let Some(n) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let store = Store::with_backend(n.backend.clone(), StoreConfig::default());
        let core = store
            .map_err(|e| e.to_string())
            .and_then(|s| Core::new(id, s, config, now).map_err(|e| e.to_string()));
        match core {
            Ok(c) => {
                n.core = Some(c);
                n.control = Some(control);
                n.restart_at = None;
                let groups = n.core.as_ref().map(|c| c.groups()).unwrap_or_default();
                self.log(|| format!("restart {id:x} with groups {groups:?}"));
                Ok(())
            }
            Err(e) => Err(self.fail("restart", format!("node {id:x} cannot restart: {e}"))),
        }
    }

    fn partition(&mut self) {
        let mut ids = self.active_ids();
        if ids.len() < 2 {
            return;
        }
        ids.shuffle(&mut self.rng);
        let mut k = self.rng.gen_range(1..=ids.len() / 2);
        let kind = self.rng.gen_range(0..4);
        if kind == 3 {
            // Cut a leader off (the case that tests reads: it keeps believing it leads for an
            // election timeout while the majority elects another).
            let g = self.rng.gen_range(0..=u64::from(self.p.partitions));
            if let Some(l) = self.leader_of(g) {
                if let Some(pos) = ids.iter().position(|n| *n == l) {
                    ids.swap(0, pos);
                    k = 1;
                    if self.rng.gen_bool(0.5) {
                        // ...and its clock stalls, so it does not notice for a while.
                        let d = self.rng.gen_range(300..3_000);
                        if let Some(n) = self.nodes.get_mut(&l) {
                            n.stall_until = self.now + d;
                        }
                        self.summary.clock_stalls += 1;
                        self.log(|| format!("clock of leader {l:x} stalls for {d} ms"));
                    }
                }
            }
        }
        let (a, b) = ids.split_at(k);
        let (a, mut b) = (a.to_vec(), b.to_vec());
        let mut cuts = BTreeSet::new();
        let mut bridge = None;
        if kind == 2 && b.len() >= 2 {
            bridge = b.pop();
        }
        for x in &a {
            for y in &b {
                cuts.insert((*x, *y));
                if kind != 1 {
                    cuts.insert((*y, *x));
                }
            }
        }
        let d = self.rng.gen_range(300..4_000);
        self.partition_until = self.now + d;
        self.net.set_cuts(cuts);
        self.summary.partitions += 1;
        let name = ["symmetric", "one-way", "bridge", "leader-isolating"][kind];
        self.log(|| format!("{name} partition {a:x?} | {b:x?} (bridge {bridge:x?}) for {d} ms"));
    }

    fn add_node(&mut self) -> Result<NodeId, Failure> {
        let id = loop {
            let id = self.rng.gen_range(1..u64::MAX >> 8);
            if !self.nodes.contains_key(&id) {
                break id;
            }
        };
        let backend = MemBackend::new();
        let store = Store::with_backend(backend.clone(), StoreConfig::default())
            .map_err(|e| self.fail("setup", e.to_string()))?;
        // A new node starts without a cluster: its control plane hears the members'
        // announcements and joins through one of them.
        let core = Core::new(id, store, self.config.clone(), self.now)
            .map_err(|e| self.fail("setup", e.to_string()))?;
        let seed = self.rng.gen();
        let control = Control::new(id, peer_of(id), self.control_params.clone(), seed, self.now);
        self.nodes.insert(
            id,
            Node {
                backend,
                core: Some(core),
                control: Some(control),
                incarnation: 0,
                retired: false,
                paused_until: 0,
                stall_until: 0,
                restart_at: None,
                syncing: None,
            },
        );
        self.wanted.insert(id, NodeState::Live);
        self.summary.nodes += 1;
        Ok(id)
    }

    fn change_membership(&mut self) -> Result<(), Failure> {
        let active = self.active_ids();
        let mut kind = self.p.membership;
        if kind == 1 && active.len() >= 7 {
            kind = 2;
        }
        match kind {
            1 => {
                let id = self.add_node()?;
                self.summary.membership = "add";
                self.log(|| format!("add node {id:x}"));
            }
            2 => {
                let Some(victim) = active.choose(&mut self.rng).copied() else {
                    return Ok(());
                };
                let id = self.add_node()?;
                self.crash(victim, None);
                if let Some(n) = self.nodes.get_mut(&victim) {
                    n.retired = true;
                }
                self.wanted.insert(victim, NodeState::Dead);
                self.summary.membership = "replace";
                self.log(|| format!("replace node {victim:x} by {id:x}"));
            }
            _ => {
                if active.len() <= self.p.replication.min(3) {
                    return Ok(());
                }
                let Some(victim) = active.choose(&mut self.rng).copied() else {
                    return Ok(());
                };
                self.wanted.insert(victim, NodeState::Decommissioned);
                self.decommission = Some(victim);
                self.summary.membership = "decommission";
                self.log(|| format!("decommission {victim:x}"));
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> Result<(), Failure> {
        self.healed = true;
        self.net.set_cuts(BTreeSet::new());
        self.net.loss = 0.0;
        self.net.spike = 0.0;
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.retired && n.core.is_none())
            .map(|(id, _)| *id)
            .collect();
        for n in self.nodes.values_mut() {
            n.paused_until = n.paused_until.min(self.now);
            n.stall_until = n.stall_until.min(self.now);
        }
        for id in down {
            self.restart(id)?;
        }
        self.log(|| "heal: faults stop".into());
        Ok(())
    }

    // ----- the network -----

    fn deliver(&mut self, p: Packet) -> Result<(), Failure> {
        let now = self.now;
        let blocked = p.from != CLIENT && self.net.blocked(p.from, p.to);
        let (up, paused_until) = match self.nodes.get(&p.to) {
            Some(n) => (n.up(), n.paused_until),
            None => (false, 0),
        };
        if up && !blocked && paused_until > now {
            self.net.push(paused_until, p);
            return Ok(());
        }
        let lost = matches!(p.payload, Payload::Snapshot(_)) && self.rng.gen_bool(self.net.loss);
        if !up || blocked || lost {
            if let Payload::Snapshot(s) = &p.payload {
                self.report_snapshot(p.from, p.from_incarnation, s.group, s.to, false);
            }
            return Ok(());
        }
        // A node reads its clock when something arrives, whether its timer fires or not.
        if let Some(core) = self.nodes.get_mut(&p.to).and_then(|n| n.core.as_mut()) {
            core.advance_clock(now);
        }
        match p.payload {
            Payload::Raft(msgs) => {
                if let Some(core) = self.nodes.get_mut(&p.to).and_then(|n| n.core.as_mut()) {
                    for (g, m) in msgs {
                        core.handle_raft(p.from, g, m);
                    }
                }
            }
            Payload::Request(rid, req, at_leader) => {
                if let Some(core) = self.nodes.get_mut(&p.to).and_then(|n| n.core.as_mut()) {
                    if at_leader {
                        core.handle_request_at_leader(rid, req);
                    } else {
                        core.handle_request(rid, req);
                    }
                }
            }
            Payload::Lease(rid, req) => {
                if let Some(core) = self.nodes.get_mut(&p.to).and_then(|n| n.core.as_mut()) {
                    core.handle_lease(rid, req);
                }
            }
            Payload::Election(rid, req) => {
                if let Some(core) = self.nodes.get_mut(&p.to).and_then(|n| n.core.as_mut()) {
                    core.handle_election(rid, req);
                }
            }
            Payload::Announce(a) => {
                if let Some(n) = self.nodes.get_mut(&p.to) {
                    if let (Some(core), Some(control)) = (n.core.as_mut(), n.control.as_mut()) {
                        control.handle_announce(core, &peer_of(p.from), &[], a, now);
                    }
                }
            }
            Payload::Join {
                record,
                reply_to,
                hops,
            } => self.on_join(p.to, record, reply_to, hops),
            Payload::Joined(settings) => {
                if let Some(n) = self.nodes.get_mut(&p.to) {
                    if let (Some(core), Some(control)) = (n.core.as_mut(), n.control.as_mut()) {
                        if let Err(e) = control.handle_join_answer(core, settings) {
                            return Err(self.fail("join", format!("node {:x}: {e}", p.to)));
                        }
                    }
                }
            }
            Payload::Bootstrap { layout, cluster_id } => {
                if let Some(n) = self.nodes.get_mut(&p.to) {
                    if let (Some(core), Some(control)) = (n.core.as_mut(), n.control.as_mut()) {
                        if let Err(e) = control.handle_bootstrap(core, layout, cluster_id) {
                            return Err(self.fail("bootstrap", format!("node {:x}: {e}", p.to)));
                        }
                    }
                }
            }
            Payload::Snapshot(s) => {
                let src = self
                    .nodes
                    .get(&p.from)
                    .filter(|n| n.incarnation == p.from_incarnation)
                    .and_then(|n| n.core.as_ref())
                    .map(|c| c.store().clone());
                let Some(src) = src else {
                    return Ok(());
                };
                let mut ok = false;
                if let Some(dst) = self.nodes.get_mut(&p.to).and_then(|n| n.core.as_mut()) {
                    ok = true;
                    for seq in 0..s.chunks {
                        match src.snapshot_chunk(s.group, s.index, seq) {
                            Ok(c) => ok &= dst.store().receive_chunk(&c).is_ok(),
                            Err(_) => ok = false,
                        }
                    }
                    if ok {
                        dst.handle_raft(p.from, s.group, s.message.clone());
                    }
                }
                self.report_snapshot(p.from, p.from_incarnation, s.group, s.to, ok);
            }
        }
        Ok(())
    }

    fn report_snapshot(&mut self, from: NodeId, inc: u64, group: GroupId, to: NodeId, ok: bool) {
        if let Some(core) = self
            .nodes
            .get_mut(&from)
            .filter(|n| n.incarnation == inc)
            .and_then(|n| n.core.as_mut())
        {
            core.report_snapshot(group, to, ok);
        }
    }

    // ----- node turns -----

    fn turn(&mut self, id: NodeId) -> Result<(), Failure> {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        if !n.up() || n.paused_until > now {
            return Ok(());
        }
        let inc = n.incarnation;
        let tick = now >= n.stall_until;
        if n.syncing.as_ref().is_some_and(|(due, _)| *due <= now) {
            if let (Some((_, job)), Some(core)) = (n.syncing.take(), n.core.as_mut()) {
                core.advance_clock(now);
                if let Err(e) = core.on_synced(job.run()) {
                    return Err(Failure {
                        property: "storage",
                        detail: format!("node {id:x}: {e}"),
                        at_ms: now,
                    });
                }
            }
        }
        let (Some(core), Some(control)) = (n.core.as_mut(), n.control.as_mut()) else {
            return Ok(());
        };
        let groups_before = if self.verbose {
            core.groups()
        } else {
            Vec::new()
        };
        // As the driver's turn: the entries it appends are stamped with the time now.
        core.advance_clock(now);
        if tick {
            core.handle_tick(now);
            // The control plane runs on the same timer, as in the driver.
            if let Err(e) = control.handle_tick(core, now) {
                return Err(Failure {
                    property: "storage",
                    detail: format!("node {id:x}: control plane: {e}"),
                    at_ms: now,
                });
            }
        }
        // The turn in the driver's order (`core/turn.rs`): what may leave before the sync,
        // the sync, then the rest.
        let raft = |to: NodeId, msgs| Packet {
            from: id,
            to,
            from_incarnation: inc,
            payload: Payload::Raft(msgs),
        };
        let mut out = Vec::new();
        let mut replies = Vec::new();
        let persisted = core.begin_turn().and_then(|mut turn| {
            while let Some((to, msgs)) = turn.poll_transmit() {
                out.push(raft(to, msgs));
            }
            while let Some(r) = turn.poll_reply() {
                replies.push(r);
            }
            turn.persist()
        });
        let mut done = match persisted {
            Ok(done) => done,
            Err(e) => {
                return Err(Failure {
                    property: "storage",
                    detail: format!("node {id:x}: {e}"),
                    at_ms: now,
                })
            }
        };
        while let Some((to, msgs)) = done.poll_transmit() {
            out.push(raft(to, msgs));
        }
        while let Some(s) = done.poll_snapshot() {
            out.push(Packet {
                from: id,
                to: s.to,
                from_incarnation: inc,
                payload: Payload::Snapshot(s),
            });
        }
        while let Some(r) = done.poll_reply() {
            replies.push(r);
        }
        if self.verbose {
            let after = core.groups();
            if after != groups_before {
                eprintln!("[{now:>6} ms] {id:x} groups {groups_before:?} -> {after:?}");
            }
            for g in after {
                let Some(line) = replica_trace(core, g) else {
                    continue;
                };
                if self.traced.get(&(id, g)) != Some(&line) {
                    eprintln!("[{now:>6} ms] {id:x} group {g}: {line}");
                    self.traced.insert((id, g), line);
                }
            }
        }
        let mut actions = Vec::new();
        while let Some(a) = control.poll_action() {
            actions.push(a);
        }
        if n.syncing.is_none() {
            match core.take_sync_job() {
                Ok(Some(job)) => {
                    let due = now + self.disk_rng.gen_range(0..=self.sync_max_ms);
                    n.syncing = Some((due, job));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Failure {
                        property: "storage",
                        detail: format!("node {id:x}: {e}"),
                        at_ms: now,
                    })
                }
            }
        }
        if let Err(v) = self.observer.observe(core, inc) {
            return Err(self.violation(v));
        }
        let mut unreachable = Vec::new();
        for packet in out {
            let dest_up = self.nodes.get(&packet.to).is_some_and(|n| n.up());
            if !dest_up {
                // The connection to a crashed node is gone (as the driver learns from the
                // network layer).
                if let Payload::Snapshot(s) = &packet.payload {
                    unreachable.push((s.group, s.to, true));
                } else {
                    unreachable.push((0, packet.to, false));
                }
                continue;
            }
            if let Payload::Snapshot(s) = &packet.payload {
                if self.net.blocked(id, packet.to) {
                    // A snapshot stream across a cut fails, and the driver reports that
                    // (`send_snapshot` ends in an error within the network's request
                    // timeout). Dropping it unreported, as the network drops Raft messages,
                    // left Raft waiting for the stream for good: the leader never sent the
                    // learner anything again, so it never caught up and the group never
                    // reached its target (seeds 105197 and 107705).
                    unreachable.push((s.group, s.to, true));
                    self.net.sent += 1;
                    self.net.lost += 1;
                    continue;
                }
            }
            self.net.send(&mut self.rng, now, packet);
        }
        if let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) {
            for (g, to, snapshot) in unreachable {
                if snapshot {
                    core.report_snapshot(g, to, false);
                } else {
                    core.report_unreachable(to);
                }
            }
        }
        // Answers in request order: the core keeps some requests in hash maps.
        replies.sort_by_key(|(rid, _)| *rid);
        for (rid, reply) in replies {
            self.on_reply(id, rid, reply)?;
        }
        for action in actions {
            self.perform(id, inc, action);
        }
        Ok(())
    }

    /// Carries out a control action of node `id` over the virtual network.
    fn perform(&mut self, id: NodeId, inc: u64, action: ControlAction) {
        let now = self.now;
        let send = |w: &mut World, to: NodeId, payload: Payload| {
            let packet = Packet {
                from: id,
                to,
                from_incarnation: inc,
                payload,
            };
            w.net.send(&mut w.rng, now, packet);
        };
        match action {
            // Heartbeats reach every node the network lets them reach.
            ControlAction::Publish(a) => {
                for to in self.active_ids().into_iter().filter(|n| *n != id) {
                    send(self, to, Payload::Announce(a.clone()));
                }
            }
            ControlAction::Join { via, record } => {
                self.log(|| format!("{id:x} asks {via:x} to join"));
                let payload = Payload::Join {
                    record,
                    reply_to: id,
                    hops: JOIN_HOPS,
                };
                send(self, via, payload);
            }
            ControlAction::Bootstrap {
                to,
                layout,
                cluster_id,
            } => {
                if let Some(f) = &mut self.formation {
                    f.formed.insert((cluster_id, layout.nodes.clone()));
                }
                send(self, to, Payload::Bootstrap { layout, cluster_id })
            }
            // Every node can reach every other one: there is nothing to dial.
            ControlAction::Dial { .. } => {}
            ControlAction::Formed { cluster_id } => {
                self.log(|| format!("{id:x} is a member of cluster {cluster_id:x}"));
            }
        }
    }

    /// A join request reaches node `at`: it registers the node, passes the request on to the
    /// meta leader, or refuses.
    fn on_join(&mut self, at: NodeId, record: NodeRecord, reply_to: NodeId, hops: u8) {
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&at) else {
            return;
        };
        let inc = n.incarnation;
        let (Some(core), Some(control)) = (n.core.as_mut(), n.control.as_mut()) else {
            return;
        };
        let (to, payload) = match control.handle_join(core, record.clone(), now) {
            JoinVerdict::Joined(settings) => (reply_to, Payload::Joined(Some(settings))),
            JoinVerdict::Forward(m) if hops > 0 => (
                m,
                Payload::Join {
                    record,
                    reply_to,
                    hops: hops - 1,
                },
            ),
            JoinVerdict::Forward(_) | JoinVerdict::Refused(_) => (reply_to, Payload::Joined(None)),
        };
        let packet = Packet {
            from: at,
            to,
            from_incarnation: inc,
            payload,
        };
        self.net.send(&mut self.rng, now, packet);
    }

    /// The operator's decommission request, repeated to whichever node leads the meta group
    /// until the registry records it.
    fn operator(&mut self) {
        let Some(victim) = self.decommission else {
            return;
        };
        if self.now % 500 != 0 {
            return;
        }
        let Some(m) = self.leader_of(META_GROUP) else {
            return;
        };
        let Some(n) = self.nodes.get_mut(&m) else {
            return;
        };
        let (Some(core), Some(control)) = (n.core.as_mut(), n.control.as_mut()) else {
            return;
        };
        let recorded = core.meta_state().ok().and_then(|meta| {
            meta.nodes.get(&victim).map(|r| {
                matches!(
                    r.state,
                    NodeState::Decommissioning | NodeState::Decommissioned
                )
            })
        });
        if recorded == Some(true) {
            self.decommission = None;
            return;
        }
        if let Err(e) = control.decommission(core, victim) {
            self.log(|| format!("decommission of {victim:x} refused: {e}"));
        }
    }

    fn leader_of(&self, g: GroupId) -> Option<NodeId> {
        self.nodes.iter().find_map(|(id, n)| {
            n.core
                .as_ref()
                .filter(|c| c.is_leader(g) && n.paused_until <= self.now)
                .map(|_| *id)
        })
    }

    // ----- clients -----

    /// Whether clients start new work now: until the load ends after the heal, except in
    /// the quiet spells of the seeds that have them.
    fn issuing(&self) -> bool {
        let now = self.now;
        let period = self.p.quiet_every + self.p.quiet_ms;
        let quiet = self.p.quiet_every > 0 && now % period >= self.p.quiet_every;
        now < self.p.fault_ms + HEAL_LOAD_MS && !quiet
    }

    fn drive_clients(&mut self) -> Result<(), Failure> {
        let now = self.now;
        let issuing = self.issuing();
        for ci in 0..self.clients.len() {
            match self.clients[ci].state.clone() {
                ClientState::Idle { next_at } if now >= next_at => {
                    let is_final = self.clients[ci].id == FINAL_READER;
                    let objects = self.objects();
                    let (key, input, body) = if is_final {
                        let Some(&key) = self.final_script.first() else {
                            continue;
                        };
                        let (input, body) = objects.read(key);
                        (key, input, body)
                    } else if issuing {
                        self.clients[ci].next_op(&mut self.rng, objects)
                    } else {
                        continue;
                    };
                    let op = self.history.len();
                    self.history.push(OpRecord {
                        client: self.clients[ci].id,
                        key,
                        call: now,
                        ret: 0,
                        input,
                        body,
                        outcome: Outcome::Pending,
                        write_revision: None,
                    });
                    self.send_attempt(ci, op, 1, false)?;
                }
                ClientState::Retrying {
                    op,
                    at,
                    attempt,
                    ambiguous,
                } if now >= at => {
                    self.send_attempt(ci, op, attempt, ambiguous)?;
                }
                ClientState::Busy {
                    op,
                    rid,
                    attempt,
                    attempt_deadline,
                    ambiguous,
                    ..
                } if now >= attempt_deadline => {
                    self.owners.remove(&rid);
                    self.after_failure(ci, op, attempt, ambiguous, true, "client timeout".into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The keys and pairs the clients work on.
    fn objects(&self) -> Objects {
        Objects {
            keys: self.p.keys,
            pairs: self.p.pairs,
        }
    }

    fn send_attempt(
        &mut self,
        ci: usize,
        op: usize,
        attempt: u32,
        ambiguous: bool,
    ) -> Result<(), Failure> {
        let key = self.objects().keys_of(self.history[op].key).remove(0);
        let partition = partition_of(&key, self.p.partitions);
        let active = self.active_ids();
        let hint = self.clients[ci]
            .hints
            .get(&partition)
            .copied()
            .filter(|h| active.contains(h));
        let node = match hint {
            Some(h) => h,
            None => match active.choose(&mut self.rng) {
                Some(n) => *n,
                None => return Err(self.fail("setup", "no node left")),
            },
        };
        if !self.nodes.get(&node).is_some_and(|n| n.up()) {
            // Connection refused: nothing was sent.
            self.clients[ci].hints.remove(&partition);
            self.after_failure(
                ci,
                op,
                attempt,
                ambiguous,
                false,
                "connection refused".into(),
            );
            return Ok(());
        }
        let rid = self.next_rid;
        self.next_rid += 1;
        self.owners.insert(rid, ci);
        let req = Request {
            partition,
            body: self.history[op].body.clone(),
        };
        // Half the clients send what a hint names the leader as a leader-routed request (only
        // a leader serves it), the others as a plain one (a follower serves it through Raft).
        let at_leader = hint.is_some() && ci % 2 == 0;
        let at = self.now + self.rng.gen_range(1..=3);
        self.net.push(
            at,
            Packet {
                from: CLIENT,
                to: node,
                from_incarnation: 0,
                payload: Payload::Request(rid, req, at_leader),
            },
        );
        self.clients[ci].state = ClientState::Busy {
            op,
            rid,
            attempt,
            attempt_deadline: self.now + self.p.request_timeout_ms + 1_000,
            ambiguous,
        };
        Ok(())
    }

    /// An attempt failed: definitely (nothing happened) or ambiguously.
    fn after_failure(
        &mut self,
        ci: usize,
        op: usize,
        attempt: u32,
        ambiguous: bool,
        this_ambiguous: bool,
        why: String,
    ) {
        let is_write = !matches!(self.history[op].input, Input::Get);
        let is_final = self.clients[ci].id == FINAL_READER;
        let ambiguous = ambiguous || (is_write && this_ambiguous);
        let now = self.now;
        if attempt < MAX_ATTEMPTS || (is_final && now < self.p.fault_ms + HEAL_MAX_MS) {
            let at = now + self.rng.gen_range(20..200);
            self.clients[ci].state = ClientState::Retrying {
                op,
                at,
                attempt: attempt + 1,
                ambiguous,
            };
            return;
        }
        let rec = &mut self.history[op];
        rec.ret = now;
        rec.outcome = if ambiguous {
            Outcome::Ambiguous(why)
        } else {
            Outcome::Failed(why)
        };
        let think = self.rng.gen_range(0..2 * self.p.think_ms);
        self.clients[ci].state = ClientState::Idle {
            next_at: now + think,
        };
    }

    /// Sends what each lock client wants to send, to the node it last heard from (the meta
    /// leader, most likely) or to any node.
    fn drive_lockers(&mut self) -> Result<(), Failure> {
        let now = self.now;
        let issuing = self.issuing();
        for li in 0..self.lockers.len() {
            let rid = self.next_rid;
            let Some(call) = self.lockers[li].poll(now, &mut self.rng, issuing, rid) else {
                continue;
            };
            let active = self.active_ids();
            let node = match self.lockers[li].hint.filter(|h| active.contains(h)) {
                Some(h) => h,
                None => match active.choose(&mut self.rng) {
                    Some(n) => *n,
                    None => return Err(self.fail("setup", "no node left")),
                },
            };
            self.next_rid += 1;
            self.lock_owners.insert(rid, li);
            let payload = match call {
                LockCall::Lease(r) => Payload::Lease(rid, r),
                LockCall::Election(r) => Payload::Election(rid, r),
            };
            let at = now + self.rng.gen_range(1..=3);
            self.net.push(
                at,
                Packet {
                    from: CLIENT,
                    to: node,
                    from_incarnation: 0,
                    payload,
                },
            );
        }
        Ok(())
    }

    fn on_reply(&mut self, node: NodeId, rid: RequestId, reply: Reply) -> Result<(), Failure> {
        if let Some(li) = self.lock_owners.remove(&rid) {
            let now = self.now;
            self.lockers[li].on_answer(now, node, rid, &reply, &mut self.rng);
            return Ok(());
        }
        let Some(ci) = self.owners.remove(&rid) else {
            return Ok(());
        };
        let ClientState::Busy {
            op,
            rid: busy_rid,
            attempt,
            ambiguous,
            ..
        } = self.clients[ci].state.clone()
        else {
            return Ok(());
        };
        if busy_rid != rid {
            return Ok(());
        }
        let object = self.history[op].key;
        let keys = self.objects().keys_of(object);
        let key = keys[0].clone();
        let partition = partition_of(&key, self.p.partitions);
        let input = self.history[op].input;
        match interpret(&input, &reply) {
            Interpretation::Ok {
                output,
                seen,
                records,
                write_revision,
                written,
            } => {
                self.clients[ci].hints.insert(partition, node);
                for (v, rev) in &seen {
                    let first = *self.revisions.entry(*v).or_insert(*rev);
                    if first != *rev {
                        return Err(self.fail(
                            "revision consistency",
                            format!(
                                "value {v:x} of key {:?} reported at revision {first} and at \
                                 revision {rev} (a write applied twice?)",
                                String::from_utf8_lossy(&key)
                            ),
                        ));
                    }
                }
                for (register, record) in &records {
                    self.clients[ci].saw(object, *register, record.as_ref());
                }
                if let (Some(rev), RequestBody::Write { op: kv, .. }) =
                    (write_revision, &self.history[op].body)
                {
                    for register in written {
                        self.acked.push(AckedWrite {
                            group: swarmkv::core::group_of_partition(partition),
                            key: keys[register].clone(),
                            revision: rev,
                            op: kv.clone(),
                        });
                    }
                }
                if self.clients[ci].id == FINAL_READER {
                    for (register, record) in records {
                        self.finals.insert(keys[register].clone(), record);
                    }
                    if !self.final_script.is_empty() {
                        self.final_script.remove(0);
                    }
                }
                let now = self.now;
                let rec = &mut self.history[op];
                rec.ret = now;
                rec.outcome = Outcome::Ok(output);
                rec.write_revision = write_revision;
                let think = self.rng.gen_range(0..2 * self.p.think_ms);
                self.clients[ci].state = ClientState::Idle {
                    next_at: now + think,
                };
            }
            Interpretation::Definite(e) => {
                match &e {
                    ClientError::NotLeader { leader: Some(l) } => {
                        self.clients[ci].hints.insert(partition, *l);
                    }
                    _ => {
                        self.clients[ci].hints.remove(&partition);
                    }
                }
                self.after_failure(ci, op, attempt, ambiguous, false, e.to_string());
            }
            Interpretation::Ambiguous(e) => {
                self.clients[ci].hints.remove(&partition);
                self.after_failure(ci, op, attempt, ambiguous, true, e.to_string());
            }
            Interpretation::Nonsense(why) => {
                return Err(self.fail(
                    "well-formed answers",
                    format!("node {node:x} answered {:?}: {why}", self.history[op].body),
                ));
            }
        }
        Ok(())
    }

    // ----- the end -----

    /// Every replica's Raft view (for a verbose failure report).
    fn dump(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            let Some(c) = n.core.as_ref() else {
                out.push_str(&format!("\n  node {id:x}: down (retired: {})", n.retired));
                continue;
            };
            out.push_str(&format!(
                "\n  node {id:x}: targets epoch {}",
                targets_epoch(c.targets())
            ));
            for g in c.groups() {
                if let Some(s) = c.group_status(g) {
                    let t = c.targets().get(&g).map(|t| t.replicas.clone());
                    let cs = c
                        .store()
                        .group(g)
                        .map(|st| st.apply_state().conf_state)
                        .map(|cs| {
                            format!(
                                "in {:x?} out {:x?} learners {:x?} next {:x?} auto {}",
                                cs.voters,
                                cs.voters_outgoing,
                                cs.learners,
                                cs.learners_next,
                                cs.auto_leave
                            )
                        })
                        .unwrap_or_default();
                    out.push_str(&format!(
                        "\n    group {g}: {} term {} leader {:x?} commit {} applied {} last {} \
                         voters {:x?} target {:x?} applied conf {cs}",
                        s.role, s.term, s.leader, s.commit, s.applied, s.last_index, s.voters, t
                    ));
                }
            }
        }
        out
    }

    /// What keeps the cluster from counting as converged.
    fn convergence_gap(&self) -> String {
        let Some(m) = self.leader_of(META_GROUP) else {
            return "no meta leader".into();
        };
        let Some(meta) = self.nodes[&m]
            .core
            .as_ref()
            .and_then(|c| c.meta_state().ok())
        else {
            return "meta state unreadable".into();
        };
        for (id, state) in &self.wanted {
            if meta.nodes.get(id).map(|r| r.state) != Some(*state) {
                return format!(
                    "node {id:x} registered as {:?}, not {state:?}",
                    meta.nodes.get(id).map(|r| r.state)
                );
            }
        }
        let live = meta.live_nodes();
        for g in 0..=u64::from(self.p.partitions) {
            let Some(t) = meta.targets.get(&g) else {
                return format!("group {g} has no target");
            };
            let Some(leader) = self.leader_of(g) else {
                return format!("group {g} has no leader");
            };
            if let Some(n) = t.replicas.iter().find(|n| !live.contains(n)) {
                return format!("group {g} target {:x?} names non-live {n:x}", t.replicas);
            }
            let mut voters = self.nodes[&leader]
                .core
                .as_ref()
                .and_then(|c| c.group_status(g))
                .map(|s| s.voters)
                .unwrap_or_default();
            voters.sort_unstable();
            let mut want = t.replicas.clone();
            want.sort_unstable();
            if voters != want {
                return format!("group {g} voters differ from target {:x?}", t.replicas);
            }
        }
        let dead = meta.dead_nodes();
        let plan = plan_targets(
            &meta.targets,
            &live,
            &dead,
            self.settings.replication,
            MAX_MOVES,
        );
        if !plan.is_empty() {
            return "placement still moving".into();
        }
        String::new()
    }

    fn finished(&mut self) -> Result<bool, Failure> {
        if self.now < self.p.fault_ms + HEAL_LOAD_MS {
            return Ok(false);
        }
        let idle = |c: &Client| matches!(c.state, ClientState::Idle { .. });
        if self.final_script.is_empty() && self.finals.is_empty() {
            if !self.clients.iter().all(idle) || !self.convergence_gap().is_empty() {
                return Ok(false);
            }
            self.log(|| "converged; final reads".into());
            self.final_script = (0..self.objects().count()).collect();
            let mut reader = Client::new(FINAL_READER);
            reader.state = ClientState::Idle { next_at: self.now };
            self.clients.push(reader);
            return Ok(false);
        }
        Ok(self.final_script.is_empty()
            && self.clients.iter().all(idle)
            && self.lockers.iter().all(LockClient::idle))
    }

    fn check_history(&mut self) -> Result<(), Failure> {
        let now = self.now;
        let mut holds = Vec::new();
        for l in &mut self.lockers {
            l.finish(now);
            holds.extend(l.holds.iter().copied());
        }
        self.summary.lock_holds = holds.len();
        locks::check(holds).map_err(|why| self.fail("lock holders never overlap", why))?;
        acknowledged_writes::check(&self.acked, &self.observer.committed, &self.finals)
            .map_err(|v| self.violation(v))?;
        for key in 0..self.objects().count() {
            let ops: Vec<Operation> = self
                .history
                .iter()
                .filter(|o| o.key == key)
                .filter_map(|o| {
                    let ret = match &o.outcome {
                        Outcome::Ok(out) => Some((o.ret, *out)),
                        Outcome::Ambiguous(_) if !matches!(o.input, Input::Get) => None,
                        _ => return None,
                    };
                    Some(Operation {
                        client: o.client,
                        call: o.call,
                        ret,
                        input: o.input,
                    })
                })
                .collect();
            match linearizability::check(&ops, None, CHECK_STEPS) {
                Verdict::Linearizable => {}
                Verdict::Unknown { steps } => {
                    // A history the checker cannot decide proves nothing: the seed fails, as
                    // in lan_chaos, so that a workload that outgrows the search is noticed.
                    self.summary.unknown_keys += 1;
                    return Err(self.fail(
                        "linearizability",
                        format!(
                            "key {key}: {} operations, undecided after {steps} search steps",
                            ops.len()
                        ),
                    ));
                }
                Verdict::NotLinearizable { longest } => {
                    let mut detail = format!(
                        "key {key}: {} operations, no linearization; the longest found has {}:",
                        ops.len(),
                        longest.len()
                    );
                    for i in &longest {
                        detail.push_str(&format!("\n    {:?}", ops[*i]));
                    }
                    detail.push_str("\n  history:");
                    for o in &ops {
                        detail.push_str(&format!("\n    {o:?}"));
                    }
                    return Err(self.fail("linearizability", detail));
                }
            }
        }
        Ok(())
    }
}

/// A replica's role, term, leader and applied configuration, for the verbose trace (printed
/// whenever one of them changes).
fn replica_trace(core: &Core<MemBackend>, g: GroupId) -> Option<String> {
    let s = core.group_status(g)?;
    let cs = core.store().group(g).ok()?.apply_state().conf_state;
    let mut line = format!(
        "{} term {} leader {:x?} conf {:x?}",
        s.role, s.term, s.leader, cs.voters
    );
    if !cs.voters_outgoing.is_empty() {
        line.push_str(&format!(" joint with {:x?}", cs.voters_outgoing));
    }
    if core.is_quiesced(g) {
        line.push_str(" quiesced");
    }
    if !cs.learners.is_empty() || !cs.learners_next.is_empty() {
        line.push_str(&format!(
            " learners {:x?} next {:x?}",
            cs.learners, cs.learners_next
        ));
    }
    Some(line)
}

/// Runs one seed, bootstrapped or `zero_config`.
pub fn run(seed: u64, verbose: bool, zero_config: bool) -> Result<Summary, Failure> {
    World::new(seed, verbose, zero_config)?.run()
}
