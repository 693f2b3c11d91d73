//! The node's Prometheus metrics (prometheus-client), served by the gateway at `/metrics`.
//!
//! The sans-IO core only counts ([`crate::core::CoreStats`]); the driver turns those counts,
//! the store's sync timings and its own request timings into metrics here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use swarmkv_net::NetStats;

use crate::core::{CoreStats, RequestBody};

/// The operation a request latency belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// The long-lived stream kind a frame count belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: &'static str,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    proposals: Counter,
    follower_proposals: Counter,
    applies: Counter,
    leader_changes: Counter,
    raft_messages_out: Counter,
    raft_messages_in: Counter,
    fsync: Histogram,
    requests: Family<OpLabel, Histogram>,
    peers_up: Gauge,
    storage_failed: Gauge,
    quiesced_groups: Gauge,
    persist_turns: Counter,
    turns: Counter,
    ready_checks: Counter,
    log_syncs: Counter,
    log_entries: Counter,
    log_bytes: Counter,
    state_flushes: Counter,
    state_flush_keys: Counter,
    /// Raft frames, raft writes, kv frames, kv writes (children of the two stream families).
    streams: [Counter; 4],
    last: [AtomicU64; 14],
    /// The stream counters at the last [`Metrics::observe_net`]: raft frames and writes, kv
    /// frames and writes.
    last_net: [AtomicU64; 4],
}

