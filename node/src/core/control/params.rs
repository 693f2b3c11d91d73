//! The control plane's settings: what a node forms, and every period and limit of the
//! coordinator, so that a simulator can choose them as a deployment would.

/// Formation, coordination and gossip settings. Times are in milliseconds of the clock the
/// caller passes to [`super::Control::handle_tick`].
#[derive(Clone, Debug)]
pub struct ControlParams {
    /// Form or join a cluster on its own (zero-config). Off: wait for an explicit bootstrap.
    pub auto_form: bool,
    /// Wait for this many nodes (this one included) and start them all as voters.
    pub expect: Option<usize>,
    /// How long a new node listens for peers, at most, before it decides to join or form.
    pub discovery_ms: u64,
    /// The listening ends earlier once the set of unformed peers heard has not changed for
    /// this long: every node that started about together has been heard, and so has the
    /// next periodic heartbeat of a peer whose first one was missed (see `formation.rs`).
    pub settle_ms: u64,
    /// Partitions of a cluster this node forms.
    pub partitions: u32,
    /// Replication factor of a cluster this node forms.
    pub replication: usize,
    /// A node the coordinator has not heard from this long is marked dead and its replicas
    /// are replaced.
    pub dead_after_ms: u64,
    /// How often the meta leader coordinates and every node publishes its announcement.
    pub coordinator_period_ms: u64,
    /// How often group leaders move toward their targets and leftovers are collected.
    pub reconcile_period_ms: u64,
    /// How many groups may be moving toward a new target at once, cluster-wide: enough that a
    /// new cluster of 64 partitions reaches full replication in seconds, few enough that a
    /// rebalance of a loaded cluster copies a bounded amount of data at a time.
    pub max_moves: usize,
    /// An announcement older than this is not trusted (a dead peer's last words), and its
    /// sender counts as silent for the quiescence failure detector.
    pub announce_ttl_ms: u64,
    /// A replica this young is never dropped as a leftover. A node that just joined (or was
    /// rebuilt) gets replicas from leaders before its own meta replica has caught up with the
    /// targets that want them, so its stale targets make a new learner look unwanted, and the
    /// leaders announce voters only. Dropping such a replica and having it recreated empty at
    /// once left the meta group's new learner stuck under load. Waiting only delays the
    /// collection of a real leftover.
    pub leftover_grace_ms: u64,
    /// At most one leadership handed away per this period when balancing leaders.
    pub balance_period_ms: u64,
    /// A join request unanswered this long is given up, and the node tries again.
    pub join_timeout_ms: u64,
}

impl Default for ControlParams {
    fn default() -> ControlParams {
        ControlParams {
            auto_form: true,
            expect: None,
            discovery_ms: 3_000,
            settle_ms: 1_000,
            partitions: crate::core::DEFAULT_PARTITIONS,
            replication: crate::core::DEFAULT_REPLICATION,
            dead_after_ms: 60_000,
            coordinator_period_ms: 300,
            reconcile_period_ms: 200,
            max_moves: 16,
            announce_ttl_ms: 3_000,
            leftover_grace_ms: 10_000,
            balance_period_ms: 1_000,
            join_timeout_ms: 30_000,
        }
    }
}
