//! `swarmkv get KEY`: reads one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;

use super::transport::{Need, TransportArgs};
use super::{say, say_json, show, CliError};

/// Read a key
///
/// Prints its value (as text if it is UTF-8, else as 0x and hex), or with --json the whole
/// record. A missing key prints nothing on stdout and exits 1, so a script can tell "absent"
/// from "empty".
#[derive(Args, Debug)]
pub struct Get {
    /// The key.
    pub key: OsString,
    /// Answer from the nearest replica without confirming leadership: faster, may be stale.
    #[arg(long)]
    pub serializable: bool,
    /// Print the record as JSON: {key, key_b64, value, value_b64, create_rev, mod_rev,
    /// version}, the value exact in value_b64 (value only when it is UTF-8).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Get {
    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Keys).await?;
        let key = self.key.as_bytes();
        match target.get(key, self.serializable).await? {
            Some(record) if self.json => say_json(&record.json())?,
            Some(record) => say(show(&record.value))?,
            None => return Err(CliError::NotFound(format!("key {} not found", show(key)))),
        }
        Ok(())
    }
}
