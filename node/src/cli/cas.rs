//! `swarmkv cas KEY NEW_VALUE (--expect-mod-rev N | --expect-value V | --expect-absent)`:
//! compare-and-swap on one key.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;

use super::transport::{CasOutcome, Expect, Need, TransportArgs};
use super::{say, show, CliError};

/// Write a key only if it is as expected
///
/// Exactly one expectation. When it holds, the new value is written atomically and `rev N`
/// printed (exit 0); when it does not, nothing is written and the key's current state is
/// reported (exit 1): read it, decide, and try again.
#[derive(Args, Debug)]
#[group(id = "expectation", required = true, multiple = false)]
pub struct Cas {
    /// The key.
    pub key: OsString,
    /// The value to write.
    pub new_value: OsString,
    /// The key was last modified at this revision (`mod_rev` of `get --json`).
    #[arg(long, value_name = "N", group = "expectation")]
    pub expect_mod_rev: Option<u64>,
    /// The key holds exactly this value.
    #[arg(long, value_name = "V", group = "expectation")]
    pub expect_value: Option<OsString>,
    /// The key does not exist (create it only if nobody has).
    #[arg(long, group = "expectation")]
    pub expect_absent: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Cas {
    /// The one expectation clap let through.
    fn expect(&self) -> Result<Expect, CliError> {
        match (self.expect_mod_rev, &self.expect_value, self.expect_absent) {
            (Some(rev), None, false) => Ok(Expect::ModRev(rev)),
            (None, Some(v), false) => Ok(Expect::Value(v.as_bytes().to_vec())),
            (None, None, true) => Ok(Expect::Absent),
            _ => Err(CliError::Usage(
                "give exactly one of --expect-mod-rev, --expect-value, --expect-absent".into(),
            )),
        }
    }

    pub async fn run(self) -> Result<(), CliError> {
        let expect = self.expect()?;
        let target = self.transport.connect(Need::Keys).await?;
        let key = self.key.as_bytes();
        match target.cas(key, &expect, self.new_value.as_bytes()).await? {
            CasOutcome::Swapped { rev } => {
                say(format!("rev {rev}"))?;
                Ok(())
            }
            CasOutcome::Failed { current: None } => {
                Err(CliError::CasFailed(format!("key {} is absent", show(key))))
            }
            CasOutcome::Failed {
                current: Some(record),
            } => Err(CliError::CasFailed(format!(
                "key {} is at {}",
                show(key),
                record.describe()
            ))),
        }
    }
}
