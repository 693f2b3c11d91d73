//! `swarmkv watch PREFIX [--from REV | --cursor C]`: prints the changes of every key that
//! starts with PREFIX (or of one key, with `--key`) as they happen, until Ctrl-C or `--count`.
//!
//! It runs the Rust client's watch over either transport (over HTTP the client reads the
//! gateway's server-sent events and resumes them when the connection breaks, so nothing is
//! lost or repeated). It ends by printing, on stderr, the cursor to resume from (`--cursor`),
//! and the order guarantee is the one of `swarmkv::client::Watch`: revision order per
//! partition, none across partitions.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use swarmkv::client::{Cursor, Watch, WatchError, WatchOptions, WatchTarget};
use swarmkv::http::watch::EventJson;
use swarmkv_store::EventKind;

use super::transport::{Need, TransportArgs};
use super::{say, show, CliError};

/// Print the changes of a prefix (or a key) as they happen
///
/// One line per change: `put KEY VALUE` or `delete KEY` (values as text if UTF-8, else 0x and
/// hex), or with --json one JSON object per line. Revisions are per partition: changes come
/// in revision order within a partition, in no defined order across partitions. Runs until
/// Ctrl-C (or --count changes), then prints on stderr the cursor to resume from with --cursor.
/// A start position whose events were compacted away exits 1: re-read, then watch from now.
#[derive(Args, Debug)]
pub struct WatchCmd {
    /// The prefix to watch ("" watches every key).
    pub prefix: OsString,
    /// Watch exactly this key instead of a prefix.
    #[arg(long)]
    pub key: bool,
    /// Start at this revision (inclusive) in every partition, instead of now.
    #[arg(long, value_name = "REV", conflicts_with = "cursor")]
    pub from: Option<u64>,
    /// Resume from a cursor an earlier watch printed (or an SSE event id).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
    /// Stop after this many changes.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line: {type, partition, revision, key, key_b64, value, value_b64,
    /// create_rev, version, lease, cursor} (key/value only when UTF-8).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// One change.
#[derive(Debug, Serialize)]
struct Line {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    event: EventJson,
    cursor: String,
    #[serde(skip)]
    key_bytes: Vec<u8>,
    #[serde(skip)]
    value_bytes: Vec<u8>,
}

impl Line {
    fn print(&self, json: bool) -> Result<(), CliError> {
        if json {
            say(serde_json::to_string(self).map_err(anyhow::Error::from)?)?;
        } else if self.kind == "delete" {
            say(format!("delete {}", show(&self.key_bytes)))?;
        } else {
            say(format!(
                "put {} {}",
                show(&self.key_bytes),
                show(&self.value_bytes)
            ))?;
        }
        Ok(())
    }
}

/// Prints the cursor to resume from, on stderr (stdout carries only changes).
fn resume_hint(cursor: &str) {
    eprintln!("resume with: --cursor '{cursor}'");
}

impl WatchCmd {
    fn target(&self) -> WatchTarget {
        let bytes = self.prefix.as_bytes().to_vec();
        if self.key {
            WatchTarget::Key(bytes)
        } else {
            WatchTarget::Prefix(bytes)
        }
    }

    fn start(&self) -> Result<Cursor, CliError> {
        match (&self.cursor, self.from) {
            (Some(c), _) => c
                .parse::<Cursor>()
                .map_err(|e| CliError::Usage(e.to_string())),
            (None, Some(rev)) => Ok(Cursor::from_revision(rev)),
            (None, None) => Ok(Cursor::now()),
        }
    }

    pub async fn run(self) -> Result<(), CliError> {
        if self.key && self.prefix.is_empty() {
            return Err(CliError::Usage("the key is empty".into()));
        }
        if self.count == Some(0) {
            return Ok(());
        }
        let from = self.start()?;
        let target = self.transport.connect(Need::Keys).await?;
        self.follow(target.client, &target.via, from).await
    }

    async fn follow(
        &self,
        client: Arc<swarmkv::Client>,
        via: &str,
        from: Cursor,
    ) -> Result<(), CliError> {
        let mut watch = Watch::start(vec![client], self.target(), from, WatchOptions::default())
            .await
            .map_err(|e| watch_error(e, via))?;
        let mut printed = 0;
        loop {
            let item = tokio::select! {
                item = watch.next() => item,
                _ = tokio::signal::ctrl_c() => {
                    resume_hint(&watch.cursor().to_string());
                    return Ok(());
                }
            };
            let e = match item {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    resume_hint(&watch.cursor().to_string());
                    return Err(watch_error(e, via));
                }
                None => return Ok(()),
            };
            let line = Line {
                kind: match e.event.kind {
                    EventKind::Put => "put",
                    EventKind::Delete => "delete",
                },
                event: EventJson::new(&e),
                cursor: watch.cursor().to_string(),
                key_bytes: e.event.key.clone(),
                value_bytes: e.event.value.clone(),
            };
            line.print(self.json)?;
            printed += 1;
            if self.count.is_some_and(|n| printed >= n) {
                resume_hint(&line.cursor);
                return Ok(());
            }
        }
    }
}

fn watch_error(e: WatchError, via: &str) -> CliError {
    let message = format!("watch via {via}: {e}");
    match e {
        WatchError::Compacted { .. } | WatchError::Gateway(_) => CliError::Rejected(message),
        WatchError::Unavailable { .. } | WatchError::Unreachable { .. } => {
            CliError::Unavailable(message)
        }
        WatchError::BadRequest(_) => CliError::Usage(message),
    }
}
