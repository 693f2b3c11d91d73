//! Damaged stores, with real `swarmkv` processes on 127.0.0.1 (`--no-mdns`):
//!
//! - a node whose store lost writes it had made durable (an older copy of its sled directory
//!   put back while it was stopped) is refused by `swarmkv start` with the location and exit
//!   status 4; `swarmkv repair --from-peers` replaces it; started again it rejoins as a new
//!   node and serves every acknowledged key (serializable reads from its own replicas, then
//!   linearizable ones), while the cluster answered writes throughout;
//! - a repair that would leave a group without a live majority of its other replicas is
//!   refused and changes nothing (asked over libp2p, `--peer`);
//! - a damaged stretch of sled's log, or a damaged identity, makes `start` exit 4 naming the
//!   file and the repair.
//!
//! The tests run one at a time (three processes each); processes are killed by pid when a
//! test ends.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::process::{cli, enc, http, serial, wait_until, ProcCluster};

/// Few partitions: formation and replication are quick.
const P: u32 = 8;

fn data_of(cluster: &ProcCluster, i: usize) -> PathBuf {
    cluster.nodes[i].dir.path().join("data")
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

/// Writes `key` through `addr`, retrying for up to 30 s (a leader may be moving).
fn put_retrying(addr: SocketAddr, key: &str, value: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match http(
            addr,
            "PUT",
            &format!("/v1/kv/{}", enc(key.as_bytes())),
            value.as_bytes(),
        ) {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) if Instant::now() > until => bail!("put {key}: status {}", r.status),
            Err(e) if Instant::now() > until => return Err(e.context(format!("put {key}"))),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The value of `key` read through `addr` (`None`: 404).
fn get(addr: SocketAddr, key: &str, serializable: bool) -> Result<Option<String>> {
    let query = if serializable {
        "?serializable=true"
    } else {
        ""
    };
    let r = http(
        addr,
        "GET",
        &format!("/v1/kv/{}{query}", enc(key.as_bytes())),
        b"",
    )?;
    match r.status {
        200 => Ok(r.json()?["value"].as_str().map(str::to_string)),
        404 => Ok(None),
        s => bail!("get {key}: status {s}"),
    }
}

/// How many of the node's own replicas are voters that applied all they committed, and a
/// description of the others (for a timeout's message).
fn caught_up_groups(addr: SocketAddr) -> Result<(usize, String)> {
    let s = http(addr, "GET", "/v1/status", b"")?.expect(200)?;
    let me = s["node"].clone();
    let mut done = 0;
    let mut behind = Vec::new();
    for g in s["groups"].as_array().into_iter().flatten() {
        if g["voters"].as_array().is_some_and(|v| v.contains(&me)) && g["applied"] == g["commit"] {
            done += 1;
        } else {
            behind.push(format!(
                "group {} {} voters {} commit {} applied {} leader {}",
                g["group"], g["role"], g["voters"], g["commit"], g["applied"], g["leader"]
            ));
        }
    }
    Ok((done, behind.join("; ")))
}

/// Writes keys `w-N` through `addr` until `stop`, each retried until acknowledged; returns
/// the acknowledged keys.
fn background_writer(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("w-{n}");
            put_retrying(addr, &key, &format!("v-{n}"))?;
            acked.lock().unwrap_or_else(|p| p.into_inner()).push(key);
            n += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })
}

