//! `swarmkv repair --from-peers`: rebuilds a node whose stored data is damaged, from its peers.
//!
//! # Why a new node and not the old one
//! A node whose store lost Raft state (a vote, log entries it acknowledged) must never come
//! back under its old node id: it could vote twice in a term or help elect a leader without
//! entries a majority had acknowledged. So the repair is a node replacement, done in an
//! order that never risks that:
//! 1. read the damaged node's id from its identity (`DATA/node.key`; `--node-id` if lost) and
//!    check that its store really is damaged (it must not open cleanly, and must not be in use);
//! 2. ask a live node for the cluster's view and refuse, changing nothing, if removing the
//!    node would leave a group (a partition or the meta group) it is a voter of without a
//!    live majority of its other replicas (`--force` goes ahead anyway, see its help);
//! 3. decommission the old id (the cluster's normal drain: every group replaces it with
//!    another replica) and wait until no group lists it;
//! 4. move the damaged store, its durable mark and the old identity into
//!    `DATA/damaged-<unix time>/` (nothing is deleted), then create a fresh identity and an
//!    empty store in `DATA`.
//!
//! The node is then ready for `swarmkv start` with the flags it always had: it joins as a new
//! node and the cluster places replicas on it, streaming their data from the peers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::Args;
use serde_json::Value;
use swarmkv::core::{group_of_partition, GroupId, NodeId, META_GROUP};
use swarmkv_net::IDENTITY_FILE;
use swarmkv_store::durable_mark::mark_path;
use swarmkv_store::{SledStore, Store, StoreConfig, StoreError};

use super::decommission::parse_node_id;
use super::transport::{Need, Target, TransportArgs};
use super::{node_hex, say, CliError};

/// How often the cluster's view is asked for while waiting.
const POLL: Duration = Duration::from_millis(500);

/// How long the cluster may go on hearing the damaged node (it stopped just now) before the
/// repair concludes that it runs somewhere.
const SILENCE_WAIT: Duration = Duration::from_secs(30);

/// Rebuild a node whose stored data is damaged, from its peers
///
/// Use it when `swarmkv start` refuses with exit status 4 (a corrupt record, or writes lost
/// from its log). Run it on the damaged node's machine with the node stopped, pointing at any
/// live node of the cluster (--endpoint or --peer). It removes the old node id from the
/// cluster (a node that lost Raft state must never vote again under its old id), moves the
/// damaged files into DATA/damaged-<time>/ (nothing is deleted), and leaves a fresh identity
/// and an empty store: then start the node as before and it rejoins as a new node, receiving
/// its replicas from its peers. It refuses, changing nothing, if removing the node would leave
/// any of its groups without a live majority of its other replicas.
#[derive(Args, Debug)]
pub struct Repair {
    /// Rebuild from the cluster's other replicas (the only kind of repair there is; asked
    /// for explicitly so that the command line says what it does).
    #[arg(long, required = true)]
    pub from_peers: bool,
    /// The damaged node's data directory [default: as for `swarmkv start`].
    #[arg(long, env = "SWARMKV_DATA")]
    pub data: Option<PathBuf>,
    /// The damaged node's id in hex, when its identity file (DATA/node.key) is lost or
    /// unreadable (`swarmkv status` of a live node lists the ids).
    #[arg(long, value_name = "NODE_ID_HEX", value_parser = parse_node_id)]
    pub node_id: Option<u64>,
    /// Go ahead even if a group of the node would be left without a live majority of its
    /// other replicas. Raft stays safe (the old id never returns), but such a group stays
    /// unavailable, with the old node still in it, until enough of its replicas return, and
    /// if they never do, the damaged store may have held the last copy of its data.
    #[arg(long)]
    pub force: bool,
    /// Replace the node even though its store opens without error.
    #[arg(long)]
    pub even_if_healthy: bool,
    /// Seconds to wait for the cluster to take the old node out of every group.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub wait: u64,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// The cluster as one live node sees it: what the repair decides on.
#[derive(Debug, Default)]
struct Membership {
    /// Every group the node knows of, with its voters (empty: not known there).
    groups: Vec<(GroupId, Vec<NodeId>)>,
    /// The nodes it hears from now (itself included).
    reachable: BTreeSet<NodeId>,
    /// Every node it knows of.
    known: BTreeSet<NodeId>,
}

impl Membership {
    /// The groups that list `node` as a voter.
    fn groups_of(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, v)| v.contains(&node))
            .map(|(g, _)| *g)
            .collect()
    }

    /// Why removing `node` would leave a group without a live majority of its other
    /// replicas, one line per such group; also groups whose voters are not known.
    fn majority_problems(&self, node: NodeId) -> Vec<String> {
        let mut out = Vec::new();
        if !self
            .groups
            .iter()
            .any(|(g, v)| *g == META_GROUP && !v.is_empty())
        {
            out.push("the meta group: its voters are not known to the node asked".into());
        }
        for (g, voters) in &self.groups {
            if voters.is_empty() {
                out.push(format!("{}: its voters are not known", group_name(*g)));
                continue;
            }
            if !voters.contains(&node) {
                continue;
            }
            let live = voters
                .iter()
                .filter(|v| **v != node && self.reachable.contains(v))
                .count();
            let need = voters.len() / 2 + 1;
            if live < need {
                out.push(format!(
                    "{}: voters {}, {live} live without {} (needs {need})",
                    group_name(*g),
                    voters
                        .iter()
                        .map(|v| node_hex(*v))
                        .collect::<Vec<_>>()
                        .join(", "),
                    node_hex(node)
                ));
            }
        }
        out
    }
}

