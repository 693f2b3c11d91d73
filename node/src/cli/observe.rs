//! `swarmkv observe NAME`: prints the leader of an election, then one line per change (a new
//! leader, a proclaimed value, no leader), until Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::elect::interrupted;
use super::leader::print_leader;
use super::transport::{Need, TransportArgs};
use super::CliError;

/// Print an election's leader and every change of it until Ctrl-C
#[derive(Args, Debug)]
pub struct Observe {
    /// The election.
    pub name: String,
    /// One JSON object per line: {"leader": ... or null}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Observe {
    pub async fn run(self) -> Result<(), CliError> {
        let target =
            tokio::time::timeout(Duration::from_secs(30), self.transport.connect(Need::Keys))
                .await
                .map_err(|_| CliError::Unavailable("no connection within 30 s".into()))??;
        tokio::select! {
            r = self.follow(target.client) => r,
            s = interrupted() => s,
        }
    }

    /// Prints the leader, then each change, retrying while the cluster does not answer.
    async fn follow(&self, client: Arc<swarmkv::Client>) -> Result<(), CliError> {
        let mut observer = client.observe(&self.name);
        loop {
            match observer.next().await {
                Ok(l) => print_leader(&self.name, l.as_ref(), self.json)?,
                Err(e) => {
                    log::warn!("observe {}: {e}; retrying", self.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