#[test]
fn a_node_that_lost_writes_is_refused_then_rebuilt_from_its_peers() -> Result<()> {
    let _serial = serial();
    let mut cluster = ProcCluster::start(3, P)?;
    let a = cluster.nodes[0].http;
    let mut expected: Vec<(String, String)> = Vec::new();
    for i in 0..50 {
        let (k, v) = (format!("k-{i}"), format!("first-{i}"));
        put_retrying(a, &k, &v)?;
        expected.push((k, v));
    }

    // Node 2 stopped cleanly; a copy of its store taken now is complete but will be old.
    let data = data_of(&cluster, 2);
    let store = data.join("store");
    let old_copy = cluster.nodes[2].dir.path().join("older-store");
    cluster.nodes[2].terminate(Duration::from_secs(30))?;
    copy_dir(&store, &old_copy)?;
    cluster.restart(2)?;
    cluster.wait_ready(2, Duration::from_secs(60))?;
    for i in 50..100 {
        let (k, v) = (format!("k-{i}"), format!("second-{i}"));
        put_retrying(a, &k, &v)?;
        expected.push((k, v));
    }
    // Node 2 holds a replica of every partition (3 nodes, 3 replicas): let it apply all.
    let c = cluster.nodes[2].http;
    wait_until(
        "node 2 to apply the second writes",
        Duration::from_secs(60),
        || Ok(get(c, "k-99", true)?.as_deref() == Some("second-99")),
    )?;
    let old_node = cluster.nodes[2].node_id.clone();
    cluster.nodes[2].terminate(Duration::from_secs(30))?;

    // The cluster answers writes from here to the end of the repair.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = background_writer(a, stop.clone(), acked.clone());

    // Damage: the older copy put back.
    std::fs::remove_dir_all(&store)?;
    std::fs::rename(&old_copy, &store)?;
    let refused = cli(&[
        "start".to_string(),
        "--no-mdns".into(),
        "--data".into(),
        data.display().to_string(),
        "--listen".into(),
        cluster.nodes[2].listen.clone(),
        "--http".into(),
        c.to_string(),
    ])?;
    println!("start refused: {}", refused.stderr.trim());
    ensure!(
        refused.code == Some(4),
        "start on the damaged store: exit {:?}, stderr {:?}",
        refused.code,
        refused.stderr
    );
    ensure!(
        refused.stderr.contains(&store.display().to_string()),
        "no location: {}",
        refused.stderr
    );
    ensure!(
        refused.stderr.contains("swarmkv repair --from-peers"),
        "no remedy: {}",
        refused.stderr
    );
    ensure!(refused.stderr.contains("lost writes"), "{}", refused.stderr);

    // The repair, through node 0's gateway.
    let started = Instant::now();
    let out = cli(&[
        "repair".to_string(),
        "--from-peers".into(),
        "--data".into(),
        data.display().to_string(),
        "--endpoint".into(),
        format!("http://{a}"),
        "--wait".into(),
        "120".into(),
    ])?;
    println!(
        "repair took {:?}:\n{}{}",
        started.elapsed(),
        out.stdout,
        out.stderr
    );
    let stdout = out.expect(0)?;
    ensure!(stdout.contains("repaired:"), "{stdout}");
    ensure!(stdout.contains(&old_node), "{stdout}");
    let aside: Vec<PathBuf> = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("damaged-"))
        })
        .collect();
    ensure!(aside.len() == 1, "damaged-* directories: {aside:?}");
    ensure!(
        aside[0].join("store").join("db").exists(),
        "the damaged store was not kept"
    );
    ensure!(
        aside[0].join("node.key").exists(),
        "the old identity was not kept"
    );

    // Started again: a new node that rejoins and receives its replicas.
    cluster.restart(2)?;
    ensure!(
        cluster.nodes[2].node_id != old_node,
        "the node came back under its old id"
    );
    println!(
        "node 2 is now {} (was {old_node})",
        cluster.nodes[2].node_id
    );
    cluster.wait_ready(2, Duration::from_secs(120))?;
    let rejoined = Instant::now();
    let mut last = String::new();
    wait_until(
        "node 2 to hold caught-up replicas of every partition and the meta group",
        Duration::from_secs(180),
        || {
            let (done, behind) = caught_up_groups(c)?;
            last = behind;
            Ok(done == P as usize + 1)
        },
    )
    .with_context(|| format!("not caught up: {last}"))?;
    println!(
        "node 2 caught up on {} groups in {:?}",
        P + 1,
        rejoined.elapsed()
    );

    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("{} writes acknowledged during the repair", acked.len());
    ensure!(
        !acked.is_empty(),
        "no write was acknowledged during the repair"
    );
    for (i, k) in acked.iter().enumerate() {
        expected.push((k.clone(), format!("v-{i}")));
    }
    // Every acknowledged key from node 2's own replicas, then linearizably.
    for serializable in [true, false] {
        for (k, v) in &expected {
            let got = get(c, k, serializable)
                .with_context(|| format!("reading {k} (serializable {serializable})"))?;
            ensure!(
                got.as_deref() == Some(v.as_str()),
                "{k}: {got:?}, expected {v}"
            );
        }
    }
    println!(
        "node 2 served all {} acknowledged keys, serializable and linearizable",
        expected.len()
    );
    cluster.finish();
    Ok(())
}

