//! Clients that send each request to its partition's leader (`Routing::Leader`, the libp2p
//! client's default), on 3-node clusters on 127.0.0.1: the routing table spares the followers'
//! detour (in-process swarms, where the nodes' counters can be read), and a leader killed with
//! SIGKILL while a client writes costs that client retries, never an error or a lost
//! acknowledged write (real `swarmkv start` processes).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::process::ProcCluster;
use common::*;
use swarmkv::client::{Endpoint, HttpOptions, Routing};
use swarmkv::core::{group_of_partition, routing::partition_of, CoreConfig, NodeId};
use swarmkv::Client;

const P: u32 = 8;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// Writes proposed by followers on the live nodes so far: what a client's detour costs.
fn follower_proposals(cluster: &TestCluster) -> u64 {
    cluster
        .live()
        .iter()
        .map(|i| cluster.handles[*i].metrics().follower_proposals())
        .sum()
}

/// Every partition's leader, as node `i` sees it.
async fn leaders(cluster: &TestCluster, i: usize) -> BTreeMap<u32, Option<NodeId>> {
    let status = cluster.handles[i].status().await.expect("status");
    (0..P)
        .map(|p| {
            let leader = status
                .groups
                .iter()
                .find(|g| g.group == group_of_partition(p))
                .and_then(|g| g.leader);
            (p, leader)
        })
        .collect()
}

/// The node that leads the fewest partitions, and how many.
async fn least_leading(cluster: &TestCluster) -> (usize, usize) {
    let mut least = (0, usize::MAX);
    for i in 0..cluster.handles.len() {
        let me = Some(cluster.handles[i].node_id());
        let led = leaders(cluster, i)
            .await
            .values()
            .filter(|l| **l == me)
            .count();
        if led < least.1 {
            least = (i, led);
        }
    }
    least
}

/// Puts `value` at every key through `client`; returns how many of the writes a follower
/// proposed.
async fn put_all(cluster: &TestCluster, client: &Client, keys: &[String], value: &[u8]) -> u64 {
    let before = follower_proposals(cluster);
    for k in keys {
        if let Err(e) = client.put(k.as_bytes(), value).await {
            panic!("put {k}: {e}");
        }
    }
    follower_proposals(cluster) - before
}

