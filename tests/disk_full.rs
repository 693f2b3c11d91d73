//! Disk faults: nodes whose data directories sit on a small tmpfs the test mounts and fills.
//! A node that cannot persist is sidelined (it refuses everything and reports the failure)
//! instead of acknowledging what it did not store, and comes back when space is freed; no
//! acknowledged write is lost. Needs root (mount); skipped visibly otherwise.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::needs::{skip_unless, Need};
use common::tmpfs::Tmpfs;
use common::*;
use swarmkv::core::{ClientError, CoreConfig};
use swarmkv::{Client, NodeHandle};

const P: u32 = 8;

fn core() -> CoreConfig {
    CoreConfig {
        tick_ms: 50,
        compact_threshold: 200,
        compact_keep: 20,
        ..CoreConfig::default()
    }
}

/// What the writers saw: acknowledged values, and keys whose write failed (ambiguously or
/// not), which may or may not be there.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<String, String>,
    failed: BTreeMap<String, (String, ClientError)>,
}

/// Writes unique keys `prefix/<n>` through `client` until `stop` says so.
async fn writer(
    client: Client,
    prefix: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("{prefix}/{n:06}");
        let value = format!("value of {key}");
        let r = client.put(key.as_bytes(), value.as_bytes()).await;
        let failed = r.is_err();
        {
            let mut l = ledger.lock().expect("ledger");
            match r {
                Ok(_) => l.acked.insert(key, value),
                Err(e) => l.failed.insert(key, (value, e)).map(|(v, _)| v),
            };
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        n += 1;
    }
}

async fn storage_error(h: &NodeHandle) -> Option<String> {
    h.report().await.ok().and_then(|r| r.storage_error)
}

/// Every acknowledged write reads back with its value through `client`; a failed one reads
/// back as absent or as its own value, never as anything else.
async fn check_ledger(client: &Client, ledger: &Ledger) -> Result<()> {
    for (key, value) in &ledger.acked {
        let got = client
            .get(key.as_bytes())
            .await
            .with_context(|| format!("reading {key}"))?;
        match got {
            Some(r) if r.value == value.as_bytes() => {}
            other => bail!(
                "acknowledged write {key} lost: read {:?}",
                other.map(|r| String::from_utf8_lossy(&r.value).into_owned())
            ),
        }
    }
    for (key, (value, _)) in &ledger.failed {
        if let Some(r) = client.get(key.as_bytes()).await? {
            if r.value != value.as_bytes() {
                bail!("failed write {key} holds a value it was never given");
            }
        }
    }
    Ok(())
}

