//! The sans-IO core driven by a small deterministic harness: three cores on memory stores,
//! messages delivered by the test, virtual time. This checks the core's basic contract in
//! plain steps (snapshots to a restarted node, serializable reads there); the fault-injecting
//! simulator with invariants and a linearizability check is `tests/sim` (`cargo test --test
//! sim`). The checker's own tests live here, because that simulator is not a libtest binary.

use std::collections::{BTreeMap, VecDeque};

use swarmkv::core::routing::partition_of;
use swarmkv::core::{
    ClientError, ClusterLayout, Consistency, Core, CoreConfig, GroupId, NodeId, Reply, Request,
    RequestBody, Response,
};
use swarmkv_store::raft::eraftpb::{Message, MessageType};
use swarmkv_store::{KvOp, KvOutcome, MemBackend, Store, StoreConfig};

const P: u32 = 8;

struct Sim {
    nodes: BTreeMap<NodeId, Core<MemBackend>>,
    backends: BTreeMap<NodeId, MemBackend>,
    down: Vec<NodeId>,
    net: VecDeque<(NodeId, NodeId, GroupId, Message)>,
    now: u64,
    next_req: u64,
    replies: BTreeMap<u64, Reply>,
    config: CoreConfig,
    snapshots_sent: usize,
    /// Heartbeats sent so far, by (sender, group).
    heartbeats: BTreeMap<(NodeId, GroupId), usize>,
    /// The cluster every node bootstraps with.
    layout: ClusterLayout,
}

impl Sim {
    /// Cores bootstrapped together, all with the same layout.
    fn new(ids: &[NodeId], seed: u64) -> Sim {
        let mut sim = Sim::unformed(ids, seed);
        for id in ids {
            sim.bootstrap(*id);
        }
        sim
    }

    /// Cores of nodes that have no cluster yet: they drop every Raft message until
    /// [`Sim::bootstrap`].
    fn unformed(ids: &[NodeId], seed: u64) -> Sim {
        let config = CoreConfig {
            seed,
            compact_threshold: 20,
            compact_keep: 2,
            ..CoreConfig::default()
        };
        let layout = ClusterLayout {
            nodes: ids.to_vec(),
            partitions: P,
            replication: 3,
        };
        let mut sim = Sim {
            nodes: BTreeMap::new(),
            backends: BTreeMap::new(),
            down: Vec::new(),
            net: VecDeque::new(),
            now: 0,
            next_req: 1,
            replies: BTreeMap::new(),
            config,
            snapshots_sent: 0,
            heartbeats: BTreeMap::new(),
            layout,
        };
        for id in ids {
            let mem = MemBackend::new();
            let store = Store::with_backend(mem.clone(), StoreConfig::default()).unwrap();
            let core = Core::new(*id, store, sim.config.clone(), 0).unwrap();
            sim.nodes.insert(*id, core);
            sim.backends.insert(*id, mem);
        }
        sim
    }

    /// Node `id` bootstraps now, as an initial node told by the one that formed the cluster.
    fn bootstrap(&mut self, id: NodeId) {
        let layout = self.layout.clone();
        self.nodes
            .get_mut(&id)
            .unwrap()
            .bootstrap(layout, 1)
            .unwrap();
    }

