//! `swarmkv put KEY VALUE`: writes one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;

use super::transport::{Need, TransportArgs};
use super::{say, CliError};

/// Write a key
///
/// Acknowledged once a quorum of the key's replicas has it on disk. Prints `rev N`, the
/// write's revision.
#[derive(Args, Debug)]
pub struct Put {
    /// The key (the argument's bytes as given).
    pub key: OsString,
    /// The value (the argument's bytes as given).
    pub value: OsString,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Put {
    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Keys).await?;
        let rev = target
            .put(self.key.as_bytes(), self.value.as_bytes())
            .await?;
        say(format!("rev {rev}"))?;
        Ok(())
    }
}
