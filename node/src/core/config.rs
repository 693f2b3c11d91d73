//! Settings of the multi-Raft core.

/// Timing and sizing of the core. Times are in milliseconds of the injected clock.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Length of one Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns (raft-rs randomises between this and
    /// twice this; the core draws each replica's value from its own seeded RNG).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest append message raft-rs builds.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Compact a group's log once it holds this many applied entries...
    pub compact_threshold: u64,
    /// ...keeping this many of the most recent ones for slow followers.
    pub compact_keep: u64,
    /// How long a request may wait for its answer inside the core.
    pub request_timeout_ms: u64,
    /// Seed of the core's randomness (election timeouts).
    pub seed: u64,
    /// A group leader with nothing to do for this many ticks in a row quiesces the group: its
    /// replicas stop ticking and heartbeating until traffic or a node failure wakes them
    /// (see `core/quiesce.rs`). 0 never quiesces.
    pub quiesce_after_ticks: usize,
    /// A turn writes its Readies without syncing and the driver syncs them off the turn
    /// ([`super::Core::take_sync_job`]), so that turns go on while the disk works; false
    /// syncs each turn in place.
    pub pipelined_sync: bool,
}

impl CoreConfig {
    /// The shortest lease TTL granted: four election timeouts. Leases are granted and kept
    /// alive by the meta group's leader; when it fails, up to two election timeouts pass before
    /// a follower campaigns, then the election runs, and meanwhile every keep-alive fails. A
    /// lease shorter than that would expire at every such failover however well its holder
    /// kept it alive (etcd refuses short TTLs for the same reason).
    pub fn min_lease_ttl_ms(&self) -> u64 {
        4 * self.election_ticks as u64 * self.tick_ms
    }
}

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            compact_threshold: 10_000,
            compact_keep: 1_000,
            request_timeout_ms: 5_000,
            seed: 0,
            quiesce_after_ticks: 10,
            pipelined_sync: true,
        }
    }
}
