//! LAN acceptance tests of zero-config formation: real `swarmkv` processes, each in a network
//! namespace of its own, joined by a bridge, started with nothing but a data directory. They
//! must find each other by mDNS, form exactly one cluster, and replicate every partition on
//! three nodes. Progress is read the way an operator would, with `swarmkv status --json`.
//!
//! Needs root (network namespaces); prints "skipped: needs root" otherwise. mDNS runs only
//! inside the namespaces these tests create, never on the machine's own interfaces. A drop
//! guard kills the processes (by pid) and deletes the namespaces on every exit path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "common/needs.rs"]
mod needs;
#[path = "common/netns.rs"]
mod netns;

use anyhow::{anyhow, bail, Context, Result};
use needs::{skip_unless, Need};
use swarmkv::core::{group_of_partition, META_GROUP};
use swarmkv::wire::StatusReport;

/// The binary under test: this build's, or `SWARMKV_TEST_BIN` (to time a release build, or a
/// copy kept apart from a target directory that other builds share).
fn bin() -> String {
    std::env::var("SWARMKV_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_swarmkv").into())
}
/// Kept small so that replication to three copies is quick on a 2-core machine; formation
/// itself does not depend on it.
/// The product default: the nodes are started with nothing but `--data`.
const PARTITIONS: u32 = 64;
/// The acceptance criterion: one cluster within this long after the processes start.
const FORMATION: Duration = Duration::from_secs(10);
/// How long replication to full strength may take after the start.
const REPLICATION: Duration = Duration::from_secs(90);
/// A single `swarmkv status` call that takes longer than this is killed and counted as no
/// answer (the node may still be starting).
const STATUS_TIMEOUT: Duration = Duration::from_secs(8);
/// The pause between two rounds of status calls.
const POLL: Duration = Duration::from_millis(100);
/// The meta group's voter count is capped at five (DESIGN.md §4).
const META_VOTERS: usize = 5;
const REPLICAS: usize = 3;

/// The tests run one at a time: each runs several nodes with real timers, and on a 2-core
/// machine two such clusters at once would measure the machine, not the formation.
static SERIAL: Mutex<()> = Mutex::new(());

/// The namespaces and node processes of one test; dropping it removes them all.
struct Lan {
    /// The namespaces; dropped after the processes are killed (see `Drop`).
    net: netns::Lan,
    nodes: usize,
    /// Every `swarmkv start` process, with its log file.
    children: Vec<(Child, PathBuf)>,
    /// Data directories and logs; dropped last, after the processes are dead.
    dir: tempfile::TempDir,
}

