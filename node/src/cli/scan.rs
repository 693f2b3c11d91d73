//! `swarmkv scan [--prefix P | --start S --end E] [--limit N] [--print-cursor]`: lists keys in
//! key order; with `--print-cursor`, also the watch cursor right after the read, on stderr.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;

use clap::Args;

use super::transport::{KeyRange, Need, Record, TransportArgs};
use super::{say, say_json, show, CliError};

/// List keys in order
///
/// The keys that start with --prefix, or those in [--start, --end), or every key; read
/// linearizably from every partition. One "KEY<TAB>VALUE" line per key (as text if UTF-8,
/// else 0x and hex), or with --json an array of records. With --print-cursor, stderr says
/// `watch with: --cursor 'CURSOR'`, the cursor to give `swarmkv watch --cursor`: it sees every later change once and
/// none the scan printed.
#[derive(Args, Debug)]
pub struct Scan {
    /// Only keys that start with these bytes.
    #[arg(long, conflicts_with_all = ["start", "end"])]
    pub prefix: Option<OsString>,
    /// The first key (included).
    #[arg(long)]
    pub start: Option<OsString>,
    /// The key to stop before (excluded).
    #[arg(long)]
    pub end: Option<OsString>,
    /// At most this many keys (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Print a JSON array of records, as `get --json` prints one.
    #[arg(long)]
    pub json: bool,
    /// Read each partition in one piece (over HTTP: one request, at most 10 000 keys) and
    /// print on stderr the watch cursor right after the read.
    #[arg(long)]
    pub print_cursor: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl Scan {
    fn range(&self) -> KeyRange {
        match &self.prefix {
            Some(prefix) => KeyRange {
                start: prefix.as_bytes().to_vec(),
                end: swarmkv_store::keys::prefix_end(prefix.as_bytes()),
            },
            None => KeyRange {
                start: self
                    .start
                    .as_ref()
                    .map(|s| s.as_bytes().to_vec())
                    .unwrap_or_default(),
                end: self.end.as_ref().map(|e| e.as_bytes().to_vec()),
            },
        }
    }

    pub async fn run(self) -> Result<(), CliError> {
        let target = self.transport.connect(Need::Keys).await?;
        let records = if self.print_cursor {
            let (records, more, cursor) =
                target.scan_with_cursor(&self.range(), self.limit).await?;
            if more {
                eprintln!(
                    "warning: the scan stopped after {} keys; the keys after the last one \
                     were not read",
                    records.len()
                );
            }
            eprintln!("watch with: --cursor '{cursor}'");
            records
        } else {
            target.scan(&self.range(), self.limit).await?
        };
        if self.json {
            let json: Vec<_> = records.iter().map(Record::json).collect();
            say_json(&json)?;
        } else {
            for r in &records {
                say(format!("{}\t{}", show(&r.key), show(&r.value)))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    fn range_of(args: &[&str]) -> anyhow::Result<KeyRange> {
        match parse(args, &[])?.command {
            Command::Scan(scan) => Ok(scan.range()),
            other => anyhow::bail!("parsed as {other:?}"),
        }
    }

    #[test]
    fn a_prefix_becomes_the_range_of_its_keys() -> anyhow::Result<()> {
        assert_eq!(
            range_of(&["scan", "--prefix", "user/"])?,
            KeyRange {
                start: b"user/".to_vec(),
                end: Some(b"user0".to_vec())
            }
        );
        assert_eq!(
            range_of(&["scan", "--start", "b"])?,
            KeyRange {
                start: b"b".to_vec(),
                end: None
            }
        );
        assert_eq!(range_of(&["scan"])?, KeyRange::default());
        Ok(())
    }
}
