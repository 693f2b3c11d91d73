//! Leases on a 3-node in-process cluster: expiry deletes attached keys, keep-alive keeps them,
//! revocation deletes them, and a kill of the coordinator (the meta leader) neither expires a
//! lease early nor lets it outlive its TTL by more than one election timeout.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use swarmkv::core::{ClientError, CoreConfig};
use swarmkv::{Client, LeaseLost};

const P: u32 = 8;

fn fast_core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        ..CoreConfig::default()
    }
}

/// The base election timeout of `fast_core`: the grace a new coordinator gives every lease.
fn election_timeout() -> Duration {
    let c = fast_core();
    Duration::from_millis(c.tick_ms * c.election_ticks as u64)
}

/// Time from the lease's expiry to the deletion of its keys being visible: the expiry's
/// proposal, the coordinator's next control tick, one delete per partition, a poll.
/// Generous: the machine running the tests may be busy compiling, which slows elections
/// (no coordinator, no expiry) and the deletions. The exact bound is checked with injected
/// time in the core's unit tests (core::lease).
const SLACK: Duration = Duration::from_millis(3000);

async fn present(c: &Client, keys: &[Vec<u8>]) -> anyhow::Result<usize> {
    let mut n = 0;
    for k in keys {
        if c.get(k).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

fn keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}/{i}").into_bytes())
        .collect()
}

