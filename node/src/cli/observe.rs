//! `swarmkv observe NAME`: prints the leader of an election, then one line per change (a new
//! leader, a proclaimed value, no leader), until Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::elect::interrupted;
use super::elect_http::ElectHttp;
use super::leader::print_leader;
use super::transport::{Need, Target, TransportArgs};
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
        let watch = async {
            match target {
                Target::Peer { client, .. } => self.peer(Arc::new(client)).await,
                Target::Http(_) => self.http().await,
            }
        };
        tokio::select! {
            r = watch => r,
            s = interrupted() => s,
        }
    }

    async fn peer(&self, client: Arc<swarmkv::Client>) -> Result<(), CliError> {
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

    async fn http(&self) -> Result<(), CliError> {
        let http = ElectHttp::new(&self.transport);
        // None: nothing printed yet; Some(known): the last leader printed.
        let mut known: Option<Option<(u64, u64)>> = None;
        loop {
            match http.leader(&self.name, known).await {
                Ok(l) => {
                    let now = l.as_ref().map(|c| (c.token, c.revision));
                    if known != Some(now) {
                        print_leader(&self.name, l.as_ref(), self.json)?;
                        known = Some(now);
                    }
                }
                Err(e) => {
                    log::warn!("observe {}: {e}; retrying", self.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
