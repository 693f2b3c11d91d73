//! `swarmkv decommission NODE_ID`: drains a node out of the cluster.

use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::Args;

use super::{node_hex, say, ConnectArgs};

/// Drain a node out of the cluster
///
/// Every replica moves off it, then it is marked decommissioned.
#[derive(Args, Debug)]
pub struct Decommission {
    /// The node's id in hex, as `swarmkv start` and `swarmkv status` print it.
    #[arg(value_parser = parse_node_id)]
    pub node_id: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl Decommission {
    pub async fn run(self) -> Result<ExitCode> {
        let client = self.connect.admin().await?;
        client
            .decommission(self.node_id)
            .await
            .with_context(|| format!("decommission {}", node_hex(self.node_id)))?;
        say(format!(
            "decommissioning {}: its replicas are moving to other nodes (watch with `swarmkv status`)",
            node_hex(self.node_id)
        ))?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A node id in hex, with or without `0x`.
fn parse_node_id(text: &str) -> Result<u64> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    let id = u64::from_str_radix(digits, 16)
        .map_err(|e| anyhow!("{text:?} is not a node id in hex: {e}"))?;
    if id == 0 {
        return Err(anyhow!("0 is not a node id"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_parse_from_the_hex_the_cli_prints() -> Result<()> {
        assert_eq!(parse_node_id(&node_hex(0xdead_beef))?, 0xdead_beef);
        assert_eq!(parse_node_id("0xff")?, 0xff);
        assert!(parse_node_id("xyz").is_err());
        assert!(parse_node_id("0").is_err());
        Ok(())
    }
}