    /// One round: every core processes, messages are delivered, time advances 10 ms.
    fn step(&mut self) {
        self.now += 10;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            let core = self.nodes.get_mut(id).unwrap();
            core.handle_tick(self.now);
            // The turn in its one order (`core/turn.rs`).
            let mut out = Vec::new();
            let mut turn = core.begin_turn().unwrap();
            out.extend(std::iter::from_fn(|| turn.poll_transmit()));
            while let Some((rid, r)) = turn.poll_reply() {
                self.replies.insert(rid, r);
            }
            let mut done = turn.persist().unwrap();
            out.extend(std::iter::from_fn(|| done.poll_transmit()));
            let sends: Vec<_> = std::iter::from_fn(|| done.poll_snapshot()).collect();
            while let Some((rid, r)) = done.poll_reply() {
                self.replies.insert(rid, r);
            }
            // The writer's sync, at once: what it releases leaves with the next turn.
            if let Some(job) = core.take_sync_job().unwrap() {
                core.on_synced(job.run()).unwrap();
            }
            for (to, msgs) in out {
                for (g, m) in msgs {
                    if m.get_msg_type() == MessageType::MsgHeartbeat {
                        *self.heartbeats.entry((*id, g)).or_default() += 1;
                    }
                    self.net.push_back((*id, to, g, m));
                }
            }
            for s in sends {
                self.snapshots_sent += 1;
                // Stream the chunks straight into the receiver's store, then the message.
                let src = self.nodes[id].store().clone();
                let mut ok = false;
                if let Some(dst) = self.nodes.get(&s.to) {
                    ok = true;
                    for seq in 0..s.chunks {
                        match src.snapshot_chunk(s.group, s.index, seq) {
                            Ok(c) => ok &= dst.store().receive_chunk(&c).is_ok(),
                            Err(_) => ok = false,
                        }
                    }
                    if ok {
                        self.net.push_back((*id, s.to, s.group, s.message));
                    }
                }
                self.nodes
                    .get_mut(id)
                    .unwrap()
                    .report_snapshot(s.group, s.to, ok);
            }
        }
        let msgs: Vec<_> = self.net.drain(..).collect();
        for (from, to, g, m) in msgs {
            if self.down.contains(&from) || self.down.contains(&to) {
                continue;
            }
            if let Some(core) = self.nodes.get_mut(&to) {
                core.handle_raft(from, g, m);
            }
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.step();
        }
    }

    /// Sends `body` for `key`'s partition to whichever live node leads it, following hints,
    /// until it gets a definite answer.
    fn call(&mut self, key: &[u8], body: RequestBody) -> Reply {
        let partition = partition_of(key, P);
        let mut target = *self.nodes.keys().find(|n| !self.down.contains(n)).unwrap();
        for _ in 0..200 {
            let id = self.next_req;
            self.next_req += 1;
            let req = Request {
                partition,
                body: body.clone(),
            };
            self.nodes.get_mut(&target).unwrap().handle_request(id, req);
            let mut waited = 0;
            while !self.replies.contains_key(&id) && waited < 1000 {
                self.step();
                waited += 10;
            }
            match self.replies.remove(&id) {
                Some(Err(ClientError::NotLeader { leader: Some(l) }))
                    if self.nodes.contains_key(&l) && !self.down.contains(&l) =>
                {
                    target = l
                }
                Some(Err(e)) if e.is_retryable() => {
                    eprintln!("retry after {e} from {target}");
                    self.run(100);
                    let live: Vec<NodeId> = self
                        .nodes
                        .keys()
                        .copied()
                        .filter(|n| !self.down.contains(n))
                        .collect();
                    target = live[(id as usize) % live.len()];
                }
                Some(r) => return r,
                None => eprintln!("no reply from {target}"),
            }
        }
        panic!("no answer for {key:?}");
    }

    /// Sends `req` to node `to` as request `id` without waiting.
    fn submit(&mut self, to: NodeId, id: u64, req: Request) {
        self.nodes.get_mut(&to).unwrap().handle_request(id, req);
    }

    /// Steps until request `id` is answered (at most `ms` of virtual time).
    fn wait_reply(&mut self, id: u64, ms: u64) -> Option<Reply> {
        let mut waited = 0;
        while !self.replies.contains_key(&id) && waited < ms {
            self.step();
            waited += 10;
        }
        self.replies.remove(&id)
    }

    /// The leader of `key`'s partition as every live node agrees, and its followers.
    fn leader_and_followers(&self, key: &[u8]) -> (NodeId, Vec<NodeId>) {
        let g = swarmkv::core::group_of_partition(partition_of(key, P));
        let leader = self
            .nodes
            .values()
            .find(|n| n.is_leader(g))
            .map(|n| n.id())
            .expect("the partition has a leader");
        let followers = self
            .nodes
            .keys()
            .copied()
            .filter(|n| *n != leader)
            .collect();
        (leader, followers)
    }

    fn put(&mut self, key: &str, value: &str) -> u64 {
        let op = KvOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
        };
        match self.call(key.as_bytes(), RequestBody::Write { op, session: None }) {
            Ok(Response::Write(KvOutcome::Put { revision, .. })) => revision,
            other => panic!("put {key}: {other:?}"),
        }
    }

    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let body = RequestBody::Get {
            key: key.into(),
            consistency: Consistency::Linearizable,
        };
        match self.call(key.as_bytes(), body) {
            Ok(Response::Get(r)) => r.map(|r| r.value),
            other => panic!("get {key}: {other:?}"),
        }
    }

    fn kill(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.down.push(id);
        self.backends[&id].crash(0);
        // The failure detector tells the others (it wakes their quiesced groups).
        for core in self.nodes.values_mut() {
            core.set_node_live(id, false);
        }
    }

    fn restart(&mut self, id: NodeId) {
        let mem = self.backends[&id].clone();
        let store = Store::with_backend(mem, StoreConfig::default()).unwrap();
        let core = Core::new(id, store, self.config.clone(), self.now).unwrap();
        self.nodes.insert(id, core);
        self.down.retain(|d| *d != id);
        for (other, core) in self.nodes.iter_mut() {
            if *other != id {
                core.set_node_live(id, true);
            }
        }
    }
}