/// Keeps writing through `client` until a write succeeds (the cluster serves again).
async fn wait_for_writes(client: &Client, what: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let e = match client.put(b"probe", b"p").await {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            bail!("writes did not succeed within {timeout:?} ({what}); the last error: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_is_sidelined_and_rejoins_when_space_is_freed() -> Result<()> {
    if skip_unless(&[Need::Root], "mounts a tmpfs")? {
        return Ok(());
    }
    let _serial = serial().await;
    let disk = Tmpfs::mount(48)?;
    let elsewhere = std::env::temp_dir();
    let bases = [disk.path().to_path_buf(), elsewhere.clone(), elsewhere];
    let cluster = TestCluster::start_in(3, P, core(), &bases).await;
    let client = cluster
        .client(1)
        .await
        .with_deadline(Duration::from_secs(5));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = tokio::spawn(writer(
        cluster
            .client(1)
            .await
            .with_deadline(Duration::from_secs(5)),
        "before".into(),
        ledger.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (filler, filled) = disk.fill()?;
    eprintln!(
        "filled node 0's disk with {} MiB; {} bytes left",
        filled >> 20,
        disk.free_bytes()?
    );
    let until = Instant::now() + Duration::from_secs(60);
    let error = loop {
        if let Some(e) = storage_error(&cluster.handles[0]).await {
            break e;
        }
        if Instant::now() > until {
            bail!("node 0 never reported its full disk");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("node 0 sidelined: {error}");
    // Sidelined: it serves nothing, not even a stale read.
    let n0 = Client::in_process(cluster.handles[0].clone())
        .await
        .map(|c| c.with_deadline(Duration::from_secs(1)));
    if let Ok(n0) = n0 {
        match n0.get(b"before/000000").await {
            Err(ClientError::Unavailable { .. }) | Err(ClientError::Timeout) => {}
            other => bail!("a sidelined node answered a read: {other:?}"),
        }
    }
    // The two others go on: writes through node 1 succeed again once leaders moved.
    let resumed = wait_for_writes(&client, "2 of 3 nodes healthy", Duration::from_secs(30)).await?;
    eprintln!("writes succeed without node 0 after {resumed:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        storage_error(&cluster.handles[0]).await.is_some(),
        "node 0 stays sidelined while its disk is full"
    );

    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    wait_for("node 0 to recover", Duration::from_secs(30), || async {
        storage_error(&cluster.handles[0]).await.is_none()
    })
    .await;
    eprintln!(
        "node 0 recovered {:?} after space was freed",
        freed.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    w.await?;
    cluster.wait_for_leaders(Duration::from_secs(30)).await;
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    eprintln!(
        "{} writes acknowledged, {} failed",
        ledger.acked.len(),
        ledger.failed.len()
    );
    assert!(!ledger.acked.is_empty(), "the writer made progress");
    // Read everything back through the recovered node itself.
    let n0 = Client::in_process(cluster.handles[0].clone()).await?;
    check_ledger(&n0, &ledger).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_every_node_fails_writes_cleanly_and_service_resumes() -> Result<()> {
    if skip_unless(&[Need::Root], "mounts a tmpfs")? {
        return Ok(());
    }
    let _serial = serial().await;
    let disk = Tmpfs::mount(96)?;
    let cluster = TestCluster::start_in(3, P, core(), &[disk.path().to_path_buf()]).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..3 {
        let c = cluster
            .client(i)
            .await
            .with_deadline(Duration::from_secs(3));
        writers.push(tokio::spawn(writer(
            c,
            format!("w{i}"),
            ledger.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (filler, filled) = disk.fill()?;
    eprintln!(
        "filled the shared disk with {} MiB; {} bytes left",
        filled >> 20,
        disk.free_bytes()?
    );
    // Writes must start failing: no node can persist anything.
    let failed_at_fill = ledger.lock().expect("ledger").failed.len();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut sidelined = 0;
        for h in &cluster.handles {
            if storage_error(h).await.is_some() {
                sidelined += 1;
            }
        }
        let acked_before = ledger.lock().expect("ledger").acked.len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (acked_after, failed) = {
            let l = ledger.lock().expect("ledger");
            (l.acked.len(), l.failed.len())
        };
        if sidelined >= 2 && acked_after == acked_before && failed > failed_at_fill {
            eprintln!(
                "{sidelined} nodes sidelined; no write acknowledged for 2 s; {} failed",
                failed - failed_at_fill
            );
            break;
        }
        if Instant::now() > until {
            bail!("writes kept being acknowledged on a full disk ({sidelined} nodes sidelined)");
        }
    }
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    let probe = cluster
        .client(0)
        .await
        .with_deadline(Duration::from_secs(5));
    let resumed = wait_for_writes(&probe, "space freed", Duration::from_secs(60)).await?;
    eprintln!("writes succeed again {resumed:?} after space was freed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    // Every node comes back; one that does not names the error it is still stuck on.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stuck = Vec::new();
        for (i, h) in cluster.handles.iter().enumerate() {
            if let Some(e) = storage_error(h).await {
                stuck.push(format!("node {i}: {e}"));
            }
        }
        if stuck.is_empty() {
            break;
        }
        if Instant::now() > until {
            bail!(
                "{} node(s) still sidelined 30 s after space was freed: {}",
                stuck.len(),
                stuck.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "all nodes recovered {:?} after space was freed",
        freed.elapsed()
    );
    cluster.wait_for_leaders(Duration::from_secs(30)).await;
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    eprintln!(
        "{} writes acknowledged, {} failed",
        ledger.acked.len(),
        ledger.failed.len()
    );
    for i in 0..3 {
        let c = cluster.client(i).await;
        check_ledger(&c, &ledger).await?;
    }
    Ok(())
}
