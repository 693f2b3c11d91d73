//! `swarmkv put KEY VALUE`: writes one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;

use super::transport::{Need, TransportArgs};
use super::{say, CliError};

/// Write a key
///
/// Acknowledged once a quorum of the key's replicas has it on disk. Prints `rev N`, the
/// write's revision. With `--lease ID` the key is deleted when the lease expires or is
/// revoked (`swarmkv lease grant`).
#[derive(Args, Debug)]
pub struct Put {
    /// The key (the argument's bytes as given).
    pub key: OsString,
    /// The value (the argument's bytes as given).
    pub value: OsString,
    /// Attach the key to this lease (hex id, as `swarmkv lease grant` prints it).
    #[arg(long, value_name = "LEASE_ID", value_parser = super::lease::parse_id)]
    pub lease: Option<u64>,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Put {
    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Keys).await?;
        let (key, value) = (self.key.as_bytes(), self.value.as_bytes());
        let rev = match self.lease {
            Some(lease) => target.put_with_lease(key, value, lease).await?,
            None => target.put(key, value).await?,
        };
        say(format!("rev {rev}"))?;
        Ok(())
    }
}
