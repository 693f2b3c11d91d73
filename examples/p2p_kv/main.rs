//! The swarmkv demo: a 3-node cluster in one process on 127.0.0.1 (no mDNS: multicast stays
//! off the machine's real interfaces), some writes, the busiest leader killed without warning,
//! and every acknowledged write read back through the survivors.
//!
//! ```sh
//! cargo run --release --example p2p_kv
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use swarmkv::core::Consistency;
use swarmkv::{Client, Node, NodeConfig};

const PARTITIONS: u32 = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()
        .context("creating data directories")?;

    println!("starting 3 nodes on 127.0.0.1 ...");
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for dir in &dirs {
        let node = Node::start(NodeConfig::loopback(dir.path())).await?;
        let addr = loop {
            if let Some(a) = node.handle().net().listen_addrs().await?.into_iter().next() {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!("  node {} listening on {addr}", node.handle().peer_id());
        addrs.push(addr);
        nodes.push(Some(node));
    }
    for (i, n) in nodes.iter().enumerate() {
        let h = n.as_ref().context("node")?.handle();
        for (j, a) in addrs.iter().enumerate() {
            if i != j {
                h.net().dial(a.clone()).await?;
            }
        }
    }
    let peers: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.as_ref().map(|n| n.handle().peer_id()))
        .collect();
    for n in nodes.iter().flatten() {
        n.handle().bootstrap(peers.clone(), PARTITIONS, 3).await?;
    }
    println!("cluster bootstrapped: {PARTITIONS} partitions x 3 replicas");

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
    let node = Node::start(NodeConfig::loopback(dirs[victim].path())).await?;
    for a in addrs
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != victim)
        .map(|(_, a)| a)
    {
        let _ = node.handle().net().dial(a.clone()).await;
    }
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
    println!("{} keys under demo/; every check held", all.len());
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
    Ok(())
}