fn group_name(g: GroupId) -> String {
    match swarmkv::core::partition_of_group(g) {
        Some(p) => format!("partition {p}"),
        None if g == META_GROUP => "the meta group".into(),
        None => format!("group {g}"),
    }
}

impl Repair {
    pub async fn run(self) -> Result<(), CliError> {
        let data = match &self.data {
            Some(d) => d.clone(),
            None => super::start::default_data_dir()?,
        };
        let old = self.old_node_id(&data)?;
        let store_dir = data.join("store");
        self.check_damaged(&store_dir)?;
        say(format!(
            "repairing node {} (data {})",
            node_hex(old),
            data.display()
        ))?;

        let target = self.transport.connect(Need::Admin).await?;
        let before = self.wait_silent(&target, old).await?;
        let held = before.groups_of(old);
        let listed = before.known.contains(&old) || !held.is_empty();
        if listed {
            let problems = before.majority_problems(old);
            if !problems.is_empty() && !self.force {
                return Err(CliError::Rejected(format!(
                    "refusing to remove node {}: it would leave {} group(s) without a live \
                     majority of their other replicas, or their voters are unknown \
                     ({}); nothing was changed. Bring their other nodes back first, or pass \
                     --force (see --help for what that risks)",
                    node_hex(old),
                    problems.len(),
                    problems.join("; ")
                )));
            }
            for p in &problems {
                log::warn!("going ahead (--force) although {p}");
            }
            let partitions = held.iter().filter(|g| **g != META_GROUP).count();
            say(format!(
                "node {} is a voter of {partitions} partition(s){}; removing it from the cluster",
                node_hex(old),
                if held.contains(&META_GROUP) {
                    " and the meta group"
                } else {
                    ""
                }
            ))?;
            self.decommission(&target, old).await?;
            self.wait_removed(&target, old, held.len()).await?;
        } else {
            say(format!(
                "the cluster lists node {} in no group: nothing to remove",
                node_hex(old)
            ))?;
        }

        let aside = move_aside(&data, &store_dir)?;
        let keypair = swarmkv_net::load_or_create_identity(&data)
            .map_err(|e| anyhow!("cannot create the new identity in {}: {e}", data.display()))?;
        let new_id = swarmkv::driver::node_id_of(&keypair.public().to_peer_id());
        drop(open_store(&store_dir).map_err(|e| {
            anyhow!(
                "cannot create the new store in {}: {e}",
                store_dir.display()
            )
        })?);
        let partitions = held.iter().filter(|g| **g != META_GROUP).count();
        say(format!(
            "repaired: node {} is out of the cluster; its {partitions} partition(s) are served \
             by their other replicas",
            node_hex(old)
        ))?;
        say(format!("damaged files kept in {}", aside.display()))?;
        say(format!(
            "new identity: node {} (peer {})",
            node_hex(new_id),
            keypair.public().to_peer_id()
        ))?;
        say(format!(
            "next: start the node as before (`swarmkv start --data {}` with the same cluster, \
             PSK and --join flags); it joins as a new node and receives its replicas from its peers",
            data.display()
        ))?;
        Ok(())
    }

