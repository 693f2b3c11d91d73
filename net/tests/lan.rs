//! LAN test: three probe processes in their own network namespaces, joined by a bridge in a
//! hub namespace, discover each other by mDNS with no join address, exchange heartbeats, and
//! report PeerDown for a node whose link is cut.
//!
//! Needs root (network namespaces); prints "skipped: needs root" otherwise. mDNS runs only
//! inside the namespaces this test creates, never on the machine's own interfaces. The
//! namespaces and processes are removed by a drop guard on every exit path.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

#[path = "../../tests/common/netns.rs"]
mod netns;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

const NODES: usize = 3;
const PATIENCE: Duration = Duration::from_secs(40);

/// The namespaces (tests/common/netns.rs of the workspace, shared with the root package's
/// LAN tests) and the probe processes of one run; dropping it kills the processes, then
/// removes the namespaces.
struct Lan {
    net: netns::Lan,
    children: Vec<Child>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGKILL to this child's pid only.
            let _ = child.start_kill();
        }
    }
}

/// Spawns a probe in namespace `ns` and forwards its stdout lines, tagged with `index`.
fn spawn_probe(
    ns: &str,
    data: &std::path::Path,
    index: usize,
    lines: mpsc::UnboundedSender<(usize, String)>,
) -> Result<Child> {
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_swarmkv-net-probe")])
        .arg("--data")
        .arg(data)
        .args(["--listen", "/ip4/0.0.0.0/tcp/0", "--mdns"])
        .args([
            "--heartbeat-ms",
            "200",
            "--suspect-ms",
            "1000",
            "--down-ms",
            "2500",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning the probe")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("probe has no stdout"))?;
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if lines.send((index, line)).is_err() {
                break;
            }
        }
    });
    Ok(child)
}

/// Reads lines until `done` says the state is complete.
async fn until(
    lines: &mut mpsc::UnboundedReceiver<(usize, String)>,
    what: &str,
    mut done: impl FnMut(usize, &str) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (index, line) = tokio::time::timeout_at(deadline, lines.recv())
            .await
            .map_err(|_| anyhow!("timed out waiting for {what}"))?
            .ok_or_else(|| anyhow!("all probes exited while waiting for {what}"))?;
        println!("node{index}: {line}");
        if done(index, &line) {
            return Ok(());
        }
    }
}

#[tokio::test]
async fn nodes_in_namespaces_discover_each_other_by_mdns_and_report_a_cut_node_down() -> Result<()>
{
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root (creates network namespaces)");
        return Ok(());
    }
    let dirs = tempfile::tempdir()?;
    let mut lan = Lan {
        net: netns::Lan::build("skvnet", NODES)?,
        children: Vec::new(),
    };
    let (tx, mut lines) = mpsc::unbounded_channel();
    for i in 1..=NODES {
        let data = dirs.path().join(format!("node{i}"));
        let child = spawn_probe(&lan.net.node(i), &data, i, tx.clone())?;
        lan.children.push(child);
    }
    drop(tx);

    // Who is who.
    let mut ids: HashMap<usize, String> = HashMap::new();
    until(&mut lines, "READY from every probe", |i, line| {
        if let Some(id) = line.strip_prefix("READY ") {
            ids.insert(i, id.to_string());
        }
        ids.len() == NODES
    })
    .await?;
    let peer_of: HashMap<String, usize> = ids.iter().map(|(i, id)| (id.clone(), *i)).collect();

    // Discovery by mDNS alone (no join address): every node sees every other one up and
    // receives its heartbeats.
    let mut up: HashSet<(usize, usize)> = HashSet::new();
    let mut heard: HashSet<(usize, usize)> = HashSet::new();
    let pairs = NODES * (NODES - 1);
    until(&mut lines, "mutual PeerUp and heartbeats", |i, line| {
        let mut words = line.split_whitespace();
        let (kind, peer) = (words.next(), words.next().and_then(|p| peer_of.get(p)));
        match (kind, peer) {
            (Some("UP"), Some(&j)) => {
                up.insert((i, j));
            }
            (Some("HB"), Some(&j)) => {
                heard.insert((i, j));
            }
            _ => {}
        }
        up.len() == pairs && heard.len() == pairs
    })
    .await?;

    // Cut node 3 off at the bridge: the others must report it down.
    let cut = NODES;
    lan.net.set_link(cut, false)?;
    let cut_id = ids
        .get(&cut)
        .cloned()
        .ok_or_else(|| anyhow!("no id for node {cut}"))?;
    let mut down: HashSet<usize> = HashSet::new();
    until(&mut lines, "PeerDown of the cut node", |i, line| {
        if i != cut && line == format!("DOWN {cut_id}") {
            down.insert(i);
        }
        down.len() == NODES - 1
    })
    .await?;
    drop(lan);
    Ok(())
}