#[test]
fn a_repair_that_would_lose_a_majority_is_refused_and_changes_nothing() -> Result<()> {
    let _serial = serial();
    let mut cluster = ProcCluster::start(3, P)?;
    let a = cluster.nodes[0].http;
    put_retrying(a, "before", "1")?;
    let data = data_of(&cluster, 2);
    let old_node = cluster.nodes[2].node_id.clone();
    cluster.nodes[2].terminate(Duration::from_secs(30))?;
    // Its store is gone (the mark beside it remains): damaged.
    std::fs::remove_dir_all(data.join("store"))?;
    // And node 1 is down too: every group of node 2 has one live voter of three left.
    cluster.nodes[1].kill()?;
    wait_until(
        "node 0 to stop hearing node 1",
        Duration::from_secs(60),
        || {
            let s = http(a, "GET", "/v1/status", b"")?.expect(200)?;
            Ok(s["cluster"]["nodes"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .filter(|n| n["id"] == cluster.nodes[1].node_id.as_str())
                    .all(|n| n["reachable"] == false)
            }))
        },
    )?;
    // Over libp2p this time (the first test goes through a gateway).
    let out = cli(&[
        "repair".to_string(),
        "--from-peers".into(),
        "--data".into(),
        data.display().to_string(),
        "--peer".into(),
        cluster.nodes[0].multiaddr(),
    ])?;
    println!("refused:\n{}{}", out.stdout, out.stderr);
    ensure!(out.code == Some(1), "exit {:?}: {}", out.code, out.stderr);
    ensure!(out.stderr.contains("refusing"), "{}", out.stderr);
    ensure!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    // Nothing changed: the identity is in place, nothing moved aside, and the cluster still
    // lists the node in its groups (no decommission was asked).
    ensure!(data.join("node.key").exists(), "the identity was moved");
    let moved = std::fs::read_dir(&data)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("damaged-"));
    ensure!(!moved, "something was moved aside");
    let s = http(a, "GET", "/v1/status", b"")?.expect(200)?;
    let node = s["cluster"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == old_node.as_str()))
        .context("node 2 is no longer known")?;
    ensure!(
        node["state"] != "decommissioning" && node["state"] != "decommissioned",
        "node 2 is {}",
        node["state"]
    );
    cluster.finish();
    Ok(())
}

/// `swarmkv start` on the node's data directory and ports, run to completion.
fn start_once(node: &common::process::NodeProc) -> Result<common::process::CliOutput> {
    cli(&[
        "start".to_string(),
        "--no-mdns".into(),
        "--data".into(),
        node.dir.path().join("data").display().to_string(),
        "--listen".into(),
        node.listen.clone(),
        "--http".into(),
        node.http.to_string(),
    ])
}

#[test]
fn a_damaged_log_file_or_identity_is_refused_with_its_location_and_exit_status_4() -> Result<()> {
    let _serial = serial();
    let mut cluster = ProcCluster::start(1, P)?;
    let a = cluster.nodes[0].http;
    for i in 0..200 {
        put_retrying(a, &format!("k-{i}"), &"x".repeat(200))?;
    }
    cluster.nodes[0].terminate(Duration::from_secs(30))?;
    let data = data_of(&cluster, 0);

    // A stretch in the middle of sled's log damaged: sled reports it, or drops the log from
    // there (and the durable mark shows the loss); either way the node refuses to start.
    let db = data.join("store").join("db");
    let mut bytes = std::fs::read(&db)?;
    let at = bytes.len() / 3;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&db, &bytes)?;
    let out = start_once(&cluster.nodes[0])?;
    println!("damaged log: {}", out.stderr.trim());
    ensure!(out.code == Some(4), "exit {:?}: {}", out.code, out.stderr);
    ensure!(
        out.stderr
            .contains(&data.join("store").display().to_string()),
        "no location: {}",
        out.stderr
    );
    ensure!(
        out.stderr.contains("swarmkv repair --from-peers"),
        "{}",
        out.stderr
    );

    // A damaged identity (read before the store) is refused the same way.
    let key = data.join("node.key");
    std::fs::write(&key, b"not a key")?;
    let out = start_once(&cluster.nodes[0])?;
    println!("damaged identity: {}", out.stderr.trim());
    ensure!(out.code == Some(4), "exit {:?}: {}", out.code, out.stderr);
    ensure!(
        out.stderr.contains(&key.display().to_string()),
        "no location: {}",
        out.stderr
    );
    ensure!(
        out.stderr.contains("swarmkv repair --from-peers"),
        "{}",
        out.stderr
    );
    cluster.finish();
    Ok(())
}