    /// The damaged node's id: from its identity file, or `--node-id`.
    fn old_node_id(&self, data: &Path) -> Result<NodeId, CliError> {
        let key = data.join(IDENTITY_FILE);
        let from_file = if key.exists() {
            match swarmkv_net::load_or_create_identity(data) {
                Ok(k) => Some(swarmkv::driver::node_id_of(&k.public().to_peer_id())),
                Err(e) if self.node_id.is_some() => {
                    log::warn!("{e}; using --node-id");
                    None
                }
                Err(e) => {
                    return Err(CliError::Usage(format!(
                        "{e}: give the node's id with --node-id (`swarmkv status` of a live \
                         node lists the ids)"
                    )))
                }
            }
        } else {
            None
        };
        match (from_file, self.node_id) {
            (Some(f), Some(given)) if f != given => Err(CliError::Usage(format!(
                "--node-id {} but {} is the identity of node {}",
                node_hex(given),
                key.display(),
                node_hex(f)
            ))),
            (Some(id), _) | (None, Some(id)) => Ok(id),
            (None, None) => Err(CliError::Usage(format!(
                "no identity in {} ({} is missing): give the node's id with --node-id \
                 (`swarmkv status` of a live node lists the ids)",
                data.display(),
                key.display()
            ))),
        }
    }

    /// Refuses a store that is in use or opens cleanly (unless `--even-if-healthy`).
    fn check_damaged(&self, store_dir: &Path) -> Result<(), CliError> {
        if !store_dir.exists() {
            say(format!(
                "no store in {}: the node's data is gone",
                store_dir.display()
            ))?;
            return Ok(());
        }
        match open_store(store_dir) {
            Ok(store) => {
                drop(store);
                if self.even_if_healthy {
                    say(format!(
                        "the store in {} opens without error; replacing the node anyway \
                         (--even-if-healthy)",
                        store_dir.display()
                    ))?;
                    Ok(())
                } else {
                    Err(CliError::Rejected(format!(
                        "the store in {} opens without error: nothing to repair (start the \
                         node; --even-if-healthy replaces it anyway)",
                        store_dir.display()
                    )))
                }
            }
            Err(e) if e.is_damage() => {
                say(format!("damaged: {e}"))?;
                Ok(())
            }
            Err(e) => Err(CliError::Other(anyhow!(
                "cannot check the store in {}: {e} (is the node still running? stop it first)",
                store_dir.display()
            ))),
        }
    }

