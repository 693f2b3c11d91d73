//! Everything one seed decides up front: cluster shape, timing, network quality, fault mix
//! and workload.

use rand::rngs::StdRng;
use rand::Rng;

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: usize,
    pub partitions: u32,
    pub replication: usize,
    pub tick_ms: u64,
    pub compact_threshold: u64,
    pub compact_keep: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    pub request_timeout_ms: u64,
    /// Network: loss and duplication probabilities, largest delay, long-delay probability.
    pub loss: f64,
    pub dup: f64,
    pub max_delay: u64,
    pub spike: f64,
    /// Mean time between fault starts (ms); 0 disables faults of that kind.
    pub crash_every: u64,
    pub partition_every: u64,
    pub pause_every: u64,
    pub clock_every: u64,
    /// Probability that a crash keeps each unsynced batch prefix (else it loses them all).
    pub keep_unsynced: f64,
    /// Membership change during the fault phase: 0 none, 1 add a node, 2 replace a node,
    /// 3 decommission a node.
    pub membership: u8,
    pub clients: usize,
    pub keys: usize,
    /// Pairs of keys of one hash tag, changed together by transactions.
    pub pairs: usize,
    /// Clients that take turns holding one lock, and the TTL of their leases.
    pub lockers: usize,
    pub lock_ttl_ms: u64,
    /// Mean think time between a client's operations.
    pub think_ms: u64,
    /// Length of the fault phase.
    pub fault_ms: u64,
    /// How long the node-level failure detector takes to notice that a node went down (or is
    /// cut off from the observer) or came back: what wakes quiesced groups.
    pub detect_ms: u64,
    /// Settled ticks after which a leader quiesces its group (`CoreConfig`).
    pub quiesce_after_ticks: usize,
    /// Clients issue nothing new for `quiet_ms` after every `quiet_every` ms of work (0: they
    /// never pause), so that groups quiesce while faults go on.
    pub quiet_every: u64,
    pub quiet_ms: u64,
}

impl Params {
    /// Draws the parameters of a run.
    pub fn draw(rng: &mut StdRng) -> Params {
        let nodes = rng.gen_range(3..=7);
        let every = |rng: &mut StdRng, p: f64, lo: u64, hi: u64| {
            if rng.gen_bool(p) {
                rng.gen_range(lo..hi)
            } else {
                0
            }
        };
        Params {
            nodes,
            partitions: rng.gen_range(1..=4),
            replication: rng.gen_range(3..=5).min(nodes),
            tick_ms: 50,
            compact_threshold: rng.gen_range(20..200),
            compact_keep: rng.gen_range(2..20),
            max_size_per_msg: if rng.gen_bool(0.5) { 512 } else { 64 * 1024 },
            max_inflight_msgs: if rng.gen_bool(0.5) { 4 } else { 256 },
            request_timeout_ms: rng.gen_range(1500..4000),
            loss: [0.0, 0.01, 0.05, 0.15][rng.gen_range(0..4)],
            dup: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
            max_delay: [2, 10, 40][rng.gen_range(0..3)],
            spike: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
            crash_every: every(rng, 0.6, 1500, 5000),
            partition_every: every(rng, 0.8, 800, 4000),
            pause_every: every(rng, 0.3, 2000, 6000),
            clock_every: every(rng, 0.3, 2000, 6000),
            keep_unsynced: rng.gen_range(0.0..1.0),
            membership: rng.gen_range(0..=3),
            clients: rng.gen_range(3..=8),
            keys: rng.gen_range(2..=4),
            think_ms: rng.gen_range(2..40),
            fault_ms: rng.gen_range(10_000..25_000),
            detect_ms: rng.gen_range(50..3_000),
            quiesce_after_ticks: [1, 3, 10][rng.gen_range(0..3)],
            quiet_every: every(rng, 0.6, 1_000, 5_000),
            quiet_ms: rng.gen_range(500..4_000),
            pairs: rng.gen_range(1..=2),
            lockers: rng.gen_range(0..=3),
            lock_ttl_ms: rng.gen_range(2_000..5_000),
        }
    }
}
