//! The swarmkv demo: three nodes in one process on 127.0.0.1 form a cluster the zero-config
//! way (no mDNS here, so that multicast stays off the machine's real interfaces: the second
//! and third node are given the first one's address to dial, as `swarmkv start --join` does,
//! and nobody bootstraps anything by hand), take some writes, lose the busiest leader without
//! warning, and read every acknowledged write back through the survivors. Every line it prints
//! is checked; it exits non-zero if a check fails.
//!
//! ```sh
//! cargo run --release --example p2p_kv
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use swarmkv::core::Consistency;
use swarmkv::{Client, Node, NodeConfig, NodeHandle};
use swarmkv_net::Multiaddr;

const NODES: usize = 3;
const REPLICAS: usize = 3;
/// How long formation may take before the demo gives up (it takes seconds).
const FORMATION: Duration = Duration::from_secs(60);

/// A node as `swarmkv start --no-mdns --listen /ip4/127.0.0.1/tcp/0 [--join ADDR]` makes it:
/// it forms or joins a cluster on its own.
fn config(dir: &std::path::Path, join: Option<&Multiaddr>) -> NodeConfig {
    let mut c = NodeConfig::loopback(dir);
    c.control.auto_form = true;
    c.join = join.cloned().into_iter().collect();
    c
}

async fn listen_addr(node: &Node) -> anyhow::Result<Multiaddr> {
    loop {
        if let Some(a) = node.handle().net().listen_addrs().await?.into_iter().next() {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether every partition has a leader and `REPLICAS` voters, as `node` sees the cluster.
async fn fully_replicated(node: &NodeHandle) -> anyhow::Result<Option<usize>> {
    let view = node.cluster_view().await?;
    let partitions: Vec<_> = view.groups.iter().filter(|g| g.group != 0).collect();
    let ready = !partitions.is_empty()
        && partitions
            .iter()
            .all(|g| g.leader.is_some() && g.voters.len() == REPLICAS);
    Ok(ready.then_some(partitions.len()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let dirs: Vec<tempfile::TempDir> = (0..NODES)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()
        .context("creating data directories")?;

    println!("starting {NODES} nodes on 127.0.0.1; each forms or joins a cluster on its own ...");
    let started = Instant::now();
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for dir in &dirs {
        let node = Node::start(config(dir.path(), addrs.first())).await?;
        let addr = listen_addr(&node).await?;
        println!("  node {} listening on {addr}", node.handle().peer_id());
        addrs.push(addr);
        nodes.push(Some(node));
    }
    let first = nodes[0].as_ref().context("node 0")?.handle();
    let partitions = loop {
        if let Some(p) = fully_replicated(&first).await? {
            break p;
        }
        if started.elapsed() > FORMATION {
            bail!("no fully replicated cluster within {FORMATION:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: std::collections::BTreeSet<_> = futures::future::try_join_all(
        nodes
            .iter()
            .flatten()
            .map(|n| async move { n.handle().status().await }),
    )
    .await?
    .iter()
    .map(|s| s.settings.as_ref().map(|c| c.cluster_id))
    .collect();
    ensure!(
        ids.len() == 1 && !ids.contains(&None),
        "the nodes are not in one cluster: {ids:?}"
    );
    println!(
        "one cluster formed, {partitions} partitions x {REPLICAS} replicas, {:.1} s after the start",
        started.elapsed().as_secs_f64()
    );

    let client = Client::in_process(nodes[0].as_ref().context("node 0")?.handle()).await?;
    let started = Instant::now();
    for i in 0..500 {
        client
            .put(
                format!("demo/{i:04}").as_bytes(),
                format!("value {i}").as_bytes(),
            )
            .await?;
    }
    println!("500 writes acknowledged in {:?}", started.elapsed());

    // Kill the node that leads the most partitions.
    let mut busiest = (0, 0);
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            let s = n.handle().status().await?;
            let led = s.groups.iter().filter(|g| g.leader == Some(s.node)).count();
            if led > busiest.1 {
                busiest = (i, led);
            }
        }
    }
    let (victim, led) = busiest;
    println!("killing node {victim} (leader of {led} partitions) without warning ...");
    if let Some(n) = nodes[victim].take() {
        n.kill().await;
    }
    let survivor = (victim + 1) % 3;
    let client = Client::in_process(nodes[survivor].as_ref().context("survivor")?.handle()).await?;
    let killed = Instant::now();
    client.put(b"demo/after-kill", b"still writable").await?;
    println!(
        "first write after the kill acknowledged in {:?}",
        killed.elapsed()
    );

    // Who leads now.
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            let s = n.handle().status().await?;
            let led = s.groups.iter().filter(|g| g.leader == Some(s.node)).count();
            println!("  node {i} now leads {led} of {} groups", s.groups.len());
        }
    }

    let mut missing = 0;
    for i in 0..500 {
        let key = format!("demo/{i:04}");
        match client.get(key.as_bytes()).await? {
            Some(r) if r.value == format!("value {i}").into_bytes() => {}
            _ => missing += 1,
        }
    }
    if missing > 0 {
        bail!("{missing} acknowledged writes are missing");
    }
    println!("all 500 acknowledged writes read back linearizably");

    // More writes while the victim is down, then bring it back and watch it catch up.
    for i in 0..100 {
        client
            .put(
                format!("demo/late/{i:03}").as_bytes(),
                b"written while a node was down",
            )
            .await?;
    }
    println!("restarting node {victim} on its data directory ...");
    let node = Node::start(config(dirs[victim].path(), Some(&addrs[survivor]))).await?;
    let restarted = Client::in_process(node.handle()).await?;
    let started = Instant::now();
    loop {
        let mut behind = 0;
        for i in 0..100 {
            let key = format!("demo/late/{i:03}");
            if restarted
                .get_with(key.as_bytes(), Consistency::Serializable)
                .await?
                .is_none()
            {
                behind += 1;
            }
        }
        if behind == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the restarted node did not catch up: {behind} keys still missing locally");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "node {victim} caught up in {:?}: its own replicas serve the writes it missed",
        started.elapsed()
    );
    nodes[victim] = Some(node);
    let all = client
        .scan(b"demo/", None, 0, Consistency::Linearizable)
        .await?;
    ensure!(
        all.len() == 601,
        "a scan of demo/ found {} keys, not the 601 written",
        all.len()
    );
    println!("{} keys under demo/; every check held", all.len());
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
    Ok(())
}