fn seed() -> u64 {
    let s = std::env::var("SWARMKV_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("seed {s} (replay: SWARMKV_SEED={s})");
    s
}

#[test]
fn three_cores_elect_leaders_and_serve_reads_and_writes() {
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    for n in sim.nodes.values() {
        for (g, leader) in n.leaders() {
            assert!(leader.is_some(), "node {} group {g} has no leader", n.id());
        }
    }
    let r1 = sim.put("alpha", "1");
    let r2 = sim.put("alpha", "2");
    assert!(r2 > r1);
    assert_eq!(sim.get("alpha"), Some(b"2".to_vec()));
    assert_eq!(sim.get("missing"), None);
}

#[test]
fn a_new_cluster_elects_every_first_leader_within_an_election_timeout_of_late_bootstraps() {
    // The node that forms a cluster bootstraps first and the others only when its bootstrap
    // call reaches them, so its first pre-votes find no replica there and are dropped. Its
    // groups must not wait an election timeout (at least 1 s) to elect their first leader.
    let mut sim = Sim::unformed(&[11, 22, 33], seed());
    sim.bootstrap(11);
    sim.run(50);
    sim.bootstrap(22);
    sim.bootstrap(33);
    sim.run(500);
    for n in sim.nodes.values() {
        for (g, leader) in n.leaders() {
            assert!(
                leader.is_some(),
                "node {} group {g} has no leader 550 ms after the first bootstrap",
                n.id()
            );
        }
    }
}

#[test]
fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        sim.put(k, k);
    }
    // Kill the node that leads the most groups.
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    for n in sim.nodes.values() {
        for (_, l) in n.leaders() {
            if l == Some(n.id()) {
                *counts.entry(n.id()).or_default() += 1;
            }
        }
    }
    let victim = counts
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(n, _)| *n)
        .unwrap();
    sim.kill(victim);
    sim.run(4000);
    for k in &keys {
        assert_eq!(sim.get(k), Some(k.clone().into_bytes()), "{k}");
    }
    // Writes continue; enough of them that logs compact past the dead node.
    for i in 0..300 {
        sim.put(&format!("key-{}", i % 40), &format!("v{i}"));
    }
    sim.restart(victim);
    sim.run(5000);
    assert!(
        sim.snapshots_sent > 0,
        "the restarted node should need snapshots"
    );
    // The restarted node caught up (through snapshots where logs were compacted): its
    // serializable reads see the latest values.
    for i in 260..300 {
        let k = format!("key-{}", i % 40);
        let body = RequestBody::Get {
            key: k.clone().into_bytes(),
            consistency: Consistency::Serializable,
        };
        let id = 1_000_000 + i;
        let req = Request {
            partition: partition_of(k.as_bytes(), P),
            body,
        };
        let core = sim.nodes.get_mut(&victim).unwrap();
        core.handle_request(id, req);
        let reply = core
            .poll_reply()
            .expect("serializable reads answer at once");
        match reply.1 {
            Ok(Response::Get(Some(r))) => assert_eq!(r.value, format!("v{i}").into_bytes()),
            other => panic!("{k} on restarted node: {other:?}"),
        }
    }
}

#[path = "sim/linearizability.rs"]
mod linearizability;

mod checker {
    use super::linearizability::{check, known_histories, Input, Operation, Output, Verdict};
    #[test]
    fn known_histories_are_classified() {
        for (name, history, linearizable) in known_histories() {
            let v = check(&history, None, 1_000_000);
            assert_eq!(
                v == Verdict::Linearizable,
                linearizable,
                "{name}: got {v:?}"
            );
        }
    }

