//! `swarmkv decommission NODE_ID`: drains a node out of the cluster.

use anyhow::anyhow;
use clap::Args;

use super::transport::{Need, TransportArgs};
use super::{node_hex, say, CliError};

/// Drain a node out of the cluster
///
/// Every replica moves off it, then it is marked decommissioned. Any node can be asked; it
/// passes the request to the cluster's coordinator.
#[derive(Args, Debug)]
pub struct Decommission {
    /// The node's id in hex, as `swarmkv start` and `swarmkv status` print it.
    #[arg(value_name = "NODE_ID_HEX", value_parser = parse_node_id)]
    pub node_id: u64,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Decommission {
    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Admin).await?;
        target.decommission(self.node_id).await?;
        say(format!(
            "decommissioning {}: its replicas are moving to other nodes (watch with `swarmkv status`)",
            node_hex(self.node_id)
        ))?;
        Ok(())
    }
}

/// A node id in hex, with or without `0x`.
pub(super) fn parse_node_id(text: &str) -> anyhow::Result<u64> {
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
    fn node_ids_parse_from_the_hex_the_cli_prints() -> anyhow::Result<()> {
        assert_eq!(parse_node_id(&node_hex(0xdead_beef))?, 0xdead_beef);
        assert_eq!(parse_node_id("0xff")?, 0xff);
        assert!(parse_node_id("xyz").is_err());
        assert!(parse_node_id("0").is_err());
        Ok(())
    }
}