/// Connects a light client to node `i` once that node knows where every other node listens
/// (from their heartbeats): the routing table dials the nodes at the addresses it names.
async fn connect(cluster: &TestCluster, i: usize, routing: Routing) -> Client {
    let h = cluster.handles[i].clone();
    let others = cluster.live().len() - 1;
    wait_for(
        "the addresses of every node",
        Duration::from_secs(20),
        || {
            let h = h.clone();
            async move {
                h.cluster_view().await.is_ok_and(|v| {
                    v.nodes
                        .iter()
                        .filter(|n| n.id != v.node && n.reachable && !n.addrs.is_empty())
                        .count()
                        >= others
                })
            }
        },
    )
    .await;
    Client::connect(cluster.addrs[i].clone(), "swarmkv", None)
        .await
        .expect("remote client")
        .with_routing(routing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_table_sends_writes_to_the_leader_and_one_node_mode_does_not() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    // The node that leads the fewest partitions is the clients' own node: in one-node mode
    // most writes then reach a follower.
    let (home, led) = least_leading(&cluster).await;
    println!("clients dial node {home}, which leads {led} of {P} partitions");
    let keys: Vec<String> = (0..200).map(|i| format!("route/{i}")).collect();
    let by_follower = {
        let view = leaders(&cluster, home).await;
        let me = cluster.handles[home].node_id();
        keys.iter()
            .filter(|k| view[&partition_of(k.as_bytes(), P)] != Some(me))
            .count() as u64
    };

    let leader_aware = connect(&cluster, home, Routing::Leader).await;
    assert_eq!(leader_aware.routing(), Some(Routing::Leader));
    let leader_detours = put_all(&cluster, &leader_aware, &keys, b"leader").await;
    let one_node = connect(&cluster, home, Routing::OneNode).await;
    let one_node_detours = put_all(&cluster, &one_node, &keys, b"one-node").await;
    println!(
        "follower proposals for {} puts: leader-aware {leader_detours}, one-node \
         {one_node_detours} ({by_follower} keys led elsewhere)",
        keys.len()
    );
    // A leader change during the run may send a few writes through a follower; a routing
    // table that did nothing would send every write led elsewhere.
    assert!(
        leader_detours <= keys.len() as u64 / 20,
        "the leader-aware client's writes went through followers: {leader_detours}"
    );
    assert!(
        one_node_detours >= by_follower / 2 && one_node_detours > 0,
        "one-node writes should reach followers: {one_node_detours} of {by_follower}"
    );
    for k in &keys {
        let got = leader_aware.get(k.as_bytes()).await.expect("get");
        assert_eq!(got.map(|r| r.value), Some(b"one-node".to_vec()), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_of_every_gateway_sends_writes_to_the_leaders_gateway() -> anyhow::Result<()>
{
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let mut gateways = Vec::new();
    for h in &cluster.handles {
        gateways.push(common::gateway::Gateway::for_node(h.clone()).await?);
    }
    let endpoints: Vec<Endpoint> = gateways
        .iter()
        .map(|g| g.endpoint().parse())
        .collect::<Result<_, _>>()?;
    let keys: Vec<String> = (0..150).map(|i| format!("http-route/{i}")).collect();

    let every = Client::http_failover(endpoints.clone(), HttpOptions::default())?;
    let routed = put_all(&cluster, &every, &keys, b"routed").await;
    // One gateway, of the node that leads the fewest partitions: most are led elsewhere.
    let (least, _) = least_leading(&cluster).await;
    let one = Client::http(endpoints[least].clone(), HttpOptions::default());
    let through_one = put_all(&cluster, &one, &keys, b"one").await;
    println!(
        "follower proposals for {} puts over HTTP: every gateway {routed}, one gateway \
         {through_one}",
        keys.len()
    );
    assert!(
        routed <= keys.len() as u64 / 20,
        "writes through the leaders' gateways went through followers: {routed}"
    );
    assert!(
        through_one > 0,
        "one gateway's writes should reach followers"
    );
    for k in &keys {
        let got = every.get(k.as_bytes()).await?;
        assert_eq!(got.map(|r| r.value), Some(b"one".to_vec()), "{k}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_stream_costs_the_writer_retries_not_an_error() -> anyhow::Result<()> {
    let _serial = serial().await;
    // Real processes, so that SIGKILL closes the leader's connections as a crash does.
    let mut cluster = tokio::task::block_in_place(|| ProcCluster::start(3, P))?;
    let mut ids = Vec::new();
    for n in &cluster.nodes {
        let admin = Client::connect_admin(n.multiaddr().parse()?, "swarmkv", None).await?;
        ids.push(admin.status().await?.node);
    }
    // Every key carries the hash tag {mid}: one partition, whose leader is killed.
    let partition = partition_of(b"{mid}/0", P);
    let admin =
        Client::connect_admin(cluster.nodes[0].multiaddr().parse()?, "swarmkv", None).await?;
    let leader = admin
        .status()
        .await?
        .groups
        .iter()
        .find(|g| g.group == group_of_partition(partition))
        .and_then(|g| g.leader)
        .context("the partition has a leader")?;
    let victim = ids
        .iter()
        .position(|id| *id == leader)
        .context("the leader is a node of the cluster")?;
    let home = (victim + 1) % 3;
    let client = Client::connect(cluster.nodes[home].multiaddr().parse()?, "swarmkv", None).await?;
    assert_eq!(client.routing(), Some(Routing::Leader));
    println!("partition {partition} led by node {victim}; the client dials node {home}");

    let mut acked: Vec<(String, String)> = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut i = 0u64;
    while acked.len() < 400 {
        if acked.len() == 150 && cluster.nodes[victim].pid().is_some() {
            println!(
                "SIGKILL to node {victim} after {} acknowledged writes",
                acked.len()
            );
            cluster.nodes[victim].kill()?;
        }
        let (k, v) = (format!("{{mid}}/{i}"), format!("v{i}"));
        let started = Instant::now();
        if let Err(e) = client.put(k.as_bytes(), v.as_bytes()).await {
            panic!("write {i} failed after {:?}: {e}", started.elapsed());
        }
        acked.push((k, v));
        slowest = slowest.max(started.elapsed());
        i += 1;
    }
    println!(
        "{} writes acknowledged; the slowest took {slowest:?}",
        acked.len()
    );

    for (k, v) in &acked {
        let got = client.get(k.as_bytes()).await?;
        assert_eq!(
            got.map(|r| r.value),
            Some(v.as_bytes().to_vec()),
            "acknowledged write {k} lost"
        );
    }
    cluster.finish();
    Ok(())
}
