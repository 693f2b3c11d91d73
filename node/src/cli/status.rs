//! `swarmkv status`: what one node says about itself, its cluster and its replicas.

use std::fmt::Write as _;

use clap::Args;
use swarmkv::core::{partition_of_group, META_GROUP};
use swarmkv::http::status::StatusJson;
use swarmkv::wire::StatusReport;

use super::transport::{Need, TransportArgs};
use super::{node_hex, say, say_json, CliError};

/// Show a node's status
///
/// Its cluster, its state, whether it coordinates the cluster (meta leader), the peers it
/// hears from and one row per local replica. Works on a node that has not formed or joined a
/// cluster yet.
#[derive(Args, Debug)]
pub struct Status {
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Print the report as JSON, for scripts: the body of GET /v1/status over HTTP (ids as
    /// hex strings), the node's report as it is with --peer (ids as numbers).
    #[arg(long)]
    pub json: bool,
}

impl Status {
    pub async fn run(self) -> Result<(), CliError> {
        // The admin connection works on a node that is not in a cluster yet: that is
        // exactly when an operator wants to know what it sees.
        let target = self.transport.connect(Need::Admin).await?;
        let view = target.status().await?;
        if self.json {
            say_json(&view.json)?;
        } else {
            say(render(&view.report).trim_end())?;
        }
        Ok(())
    }
}

/// The report for a person: a summary, then one row per local replica.
fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(out, "node         {} ({})", node_hex(r.node), r.peer);
    match (r.cluster_id, r.partitions) {
        (Some(id), Some(p)) => {
            let _ = writeln!(out, "cluster      {} ({p} partitions)", node_hex(id));
        }
        (Some(id), None) => {
            let _ = writeln!(out, "cluster      {}", node_hex(id));
        }
        (None, _) => {
            let _ = writeln!(out, "cluster      none yet (discovering peers)");
        }
    }
    // The same judgement as the gateway's `state`, whichever transport brought the report.
    let _ = writeln!(out, "state        {}", StatusJson::new(r).state);
    let _ = writeln!(
        out,
        "meta leader  {}",
        if r.meta_leader {
            "yes (this node coordinates the cluster)"
        } else {
            "no"
        }
    );
    let mut peers: Vec<String> = r.peers.iter().map(|p| node_hex(*p)).collect();
    peers.sort();
    let _ = writeln!(out, "peers        {} heard from", peers.len());
    for p in &peers {
        let _ = writeln!(out, "             {p}");
    }
    if let Some(e) = &r.storage_error {
        let _ = writeln!(
            out,
            "storage      FAILED: {e} (refusing every request; retrying)"
        );
    }
    for (peer, name, id) in &r.foreign {
        let id = id.map_or_else(|| "unformed".to_string(), node_hex);
        let _ = writeln!(
            out,
            "foreign      {peer} (cluster {name:?}, id {id}): refused"
        );
    }
    let leading = r.groups.iter().filter(|g| g.role == "Leader").count();
    let _ = writeln!(
        out,
        "replicas     {} local, leading {leading}",
        r.groups.len()
    );
    if !r.groups.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<8} {:<13} {:<17} {:>6} {:>6} {:>8} {:>8}",
            "GROUP", "ROLE", "LEADER", "VOTERS", "TERM", "COMMIT", "APPLIED"
        );
        let mut groups = r.groups.clone();
        groups.sort_by_key(|g| g.group);
        for g in &groups {
            let name = if g.group == META_GROUP {
                "meta".to_string()
            } else {
                partition_of_group(g.group).map_or_else(|| g.group.to_string(), |p| format!("p{p}"))
            };
            let leader = g.leader.map_or_else(|| "-".to_string(), node_hex);
            let _ = writeln!(
                out,
                "{name:<8} {:<13} {leader:<17} {:>6} {:>6} {:>8} {:>8}",
                g.role,
                g.voters.len(),
                g.term,
                g.commit,
                g.applied
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmkv::wire::GroupReport;

    #[test]
    fn a_report_renders_its_cluster_groups_and_peers() {
        let report = StatusReport {
            node: 0xabc,
            peer: "12D3KooWtest".into(),
            cluster_id: Some(0x5f),
            partitions: Some(16),
            meta_leader: true,
            groups: vec![
                GroupReport {
                    group: 3,
                    role: "Follower".into(),
                    term: 2,
                    leader: Some(0xdef),
                    voters: vec![0xabc, 0xdef, 0x123],
                    commit: 10,
                    applied: 10,
                },
                GroupReport {
                    group: META_GROUP,
                    role: "Leader".into(),
                    term: 1,
                    leader: Some(0xabc),
                    voters: vec![0xabc],
                    commit: 7,
                    applied: 7,
                },
            ],
            peers: vec![0xdef],
            foreign: vec![],
            storage_error: None,
        };
        let text = render(&report);
        assert!(
            text.contains("cluster      000000000000005f (16 partitions)"),
            "{text}"
        );
        assert!(text.contains("meta leader  yes"), "{text}");
        assert!(text.contains("state        ready"), "{text}");
        assert!(text.contains("0000000000000def"), "{text}");
        let meta = text.find("\nmeta ").unwrap_or(usize::MAX);
        let p2 = text.find("\np2 ").unwrap_or(usize::MAX);
        assert!(
            meta < p2 && p2 != usize::MAX,
            "rows sorted by group:\n{text}"
        );
    }
}
