//! A 3-node cluster of in-process swarms on 127.0.0.1: semantics, failover, restart and
//! catch-up, minority isolation, and concurrent compare-and-swap under a leader kill.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use swarmkv::core::{ClientError, Consistency, CoreConfig};
use swarmkv_store::{CasAction, Compare};

const P: u32 = 16;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        compact_threshold: 200,
        compact_keep: 20,
        ..CoreConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_cas_and_scan_match_a_single_node_model() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let clients = [
        cluster.client(0).await,
        cluster.client(1).await,
        cluster.client(2).await,
    ];
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, u64)> = BTreeMap::new();
    let mut last_rev: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    // A deterministic mix of operations, issued through all three nodes.
    for i in 0..300u64 {
        let c = &clients[(i % 3) as usize];
        let key = format!("k/{:02}", (i * 7) % 23).into_bytes();
        match i % 5 {
            0 | 1 => {
                let value = format!("v{i}").into_bytes();
                let (rev, prev) = c.put_prev(&key, &value, true).await.expect("put");
                assert_eq!(prev.map(|p| p.value), model.get(&key).map(|m| m.0.clone()));
                assert!(
                    rev > *last_rev.get(&key).unwrap_or(&0),
                    "revisions increase"
                );
                last_rev.insert(key.clone(), rev);
                model.insert(key, (value, rev));
            }
            2 => {
                let existed = c.delete(&key).await.expect("delete");
                assert_eq!(existed, model.remove(&key).is_some());
            }
            3 => {
                let expect = model.get(&key).map(|m| m.1);
                let compare = match expect {
                    Some(rev) if i % 2 == 0 => Compare::ModRevision(rev),
                    Some(_) => Compare::ModRevision(1), // stale on purpose
                    None => Compare::Absent,
                };
                let should = match (&compare, expect) {
                    (Compare::ModRevision(r), Some(m)) => *r == m,
                    (Compare::Absent, None) => true,
                    _ => false,
                };
                let value = format!("cas{i}").into_bytes();
                let r = c
                    .cas(&key, compare, CasAction::Put(value.clone()))
                    .await
                    .expect("cas");
                assert_eq!(r.succeeded, should, "cas {i}");
                assert_eq!(
                    r.current.map(|c| c.value),
                    model.get(&key).map(|m| m.0.clone())
                );
                if should {
                    model.insert(key.clone(), (value, r.revision));
                    last_rev.insert(key, r.revision);
                }
            }
            _ => {
                let got = c.get(&key).await.expect("get");
                assert_eq!(got.map(|r| (r.value, r.mod_rev)), model.get(&key).cloned());
            }
        }
    }
    // Scans across partitions, merged in key order, match the model.
    let all = clients[1].scan_prefix(b"k/", 0).await.expect("scan");
    let want: Vec<Vec<u8>> = model.keys().cloned().collect();
    assert_eq!(all.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), want);
    let first5 = clients[2].scan_prefix(b"k/", 5).await.expect("scan");
    assert_eq!(first5.len(), 5.min(want.len()));
    assert_eq!(first5[0].0, want[0]);
    let deleted = clients[0]
        .delete_range(b"k/1", Some(b"k/2"))
        .await
        .expect("delete range");
    let expected = model.keys().filter(|k| k.starts_with(b"k/1")).count() as u64;
    assert_eq!(deleted, expected);
    // The remote light client, over its kv stream (/swarmkv/kv-stream/1), sees the same data.
    let remote = swarmkv::Client::connect(cluster.addrs[2].clone(), "swarmkv", None)
        .await
        .expect("remote client");
    let remote_all = remote.scan_prefix(b"k/", 0).await.expect("remote scan");
    assert_eq!(remote_all.len() as u64, want.len() as u64 - expected);
    remote.put(b"remote", b"yes").await.expect("remote put");
    assert_eq!(
        clients[0].get(b"remote").await.unwrap().unwrap().value,
        b"yes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_busiest_leader_fails_over_and_keeps_every_acknowledged_write() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let (victim, led) = cluster.busiest_leader().await;
    let survivor = (victim + 1) % 3;
    let client = cluster.client(survivor).await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let key = format!("acked/{i}");
        client
            .put(key.as_bytes(), key.as_bytes())
            .await
            .expect("put");
        acked.push(key);
    }
    println!("killing node {victim}, leader of {led} partitions");
    cluster.kill(victim).await;
    let killed_at = Instant::now();
    // Every partition must take a write again: find a key per partition and write it.
    let mut keys_by_partition = BTreeMap::new();
    for i in 0.. {
        let k = format!("probe/{i}");
        keys_by_partition
            .entry(swarmkv::core::routing::partition_of(k.as_bytes(), P))
            .or_insert(k);
        if keys_by_partition.len() == P as usize {
            break;
        }
    }
    for k in keys_by_partition.values() {
        client
            .put(k.as_bytes(), b"x")
            .await
            .expect("write after failover");
    }
    let failover = killed_at.elapsed();
    println!("every partition accepted writes {failover:?} after the kill");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    for k in &acked {
        let got = client.get(k.as_bytes()).await.expect("get");
        assert_eq!(got.map(|r| r.value), Some(k.clone().into_bytes()), "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_through_snapshots() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let client = cluster.client(0).await;
    for i in 0..50 {
        client
            .put(format!("early/{i}").as_bytes(), b"1")
            .await
            .expect("put");
    }
    cluster.kill(2).await;
    // Enough writes that every partition compacts past what node 2 has: 16 writers, each
    // owning the keys `late/{w + 16k}` so the last value of every key is known.
    let writers = (0..16u64).map(|w| {
        let client = &client;
        async move {
            let mut i = w;
            while i < P as u64 * 250 {
                client
                    .put(
                        format!("late/{}", i % 400).as_bytes(),
                        format!("{i}").as_bytes(),
                    )
                    .await
                    .expect("put while node 2 is down");
                i += 16;
            }
        }
    });
    futures::future::join_all(writers).await;
    cluster.restart(2).await;
    let restarted = cluster.client(2).await;
    let expected: BTreeMap<String, Vec<u8>> = (0..(P as u64 * 250))
        .map(|i| (format!("late/{}", i % 400), format!("{i}").into_bytes()))
        .collect();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stale = 0;
        for (k, v) in &expected {
            let got = restarted
                .get_with(k.as_bytes(), Consistency::Serializable)
                .await
                .expect("serializable get");
            if got.map(|r| r.value).as_ref() != Some(v) {
                stale += 1;
            }
        }
        if stale == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{stale} keys still stale on the restarted node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_minority_never_serves_stale_reads_and_converges_after_healing() {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let majority = cluster.client(0).await;
    let isolated = cluster
        .client(2)
        .await
        .with_deadline(Duration::from_secs(3));
    for i in 0..40 {
        majority
            .put(format!("iso/{i}").as_bytes(), b"old")
            .await
            .expect("put");
    }
    cluster.handles[2].set_isolated(true).await;
    for i in 0..40 {
        majority
            .put(format!("iso/{i}").as_bytes(), b"new")
            .await
            .expect("the majority keeps serving");
    }
    // Through the isolated node, a linearizable read either fails, or is redirected to the
    // current leader and returns the new value: never the stale one.
    let mut redirected = 0;
    let mut failed = 0;
    for i in 0..10 {
        match isolated.get(format!("iso/{i}").as_bytes()).await {
            Ok(Some(r)) => {
                assert_eq!(
                    r.value, b"new",
                    "stale read of iso/{i} through the isolated node"
                );
                redirected += 1;
            }
            Ok(None) => panic!("iso/{i} vanished"),
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        ClientError::Unavailable { .. }
                            | ClientError::Timeout
                            | ClientError::Disconnected(_)
                    ),
                    "{e}"
                );
                failed += 1;
            }
        }
    }
    println!("reads through the isolated node: {redirected} redirected, {failed} failed");
    // The isolated node cannot commit on its own: its serializable state stays old.
    let local = isolated
        .get_with(b"iso/0", Consistency::Serializable)
        .await
        .expect("serializable")
        .expect("present");
    assert_eq!(local.value, b"old");
    cluster.handles[2].set_isolated(false).await;
    wait_for(
        "the healed node to converge",
        Duration::from_secs(20),
        || {
            let isolated = &isolated;
            async move {
                for i in 0..40 {
                    match isolated
                        .get_with(format!("iso/{i}").as_bytes(), Consistency::Serializable)
                        .await
                    {
                        Ok(Some(r)) if r.value == b"new" => {}
                        _ => return false,
                    }
                }
                true
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_increments_survive_a_leader_kill() {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let keys: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("counter/{i}").into_bytes())
        .collect();
    let (victim, _) = cluster.busiest_leader().await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let setup = cluster.client(survivors[0]).await;
    for k in &keys {
        setup.put(k, b"0").await.expect("init");
    }
    let acked = Arc::new(AtomicU64::new(0));
    let ambiguous = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for c in 0..32usize {
        let client = cluster.client(survivors[c % 2]).await;
        let key = keys[c % keys.len()].clone();
        let acked = acked.clone();
        let ambiguous = ambiguous.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let Ok(Some(cur)) = client.get(&key).await else {
                    continue;
                };
                let n: u64 = String::from_utf8_lossy(&cur.value).parse().unwrap_or(0);
                match client
                    .cas(
                        &key,
                        Compare::ModRevision(cur.mod_rev),
                        CasAction::Put((n + 1).to_string().into_bytes()),
                    )
                    .await
                {
                    Ok(r) if r.succeeded => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) if e.is_retryable() => {}
                    Err(_) => {
                        ambiguous.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.kill(victim).await;
    for t in tasks {
        t.await.expect("client task");
    }
    let mut total = 0;
    for k in &keys {
        let v = setup.get(k).await.expect("final get").expect("counter");
        total += String::from_utf8_lossy(&v.value)
            .parse::<u64>()
            .expect("number");
    }
    let acked = acked.load(Ordering::SeqCst);
    let ambiguous = ambiguous.load(Ordering::SeqCst);
    println!("acknowledged increments {acked}, ambiguous {ambiguous}, final sum {total}");
    assert!(acked > 0);
    assert!(total >= acked, "an acknowledged increment was lost");
    assert!(
        total <= acked + ambiguous,
        "increments appeared from nowhere"
    );
}
