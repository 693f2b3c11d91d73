//! `swarmkv leader NAME`: the leader of an election: its fencing token and value, or exit 1
//! when the election has no leader.

use clap::Args;
use swarmkv::core::{lease_hex, Candidate};
use swarmkv::http::election::LeaderJson;

use super::transport::{Need, TransportArgs};
use super::{say, say_json, show, CliError};

/// Show the leader of an election (its fencing token and value)
#[derive(Args, Debug)]
pub struct Leader {
    /// The election.
    pub name: String,
    /// Print {"leader": {name, token, lease, value, value_b64, revision} or null}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// One leader on one line: `TOKEN VALUE` (or JSON).
pub(super) fn print_leader(name: &str, c: Option<&Candidate>, json: bool) -> Result<(), CliError> {
    if json {
        say_json(&LeaderJson {
            leader: c.map(Into::into),
        })?;
        return Ok(());
    }
    match c {
        Some(c) => say(format!("{} {}", lease_hex(c.token), show(&c.value)))?,
        None => say(format!("{name}: no leader"))?,
    }
    Ok(())
}

impl Leader {
    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Keys).await?;
        let leader = target
            .client
            .leader(&self.name)
            .await
            .map_err(|e| CliError::from_client(e, format!("leader {}", self.name)))?;
        match (&leader, self.json) {
            (None, false) => Err(CliError::NotFound(format!(
                "election {} has no leader",
                self.name
            ))),
            _ => print_leader(&self.name, leader.as_ref(), self.json),
        }
    }
}
