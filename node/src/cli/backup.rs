//! `swarmkv backup FILE`: a backup of the whole cluster, written to FILE.
//!
//! Over HTTP (the default) the gateway streams the file (`GET /v1/backup`); with `--peer` this
//! process puts it together itself from the node it dials (freezes and chunks over libp2p).
//! Either way the bytes go to `FILE.part` as they arrive and are read back by the format's
//! reader on the way, so every checksum, the order and the counts are checked before the file
//! is synced and renamed to FILE: a FILE that exists is a whole, checked backup. Memory stays
//! at about one section.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use clap::Args;
use hyper::body::Bytes;
use swarmkv::backup::{take::take, BackupError, BackupReader, Item, Manifest, Summary};
use tokio::sync::mpsc;

use super::transport::{Need, TransportArgs};
use super::{node_hex, say, CliError};

/// Save a backup of the whole cluster to FILE
///
/// Every partition and the meta group's leases, elections and locks, each group copied at one
/// applied index of its own that includes every write acknowledged before the backup reached
/// it (there is no single point in time across partitions). Written to FILE.part, checked,
/// synced, then renamed to FILE. Restore it with `swarmkv restore FILE --data DIR`.
#[derive(Args, Debug)]
pub struct Backup {
    /// Where to write the backup.
    pub file: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// A `Read` over the pieces of the file as they arrive, writing each to the `.part` file as
/// it is handed to the reader.
struct Tee {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    buf: Bytes,
    out: File,
    bytes: u64,
}

impl Read for Tee {
    fn read(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    self.out.write_all(&b)?;
                    self.bytes += b.len() as u64;
                    self.buf = b;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = into.len().min(self.buf.len());
        into[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

impl Backup {
    pub async fn run(self) -> Result<(), CliError> {
        if self.file.exists() && !self.force {
            return Err(CliError::Usage(format!(
                "{} exists (--force replaces it)",
                self.file.display()
            )));
        }
        let part = part_path(&self.file);
        let out = File::create(&part)
            .map_err(|e| CliError::Rejected(format!("cannot create {}: {e}", part.display())))?;
        let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(8);
        let source = self.source(tx).await;
        if let Err(e) = source {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        let tee = Tee {
            rx,
            buf: Bytes::new(),
            out,
            bytes: 0,
        };
        let written = tokio::task::spawn_blocking(move || receive(tee))
            .await
            .map_err(|e| CliError::Other(anyhow::anyhow!("the backup writer failed: {e}")));
        let (manifest, summary, bytes) = match written {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&part);
                return Err(match e {
                    BackupError::Io(io) => CliError::Unavailable(format!(
                        "the backup broke off: {io}; nothing was written to {}",
                        self.file.display()
                    )),
                    e => CliError::Other(anyhow::anyhow!(
                        "the backup received is not valid: {e}; nothing was written to {}",
                        self.file.display()
                    )),
                });
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        finish(&part, &self.file).map_err(|e| {
            CliError::Rejected(format!("cannot write {}: {e}", self.file.display()))
        })?;
        let records: u64 = summary.groups.iter().map(|g| g.records).sum();
        say(format!(
            "backup of cluster {} written to {}: {} partitions and the meta group, {records} records, {bytes} bytes",
            node_hex(manifest.cluster_id),
            self.file.display(),
            manifest.partitions
        ))?;
        Ok(())
    }

    /// Starts sending the file's pieces to `tx`: the gateway's stream, or a backup this
    /// process takes over libp2p.
    async fn source(&self, tx: mpsc::Sender<Result<Bytes, String>>) -> Result<(), CliError> {
        let doing = "backup";
        if self.transport.peer.is_empty() {
            let client = self.transport.http_client()?;
            let mut stream = client
                .backup_stream()
                .await
                .map_err(|e| CliError::from_client(e, doing))?;
            tokio::spawn(async move {
                while let Some(piece) = stream.next().await {
                    let failed = piece.is_err();
                    if tx.send(piece.map_err(|e| e.to_string())).await.is_err() || failed {
                        break;
                    }
                }
            });
            return Ok(());
        }
        let target = self.transport.connect(Need::Keys).await?;
        let client = target.client.clone();
        tokio::spawn(async move {
            let (inner_tx, mut inner_rx) = mpsc::channel::<Bytes>(4);
            let forward = {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(b) = inner_rx.recv().await {
                        if tx.send(Ok(b)).await.is_err() {
                            break;
                        }
                    }
                })
            };
            let outcome = take(&client, inner_tx).await;
            let _ = forward.await;
            if let Err(e) = outcome {
                let _ = tx.send(Err(e.to_string())).await;
            }
        });
        Ok(())
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Reads the file as it arrives (writing it to the `.part` file), checking it whole, with a
/// progress bar on a terminal.
fn receive(tee: Tee) -> Result<(Manifest, Summary, u64), BackupError> {
    let mut reader = BackupReader::open(tee)?;
    let mut bar = None;
    let mut summary = None;
    let mut groups_done = 0u64;
    while let Some(item) = reader.next_item()? {
        match item {
            Item::Manifest(m) => bar = progress(u64::from(m.partitions) + 1),
            Item::Group(h) => {
                if let Some(b) = &bar {
                    b.set_position(groups_done);
                    b.set_message(format!("group {} at index {}", h.group, h.index));
                }
                groups_done += 1;
            }
            Item::Records(_) => {
                if let Some(b) = &bar {
                    b.set_message(format!("{} bytes", reader.offset()));
                }
            }
            Item::Summary(s) => summary = Some(s),
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let manifest = reader.manifest().cloned();
    let bytes = reader.offset();
    match (manifest, summary) {
        (Some(m), Some(s)) => Ok((m, s, bytes)),
        _ => Err(BackupError::Truncated {
            offset: bytes,
            what: "the file".into(),
        }),
    }
}

/// Syncs the `.part` file and renames it to `file` (then syncs the directory).
fn finish(part: &Path, file: &Path) -> std::io::Result<()> {
    File::open(part)?.sync_all()?;
    std::fs::rename(part, file)?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(dir)?.sync_all()
}

/// A progress bar on stderr when it is a terminal.
fn progress(groups: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(groups);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "backup [{elapsed_precise}] {wide_bar} {pos}/{len} groups, {msg}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}
