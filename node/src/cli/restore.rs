//! `swarmkv restore FILE --data DIR`: prepares a data directory to start a new cluster from a
//! backup (see `swarmkv::backup::restore` for what comes back and how).

use std::path::PathBuf;

use clap::Args;
use swarmkv::backup::restore::prepare;
use swarmkv::backup::BackupError;

use super::{node_hex, say, CliError};

/// Prepare a data directory to start a new cluster from a backup
///
/// Checks the whole backup first: a damaged, truncated or foreign file is refused with the
/// reason and exit status 4, and nothing is written. Then writes it into DIR (new or empty).
/// `swarmkv start --data DIR` then forms a NEW cluster (a new cluster id: it never merges
/// with the old one) of that node alone, its partitions and leases as in the backup; start the
/// other nodes with `--join` to that node and they receive their replicas from it.
#[derive(Args, Debug)]
pub struct Restore {
    /// The backup (written by `swarmkv backup`).
    pub file: PathBuf,
    /// The data directory to prepare (new or empty).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

impl Restore {
    pub fn run(self) -> Result<(), CliError> {
        let (manifest, summary) = prepare(&self.file, &self.data).map_err(|e| match e {
            e if e.is_bad_file() => CliError::Damaged(format!(
                "{} is refused, nothing was written: {e}",
                self.file.display()
            )),
            e @ BackupError::Target { .. } => CliError::Rejected(e.to_string()),
            e => CliError::Other(anyhow::anyhow!("{}: {e}", self.file.display())),
        })?;
        let records: u64 = summary.groups.iter().map(|g| g.records).sum();
        let (low, high) = summary
            .groups
            .iter()
            .skip(1)
            .fold((u64::MAX, 0), |(l, h), g| (l.min(g.index), h.max(g.index)));
        say(format!(
            "backup of cluster {} ({} partitions, {records} records, partition revisions {low}..{high}) prepared in {}",
            node_hex(manifest.cluster_id),
            manifest.partitions,
            self.data.display()
        ))?;
        say(format!(
            "next: swarmkv start --data {} (it forms a new cluster alone; start the other nodes with --join to it)",
            self.data.display()
        ))?;
        Ok(())
    }
}
