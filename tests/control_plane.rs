//! The control plane on in-process swarms over 127.0.0.1 (join addresses instead of mDNS):
//! zero-config formation and up-replication, joins with rebalancing under load, self-healing
//! after a node dies (the coordinator included), full restart, decommission.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{listen_addr, serial, wait_for};
use swarmkv::core::{GroupId, NodeId};
use swarmkv::{Client, Node, NodeConfig, NodeHandle};
use swarmkv_net::Multiaddr;

const P: u32 = 12;

struct Swarm {
    nodes: Vec<Option<Node>>,
    handles: Vec<NodeHandle>,
    dirs: Vec<tempfile::TempDir>,
    seed_addr: Option<Multiaddr>,
    expect: Option<usize>,
}

fn config(dir: &std::path::Path, join: Option<Multiaddr>, expect: Option<usize>) -> NodeConfig {
    let mut c = NodeConfig::loopback(dir);
    c.control.auto_form = true;
    c.control.partitions = P;
    c.control.replication = 3;
    c.control.expect = expect;
    c.join = join.into_iter().collect();
    c
}

impl Swarm {
    fn new(expect: Option<usize>) -> Swarm {
        Swarm {
            nodes: Vec::new(),
            handles: Vec::new(),
            dirs: Vec::new(),
            seed_addr: None,
            expect,
        }
    }

    /// `n` nodes started with `expect n`, once every group has 3 replicas (the meta group
    /// min(n, 5)) on them.
    async fn formed(n: usize) -> Swarm {
        let mut swarm = Swarm::new(Some(n));
        for _ in 0..n {
            swarm.add().await;
        }
        wait_for_placement(
            swarm.live_handles(),
            swarm.live_ids(),
            3,
            Duration::from_secs(40),
        )
        .await;
        swarm
    }

    async fn add(&mut self) -> usize {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node::start(config(dir.path(), self.seed_addr.clone(), self.expect))
            .await
            .expect("start");
        let h = node.handle();
        if self.seed_addr.is_none() {
            self.seed_addr = Some(listen_addr(&h).await);
        }
        self.handles.push(h);
        self.nodes.push(Some(node));
        self.dirs.push(dir);
        self.nodes.len() - 1
    }

    async fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill().await;
        }
    }

    /// Restarts node `i` on its data dir, listening where it listened before (so the
    /// addresses its peers remember stay valid), dialing `join`.
    async fn restart(&mut self, i: usize, listen: Multiaddr, join: Multiaddr) {
        let mut c = config(self.dirs[i].path(), Some(join), self.expect);
        c.listen = vec![listen];
        let node = Node::start(c).await.expect("restart");
        self.handles[i] = node.handle();
        self.nodes[i] = Some(node);
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    fn live_handles(&self) -> Vec<NodeHandle> {
        self.live()
            .into_iter()
            .map(|i| self.handles[i].clone())
            .collect()
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.live()
            .into_iter()
            .map(|i| self.handles[i].node_id())
            .collect()
    }

    async fn client(&self, i: usize) -> Client {
        Client::in_process(self.handles[i].clone())
            .await
            .expect("client")
    }
}

/// Every group's voters, as its current leader reports them.
async fn group_voters(handles: &[NodeHandle]) -> BTreeMap<GroupId, Vec<NodeId>> {
    let mut out = BTreeMap::new();
    for h in handles {
        if let Ok(s) = h.status().await {
            for g in s.groups {
                if g.leader == Some(s.node) {
                    let mut v = g.voters.clone();
                    v.sort_unstable();
                    out.insert(g.group, v);
                }
            }
        }
    }
    out
}

/// Waits until every group (meta + P partitions) has `replicas` voters, all among `live`.
async fn wait_for_placement(
    handles: Vec<NodeHandle>,
    live: Vec<NodeId>,
    replicas: usize,
    timeout: Duration,
) {
    let live: BTreeSet<NodeId> = live.into_iter().collect();
    wait_for(
        "every group to reach its replica count on live nodes",
        timeout,
        || {
            let handles = handles.clone();
            let live = live.clone();
            async move {
                let voters = group_voters(&handles).await;
                voters.len() == P as usize + 1
                    && voters.iter().all(|(g, v)| {
                        let want = if *g == 0 { live.len().min(5) } else { replicas };
                        v.len() == want && v.iter().all(|n| live.contains(n))
                    })
            }
        },
    )
    .await;
}

