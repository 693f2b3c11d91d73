//! One node's sans-IO core on a memory store, driven the way the driver drives it (tick,
//! process, serve caught-up reads, collect replies) under a virtual clock: the harness of the
//! structure-aware targets. A single-node cluster needs no network, so every group elects
//! this node within a few ticks and every request is decided by this core alone.

use std::collections::BTreeMap;
use std::ops::Bound;

use swarmkv::core::{
    ClusterLayout, Core, CoreConfig, CoreError, LeaseRequest, NodeId, Reply, Request, RequestId,
};
use swarmkv_store::{Backend, BackendBatch, MemBackend, Scan, Store, StoreConfig, TreeId};

/// The node's Raft id.
pub const NODE: NodeId = 1;
/// The cluster id it bootstraps with.
pub const CLUSTER_ID: u64 = 0x5eed;

/// Fast timings (10 ms ticks, 3-tick elections) and frequent compaction, so short inputs
/// reach elections, timeouts and log compaction.
pub fn config() -> CoreConfig {
    CoreConfig {
        tick_ms: 10,
        election_ticks: 3,
        heartbeat_ticks: 1,
        compact_threshold: 16,
        compact_keep: 4,
        request_timeout_ms: 1_000,
        ..CoreConfig::default()
    }
}

/// Small limits, so that oversized keys and values are cheap to produce.
pub fn store_config() -> StoreConfig {
    let mut config = StoreConfig {
        snapshot_chunk_bytes: 256,
        ..StoreConfig::default()
    };
    config.limits.max_key = 64;
    config.limits.max_value = 256;
    config
}

/// A running single-node cluster and the answers it gave.
pub struct Node {
    pub core: Core<MemBackend>,
    pub backend: MemBackend,
    /// The virtual clock, in ms.
    pub now: u64,
    pub partitions: u32,
    next_id: RequestId,
    answers: BTreeMap<RequestId, Reply>,
}

impl Node {
    /// Forms a one-node cluster of `partitions` partitions on a fresh memory store.
    pub fn bootstrap(partitions: u32) -> Result<Node, CoreError> {
        let backend = MemBackend::new();
        let mut node = Node::open(backend, partitions, 0)?;
        node.core.bootstrap(
            ClusterLayout {
                nodes: vec![NODE],
                partitions,
                replication: 1,
            },
            CLUSTER_ID,
        )?;
        Ok(node)
    }

    /// Opens the core on what `backend` holds (a restart), with the clock at `now`.
    pub fn open(backend: MemBackend, partitions: u32, now: u64) -> Result<Node, CoreError> {
        let store = Store::with_backend(backend.clone(), store_config())?;
        let core = Core::new(NODE, store, config(), now)?;
        Ok(Node {
            core,
            backend,
            now,
            partitions,
            next_id: 1,
            answers: BTreeMap::new(),
        })
    }

    /// One turn of the node loop, 10 ms after the last. Every reply is collected; a second
    /// reply to one request is a bug (this panics).
    pub fn turn(&mut self) -> Result<(), CoreError> {
        self.now += config().tick_ms;
        self.core.handle_tick(self.now);
        // The turn in its one order (`core/turn.rs`); messages to peers (a restored
        // configuration may name some) go nowhere.
        let answers = &mut self.answers;
        let mut answer = |(id, reply)| {
            let earlier = answers.insert(id, reply);
            assert!(earlier.is_none(), "request {id} answered twice");
        };
        let mut turn = self.core.begin_turn()?;
        while turn.poll_transmit().is_some() {}
        std::iter::from_fn(|| turn.poll_reply()).for_each(&mut answer);
        let mut done = turn.persist()?;
        while done.poll_transmit().is_some() {}
        while done.poll_snapshot().is_some() {}
        std::iter::from_fn(|| done.poll_reply()).for_each(&mut answer);
        // The writer's sync, at once: what it releases leaves with the next turn.
        if let Some(job) = self.core.take_sync_job()? {
            self.core.on_synced(job.run())?;
        }
        Ok(())
    }

    /// Runs turns until this node leads every group and has applied all of each group's log
    /// (at most `turns`); false if it did not. A new leader serves nothing before it applied
    /// its term's first entry, which takes a turn after the one it became leader in (the
    /// entry commits once the writer's sync of it returned).
    pub fn await_leadership(&mut self, turns: usize) -> Result<bool, CoreError> {
        for _ in 0..turns {
            let groups = self.core.groups();
            let serving = |g: &u64| {
                self.core.is_leader(*g)
                    && self
                        .core
                        .group_status(*g)
                        .is_some_and(|s| s.applied >= s.last_index)
            };
            if !groups.is_empty() && groups.iter().all(serving) {
                return Ok(true);
            }
            self.turn()?;
        }
        Ok(false)
    }

    /// Hands a request to the core; its answer comes from [`Node::answer`].
    pub fn submit(&mut self, req: Request) -> RequestId {
        let id = self.take_id();
        self.core.handle_request(id, req);
        id
    }

    /// Hands a lease request to the core.
    pub fn submit_lease(&mut self, req: LeaseRequest) -> RequestId {
        let id = self.take_id();
        self.core.handle_lease(id, req);
        id
    }

    fn take_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Runs turns until request `id` is answered and returns the answer. Every request has a
    /// deadline, so not being answered well past it is a bug (this panics).
    pub fn answer(&mut self, id: RequestId) -> Result<Reply, CoreError> {
        let bound = config().request_timeout_ms / config().tick_ms + 20;
        for _ in 0..bound {
            if let Some(reply) = self.answers.remove(&id) {
                return Ok(reply);
            }
            self.turn()?;
        }
        match self.answers.remove(&id) {
            Some(reply) => Ok(reply),
            None => panic!("request {id} was never answered (deadline passed long ago)"),
        }
    }

    /// Loses every write not yet synced but the first `keep_unsynced` batches (a crash),
    /// then opens the core again on what is left.
    pub fn crash_and_restart(self, keep_unsynced: usize) -> Result<Node, CoreError> {
        let Node {
            core,
            backend,
            now,
            partitions,
            next_id,
            ..
        } = self;
        drop(core);
        backend.crash(keep_unsynced);
        let mut node = Node::open(backend, partitions, now)?;
        node.next_id = next_id;
        Ok(node)
    }
}

/// Every record of every tree of `backend`, in tree and key order.
pub fn records(backend: &MemBackend) -> Vec<(TreeId, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for tree in TreeId::ALL {
        let scanned = backend.scan(
            tree,
            Bound::Unbounded,
            Bound::Unbounded,
            false,
            &mut |k, v| {
                out.push((tree, k.to_vec(), v.to_vec()));
                Ok(Scan::Continue)
            },
        );
        if let Err(e) = scanned {
            panic!("a memory backend failed a scan: {e}");
        }
    }
    out
}

/// A memory backend holding exactly `records`, synced.
pub fn backend_with(records: &[(TreeId, Vec<u8>, Vec<u8>)]) -> MemBackend {
    let backend = MemBackend::new();
    let mut batch = BackendBatch::default();
    for (tree, key, value) in records {
        batch.put(*tree, key.clone(), value.clone());
    }
    if let Err(e) = backend.write(&batch).and_then(|()| backend.sync()) {
        panic!("a memory backend failed a write: {e}");
    }
    backend
}
