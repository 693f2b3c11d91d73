//! The client's side of a backup: freezing a group and reading its chunks (in process and
//! over libp2p), or the whole file as the HTTP gateway streams it. The file is put together
//! by `crate::backup`.

use swarmkv_store::SnapshotDescriptor;

use super::http::backup::BackupStream;
use super::{not_over_http, Client, Transport};
use crate::core::{ClientError, GroupId, NodeId};
use crate::wire::{Answer, BackupReply, Call};

/// A group frozen for a backup: the node holding the frozen copy, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frozen {
    pub node: NodeId,
    pub descriptor: SnapshotDescriptor,
}

fn unexpected(reply: BackupReply) -> ClientError {
    ClientError::Disconnected(format!("unexpected backup answer {reply:?}"))
}

impl Client {
    /// Freezes `group` (0, the meta group, or a partition's group) on one of its replicas
    /// after a linearizable barrier: the frozen copy holds every write acknowledged before
    /// the call.
    pub async fn backup_freeze(&self, group: GroupId) -> Result<Frozen, ClientError> {
        match self
            .backup_call(Call::BackupFreeze { group, hops: 0 })
            .await?
        {
            BackupReply::Frozen { node, descriptor } => Ok(Frozen { node, descriptor }),
            other => Err(unexpected(other)),
        }
    }

    /// Chunk `seq` of the copy of `group` frozen at `index` on `node`, encoded (a
    /// `swarmkv_store::SnapshotChunk`).
    pub async fn backup_chunk(
        &self,
        node: NodeId,
        group: GroupId,
        index: u64,
        seq: u32,
    ) -> Result<Vec<u8>, ClientError> {
        let call = Call::BackupChunk {
            node,
            group,
            index,
            seq,
        };
        match self.backup_call(call).await? {
            BackupReply::Chunk(bytes) => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    /// Over HTTP: the whole backup file, as the gateway streams it.
    pub async fn backup_stream(&self) -> Result<BackupStream, ClientError> {
        match &self.transport {
            Transport::Http(h) => h.backup().await,
            _ => Err(ClientError::BadRequest(
                "a streamed backup file is the HTTP gateway's; in process and over libp2p the \
                 backup is put together from freezes and chunks"
                    .into(),
            )),
        }
    }

    async fn backup_call(&self, call: Call) -> Result<BackupReply, ClientError> {
        let reply = match (&self.transport, call) {
            (Transport::Local(h), Call::BackupFreeze { group, .. }) => h.backup_freeze(group).await,
            (
                Transport::Local(h),
                Call::BackupChunk {
                    node,
                    group,
                    index,
                    seq,
                },
            ) => h.backup_chunk(node, group, index, seq).await,
            (Transport::Remote { .. }, call) => match self.remote_call(call).await? {
                Answer::Backup(r) => r,
                Answer::Malformed(m) => return Err(ClientError::BadRequest(m)),
                other => return Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
            },
            (Transport::Http(_), _) => {
                return Err(not_over_http("backup freezes (GET /v1/backup)"))
            }
            (Transport::Local(_), other) => {
                return Err(ClientError::BadRequest(format!("not a freeze: {other:?}")))
            }
        };
        match reply {
            BackupReply::Unavailable(reason) => Err(ClientError::Unavailable { reason }),
            r => Ok(r),
        }
    }
}