    #[test]
    fn many_concurrent_writes_stay_tractable() {
        // 12 overlapping puts and a read that saw one of them: without the memo this is 12!
        // orders; with it, at most 2^12 sets times 13 states.
        let mut h = Vec::new();
        for i in 0..12u64 {
            h.push(Operation {
                client: i,
                call: 0,
                ret: Some((100, Output::Put)),
                input: Input::Put(i),
            });
        }
        h.push(Operation {
            client: 99,
            call: 200,
            ret: Some((210, Output::Get(Some(7)))),
            input: Input::Get,
        });
        assert_eq!(check(&h, None, 10_000_000), Verdict::Linearizable);
        h.push(Operation {
            client: 98,
            call: 220,
            ret: Some((230, Output::Get(Some(8)))),
            input: Input::Get,
        });
        assert!(matches!(
            check(&h, None, 10_000_000),
            Verdict::NotLinearizable { .. }
        ));
    }
}

/// Regression (found by the LAN chaos test): a cluster formed by one node has every group on
/// that node alone; when the targets then move a group entirely to three other nodes, the
/// leader cannot hand its leadership to a staying voter (there is none) and must promote the
/// new replicas first instead of waiting forever.
#[test]
fn a_group_formed_on_one_node_moves_entirely_to_three_others() {
    use swarmkv::core::Target;
    let seed = seed();
    let config = CoreConfig {
        seed,
        ..CoreConfig::default()
    };
    let mut sim = Sim::new(&[11], seed);
    sim.run(2000);
    let settings = sim.nodes[&11]
        .settings()
        .cloned()
        .expect("the forming node has the cluster's settings");
    let mut backends = Vec::new();
    for id in [22, 33, 44] {
        let mem = MemBackend::new();
        let store = Store::with_backend(mem.clone(), StoreConfig::default()).unwrap();
        let mut core = Core::new(id, store, config.clone(), sim.now).unwrap();
        // What the driver does when a node joins: it learns the settings, then targets.
        core.join(settings.clone()).unwrap();
        sim.nodes.insert(id, core);
        backends.push((id, mem));
    }
    for (id, mem) in backends {
        sim.backends.insert(id, mem);
    }
    let everywhere: Vec<NodeId> = vec![11, 22, 33, 44];
    let moved: Vec<NodeId> = vec![22, 33, 44];
    let targets: BTreeMap<GroupId, Target> = (0..=P as u64)
        .map(|g| {
            let replicas = if g == 0 {
                everywhere.clone()
            } else {
                moved.clone()
            };
            (
                g,
                Target {
                    replicas,
                    version: 2,
                },
            )
        })
        .collect();
    for core in sim.nodes.values_mut() {
        core.set_targets(targets.clone());
    }
    let done = |sim: &Sim| {
        (1..=P as u64).all(|g| {
            sim.nodes.values().any(|n| {
                n.group_status(g).is_some_and(|s| {
                    s.leader == Some(n.id()) && {
                        let mut v = s.voters.clone();
                        v.sort_unstable();
                        v == moved
                    }
                })
            })
        })
    };
    let mut waited = 0;
    while !done(&sim) {
        assert!(
            waited < 60_000,
            "groups did not move to {moved:?} within 60 s of virtual time: {:?}",
            (1..=P as u64)
                .map(|g| sim.nodes[&11].group_status(g).map(|s| (s.role, s.voters)))
                .collect::<Vec<_>>()
        );
        for core in sim.nodes.values_mut() {
            core.reconcile();
        }
        sim.run(200);
        waited += 200;
    }
    // The moved groups still serve, without the node that formed them.
    sim.put("after-move", "ok");
    assert_eq!(sim.get("after-move"), Some(b"ok".to_vec()));
}

/// A follower serves a linearizable read and a write itself, through Raft (ReadIndex
/// and a forwarded proposal), instead of answering `NotLeader`; the read on the other follower
/// sees the write the first one acknowledged.
#[test]
fn followers_serve_linearizable_reads_and_writes_through_raft() {
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    let key = "on-a-follower";
    let (_, followers) = sim.leader_and_followers(key.as_bytes());
    let partition = partition_of(key.as_bytes(), P);
    let op = KvOp::Put {
        key: key.into(),
        value: b"v1".to_vec(),
        lease: 0,
        prev_kv: false,
    };
    let id = sim.next_req;
    sim.next_req += 1;
    sim.submit(
        followers[0],
        id,
        Request {
            partition,
            body: RequestBody::Write { op, session: None },
        },
    );
    match sim.wait_reply(id, 2000) {
        Some(Ok(Response::Write(KvOutcome::Put { .. }))) => {}
        other => panic!("put on follower {}: {other:?}", followers[0]),
    }
    let id = sim.next_req;
    sim.next_req += 1;
    sim.submit(
        followers[1],
        id,
        Request {
            partition,
            body: RequestBody::Get {
                key: key.into(),
                consistency: Consistency::Linearizable,
            },
        },
    );
    match sim.wait_reply(id, 2000) {
        Some(Ok(Response::Get(Some(r)))) => assert_eq!(r.value, b"v1".to_vec()),
        other => panic!("get on follower {}: {other:?}", followers[1]),
    }
}