async fn cluster_ids(handles: &[NodeHandle]) -> BTreeSet<Option<u64>> {
    let mut ids = BTreeSet::new();
    for h in handles {
        ids.insert(
            h.status()
                .await
                .ok()
                .and_then(|s| s.settings.map(|s| s.cluster_id)),
        );
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster_without_configuration_and_up_replicate() {
    let _serial = serial().await;
    let mut swarm = Swarm::new(None);
    for _ in 0..3 {
        swarm.add().await;
    }
    let started = Instant::now();
    let handles = swarm.live_handles();
    wait_for("one cluster", Duration::from_secs(20), || {
        let handles = handles.clone();
        async move {
            let ids = cluster_ids(&handles).await;
            ids.len() == 1 && !ids.contains(&None)
        }
    })
    .await;
    wait_for_placement(
        swarm.live_handles(),
        swarm.live_ids(),
        3,
        Duration::from_secs(40),
    )
    .await;
    println!(
        "formed and at 3 replicas everywhere after {:?}",
        started.elapsed()
    );
    let c = swarm.client(2).await;
    c.put(b"zero-config", b"works").await.expect("put");
    assert_eq!(
        swarm
            .client(0)
            .await
            .get(b"zero-config")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_rebalance_a_loaded_cluster_without_losing_keys() {
    let _serial = serial().await;
    let mut swarm = Swarm::formed(3).await;
    let client = Arc::new(swarm.client(0).await);
    // Load 10,000 keys with 64 concurrent writers.
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..10_000).step_by(64) {
                client
                    .put(format!("load/{i:05}").as_bytes(), format!("{i}").as_bytes())
                    .await
                    .expect("load");
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
    // Traffic keeps flowing while nodes join and replicas move.
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (client, stop, ops) = (client.clone(), stop.clone(), ops.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("live/{}", i % 100);
                client
                    .put(k.as_bytes(), format!("{i}").as_bytes())
                    .await
                    .expect("write during moves");
                let got = client.get(k.as_bytes()).await.expect("read during moves");
                assert_eq!(got.map(|r| r.value), Some(format!("{i}").into_bytes()));
                ops.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    swarm.add().await;
    swarm.add().await;
    let limit = (3 * P as usize).div_ceil(5) + 1;
    let handles = swarm.live_handles();
    let live = swarm.live_ids();
    wait_for(
        "replicas spread over five nodes",
        Duration::from_secs(90),
        || {
            let handles = handles.clone();
            let live = live.clone();
            async move {
                let voters = group_voters(&handles).await;
                let mut load: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
                for (g, v) in &voters {
                    if *g != 0 {
                        for n in v {
                            *load.entry(*n).or_default() += 1;
                        }
                    }
                }
                // Leaders spread too: nobody leads more than its share plus one.
                let mut leading = Vec::new();
                for h in &handles {
                    let Ok(s) = h.status().await else {
                        return false;
                    };
                    leading.push(s.groups.iter().filter(|g| g.leader == Some(s.node)).count());
                }
                let lead_limit = (P as usize + 1).div_ceil(live.len()) + 1;
                voters.len() == P as usize + 1
                    && voters
                        .iter()
                        .filter(|(g, _)| **g != 0)
                        .all(|(_, v)| v.len() == 3)
                    && load.values().all(|l| *l <= limit && *l > 0)
                    && leading.iter().all(|l| *l <= lead_limit)
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.expect("traffic");
    println!(
        "{} read-after-write pairs succeeded during the moves",
        ops.load(Ordering::SeqCst)
    );
    let reader = swarm.client(4).await;
    let all = reader
        .scan(
            b"load/",
            Some(b"load0"),
            0,
            swarmkv::core::Consistency::Linearizable,
        )
        .await
        .expect("scan");
    assert_eq!(all.len(), 10_000, "keys lost during rebalancing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_and_the_coordinator_role_moves() {
    let _serial = serial().await;
    let mut swarm = Swarm::formed(4).await;
    let client = swarm.client(0).await;
    for i in 0..200 {
        client
            .put(format!("heal/{i}").as_bytes(), b"x")
            .await
            .expect("put");
    }
    // Kill a node that is not the meta leader, for good.
    let mut meta_leader = 0;
    for i in swarm.live() {
        if swarm.handles[i].status().await.unwrap().meta_leader {
            meta_leader = i;
        }
    }
    let victim = (0..4).find(|i| *i != meta_leader && *i != 0).unwrap();
    swarm.kill(victim).await;
    wait_for_placement(
        swarm.live_handles(),
        swarm.live_ids(),
        3,
        Duration::from_secs(60),
    )
    .await;
    println!("back to 3 replicas on the 3 live nodes");
    // Now kill the coordinator itself (leader balancing may have moved it meanwhile: look
    // again, and wait until exactly one live node claims the role).
    let meta_leader = loop {
        let mut claims = Vec::new();
        for i in swarm.live() {
            if swarm.handles[i]
                .status()
                .await
                .map(|s| s.meta_leader)
                .unwrap_or(false)
            {
                claims.push(i);
            }
        }
        if claims.len() == 1 {
            break claims[0];
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivor = swarm
        .live()
        .into_iter()
        .find(|i| *i != meta_leader)
        .unwrap();
    let client = swarm.client(survivor).await;
    let before: BTreeSet<NodeId> = swarm.live_ids().into_iter().collect();
    swarm.kill(meta_leader).await;
    let killed = Instant::now();
    let handles = swarm.live_handles();
    wait_for("a new coordinator", Duration::from_secs(10), || {
        let handles = handles.clone();
        async move {
            for h in &handles {
                if h.status().await.map(|s| s.meta_leader).unwrap_or(false) {
                    return true;
                }
            }
            false
        }
    })
    .await;
    let moved = killed.elapsed();
    println!("the coordinator role moved {moved:?} after the kill");
    assert!(
        moved < Duration::from_secs(5),
        "coordinator took {moved:?} to move"
    );
    // Two live nodes and nobody to replace the dead coordinator: every group keeps it as its
    // third voter (two of three are a majority, as two of two would be, and it is back the
    // moment the node returns), and every key is still there.
    let dead: BTreeSet<NodeId> = &before - &swarm.live_ids().into_iter().collect();
    wait_for(
        "every group to keep the dead coordinator as its third voter",
        Duration::from_secs(60),
        || {
            let handles = swarm.live_handles();
            let want = before.clone();
            async move {
                let voters = group_voters(&handles).await;
                voters.len() == P as usize + 1
                    && voters
                        .values()
                        .all(|v| v.iter().copied().collect::<BTreeSet<NodeId>>() == want)
            }
        },
    )
    .await;
    assert_eq!(dead.len(), 1, "exactly the coordinator died: {dead:?}");
    for i in 0..200 {
        let got = client
            .get(format!("heal/{i}").as_bytes())
            .await
            .expect("get");
        assert!(got.is_some(), "heal/{i} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restarted_from_its_data_dirs_comes_back_whole() {
    let _serial = serial().await;
    let mut swarm = Swarm::formed(3).await;
    let before = cluster_ids(&swarm.live_handles()).await;
    let client = swarm.client(1).await;
    for i in 0..100 {
        client
            .put(format!("restart/{i}").as_bytes(), b"v")
            .await
            .expect("put");
    }
    drop(client);
    let addrs: Vec<Multiaddr> = {
        let mut a = Vec::new();
        for h in &swarm.handles {
            a.push(listen_addr(h).await);
        }
        a
    };
    for i in 0..3 {
        swarm.kill(i).await;
    }
    // Start them again in another order; each knows its peers from its data dir.
    for i in [2usize, 0, 1] {
        let join = addrs[(i + 1) % 3].clone();
        swarm.restart(i, addrs[i].clone(), join).await;
    }
    let after = cluster_ids(&swarm.live_handles()).await;
    assert_eq!(before, after, "the same cluster must come back");
    let client = swarm.client(0).await;
    for i in 0..100 {
        let got = client
            .get(format!("restart/{i}").as_bytes())
            .await
            .expect("get");
        assert!(got.is_some(), "restart/{i} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_drains_a_node_while_clients_write() {
    let _serial = serial().await;
    let swarm = Swarm::formed(4).await;
    let client = Arc::new(swarm.client(0).await);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                client
                    .put(format!("drain/{i}").as_bytes(), b"v")
                    .await
                    .expect("write while draining");
                written.store(i + 1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let target = swarm.handles[3].node_id();
    // Any node takes the request and passes it to the meta leader (once one is known).
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        match swarm.handles[1].decommission(target).await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < until, "decommission never accepted: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let live: Vec<NodeId> = swarm
        .live_ids()
        .into_iter()
        .filter(|n| *n != target)
        .collect();
    wait_for_placement(swarm.live_handles(), live, 3, Duration::from_secs(60)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let n = written.load(Ordering::SeqCst);
    for i in 0..n {
        let got = client
            .get(format!("drain/{i}").as_bytes())
            .await
            .expect("get");
        assert!(got.is_some(), "drain/{i} lost");
    }
    println!("{n} writes during the drain, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_and_a_graceful_shutdown_hands_them_over() {
    let _serial = serial().await;
    let mut swarm = Swarm::formed(3).await;
    // 13 groups (meta + 12 partitions) over 3 nodes: nobody should lead more than 5.
    let handles = swarm.live_handles();
    wait_for("leaders balanced", Duration::from_secs(30), || {
        let handles = handles.clone();
        async move {
            let mut counts = Vec::new();
            for h in &handles {
                let s = h.status().await.expect("status");
                counts.push(s.groups.iter().filter(|g| g.leader == Some(s.node)).count());
            }
            counts.iter().sum::<usize>() == P as usize + 1 && counts.iter().all(|c| *c <= 5)
        }
    })
    .await;
    let client = swarm.client(0).await;
    client.put(b"before-shutdown", b"1").await.expect("put");
    // Gracefully stop node 2: its leaderships move before it goes.
    let node = swarm.nodes[2].take().expect("node 2");
    let stopping = swarm.handles[2].node_id();
    node.shutdown().await;
    let after = Instant::now();
    let handles = swarm.live_handles();
    assert!(!swarm.live_ids().contains(&stopping));
    // Only live nodes are asked: a group counts once one of them reports leading it.
    wait_for(
        "every group led by a live node",
        Duration::from_secs(10),
        || {
            let handles = handles.clone();
            async move { group_voters(&handles).await.len() == P as usize + 1 }
        },
    )
    .await;
    println!(
        "all groups led by live nodes {:?} after the graceful shutdown",
        after.elapsed()
    );
    client
        .put(b"after-shutdown", b"2")
        .await
        .expect("put after shutdown");
    assert_eq!(
        client.get(b"before-shutdown").await.unwrap().unwrap().value,
        b"1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_formed_apart_never_merge() {
    let _serial = serial().await;
    let mut a = Swarm::new(None);
    let mut b = Swarm::new(None);
    a.add().await;
    b.add().await;
    let both = vec![a.handles[0].clone(), b.handles[0].clone()];
    wait_for("both formed", Duration::from_secs(20), || {
        let both = both.clone();
        async move { !cluster_ids(&both).await.contains(&None) }
    })
    .await;
    let ids = cluster_ids(&both).await;
    assert_eq!(ids.len(), 2, "two separate clusters");
    // Now they meet.
    let addr_a = listen_addr(&a.handles[0]).await;
    let _ = b.handles[0].net().dial(addr_a).await;
    wait_for(
        "each reports the other as foreign",
        Duration::from_secs(10),
        || {
            let both = both.clone();
            async move {
                for h in &both {
                    if h.report()
                        .await
                        .map(|r| r.foreign.is_empty())
                        .unwrap_or(true)
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster_ids(&both).await, ids, "the clusters must not merge");
    let ca = a.client(0).await;
    let cb = b.client(0).await;
    ca.put(b"only-in-a", b"x").await.expect("put a");
    assert!(cb.get(b"only-in-a").await.expect("get b").is_none());
}

/// Regression: a node removed from its groups while it was down replays its own removal when
/// it comes back and is re-added; raft-rs must not be handed a commit index past its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_down_comes_back_and_takes_replicas_again() {
    let _serial = serial().await;
    let mut swarm = Swarm::formed(4).await;
    let client = swarm.client(0).await;
    for i in 0..100 {
        client
            .put(format!("back/{i}").as_bytes(), b"1")
            .await
            .expect("put");
    }
    let victim = 3;
    let addr = listen_addr(&swarm.handles[victim]).await;
    let seed = listen_addr(&swarm.handles[0]).await;
    swarm.kill(victim).await;
    // Marked dead and removed from every group.
    wait_for_placement(
        swarm.live_handles(),
        swarm.live_ids(),
        3,
        Duration::from_secs(60),
    )
    .await;
    for i in 0..100 {
        client
            .put(format!("back/{i}").as_bytes(), b"2")
            .await
            .expect("put while down");
    }
    swarm.restart(victim, addr, seed).await;
    let back = swarm.handles[victim].node_id();
    let handles = swarm.live_handles();
    wait_for(
        "the returning node to hold replicas again",
        Duration::from_secs(60),
        || {
            let handles = handles.clone();
            async move {
                let voters = group_voters(&handles).await;
                voters.len() == P as usize + 1 && voters.values().any(|v| v.contains(&back))
            }
        },
    )
    .await;
    let returned = swarm.client(victim).await;
    for i in 0..100 {
        let got = returned
            .get(format!("back/{i}").as_bytes())
            .await
            .expect("get");
        assert_eq!(got.map(|r| r.value), Some(b"2".to_vec()), "back/{i}");
    }
    assert!(
        swarm.handles[victim].status().await.is_ok(),
        "the returning node must be running"
    );
}