    /// The cluster's view once it no longer hears `old` (a node stopped just now is heard
    /// for a few seconds more); refuses if it still does after [`SILENCE_WAIT`].
    async fn wait_silent(&self, target: &Target, old: NodeId) -> Result<Membership, CliError> {
        let until = Instant::now() + SILENCE_WAIT;
        loop {
            let m = membership(target).await?;
            if !m.reachable.contains(&old) {
                return Ok(m);
            }
            if Instant::now() > until {
                return Err(CliError::Rejected(format!(
                    "the cluster still hears node {} after {} s: it is running somewhere; stop \
                     it before repairing it (nothing was changed)",
                    node_hex(old),
                    SILENCE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the cluster to drain `old`, retrying while it cannot now (no meta leader...).
    async fn decommission(&self, target: &Target, old: NodeId) -> Result<(), CliError> {
        let until = Instant::now() + Duration::from_secs(self.wait);
        loop {
            match target.decommission(old).await {
                Ok(()) => return Ok(()),
                Err(CliError::Unavailable(m)) if Instant::now() < until => {
                    log::info!("decommission not possible yet: {m}");
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until no group lists `old`, with a progress bar of the groups it left.
    async fn wait_removed(
        &self,
        target: &Target,
        old: NodeId,
        total: usize,
    ) -> Result<(), CliError> {
        let bar = progress(total as u64);
        let until = Instant::now() + Duration::from_secs(self.wait);
        let mut last: String;
        loop {
            match membership(target).await {
                Ok(m) => {
                    let left = m.groups_of(old).len();
                    let unknown = m.groups.iter().filter(|(_, v)| v.is_empty()).count();
                    if let Some(b) = &bar {
                        b.set_position(total.saturating_sub(left) as u64);
                    }
                    if left == 0 && unknown == 0 && !m.groups.is_empty() {
                        if let Some(b) = bar {
                            b.finish_and_clear();
                        }
                        say(format!(
                            "no group lists node {} any more ({} groups checked)",
                            node_hex(old),
                            m.groups.len()
                        ))?;
                        return Ok(());
                    }
                    last = format!(
                        "{left} group(s) still list it, {unknown} with unknown voters: {}",
                        m.groups_of(old)
                            .into_iter()
                            .map(group_name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > until {
                if let Some(b) = bar {
                    b.abandon();
                }
                let message = format!(
                    "node {} is not out of every group after {} s ({last}); the cluster goes \
                     on draining it. The local data was not touched: run the repair again to \
                     wait longer",
                    node_hex(old),
                    self.wait
                );
                if self.force {
                    log::warn!("{message}; going ahead (--force)");
                    return Ok(());
                }
                return Err(CliError::Unavailable(message));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The store opened as `swarmkv start` opens it (its lost-writes check included).
fn open_store(dir: &Path) -> Result<SledStore, StoreError> {
    Store::open(dir, StoreConfig::default())
}

/// Moves the damaged store, its durable mark and the old identity into a new
/// `DATA/damaged-<unix time>/` directory, and returns it.
fn move_aside(data: &Path, store_dir: &Path) -> Result<PathBuf, CliError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut aside = data.join(format!("damaged-{now}"));
    let mut n = 1;
    while aside.exists() {
        aside = data.join(format!("damaged-{now}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&aside)
        .with_context(|| format!("cannot create {}", aside.display()))?;
    let mark = mark_path(store_dir);
    for from in [store_dir.to_path_buf(), mark, data.join(IDENTITY_FILE)] {
        if from.exists() {
            let Some(name) = from.file_name() else {
                continue;
            };
            std::fs::rename(&from, aside.join(name)).with_context(|| {
                format!("cannot move {} into {}", from.display(), aside.display())
            })?;
        }
    }
    std::fs::File::open(data)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync {}", data.display()))?;
    Ok(aside)
}

/// A progress bar on stderr when it is a terminal.
fn progress(len: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "removing [{elapsed_precise}] {wide_bar} {pos}/{len} groups",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// The cluster's view from the node `target` talks to.
async fn membership(target: &Target) -> Result<Membership, CliError> {
    // A gateway gives the cluster view inside its status document.
    if target.client.endpoint().is_some() {
        let status = target.status().await?;
        return membership_of_json(&status.json).map_err(CliError::Other);
    }
    let view = target
        .client
        .cluster_view()
        .await
        .map_err(|e| CliError::from_client(e, format!("cluster view of {}", target.via)))?;
    Ok(Membership {
        groups: view
            .groups
            .iter()
            .map(|g| (g.group, g.voters.clone()))
            .collect(),
        reachable: view
            .nodes
            .iter()
            .filter(|n| n.reachable)
            .map(|n| n.id)
            .collect(),
        known: view.nodes.iter().map(|n| n.id).collect(),
    })
}

/// The [`Membership`] in a gateway's `GET /v1/status` body (its `cluster` part).
fn membership_of_json(status: &Value) -> anyhow::Result<Membership> {
    let cluster = status
        .get("cluster")
        .filter(|c| !c.is_null())
        .context("the node asked is not part of a cluster (its status has no cluster view)")?;
    let hex = |v: &Value| -> anyhow::Result<NodeId> {
        let text = v.as_str().context("a node id that is not a string")?;
        u64::from_str_radix(text, 16).with_context(|| format!("node id {text:?}"))
    };
    let ids = |v: &Value| -> anyhow::Result<Vec<NodeId>> {
        v.as_array()
            .map(|a| a.iter().map(hex).collect())
            .unwrap_or(Ok(Vec::new()))
    };
    let mut m = Membership::default();
    for n in cluster["nodes"].as_array().into_iter().flatten() {
        let id = hex(&n["id"])?;
        m.known.insert(id);
        if n["reachable"] == true {
            m.reachable.insert(id);
        }
    }
    if let Some(meta) = cluster.get("meta").filter(|v| !v.is_null()) {
        m.groups.push((META_GROUP, ids(&meta["voters"])?));
    }
    for p in cluster["partitions"].as_array().into_iter().flatten() {
        let partition = p["partition"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("a partition without its number")?;
        m.groups
            .push((group_of_partition(partition), ids(&p["voters"])?));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn membership(groups: &[(GroupId, &[NodeId])], reachable: &[NodeId]) -> Membership {
        Membership {
            groups: groups.iter().map(|(g, v)| (*g, v.to_vec())).collect(),
            reachable: reachable.iter().copied().collect(),
            known: groups.iter().flat_map(|(_, v)| v.iter().copied()).collect(),
        }
    }

    #[test]
    fn removal_needs_a_live_majority_of_every_group_of_the_node() {
        let g1 = group_of_partition(0);
        let g2 = group_of_partition(1);
        // Node 3 is down (being repaired); 1 and 2 live: every group keeps 2 of 3.
        let m = membership(
            &[(META_GROUP, &[1, 2, 3]), (g1, &[1, 2, 3]), (g2, &[1, 2, 4])],
            &[1, 2, 4],
        );
        assert!(m.majority_problems(3).is_empty());
        assert_eq!(m.groups_of(3), vec![META_GROUP, g1]);
        // Node 2 down as well: the groups with 3 and 2 have one live voter left of three.
        let m = membership(
            &[(META_GROUP, &[1, 2, 3]), (g1, &[1, 2, 3]), (g2, &[1, 2, 4])],
            &[1, 4],
        );
        let problems = m.majority_problems(3);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("the meta group"), "{problems:?}");
        assert!(problems[1].starts_with("partition 0"), "{problems:?}");
        // A group whose voters are unknown cannot be checked.
        let m = membership(&[(META_GROUP, &[1, 2, 3]), (g1, &[])], &[1, 2]);
        assert_eq!(m.majority_problems(3).len(), 1);
        // So is a view without the meta group.
        let m = membership(&[(g1, &[1, 2, 3])], &[1, 2]);
        assert_eq!(m.majority_problems(3).len(), 1);
    }

    #[test]
    fn the_gateways_status_gives_the_membership() -> anyhow::Result<()> {
        let status = json!({
            "cluster": {
                "nodes": [
                    {"id": node_hex(1), "reachable": true},
                    {"id": node_hex(2), "reachable": false},
                ],
                "meta": {"leader": node_hex(1), "voters": [node_hex(1), node_hex(2)]},
                "partitions": [
                    {"partition": 0, "voters": [node_hex(1), node_hex(2)]},
                    {"partition": 1, "voters": []},
                ],
            }
        });
        let m = membership_of_json(&status)?;
        assert_eq!(m.reachable, BTreeSet::from([1]));
        assert_eq!(m.known, BTreeSet::from([1, 2]));
        assert_eq!(
            m.groups,
            vec![
                (META_GROUP, vec![1, 2]),
                (group_of_partition(0), vec![1, 2]),
                (group_of_partition(1), vec![]),
            ]
        );
        assert!(membership_of_json(&json!({"cluster": null})).is_err());
        Ok(())
    }
}
