//! `swarmkv scan PREFIX`: lists the keys that start with a prefix, in key order.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{say, show, ConnectArgs};

/// List the keys that start with a prefix
///
/// One "KEY<TAB>VALUE" line per key, in key order, read linearizably from every partition.
#[derive(Args, Debug)]
pub struct Scan {
    /// The prefix ("" for every key).
    pub prefix: OsString,
    /// At most this many keys (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl Scan {
    pub async fn run(self) -> Result<ExitCode> {
        let client = self.connect.client().await?;
        let records = client
            .scan_prefix(self.prefix.as_bytes(), self.limit)
            .await
            .with_context(|| format!("scan {:?}", self.prefix))?;
        for (key, record) in &records {
            say(format!("{}\t{}", show(key), show(&record.value)))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
