//! Backup and restore with real `swarmkv` processes on 127.0.0.1 (`--no-mdns`):
//!
//! - a backup taken through one node's gateway while two writers keep writing restores into a
//!   new 3-node cluster (the restored node forms it, two new nodes join it) that serves every
//!   write acknowledged before the backup started, with no holes per partition (each
//!   partition is a prefix of each writer's writes to it), under a new cluster id that a
//!   node of the old cluster cannot join; a lease comes back with its key and its lock, its
//!   time to live started again;
//! - a damaged, a truncated and a foreign file are refused by `swarmkv restore` with exit
//!   status 4 and the reason, and nothing is written.
//!
//! One cluster at a time: the test takes the binary tests' lock.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::process::{cli, enc, http, serial, wait_until, NodeProc, ProcCluster};
use serde_json::Value;
use swarmkv::core::routing::partition_of;

/// Few partitions: formation and replication are quick.
const P: u32 = 8;
/// Writers writing while the backup runs.
const WRITERS: usize = 2;

/// One writer's acknowledged puts: (index, when the answer came).
type Acks = Arc<Mutex<Vec<(u64, Instant)>>>;

fn key(writer: usize, i: u64) -> String {
    format!("w{writer}/{i:06}")
}

/// Puts `w{writer}/{i}` = `i` for i = 0, 1, ... through `addr` until `stop`, each put retried
/// until it is acknowledged (a put of the same value again is harmless), so the writer's
/// sequence has no holes.
fn writer(addr: SocketAddr, writer: usize, acks: Acks, stop: Arc<AtomicBool>) -> Result<()> {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = key(writer, i);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match http(
                addr,
                "PUT",
                &format!("/v1/kv/{}", enc(k.as_bytes())),
                i.to_string().as_bytes(),
            ) {
                Ok(r) if r.status == 200 => break,
                other if Instant::now() > until => bail!("put {k}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        acks.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push((i, Instant::now()));
        i += 1;
    }
    Ok(())
}

/// Every `w{writer}/...` key and its value, read through `addr` (linearizable scan).
fn restored_keys(addr: SocketAddr, writer: usize) -> Result<BTreeMap<u64, String>> {
    let prefix = format!("w{writer}/");
    let page = http(
        addr,
        "GET",
        &format!("/v1/kv?prefix={}&limit=10000", enc(prefix.as_bytes())),
        b"",
    )?
    .expect(200)?;
    ensure!(page["more"] != true, "the scan was cut: {page}");
    let mut out = BTreeMap::new();
    for r in page["records"].as_array().context("records")? {
        let k = r["key"].as_str().context("key")?;
        let i: u64 = k[prefix.len()..].parse()?;
        out.insert(i, r["value"].as_str().context("value")?.to_string());
    }
    Ok(out)
}

fn status(addr: SocketAddr) -> Result<Value> {
    http(addr, "GET", "/v1/status", b"")?.expect(200)
}

fn restore_refuses(file: &Path, target: &Path, why: &str) -> Result<()> {
    let out = cli(&[
        "restore".as_ref(),
        file.as_os_str(),
        "--data".as_ref(),
        target.as_os_str(),
    ])?;
    out.expect(4)
        .with_context(|| format!("restore of a {why} backup"))?;
    ensure!(
        out.stderr.contains("nothing was written"),
        "{why}: {}",
        out.stderr
    );
    ensure!(!target.exists(), "{why}: {} was created", target.display());
    println!("{why} backup refused: {}", out.stderr.trim());
    Ok(())
}

#[test]
fn a_backup_taken_under_writes_restores_into_a_new_cluster() -> Result<()> {
    let _serial = serial();
    let old = ProcCluster::start(3, P)?;
    let old_id = status(old.nodes[0].http)?["cluster_id"].clone();

    // A lease with a key and a lock on it: the meta group's state a restore keeps.
    let lease = http(old.nodes[0].http, "POST", "/v1/lease", br#"{"ttl":120}"#)?.expect(200)?;
    let lease = lease["id"].as_str().context("lease id")?.to_string();
    http(
        old.nodes[0].http,
        "PUT",
        &format!("/v1/kv/leased?lease={lease}"),
        b"1",
    )?
    .expect(200)?;
    let lock = http(
        old.nodes[0].http,
        "POST",
        "/v1/lock/jobs/acquire",
        format!(r#"{{"lease":"{lease}"}}"#).as_bytes(),
    )?
    .expect(200)?;
    let token = lock["leader"]["token"].clone();

    // Large values in one partition (one hash tag): its copy spans several chunks.
    let big: Vec<Vec<u8>> = (0..4u8)
        .map(|i| (0..600 * 1024).map(|j| (j % 251) as u8 ^ i).collect())
        .collect();
    for (i, v) in big.iter().enumerate() {
        http(
            old.nodes[1].http,
            "PUT",
            &format!("/v1/kv/%7Bbig%7D/{i}"),
            v,
        )?
        .expect(200)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acks: Vec<Acks> = (0..WRITERS).map(|_| Acks::default()).collect();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (addr, acks, stop) = (old.nodes[w + 1].http, acks[w].clone(), stop.clone());
            std::thread::spawn(move || writer(addr, w, acks, stop))
        })
        .collect();
    wait_until("writers to get going", Duration::from_secs(30), || {
        Ok(acks.iter().all(|a| a.lock().map_or(0, |a| a.len()) >= 50))
    })?;

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cluster.backup");
    let started = Instant::now();
    let out = cli(&[
        "backup".as_ref(),
        file.as_os_str(),
        "--endpoint".as_ref(),
        old.nodes[0].endpoint().as_ref(),
    ])?;
    let took = started.elapsed();
    let stdout = out.expect(0)?;
    println!("{} in {took:?}", stdout.trim());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    ensure!(file.exists() && !dir.path().join("cluster.backup.part").exists());

    // Bad files first: each is refused and creates nothing.
    let bytes = std::fs::read(&file)?;
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    std::fs::write(dir.path().join("damaged"), &damaged)?;
    std::fs::write(dir.path().join("truncated"), &bytes[..bytes.len() * 2 / 3])?;
    std::fs::write(dir.path().join("foreign"), b"{\"not\": \"a backup\"}")?;
    for why in ["damaged", "truncated", "foreign"] {
        restore_refuses(
            &dir.path().join(why),
            &dir.path().join(format!("r-{why}")),
            why,
        )?;
    }

    let first = tempfile::tempdir()?;
    let out = cli(&[
        "restore".as_ref(),
        file.as_os_str(),
        "--data".as_ref(),
        first.path().join("data").as_os_str(),
    ])?;
    println!("{}", out.expect(0)?.trim());
    let restored = ProcCluster::start_from(first, 3)?;
    let new_status = status(restored.nodes[0].http)?;
    ensure!(
        new_status["cluster_id"] != old_id && new_status["partitions"] == P,
        "restored cluster {} of {} partitions, old {old_id}",
        new_status["cluster_id"],
        new_status["partitions"]
    );

    // Read through a node that joined: its replicas came from the restored node.
    let reader = restored.nodes[2].http;
    let mut checked = 0;
    for (w, acks) in acks.iter().enumerate() {
        let acks = acks
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let have = restored_keys(reader, w)?;
        let before: Vec<u64> = acks
            .iter()
            .filter(|(_, at)| *at < started)
            .map(|(i, _)| *i)
            .collect();
        for i in &before {
            ensure!(
                have.get(i) == Some(&i.to_string()),
                "writer {w}: {} acknowledged before the backup started is {:?} after the restore",
                key(w, *i),
                have.get(i)
            );
        }
        // Per partition, what came back is a prefix of the writer's puts to it: a partition
        // is restored at one point of its log.
        let mut last_seen: BTreeMap<u32, u64> = BTreeMap::new();
        for i in have.keys() {
            last_seen
                .entry(partition_of(key(w, *i).as_bytes(), P))
                .and_modify(|m| *m = (*m).max(*i))
                .or_insert(*i);
        }
        let attempted = acks.len() as u64 + 1;
        for i in 0..attempted {
            let p = partition_of(key(w, i).as_bytes(), P);
            if last_seen.get(&p).is_some_and(|last| i < *last) {
                ensure!(
                    have.contains_key(&i),
                    "writer {w}: partition {p} holds a later put but not {}",
                    key(w, i)
                );
            }
        }
        let after: BTreeSet<u64> = have
            .keys()
            .copied()
            .filter(|i| !before.contains(i))
            .collect();
        println!(
            "writer {w}: {} puts acknowledged before the backup started, all restored; {} later ones restored too; {} in all",
            before.len(),
            after.len(),
            acks.len()
        );
        checked += before.len();
    }
    ensure!(checked >= 100, "only {checked} acknowledged puts checked");

    for (i, v) in big.iter().enumerate() {
        let r = http(reader, "GET", &format!("/v1/kv/%7Bbig%7D/{i}"), b"")?.expect(200)?;
        let got = r["value_b64"].as_str().context("value_b64")?;
        ensure!(
            got == common::http::b64(v),
            "{{big}}/{i} differs after the restore"
        );
    }
    println!("4 values of 600 KiB in one partition restored");

    // The lease came back with its time started again, and its key and lock with it.
    let ttl = http(reader, "GET", &format!("/v1/lease/{lease}"), b"")?.expect(200)?;
    ensure!(
        ttl["remaining_ms"].as_u64().is_some_and(|ms| ms > 60_000),
        "the restored lease: {ttl}"
    );
    http(reader, "GET", "/v1/kv/leased", b"")?.expect(200)?;
    let holder = http(reader, "GET", "/v1/lock/jobs", b"")?.expect(200)?;
    ensure!(
        holder["leader"]["token"] == token,
        "the restored lock: {holder}, was {token}"
    );
    println!("lease {lease}, its key and lock jobs (token {token}) restored: {ttl}");

    // The restored cluster takes writes, at revisions above the restored ones.
    let put = http(reader, "PUT", "/v1/kv/after-restore", b"1")?.expect(200)?;
    let rev = put["rev"].as_u64().context("rev")?;
    let p = partition_of(b"after-restore", P);
    let mut below = 0;
    for w in 0..WRITERS {
        for i in restored_keys(reader, w)?.keys() {
            let k = key(w, *i);
            if partition_of(k.as_bytes(), P) == p {
                let r = http(reader, "GET", &format!("/v1/kv/{}", enc(k.as_bytes())), b"")?
                    .expect(200)?;
                let restored_rev = r["mod_rev"].as_u64().context("mod_rev")?;
                ensure!(
                    restored_rev < rev,
                    "{k} restored at revision {restored_rev}, a later put got {rev}"
                );
                below += 1;
            }
        }
    }
    println!(
        "a put after the restore: revision {rev}, above the {below} restored keys of its partition"
    );

    // A node of the old cluster, pointed at the new one, is not let in.
    let old_data = old.nodes[2].dir.path().join("data");
    let stranger_dir = tempfile::tempdir()?;
    let mut old = old;
    for node in &mut old.nodes {
        node.kill()?;
    }
    copy_dir(&old_data, &stranger_dir.path().join("data"))?;
    old.finish();
    let stranger = NodeProc::start_in(
        stranger_dir,
        &["--join", restored.nodes[0].multiaddr().as_str()],
    )?;
    wait_until(
        "the old node to be refused",
        Duration::from_secs(30),
        || {
            let s = status(restored.nodes[0].http)?;
            Ok(s["foreign"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x["peer"] == stranger.peer_id.as_str())))
        },
    )
    .with_context(|| {
        format!(
            "the old node's log: {}",
            stranger.current_log().unwrap_or_default()
        )
    })?;
    let s = status(restored.nodes[0].http)?;
    let nodes: Vec<&str> = s["cluster"]["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    ensure!(
        nodes.len() == 3 && !nodes.contains(&stranger.node_id.as_str()),
        "the restored cluster's nodes: {nodes:?}"
    );
    ensure!(
        status(stranger.http)?["cluster_id"] == old_id,
        "the old node changed cluster"
    );
    restored.finish();
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