/// Polls `keys` until they are all gone: returns when the first read that found them gone
/// ended, and checks no key is found gone before `not_before`.
async fn wait_gone(
    c: &Client,
    keys: &[Vec<u8>],
    not_before: Instant,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let until = Instant::now() + timeout;
    loop {
        let left = present(c, keys).await?;
        let ended = Instant::now();
        if left < keys.len() {
            anyhow::ensure!(
                ended >= not_before,
                "keys deleted {:?} before the lease could expire",
                not_before - ended
            );
        }
        if left == 0 {
            return Ok(ended);
        }
        anyhow::ensure!(ended < until, "keys still present after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the lease's time-to-live until the coordinator says it is gone: returns when that
/// answer arrived, and checks it did not come before `not_before`.
async fn wait_expired(
    c: &Client,
    lease: u64,
    not_before: Instant,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let until = Instant::now() + timeout;
    let mut slow = 0;
    loop {
        let started = Instant::now();
        let r = c.time_to_live(lease).await;
        let ended = Instant::now();
        if ended - started > Duration::from_millis(200) {
            slow += 1;
            println!(
                "a time-to-live query took {:?} (no coordinator for a while?)",
                ended - started
            );
        }
        match r {
            Err(ClientError::LeaseNotFound(_)) => {
                anyhow::ensure!(
                    ended >= not_before,
                    "the lease expired {:?} early",
                    not_before - ended
                );
                if slow > 0 {
                    println!("{slow} slow time-to-live queries");
                }
                return Ok(ended);
            }
            Ok(_) => {}
            Err(e) => println!("time-to-live failed (retrying): {e}"),
        }
        anyhow::ensure!(ended < until, "the lease did not expire within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_and_refuses_new_ones() -> anyhow::Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let c = cluster.client(1).await;
    // Two seconds is the shortest TTL here: four election timeouts of 10 ticks of 50 ms. A
    // shorter one is refused as a bad request, saying the minimum.
    let ttl = Duration::from_secs(2);
    match c.grant(ttl - Duration::from_millis(1)).await {
        Err(ClientError::BadRequest(why)) => assert!(why.contains("2000 ms"), "{why}"),
        other => panic!("a lease under the minimum TTL: {other:?}"),
    }
    let sent = Instant::now();
    let lease = c.grant(ttl).await?;
    assert_eq!(lease.ttl_ms, 2000);
    assert!(lease.remaining_ms <= 2000 && lease.remaining_ms > 1000);
    let attached = keys("exp", 6);
    for k in &attached {
        c.put_with_lease(k, b"v", lease.id).await?;
    }
    c.put(b"exp/free", b"stays").await?;
    assert_eq!(present(&c, &attached).await?, attached.len());
    let expired = wait_expired(&c, lease.id, sent + ttl, Duration::from_secs(20)).await?;
    let gone = wait_gone(&c, &attached, sent + ttl, Duration::from_secs(20)).await?;
    println!(
        "lease of {ttl:?}: expired {:?} and keys gone {:?} after the grant was sent",
        expired - sent,
        gone - sent
    );
    // A change of coordinator meanwhile (leader balancing) may add one election timeout.
    assert!(expired - sent <= ttl + election_timeout() + SLACK);
    assert!(gone - sent <= ttl + election_timeout() + SLACK);
    assert!(c.get(b"exp/free").await?.is_some(), "unattached key kept");
    assert!(matches!(
        c.time_to_live(lease.id).await,
        Err(ClientError::LeaseNotFound(id)) if id == lease.id
    ));
    assert!(matches!(
        c.keep_alive_once(lease.id).await,
        Err(ClientError::LeaseNotFound(_))
    ));
    assert!(matches!(
        c.put_with_lease(b"exp/late", b"v", lease.id).await,
        Err(ClientError::LeaseNotFound(_))
    ));
    assert!(matches!(
        c.put_with_lease(b"exp/never", b"v", 0x1234_5678).await,
        Err(ClientError::LeaseNotFound(0x1234_5678))
    ));
    assert!(c.get(b"exp/late").await?.is_none());
    // Also through a node that is not the one the lease was granted through.
    let other = cluster.client(2).await;
    assert!(matches!(
        other.time_to_live(lease.id).await,
        Err(ClientError::LeaseNotFound(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_the_keys_and_revoke_deletes_them() -> anyhow::Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let c = Arc::new(cluster.client(0).await);
    // Not much shorter: the keep-alive reports a loss after a whole TTL without a confirmed
    // keep-alive, and leader balancing moves the coordinator now and then.
    let ttl = Duration::from_secs(2);
    let lease = c.grant(ttl).await?;
    let attached = keys("ka", 6);
    for k in &attached {
        c.put_with_lease(k, b"v", lease.id).await?;
    }
    let mut ka = c.keep_alive(lease.id, ttl);
    // Three TTLs later the keys are all still there.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(present(&c, &attached).await?, attached.len());
    assert_eq!(ka.lost_now(), None);
    let left = c.time_to_live(lease.id).await?;
    assert!(
        left.remaining_ms <= 2000 + election_timeout().as_millis() as u64,
        "{left:?}"
    );
    assert!(
        ka.last_confirmed().elapsed() < ttl,
        "keep-alives are confirmed"
    );
    // Revoked from another node: the keys go at once and the keep-alive reports the loss.
    let other = cluster.client(2).await;
    let revoked = Instant::now();
    other.revoke(lease.id).await?;
    let gone = wait_gone(&other, &attached, revoked, Duration::from_secs(10)).await?;
    println!("revoke: keys gone {:?} after the revoke", gone - revoked);
    let lost = tokio::time::timeout(ttl * 2, ka.lost()).await?;
    assert_eq!(lost, LeaseLost::Gone);
    assert!(matches!(
        c.keep_alive_once(lease.id).await,
        Err(ClientError::LeaseNotFound(_))
    ));
    // Once every partition confirmed, the meta group forgets the lease: revoking it again is
    // an error.
    let c2 = c.clone();
    wait_for(
        "the revoked lease to be forgotten",
        Duration::from_secs(10),
        || {
            let c = c2.clone();
            async move { matches!(c.revoke(lease.id).await, Err(ClientError::LeaseNotFound(_))) }
        },
    )
    .await;
    Ok(())
}

/// The node leading the meta group now (leader balancing may move it: look just before use).
async fn coordinator(cluster: &TestCluster) -> Option<usize> {
    for i in cluster.live() {
        if cluster.handles[i]
            .status()
            .await
            .is_ok_and(|s| s.meta_leader)
        {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_kill_neither_expires_a_lease_early_nor_extends_it_past_one_election_timeout(
) -> anyhow::Result<()> {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let ttl = Duration::from_secs(4);
    let e = election_timeout();
    let Some(first) = coordinator(&cluster).await else {
        anyhow::bail!("no coordinator");
    };
    let survivor = (0..3).find(|i| *i != first).unwrap_or(0);
    let c = cluster.client(survivor).await;
    let lease = c.grant(ttl).await?;
    let attached = keys("kill", 8);
    for k in &attached {
        c.put_with_lease(k, b"v", lease.id).await?;
    }
    // The last keep-alive: the lease must live at least a TTL after it was sent, and at most
    // a TTL plus one election timeout (plus the deletion's latency) after it was confirmed.
    let ka_sent = Instant::now();
    c.keep_alive_once(lease.id).await?;
    let ka_done = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let Some(victim) = coordinator(&cluster).await else {
        anyhow::bail!("no coordinator before the kill");
    };
    let reader_node = (0..3).find(|i| *i != victim).unwrap_or(0);
    let reader = cluster.client(reader_node).await;
    cluster.kill(victim).await;
    let killed = Instant::now();
    println!(
        "killed the coordinator (node {victim}) {:?} after the last keep-alive",
        killed - ka_sent
    );
    // Keys stay until a TTL after the last keep-alive was sent (wait_gone checks each
    // observation), then go.
    let gone = wait_gone(&reader, &attached, ka_sent + ttl, Duration::from_secs(30)).await?;
    let lifetime = gone - ka_done;
    println!(
        "lease of {ttl:?} with a coordinator kill: keys gone {:?} after the last keep-alive \
         was confirmed ({:?} after it was sent); bound TTL + election timeout {e:?} + slack \
         {SLACK:?} = {:?}",
        lifetime,
        gone - ka_sent,
        ttl + e + SLACK
    );
    assert!(
        lifetime <= ttl + e + SLACK,
        "the lease outlived TTL + one election timeout"
    );
    let new_coordinator = coordinator(&cluster).await;
    assert!(new_coordinator.is_some_and(|n| n != victim));
    assert!(matches!(
        reader.time_to_live(lease.id).await,
        Err(ClientError::LeaseNotFound(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_racing_a_revoke_never_bring_the_lease_back() -> anyhow::Result<()> {
    let _serial = serial().await;
    let cluster = TestCluster::start(3, P, fast_core()).await;
    let clients = [
        Arc::new(cluster.client(0).await),
        Arc::new(cluster.client(1).await),
        Arc::new(cluster.client(2).await),
    ];
    for round in 0..5 {
        let lease = clients[0].grant(Duration::from_secs(30)).await?;
        let key = format!("race/{round}").into_bytes();
        clients[0].put_with_lease(&key, b"v", lease.id).await?;
        // Keep-alives from every node, before, during and after the revocation.
        let mut racers = Vec::new();
        for c in &clients {
            for _ in 0..3 {
                let c = c.clone();
                racers.push(tokio::spawn(async move {
                    for _ in 0..5 {
                        let _ = c.keep_alive_once(lease.id).await;
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        clients[1].revoke(lease.id).await?;
        for r in racers {
            r.await?;
        }
        // Whatever the interleaving, the lease stays revoked and its key goes.
        for c in &clients {
            assert!(
                matches!(
                    c.time_to_live(lease.id).await,
                    Err(ClientError::LeaseNotFound(_))
                ),
                "round {round}: a keep-alive brought the lease back"
            );
        }
        wait_gone(&clients[2], &[key], Instant::now(), Duration::from_secs(10)).await?;
        assert!(matches!(
            clients[0].keep_alive_once(lease.id).await,
            Err(ClientError::LeaseNotFound(_))
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_of_every_node_without_being_reset_and_ids_are_not_reused(
) -> anyhow::Result<()> {
    let _serial = serial().await;
    let mut cluster = TestCluster::start(3, P, fast_core()).await;
    let ttl = Duration::from_secs(30);
    let c = cluster.client(0).await;
    // One lease revoked and forgotten before the restart, one alive across it.
    let gone = c.grant(ttl).await?;
    c.revoke(gone.id).await?;
    wait_for(
        "the revoked lease to be forgotten",
        Duration::from_secs(10),
        || async { matches!(c.revoke(gone.id).await, Err(ClientError::LeaseNotFound(_))) },
    )
    .await;
    let kept = c.grant(ttl).await?;
    let granted = Instant::now();
    c.put_with_lease(b"restart/kept", b"v", kept.id).await?;
    // Let a few checkpoints record the remaining time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = granted.elapsed();
    drop(c);
    for i in 0..3 {
        cluster.kill(i).await;
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    cluster.wait_for_leaders(Duration::from_secs(30)).await;
    let c = cluster.client(1).await;
    let info = c.time_to_live(kept.id).await?;
    println!(
        "lease of {ttl:?}, {before:?} old at the kill: {} ms left after the restart",
        info.remaining_ms
    );
    // Carried over, not reset: at most what was left at the last checkpoint (one checkpoint
    // period, 1 s, before the kill) plus one election timeout of grace.
    let bound = ttl - before + Duration::from_secs(1) + election_timeout();
    assert!(
        Duration::from_millis(info.remaining_ms) <= bound,
        "{info:?}, bound {bound:?}"
    );
    assert!(c.get(b"restart/kept").await?.is_some());
    // A new lease never takes a revoked lease's id (the partitions still refuse that one).
    let fresh = c.grant(ttl).await?;
    assert!(fresh.id != gone.id && fresh.id != kept.id);
    c.put_with_lease(b"restart/fresh", b"v", fresh.id).await?;
    assert!(matches!(
        c.put_with_lease(b"restart/old", b"v", gone.id).await,
        Err(ClientError::LeaseNotFound(_))
    ));
    c.revoke(kept.id).await?;
    wait_gone(
        &c,
        &[b"restart/kept".to_vec()],
        Instant::now(),
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}