fn latency_histogram() -> Histogram {
    // 50 us .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("swarmkv");
        let proposals = Counter::default();
        let follower_proposals = Counter::default();
        let applies = Counter::default();
        let leader_changes = Counter::default();
        let raft_messages_out = Counter::default();
        let raft_messages_in = Counter::default();
        let fsync = latency_histogram();
        let requests = Family::<OpLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let peers_up = Gauge::default();
        let storage_failed = Gauge::default();
        let quiesced_groups = Gauge::default();
        let persist_turns = Counter::default();
        let turns = Counter::default();
        let ready_checks = Counter::default();
        let log_syncs = Counter::default();
        let log_entries = Counter::default();
        let log_bytes = Counter::default();
        let state_flushes = Counter::default();
        let state_flush_keys = Counter::default();
        let stream_frames = Family::<StreamLabel, Counter>::default();
        let stream_writes = Family::<StreamLabel, Counter>::default();
        let streams = ["raft", "kv"].map(|stream| {
            let label = StreamLabel { stream };
            [
                stream_frames.get_or_create(&label).clone(),
                stream_writes.get_or_create(&label).clone(),
            ]
        });
        let [[raft_frames, raft_writes], [kv_frames, kv_writes]] = streams;
        let streams = [raft_frames, raft_writes, kv_frames, kv_writes];
        registry.register(
            "stream_frames",
            "Frames written on the long-lived streams (raft: to peers; kv: requests to peers and \
             answers to peers and clients)",
            stream_frames.clone(),
        );
        registry.register(
            "stream_writes",
            "Writes that carried those frames: each is one yamux frame, one noise message and one \
             socket write",
            stream_writes.clone(),
        );
        registry.register(
            "persist_turns",
            "Node turns that persisted Raft state or applies (entries per turn: log_entries / this)",
            persist_turns.clone(),
        );
        registry.register("turns", "Node turns taken", turns.clone());
        registry.register(
            "ready_checks",
            "Replicas the node's turns asked for a Raft Ready (per turn: this / turns): those \
             reached since the turn before, and every replica once a second",
            ready_checks.clone(),
        );
        registry.register("log_syncs", "Syncs of the Raft log", log_syncs.clone());
        registry.register(
            "log_entries",
            "Entries appended to the Raft log",
            log_entries.clone(),
        );
        registry.register(
            "log_bytes",
            "Bytes written to the Raft log",
            log_bytes.clone(),
        );
        registry.register(
            "state_flushes",
            "Flushes of the partitions' in-memory writes to sled",
            state_flushes.clone(),
        );
        registry.register(
            "state_flush_keys",
            "Keys written to sled by state flushes",
            state_flush_keys.clone(),
        );
        registry.register("proposals", "Writes proposed to Raft", proposals.clone());
        registry.register(
            "follower_proposals",
            "Writes a follower proposed, which raft-rs passes on to the leader",
            follower_proposals.clone(),
        );
        registry.register(
            "applies",
            "Committed entries applied to state machines",
            applies.clone(),
        );
        registry.register(
            "leader_changes",
            "Times a local replica gained or lost leadership",
            leader_changes.clone(),
        );
        registry.register(
            "raft_messages_sent",
            "Raft messages sent to peers",
            raft_messages_out.clone(),
        );
        registry.register(
            "raft_messages_received",
            "Raft messages received from peers",
            raft_messages_in.clone(),
        );
        registry.register(
            "fsync_seconds",
            "Duration of the one sync each group commit makes",
            fsync.clone(),
        );
        registry.register(
            "request_seconds",
            "Client request latency at this node, by operation",
            requests.clone(),
        );
        registry.register(
            "peers_up",
            "Cluster peers heard from recently",
            peers_up.clone(),
        );
        registry.register(
            "storage_failed",
            "1 while this node's storage fails and the node refuses every request",
            storage_failed.clone(),
        );
        registry.register(
            "quiesced_groups",
            "Local replicas quiesced: idle groups that neither tick nor heartbeat",
            quiesced_groups.clone(),
        );
        Metrics {
            registry,
            proposals,
            follower_proposals,
            applies,
            leader_changes,
            raft_messages_out,
            raft_messages_in,
            fsync,
            requests,
            peers_up,
            storage_failed,
            quiesced_groups,
            persist_turns,
            turns,
            ready_checks,
            log_syncs,
            log_entries,
            log_bytes,
            state_flushes,
            state_flush_keys,
            streams,
            last: Default::default(),
            last_net: Default::default(),
        }
    }

    /// Adds what the core did since the last call.
    pub fn observe_core(&self, s: CoreStats) {
        let values = [
            s.proposals,
            s.applied,
            s.leader_changes,
            s.messages_out,
            s.messages_in,
            s.persist_turns,
            s.log_syncs,
            s.log_entries,
            s.log_bytes,
            s.state_flushes,
            s.state_flush_keys,
            s.follower_proposals,
            s.turns,
            s.ready_checks,
        ];
        let counters = [
            &self.proposals,
            &self.applies,
            &self.leader_changes,
            &self.raft_messages_out,
            &self.raft_messages_in,
            &self.persist_turns,
            &self.log_syncs,
            &self.log_entries,
            &self.log_bytes,
            &self.state_flushes,
            &self.state_flush_keys,
            &self.follower_proposals,
            &self.turns,
            &self.ready_checks,
        ];
        for ((value, counter), last) in values.iter().zip(counters).zip(&self.last) {
            let before = last.swap(*value, Ordering::Relaxed);
            counter.inc_by(value.saturating_sub(before));
        }
    }

    /// Adds what the long-lived streams wrote since the last call.
    pub fn observe_net(&self, s: NetStats) {
        let values = [s.raft.frames, s.raft.writes, s.kv.frames, s.kv.writes];
        for ((value, counter), last) in values.iter().zip(&self.streams).zip(&self.last_net) {
            let before = last.swap(*value, Ordering::Relaxed);
            counter.inc_by(value.saturating_sub(before));
        }
    }

    /// Writes a follower of this node proposed for its leader so far (see
    /// [`crate::core::CoreStats::follower_proposals`]).
    pub fn follower_proposals(&self) -> u64 {
        self.follower_proposals.get()
    }

    pub fn observe_sync(&self, d: Duration) {
        self.fsync.observe(d.as_secs_f64());
    }

    pub fn observe_request(&self, op: &'static str, d: Duration) {
        self.requests
            .get_or_create(&OpLabel { op })
            .observe(d.as_secs_f64());
    }

    pub fn set_peers_up(&self, n: usize) {
        self.peers_up.set(n as i64);
    }

    /// How many local replicas are quiesced (see `core/quiesce.rs`).
    pub fn set_quiesced_groups(&self, n: usize) {
        self.quiesced_groups.set(n as i64);
    }

    /// Marks the node's storage failed (sidelined) or working again. A recovered node runs a
    /// new core whose counters start from zero, so the counters' baseline is reset with it.
    pub fn set_storage_failed(&self, failed: bool) {
        self.storage_failed.set(i64::from(failed));
        if !failed {
            for last in &self.last {
                last.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The operation label of a request.
pub fn op_of(body: &RequestBody) -> &'static str {
    use swarmkv_store::KvOp;
    match body {
        RequestBody::Get { .. } => "get",
        RequestBody::Scan { .. } => "scan",
        RequestBody::Write { op, .. } => match op {
            KvOp::Put { .. } => "put",
            KvOp::Delete { .. } => "delete",
            KvOp::Cas { .. } => "cas",
            KvOp::DeleteRange { .. } => "delete_range",
            KvOp::DeleteLease { .. } => "delete_lease",
            KvOp::Txn(_) => "txn",
        },
    }
}