/// Reads that reach a leader between two turns share one ReadIndex call, so the
/// leader confirms its leadership with one heartbeat round for all of them, not one each.
#[test]
fn reads_arriving_together_share_one_heartbeat_round() {
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    let key = "batched";
    sim.put(key, "x");
    let (leader, _) = sim.leader_and_followers(key.as_bytes());
    let partition = partition_of(key.as_bytes(), P);
    let g = swarmkv::core::group_of_partition(partition);
    let reads = 20u64;
    let first = sim.next_req;
    sim.next_req += reads;
    let before = sim.heartbeats.get(&(leader, g)).copied().unwrap_or(0);
    for id in first..first + reads {
        sim.submit(
            leader,
            id,
            Request {
                partition,
                body: RequestBody::Get {
                    key: key.into(),
                    consistency: Consistency::Linearizable,
                },
            },
        );
    }
    for id in first..first + reads {
        match sim.wait_reply(id, 2000) {
            Some(Ok(Response::Get(Some(r)))) => assert_eq!(r.value, b"x".to_vec()),
            other => panic!("read {id}: {other:?}"),
        }
    }
    let sent = sim.heartbeats.get(&(leader, g)).copied().unwrap_or(0) - before;
    // One round to the two followers, plus at most one periodic round meanwhile; one call per
    // read would have sent 2 x 20.
    assert!(
        (2..=4).contains(&sent),
        "{sent} heartbeats for {reads} reads"
    );
}

#[test]
fn a_turn_asks_only_the_replicas_that_changed_for_their_ready() {
    // Raft's readiness changes only through a replica's own calls (a step, a proposal, a
    // tick), so a turn between ticks asks only the replicas its messages and requests reached,
    // not every partition: with hundreds of partitions that check was most of a turn's cost.
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    let before: BTreeMap<NodeId, (u64, u64)> = sim
        .nodes
        .iter()
        .map(|(id, n)| (*id, (n.stats().turns, n.stats().ready_checks)))
        .collect();
    for i in 0..20 {
        sim.put("one-partition", &i.to_string());
    }
    for (id, n) in &sim.nodes {
        let groups = n.groups().len() as u64;
        let turns = n.stats().turns - before[id].0;
        let checks = n.stats().ready_checks - before[id].1;
        println!("node {id}: {checks} ready checks in {turns} turns, {groups} replicas");
        assert!(turns > 0, "node {id} took no turn");
        // Every turn asking every replica would be `turns * groups`; a tick (every tenth
        // turn here) reaches every awake replica, the other turns only the written partition.
        assert!(
            checks * 3 < turns * groups,
            "node {id}: {checks} ready checks in {turns} turns of {groups} replicas"
        );
    }
    assert_eq!(sim.get("one-partition"), Some(b"19".to_vec()));
}

#[test]
fn a_voter_cut_off_is_not_offered_the_leadership() {
    // Leader balancing and a draining node hand leadership only to a voter that Raft
    // replicates to and has heard from within an election timeout: one cut off but not yet
    // judged down would hold the partition's writes for an election timeout.
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    let key = "handover";
    sim.put(key, "1");
    let (leader, followers) = sim.leader_and_followers(key.as_bytes());
    let g = swarmkv::core::group_of_partition(partition_of(key.as_bytes(), P));
    let (cut, other) = (followers[0], followers[1]);
    assert!(sim.nodes[&leader].can_take_leadership(g, cut));
    assert!(sim.nodes[&leader].can_take_leadership(g, other));
    sim.down.push(cut);
    sim.put(key, "2");
    sim.run(3000);
    let l = &sim.nodes[&leader];
    assert!(l.is_leader(g), "the leader kept its quorum with {other:x}");
    assert!(!l.can_take_leadership(g, cut), "{cut:x} is cut off");
    assert!(l.can_take_leadership(g, other), "{other:x} still answers");
    sim.down.retain(|d| *d != cut);
    sim.put(key, "3");
    sim.run(3000);
    assert!(
        sim.nodes[&leader].can_take_leadership(g, cut),
        "{cut:x} is back"
    );
}

