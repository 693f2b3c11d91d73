//! Idle cost: partitions with no traffic quiesce (their replicas stop ticking and
//! heartbeating), wake on traffic, and wake on a node's failure so that the failed node's
//! partitions elect new leaders. The CPU and memory an idle cluster costs are measured by hand
//! (docs/benchmarks.md, "Idle cost"); these tests check the mechanism, not timings.

mod common;

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use common::{wait_for, TestCluster};
use swarmkv::core::routing::partition_of;
use swarmkv::core::CoreConfig;
use swarmkv::{Client, NodeHandle};

const PARTITIONS: u32 = 32;

fn core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// A metric's value in the node's Prometheus exposition.
fn metric(h: &NodeHandle, name: &str) -> Result<f64> {
    let text = h.metrics().encode();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .ok_or_else(|| anyhow!("no metric {name}"))?
        .trim()
        .parse()
        .context(name.to_string())
}

fn quiesced(h: &NodeHandle) -> usize {
    metric(h, "swarmkv_quiesced_groups").map_or(0, |v| v as usize)
}

/// A key of each partition.
fn key_per_partition() -> Vec<Vec<u8>> {
    let mut keys: Vec<Option<Vec<u8>>> = vec![None; PARTITIONS as usize];
    let mut i = 0u64;
    while keys.iter().any(Option::is_none) {
        let k = format!("idle/{i}").into_bytes();
        let p = partition_of(&k, PARTITIONS) as usize;
        keys[p].get_or_insert(k);
        i += 1;
    }
    keys.into_iter().flatten().collect()
}

/// Writes `value` at `key`, trying again after any failure for up to 30 s (an ambiguous
/// failure is possible right after a leader dies; writing the same value again is harmless).
async fn put_until(client: &Client, key: &[u8], value: &[u8]) -> Result<()> {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.put(key, value).await {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() < until => {
                println!("put {:?}: {e}; again", String::from_utf8_lossy(key));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until every live node has every partition's replica quiesced.
async fn wait_all_quiesced(cluster: &TestCluster, what: &str) {
    let handles: Vec<NodeHandle> = cluster
        .live()
        .iter()
        .map(|i| cluster.handles[*i].clone())
        .collect();
    wait_for(what, Duration::from_secs(60), || {
        let handles = handles.clone();
        async move { handles.iter().all(|h| quiesced(h) >= PARTITIONS as usize) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_quiesce_wake_on_traffic_and_fail_over_when_a_node_dies() -> Result<()> {
    let _serial = common::serial().await;
    let mut cluster = TestCluster::start(3, PARTITIONS, core()).await;
    let keys = key_per_partition();
    let client = cluster.client(0).await;
    for k in &keys {
        put_until(&client, k, b"v1").await?;
    }

    // Idle: every partition quiesces on every node (the meta group never does).
    wait_all_quiesced(&cluster, "every partition quiesced after the writes").await;
    let sent = |cluster: &TestCluster| -> Result<f64> {
        let mut total = 0.0;
        for i in cluster.live() {
            total += metric(&cluster.handles[i], "swarmkv_raft_messages_sent_total")?;
        }
        Ok(total)
    };
    // Quiesced partitions send nothing: over two seconds the cluster sends far fewer Raft
    // messages than one heartbeat round of every partition would take (2 per partition per
    // heartbeat; awake, the partitions alone would send about 40 rounds in that time). Only
    // the meta group heartbeats. A slow machine only lowers the count.
    let before = sent(&cluster)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = sent(&cluster)? - before;
    println!("raft messages sent in 2 s while idle: {quiet}");
    assert!(
        quiet < f64::from(PARTITIONS) * 2.0 * 4.0,
        "idle partitions kept sending: {quiet} messages in 2 s"
    );

    // Traffic wakes a partition: reads see the writes (ReadIndex confirms leadership with a
    // heartbeat round after waking), new writes go through, from any node.
    let other = cluster.client(1).await;
    for k in &keys {
        let got = other.get(k).await?.context("a written key")?;
        assert_eq!(got.value, b"v1");
        put_until(&other, k, b"v2").await?;
    }
    wait_all_quiesced(&cluster, "every partition quiesced again").await;

    // The node leading the most partitions dies while they are quiesced: the failure
    // detector wakes their followers, which elect new leaders, and every write succeeds.
    let (victim, led) = cluster.busiest_leader().await;
    println!("killing node {victim}, leader of {led} groups");
    cluster.kill(victim).await;
    cluster.wait_for_leaders(Duration::from_secs(60)).await;
    let survivor = cluster.client(cluster.live()[0]).await;
    for k in &keys {
        put_until(&survivor, k, b"v3").await?;
        let got = survivor.get(k).await?.context("a written key")?;
        assert_eq!(got.value, b"v3");
    }

    // It comes back: the groups catch it up and quiesce again, with it.
    cluster.restart(victim).await;
    cluster.wait_for_leaders(Duration::from_secs(60)).await;
    wait_all_quiesced(&cluster, "every partition quiesced with the node back").await;
    let back = cluster.client(victim).await;
    for k in &keys {
        let got = back.get(k).await?.context("a written key")?;
        assert_eq!(got.value, b"v3");
    }
    Ok(())
}