impl Lan {
    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.log"))
    }

    /// Builds the LAN (tests/common/netns.rs). `test` tells the tests of this file apart
    /// (they share a pid).
    fn build(test: &str, nodes: usize) -> Result<Lan> {
        Ok(Lan {
            net: netns::Lan::build(&format!("skvf{test}"), nodes)?,
            nodes,
            children: Vec::new(),
            dir: tempfile::tempdir()?,
        })
    }

    /// A `swarmkv` command in node i's namespace that sees none of the caller's `SWARMKV_*`
    /// settings, so that what a test passes is all the process gets.
    fn swarmkv(&self, i: usize) -> Command {
        self.net.command(i, &bin())
    }

    /// Starts `swarmkv start` in node i's namespace with a data directory and nothing else
    /// that matters for formation (the partition count only keeps the test light).
    fn start(&mut self, i: usize) -> Result<()> {
        self.spawn(i, &format!("node{i}"), self.log(i), &[])?;
        Ok(())
    }

    /// Starts `swarmkv start --data DIR/<data> <extra>` (defaults for everything else) in
    /// node i's namespace, logging to
    /// `log`; returns its index in `children`.
    fn spawn(&mut self, i: usize, data: &str, log: PathBuf, extra: &[&str]) -> Result<usize> {
        let file = File::create(&log)?;
        let child = self
            .swarmkv(i)
            .arg("start")
            .arg("--data")
            .arg(self.dir.path().join(data))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawning swarmkv start")?;
        self.children.push((child, log));
        Ok(self.children.len() - 1)
    }

    /// Asks every node for its status at once; `None` for a node that did not answer.
    fn statuses(&self) -> Vec<Option<StatusReport>> {
        let calls: Vec<_> = (1..=self.nodes)
            .map(|i| {
                self.swarmkv(i)
                    .args(["status", "--json", "--peer"])
                    .arg(format!("/ip4/10.77.0.{i}/tcp/7379"))
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .ok()
            })
            .collect();
        let deadline = Instant::now() + STATUS_TIMEOUT;
        calls
            .into_iter()
            .map(|c| c.and_then(|c| finish(c, deadline)))
            .map(|out| out.and_then(|json| serde_json::from_str(&json).ok()))
            .collect()
    }

    /// Polls the nodes' statuses until `done` accepts them or `deadline` passes.
    fn poll_until(
        &self,
        start: Instant,
        deadline: Duration,
        what: &str,
        mut done: impl FnMut(&[StatusReport]) -> Result<bool>,
    ) -> Result<Duration> {
        let mut last = String::from("no answer yet");
        while start.elapsed() < deadline {
            let reports = self.statuses();
            if reports.iter().all(Option::is_some) {
                let reports: Vec<StatusReport> = reports.into_iter().flatten().collect();
                if done(&reports)? {
                    return Ok(start.elapsed());
                }
                last = summary(&reports);
            } else {
                last = format!(
                    "{} of {} nodes answer",
                    reports.iter().flatten().count(),
                    self.nodes
                );
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "no {what} within {:?} of the start; last seen: {last}",
            deadline
        )
    }

    /// What each node printed: its PeerId and its `cluster ... formed|joined` line, with the
    /// node of the lowest PeerId marked (the one that should form when all see each other).
    fn cluster_lines(&self) -> Vec<String> {
        let printed: Vec<(Option<swarmkv_net::PeerId>, String)> = (1..=self.nodes)
            .map(|i| {
                let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
                let peer = text
                    .lines()
                    .find_map(|l| l.strip_prefix("peer id"))
                    .and_then(|p| p.trim().parse().ok());
                let line = text
                    .lines()
                    .find(|l| l.starts_with("cluster "))
                    .unwrap_or("(no cluster line)")
                    .to_string();
                (peer, line)
            })
            .collect();
        let lowest = printed
            .iter()
            .filter_map(|(p, _)| p.as_ref())
            .min_by_key(|p| p.to_bytes())
            .copied();
        printed
            .iter()
            .enumerate()
            .map(|(i, (peer, line))| {
                let mark = if peer.is_some() && *peer == lowest {
                    " (lowest PeerId)"
                } else {
                    ""
                };
                format!("node{}: {line}{mark}", i + 1)
            })
            .collect()
    }

    /// Runs a client verb in node i's namespace against node i; returns its stdout. The verb
    /// bounds its own run time (30 s), so this cannot hang.
    fn client(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self
            .swarmkv(i)
            .args(args)
            .arg("--peer")
            .arg(format!("/ip4/10.77.0.{i}/tcp/7379"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "swarmkv {} through node{i}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Sends SIGTERM to the process `children[idx]` (by its pid) and waits for it to exit.
    fn terminate(&mut self, idx: usize) -> Result<(std::process::ExitStatus, Duration)> {
        let child = &mut self.children[idx].0;
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        while sent.elapsed() < Duration::from_secs(10) {
            if let Some(status) = child.try_wait()? {
                return Ok((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the node did not exit within 10 s of SIGTERM")
    }

    /// The end of every process's log, to see why a check failed.
    fn dump_logs(&self) {
        for (_, log) in &self.children {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} (last 40 lines) -----", log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            // SIGKILL to this child's pid only (`ip netns exec` execs swarmkv in place).
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a child until `deadline` and returns its stdout if it succeeded; kills it when
/// it overruns. The output is read on a thread so a full pipe cannot stall the child.
fn finish(mut child: Child, deadline: Instant) -> Option<String> {
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s).ok()
    });
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = reader.join().ok().flatten();
                return out.filter(|_| status.success());
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Waits up to `patience` for a line of `log` that `wanted` accepts, and returns it.
fn wait_for_line(
    log: &std::path::Path,
    patience: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Result<String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| wanted(l)) {
            return Ok(line.to_string());
        }
        if start.elapsed() > patience {
            bail!("no such line in {} within {patience:?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The distinct cluster ids the nodes report (`None` for an unformed node).
fn cluster_ids(reports: &[StatusReport]) -> BTreeSet<Option<u64>> {
    reports.iter().map(|r| r.cluster_id).collect()
}

/// For every group, the voter count its leader reports (the leader of the highest term, if
/// two nodes claim leadership while one of them has not heard of the new term yet).
fn leader_voters(reports: &[StatusReport]) -> BTreeMap<u64, usize> {
    let mut best: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for g in reports.iter().flat_map(|r| &r.groups) {
        if g.role == "Leader" {
            let e = best.entry(g.group).or_insert((g.term, g.voters.len()));
            if g.term > e.0 {
                *e = (g.term, g.voters.len());
            }
        }
    }
    best.into_iter().map(|(g, (_, v))| (g, v)).collect()
}

/// Whether the meta group and every partition have their full voter count by their leaders'
/// word: three replicas per partition, the meta group on min(5, nodes) voters.
fn fully_replicated(reports: &[StatusReport], nodes: usize) -> bool {
    let voters = leader_voters(reports);
    let meta_ok = voters.get(&META_GROUP) == Some(&META_VOTERS.min(nodes));
    meta_ok && (0..PARTITIONS).all(|p| voters.get(&group_of_partition(p)) == Some(&REPLICAS))
}

/// One line about the cluster's state, for progress and failure messages.
fn summary(reports: &[StatusReport]) -> String {
    let ids: Vec<String> = cluster_ids(reports)
        .iter()
        .map(|id| id.map_or_else(|| "unformed".into(), |id| format!("{id:016x}")))
        .collect();
    let voters = leader_voters(reports);
    let full = (0..PARTITIONS)
        .filter(|p| voters.get(&group_of_partition(*p)) == Some(&REPLICAS))
        .count();
    format!(
        "cluster ids {ids:?}; meta voters {:?}; {full}/{PARTITIONS} partitions at {REPLICAS} voters",
        voters.get(&META_GROUP)
    )
}

/// Runs `body` on a fresh LAN of `nodes` namespaces, printing the nodes' logs if it fails.
fn with_lan(test: &str, nodes: usize, body: impl FnOnce(&mut Lan) -> Result<()>) -> Result<()> {
    let mut lan = Lan::build(test, nodes)?;
    let outcome = body(&mut lan);
    if outcome.is_err() {
        lan.dump_logs();
    }
    outcome
}

fn skip_unless_root() -> Result<bool> {
    skip_unless(&[Need::Root, Need::Ip], "creates network namespaces")
}

/// How many clusters each formation test forms one after the other, each on a fresh LAN:
/// `SWARMKV_FORMATION_RUNS` (1 by default), to report the spread of the formation time.
fn runs() -> Result<usize> {
    match std::env::var("SWARMKV_FORMATION_RUNS") {
        Err(_) => Ok(1),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("SWARMKV_FORMATION_RUNS must be a positive number, not {v:?}"),
        },
    }
}

/// Prints the times to full replication of every run, with their minimum, median and
/// maximum, the binary that ran and the machine's load (the times are wall-clock times of
/// real processes, so they depend on both).
fn report(what: &str, times: &[Duration]) {
    let mut secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let Some((min, max)) = secs.first().zip(secs.last()) else {
        return;
    };
    let median = secs[secs.len() / 2];
    let all: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "report: {what}: start to full replication in {} run(s): min {min:.2} s, median \
         {median:.2} s, max {max:.2} s (each: {}); binary {}; load average {load}; status \
         polled in rounds {} ms apart, so each time is an upper bound",
        times.len(),
        all.join(", "),
        bin(),
        POLL.as_millis()
    );
}

/// Runs `run` [`runs`] times, each on a fresh LAN, and prints the report of their times.
fn measure(what: &str, run: fn() -> Result<Duration>) -> Result<()> {
    if skip_unless_root()? {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut times = Vec::new();
    for _ in 0..runs()? {
        times.push(run()?);
    }
    report(what, &times);
    Ok(())
}

#[test]
fn three_nodes_with_only_a_data_dir_form_one_cluster_within_10s_with_3_replicas() -> Result<()> {
    measure("3 nodes", three_nodes_form_and_serve)
}

/// One run of the three-node test: returns the time from the start to full replication.
fn three_nodes_form_and_serve() -> Result<Duration> {
    let mut took = Duration::ZERO;
    with_lan("a", 3, |lan| {
        let start = Instant::now();
        for i in 1..=3 {
            lan.start(i)?;
        }
        let formed = lan.poll_until(start, FORMATION, "single cluster of all 3 nodes", |r| {
            let ids = cluster_ids(r);
            Ok(ids.len() == 1 && !ids.contains(&None))
        })?;
        println!("3 nodes: one cluster after {:.2} s", formed.as_secs_f64());
        assert!(formed <= FORMATION);

        let replicated = lan.poll_until(start, REPLICATION, "full replication", |r| {
            if cluster_ids(r).len() != 1 {
                bail!("the nodes disagree on the cluster: {}", summary(r));
            }
            Ok(fully_replicated(r, 3))
        })?;
        took = replicated;
        println!(
            "3 nodes: meta group and all {PARTITIONS} partitions at 3 voters after {:.2} s",
            replicated.as_secs_f64()
        );
        for l in lan.cluster_lines() {
            println!("  {l}");
        }

        // The cluster serves: a write through one node is read back through another.
        lan.client(1, &["put", "greeting", "hello"])?;
        assert_eq!(lan.client(3, &["get", "greeting"])?, "hello");

        // A node stopped by SIGTERM hands its leaderships over and exits 0; the other two
        // keep serving.
        let (status, took) = lan.terminate(0)?;
        println!(
            "3 nodes: node1 stopped by SIGTERM in {:.2} s ({status})",
            took.as_secs_f64()
        );
        assert!(
            status.success(),
            "a node stopped by SIGTERM exits 0, not {status}"
        );
        assert_eq!(lan.client(3, &["get", "greeting"])?, "hello");
        Ok(())
    })?;
    Ok(took)
}

#[test]
fn five_nodes_started_at_the_same_moment_form_exactly_one_cluster() -> Result<()> {
    measure("5 nodes", five_nodes_form_one_cluster)
}

/// One run of the five-node test: returns the time from the start to full replication.
fn five_nodes_form_one_cluster() -> Result<Duration> {
    const NODES: usize = 5;
    let mut took = Duration::ZERO;
    with_lan("b", NODES, |lan| {
        let start = Instant::now();
        // Back to back: every node's discovery window overlaps every other's, which is the
        // case where two nodes could each believe they should form.
        for i in 1..=NODES {
            lan.start(i)?;
        }
        println!("5 nodes spawned in {:.3} s", start.elapsed().as_secs_f64());
        let mut ids = BTreeSet::new();
        let formed = lan.poll_until(start, REPLICATION, "cluster id on all 5 nodes", |r| {
            ids = cluster_ids(r);
            Ok(!ids.contains(&None))
        })?;
        println!(
            "5 nodes: all in a cluster after {:.2} s, cluster ids {:?}",
            formed.as_secs_f64(),
            ids.iter()
                .flatten()
                .map(|id| format!("{id:016x}"))
                .collect::<Vec<_>>()
        );
        // Two clusters never merge (DESIGN.md §3), so a split now is a split for good.
        if ids.len() != 1 {
            return Err(anyhow!(
                "split brain: {} clusters formed: {ids:?}",
                ids.len()
            ));
        }

        let replicated = lan.poll_until(start, REPLICATION, "full replication", |r| {
            if cluster_ids(r).len() != 1 {
                bail!("the nodes disagree on the cluster: {}", summary(r));
            }
            if let Some(r) = r.iter().find(|r| !r.foreign.is_empty()) {
                bail!(
                    "node {:016x} sees a foreign cluster: {:?}",
                    r.node,
                    r.foreign
                );
            }
            Ok(fully_replicated(r, NODES))
        })?;
        took = replicated;
        println!(
            "5 nodes: meta group at {} voters and all {PARTITIONS} partitions at 3 after {:.2} s",
            META_VOTERS.min(NODES),
            replicated.as_secs_f64()
        );
        for l in lan.cluster_lines() {
            println!("  {l}");
        }
        Ok(())
    })?;
    Ok(took)
}

#[test]
fn a_node_stopped_by_sigterm_exits_0_and_restarts_with_its_identity_cluster_and_data() -> Result<()>
{
    if skip_unless_root()? {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    with_lan("c", 1, |lan| {
        let start = Instant::now();
        lan.start(1)?;
        // Alone on its LAN, the node forms a cluster of one after its discovery window.
        let mut cluster = None;
        let formed = lan.poll_until(start, Duration::from_secs(30), "cluster of one", |r| {
            cluster = r[0].cluster_id;
            Ok(cluster.is_some())
        })?;
        let cluster = cluster.ok_or_else(|| anyhow!("no cluster id"))?;
        println!(
            "1 node: cluster {cluster:016x} after {:.2} s",
            formed.as_secs_f64()
        );
        let peer = wait_for_line(&lan.log(1), Duration::from_secs(5), |l| {
            l.starts_with("peer id")
        })?;
        lan.client(1, &["put", "kept", "across restarts"])?;

        let (status, took) = lan.terminate(0)?;
        println!(
            "SIGTERM: exited with {status} after {:.3} s",
            took.as_secs_f64()
        );
        assert!(
            status.success(),
            "a node stopped by SIGTERM exits 0, not {status}"
        );

        let restart_log = lan.dir.path().join("node1-restart.log");
        lan.spawn(1, "node1", restart_log.clone(), &[])?;
        let line = wait_for_line(&restart_log, Duration::from_secs(20), |l| {
            l.starts_with("cluster ")
        })?;
        assert_eq!(line, format!("cluster {cluster:016x} resumed"));
        let peer_again = wait_for_line(&restart_log, Duration::from_secs(5), |l| {
            l.starts_with("peer id")
        })?;
        assert_eq!(
            peer_again, peer,
            "the identity comes back from the data dir"
        );
        assert_eq!(lan.client(1, &["get", "kept"])?, "across restarts");
        Ok(())
    })
}

#[test]
fn a_second_node_on_a_host_whose_default_port_is_taken_listens_on_a_free_port() -> Result<()> {
    if skip_unless_root()? {
        return Ok(());
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    with_lan("d", 1, |lan| {
        lan.start(1)?;
        let first = wait_for_line(&lan.log(1), Duration::from_secs(20), |l| {
            l.starts_with("listening")
        })?;
        assert!(
            first.ends_with("/tcp/7379"),
            "the first node takes the default port: {first}"
        );
        let second_log = lan.dir.path().join("second.log");
        lan.spawn(1, "second", second_log.clone(), &["--no-mdns"])?;
        let second = wait_for_line(&second_log, Duration::from_secs(20), |l| {
            l.starts_with("listening")
        })?;
        println!("first node: {first}; second node: {second}");
        assert!(
            !second.ends_with("/tcp/7379"),
            "the second node must not share port 7379 with the first: {second}"
        );
        let text = std::fs::read_to_string(&second_log)?;
        assert!(
            text.contains("port 7379 is not available"),
            "no warning in:\n{text}"
        );
        Ok(())
    })
}

/// A sanity check of the status parsing the LAN tests rely on, runnable without root.
#[test]
fn leader_voters_prefer_the_leader_of_the_highest_term() {
    let report = |node, term, voters: usize| StatusReport {
        node,
        peer: String::new(),
        cluster_id: Some(7),
        partitions: Some(PARTITIONS),
        meta_leader: false,
        groups: vec![swarmkv::wire::GroupReport {
            group: 1,
            role: "Leader".into(),
            term,
            leader: Some(node),
            voters: (1..=voters as u64).collect(),
            commit: 0,
            applied: 0,
        }],
        peers: vec![],
        foreign: vec![],
        storage_error: None,
    };
    let stale_then_new = [report(1, 2, 1), report(2, 5, 3)];
    assert_eq!(leader_voters(&stale_then_new).get(&1), Some(&3));
    let new_then_stale = [report(2, 5, 3), report(1, 2, 1)];
    assert_eq!(leader_voters(&new_then_stale).get(&1), Some(&3));
}
