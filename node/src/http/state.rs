//! What every handler shares: the client, which may not exist yet.
//!
//! A [`Client`] needs the cluster's partition count to route keys, so it can only be made
//! once the node is part of a cluster. A node started with `swarmkv start` may wait a while
//! for peers (the discovery window, `--expect N`), and during that time its gateway must
//! still answer: `/healthz` 200, `/readyz` and `/v1/status` from the node itself, and key
//! requests with a clear 503. So the state holds the client in a slot that a background
//! task fills when the node joins a cluster.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::core::ClientError;
use crate::driver::NodeHandle;
use crate::wire::StatusReport;
use crate::Client;

use super::error::ApiError;
use super::ErrorCode;

/// The gateway's shared state.
pub struct Gateway {
    client: Arc<OnceLock<Arc<Client>>>,
    /// The node, when the gateway was made for one: it answers status before the client
    /// exists.
    node: Option<NodeHandle>,
    /// The task making the client; stopped with the gateway.
    connecting: Option<JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = &self.connecting {
            task.abort();
        }
    }
}

impl Gateway {
    /// A gateway on a ready client.
    pub fn new(client: Arc<Client>) -> Gateway {
        Gateway {
            client: Arc::new(OnceLock::from(client)),
            node: None,
            connecting: None,
        }
    }

    /// A gateway for `node`, serving key requests once the node is part of a cluster. The
    /// client it then makes uses `deadline` for each request. Must be called inside a tokio
    /// runtime (it spawns the task that waits).
    pub fn for_node(node: NodeHandle, deadline: Duration) -> Gateway {
        let slot = Arc::new(OnceLock::new());
        let connecting = tokio::spawn(connect(node.clone(), deadline, slot.clone()));
        Gateway {
            client: slot,
            node: Some(node),
            connecting: Some(connecting),
        }
    }

    /// The node this gateway serves: the one it was made for, or the one its in-process
    /// client runs on.
    pub fn node(&self) -> Option<&NodeHandle> {
        self.node
            .as_ref()
            .or_else(|| self.client.get().and_then(|c| c.local_node()))
    }

    /// The client, or 503 while the node is not part of a cluster yet.
    pub fn client(&self) -> Result<&Arc<Client>, ApiError> {
        self.client.get().ok_or_else(not_in_cluster)
    }

    /// The serving node's status report.
    pub async fn report(&self) -> Result<StatusReport, ApiError> {
        if let Some(client) = self.client.get() {
            return Ok(client.status().await?);
        }
        match &self.node {
            Some(node) => node
                .report()
                .await
                .map_err(|e| ClientError::Disconnected(e.to_string()).into()),
            None => Err(not_in_cluster()),
        }
    }
}

fn not_in_cluster() -> ApiError {
    ApiError::new(
        ErrorCode::UNAVAILABLE,
        "the node is not part of a cluster yet; nothing was done",
    )
}

/// Makes the client once the node is part of a cluster. [`Client::in_process`] itself waits
/// a while for that and then gives up with `Unavailable`: ask again until the node answers
/// something else (stopped: then the gateway stays in its 503 state, and the process is
/// ending anyway).
async fn connect(node: NodeHandle, deadline: Duration, slot: Arc<OnceLock<Arc<Client>>>) {
    loop {
        match Client::in_process(node.clone()).await {
            Ok(client) => {
                let _ = slot.set(Arc::new(client.with_deadline(deadline)));
                return;
            }
            Err(ClientError::Unavailable { .. }) => continue,
            Err(e) => {
                log::warn!("the HTTP gateway cannot serve keys: {e}");
                return;
            }
        }
    }
}