/// One turn of node `id` by hand, in the driver's order, without running its writer's sync:
/// the messages it hands out (before and after the persist) for `group`.
fn turn_without_sync(sim: &mut Sim, id: NodeId, group: GroupId) -> Vec<Message> {
    let core = sim.nodes.get_mut(&id).unwrap();
    core.advance_clock(sim.now);
    let mut out = Vec::new();
    let mut turn = core.begin_turn().unwrap();
    out.extend(std::iter::from_fn(|| turn.poll_transmit()));
    while turn.poll_reply().is_some() {}
    let mut done = turn.persist().unwrap();
    out.extend(std::iter::from_fn(|| done.poll_transmit()));
    while done.poll_reply().is_some() {}
    out.into_iter()
        .flat_map(|(_, msgs)| msgs)
        .filter(|(g, _)| *g == group)
        .map(|(_, m)| m)
        .collect()
}

#[test]
fn a_follower_acknowledges_an_append_only_once_its_sync_returned() {
    // With the Raft log synced off the turn, a follower writes the leader's entries in its
    // turn and hands its writer the sync; the acknowledgement waits for that sync, and a crash
    // before it returns loses the entries, which nothing then counts on.
    let mut sim = Sim::new(&[11, 22, 33], seed());
    sim.run(3000);
    sim.put("k", "v0");
    let (leader, followers) = sim.leader_and_followers(b"k");
    let f = followers[0];
    let g = swarmkv::core::group_of_partition(partition_of(b"k", P));
    let op = KvOp::Put {
        key: "k".into(),
        value: "v1".into(),
        lease: 0,
        prev_kv: false,
    };
    let req = Request {
        partition: partition_of(b"k", P),
        body: RequestBody::Write { op, session: None },
    };
    sim.submit(leader, 9_000, req);
    let appends: Vec<Message> = turn_without_sync(&mut sim, leader, g)
        .into_iter()
        .filter(|m| m.to == f && m.get_msg_type() == MessageType::MsgAppend)
        .filter(|m| !m.entries.is_empty())
        .collect();
    assert!(
        !appends.is_empty(),
        "the leader sends its append before its own sync"
    );
    let index = appends
        .iter()
        .flat_map(|m| &m.entries)
        .map(|e| e.index)
        .max();
    let index = index.unwrap_or_default();
    let follower = sim.nodes.get_mut(&f).unwrap();
    for m in appends.clone() {
        follower.handle_raft(leader, g, m);
    }
    let out = turn_without_sync(&mut sim, f, g);
    assert!(
        !out.iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse),
        "an acknowledgement left before the sync: {out:?}"
    );
    let job = sim.nodes.get_mut(&f).unwrap().take_sync_job().unwrap();
    assert!(job.is_some(), "the follower's write waits for a sync");

    // The sync never returns: the node crashes, and the entries are gone.
    sim.nodes.remove(&f);
    sim.backends[&f].crash_keeping(0, 0);
    sim.restart(f);
    let last = sim.nodes[&f]
        .group_status(g)
        .map(|s| s.last_index)
        .unwrap_or_default();
    assert!(
        last < index,
        "an unsynced entry survived the crash: {last} >= {index}"
    );

    // Again, and this time the sync returns: the acknowledgement follows.
    let follower = sim.nodes.get_mut(&f).unwrap();
    for m in appends {
        follower.handle_raft(leader, g, m);
    }
    let out = turn_without_sync(&mut sim, f, g);
    assert!(!out
        .iter()
        .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject));
    let follower = sim.nodes.get_mut(&f).unwrap();
    let job = follower.take_sync_job().unwrap().expect("a sync to run");
    follower.on_synced(job.run()).unwrap();
    let out = turn_without_sync(&mut sim, f, g);
    assert!(
        out.iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse
                && m.to == leader
                && !m.reject
                && m.index >= index),
        "no acknowledgement after the sync: {out:?}"
    );
    // The write completes as usual.
    match sim.wait_reply(9_000, 3_000) {
        Some(Ok(Response::Write(KvOutcome::Put { .. }))) => {}
        other => panic!("put k=v1: {other:?}"),
    }
    assert_eq!(sim.get("k"), Some(b"v1".to_vec()));
}
