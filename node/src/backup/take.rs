//! Taking a backup through a [`Client`] (in process on a node, or over libp2p): the groups
//! one after another, each frozen on a replica after a linearizable barrier, its chunks read
//! one at a time and handed on as file sections through a bounded channel, so memory stays
//! at about one chunk whatever the cluster's size.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Bytes;
use swarmkv_store::SnapshotChunk;
use tokio::sync::mpsc;

use super::format::{BackupError, Encoder, GroupHeader, Manifest, Summary};
use crate::core::{ClientError, GroupId};
use crate::Client;

/// How long a group may stay unfreezable (no leader, no reachable replica) before the backup
/// gives up.
const FREEZE_PATIENCE: Duration = Duration::from_secs(30);
/// Tries to read one chunk before the backup gives up on it.
const CHUNK_TRIES: u32 = 3;
/// The largest chunk accepted from a node (a chunk is about 1 MiB).
const MAX_CHUNK: usize = 32 << 20;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes a backup of the cluster `client` reaches, sending the file's bytes to `out` as they
/// are made. Returns the summary (also the file's last section). A failure part way leaves
/// `out` with an incomplete file, which any reader refuses.
pub async fn take(client: &Client, out: mpsc::Sender<Bytes>) -> Result<Summary, BackupError> {
    let send = |bytes: Vec<u8>| {
        let out = out.clone();
        async move {
            out.send(Bytes::from(bytes))
                .await
                .map_err(|_| BackupError::Io(std::io::ErrorKind::BrokenPipe.into()))
        }
    };
    let report = client.status().await?;
    let (Some(cluster_id), Some(partitions)) = (report.cluster_id, report.partitions) else {
        return Err(ClientError::Unavailable {
            reason: "the node is not part of a cluster yet".into(),
        }
        .into());
    };
    let (mut enc, header) = Encoder::new();
    send(header).await?;
    let manifest = Manifest {
        cluster_id,
        partitions,
        started_unix_ms: unix_ms(),
        swarmkv: crate::VERSION.to_string(),
    };
    send(enc.manifest(&manifest)?).await?;
    let mut groups = Vec::with_capacity(partitions as usize + 1);
    for group in 0..=u64::from(partitions) {
        let frozen = freeze(client, group).await?;
        let d = &frozen.descriptor;
        let header = GroupHeader {
            group,
            index: d.index,
            term: d.term,
            chunks: d.chunks,
            records: d.records,
            node: frozen.node,
        };
        send(enc.group(&header)?).await?;
        for seq in 0..d.chunks {
            let bytes = chunk(client, frozen.node, group, d.index, seq).await?;
            let c = SnapshotChunk::decode(&bytes, MAX_CHUNK)?;
            if c.group != group || c.index != d.index || c.seq != seq || c.total != d.chunks {
                return Err(ClientError::Disconnected(format!(
                    "group {group}: node {:x} sent chunk {} of {} at index {} for chunk {seq} of {} at index {}",
                    frozen.node, c.seq, c.total, c.index, d.chunks, d.index
                ))
                .into());
            }
            send(enc.records(&c.records)?).await?;
        }
        log::debug!(
            "backup: group {group} at index {} ({} records) from node {:x}",
            d.index,
            d.records,
            frozen.node
        );
        groups.push(header);
    }
    let summary = Summary {
        finished_unix_ms: unix_ms(),
        groups,
    };
    send(enc.finish(&summary)?).await?;
    Ok(summary)
}

/// Freezes `group`, retrying while the cluster says nothing was done (an election, a replica
/// out of reach).
async fn freeze(client: &Client, group: GroupId) -> Result<crate::client::Frozen, BackupError> {
    let until = Instant::now() + FREEZE_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match client.backup_freeze(group).await {
            Ok(f) => return Ok(f),
            Err(e)
                if (e.is_retryable() || e == ClientError::Timeout)
                    && Instant::now() + pause < until =>
            {
                log::debug!("backup: group {group} not frozen yet: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn chunk(
    client: &Client,
    node: crate::core::NodeId,
    group: GroupId,
    index: u64,
    seq: u32,
) -> Result<Vec<u8>, BackupError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match client.backup_chunk(node, group, index, seq).await {
            Ok(b) => return Ok(b),
            Err(e) if tries < CHUNK_TRIES && e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                return Err(ClientError::Unavailable {
                    reason: format!(
                        "group {group}: chunk {seq} of the copy frozen at index {index} on node {node:x} \
                         could not be read ({e}); it may have been replaced by a newer freeze: run the \
                         backup again"
                    ),
                }
                .into())
            }
        }
    }
}
