//! One bench client's connection, whichever system it measures: a swarmkv node over libp2p
//! (`--peer`, the binary protocol: the fast path), a swarmkv node's HTTP gateway
//! (`--endpoint`), or an etcd member (`--etcd`, with the `etcd` feature).
//!
//! Each bench client gets its own connection, as the workload asks ("its own connection"):
//! over libp2p its own [`Client`] (a throwaway identity with its own swarm and one connection
//! to its node), over HTTP its own keep-alive HTTP/1.1 client (one request outstanding, so one
//! TCP connection), for etcd its own gRPC channel. The preload borrows these connections.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use swarmkv::core::Consistency;
use swarmkv::Client;
use swarmkv_net::{Multiaddr, PreSharedKey};
use swarmkv_store::{CompareOp, CompareTarget, Txn, TxnCompare, TxnOp};

use swarmkv::client::{Endpoint, HttpOptions, Routing};

use crate::cli::CliError;

#[cfg(feature = "etcd")]
use super::etcd::EtcdConn;

/// Where the bench clients connect: the endpoints of one system, client `i` to `i mod n`.
#[derive(Clone, Debug)]
pub enum Targets {
    Peer {
        addrs: Vec<Multiaddr>,
        cluster: String,
        psk: Option<PreSharedKey>,
        routing: Routing,
    },
    Http(Vec<Endpoint>),
    #[cfg(feature = "etcd")]
    Etcd(Vec<String>),
}

impl Targets {
    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        match self {
            Targets::Peer { addrs, .. } => addrs.len(),
            Targets::Http(e) => e.len(),
            #[cfg(feature = "etcd")]
            Targets::Etcd(e) => e.len(),
        }
    }

    /// The system's name in the report.
    pub fn system(&self) -> &'static str {
        match self {
            Targets::Peer { .. } => "swarmkv-peer",
            Targets::Http(_) => "swarmkv-http",
            #[cfg(feature = "etcd")]
            Targets::Etcd(_) => "etcd",
        }
    }

    /// How the swarmkv libp2p clients route requests, as the report names it (`None` for the
    /// other systems: the HTTP gateway routes by itself).
    pub fn routing(&self) -> Option<&'static str> {
        match self {
            Targets::Peer {
                routing: Routing::Leader,
                ..
            } => Some("leader"),
            Targets::Peer {
                routing: Routing::OneNode,
                ..
            } => Some("one-node"),
            _ => None,
        }
    }

    /// Endpoint `i mod n`, as text (for error messages).
    pub fn describe(&self, i: usize) -> String {
        match self {
            Targets::Peer { addrs, .. } => addrs[i % addrs.len()].to_string(),
            Targets::Http(e) => e[i % e.len()].to_string(),
            #[cfg(feature = "etcd")]
            Targets::Etcd(e) => e[i % e.len()].clone(),
        }
    }

    /// A new connection for client `i`, to endpoint `i mod n`.
    pub async fn connect(&self, i: usize) -> Result<Conn> {
        let conn = match self {
            Targets::Peer {
                addrs,
                cluster,
                psk,
                routing,
            } => {
                let addr = addrs[i % addrs.len()].clone();
                let client = Client::connect(addr, cluster, *psk)
                    .await
                    .map_err(|e| anyhow!("{e}"))?
                    .with_routing(*routing);
                Conn::Swarmkv(Arc::new(client))
            }
            // Each request is sent once: a 503 counts as the error it is, not as the latency
            // of a wait for the cluster.
            Targets::Http(e) => Conn::Swarmkv(Arc::new(Client::http(
                e[i % e.len()].clone(),
                HttpOptions {
                    retry_for: std::time::Duration::ZERO,
                    ..HttpOptions::default()
                },
            ))),
            #[cfg(feature = "etcd")]
            Targets::Etcd(e) => Conn::Etcd(Box::new(EtcdConn::connect(&e[i % e.len()]).await?)),
        };
        Ok(conn)
    }
}

/// A connection of one bench client.
pub enum Conn {
    /// A swarmkv client, over libp2p or HTTP.
    Swarmkv(Arc<Client>),
    /// Boxed: a gRPC client is much larger than the other variants' pointers.
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdConn>),
}

impl Conn {
    /// Another handle on the same connection (for a preload loader).
    pub fn share(&self) -> Conn {
        match self {
            Conn::Swarmkv(c) => Conn::Swarmkv(c.clone()),
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => Conn::Etcd(c.clone()),
        }
    }

    /// An unconditional overwrite of `key`. A swarmkv error is a [`CliError`] inside, so
    /// that [`exit_error`] can tell "unavailable" from other failures.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Conn::Swarmkv(c) => c
                .put(key, value)
                .await
                .map(drop)
                .map_err(|e| anyhow!(CliError::from_client(e, "put"))),
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => c.put(key, value).await,
        }
    }

    /// A read of `key`; whether it exists.
    pub async fn get(&mut self, key: &[u8], serializable: bool) -> Result<bool> {
        match self {
            Conn::Swarmkv(c) => {
                let consistency = if serializable {
                    Consistency::Serializable
                } else {
                    Consistency::Linearizable
                };
                c.get_with(key, consistency)
                    .await
                    .map(|r| r.is_some())
                    .map_err(|e| anyhow!(CliError::from_client(e, "get")))
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => c.get(key, serializable).await,
        }
    }

    /// One transaction: if `a`'s version is not the largest number (always), put `value` at
    /// `a` and at `b` (two keys of one hash tag, so one swarmkv partition).
    pub async fn txn_pair(&mut self, a: &[u8], b: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Conn::Swarmkv(c) => {
                let put = |key: &[u8]| TxnOp::Put {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    lease: 0,
                };
                let txn = Txn {
                    compares: vec![TxnCompare {
                        key: a.to_vec(),
                        target: CompareTarget::Version(u64::MAX),
                        op: CompareOp::NotEqual,
                    }],
                    success: vec![put(a), put(b)],
                    failure: vec![],
                };
                match c.txn(txn).await {
                    Ok(r) if r.succeeded => Ok(()),
                    Ok(_) => Err(anyhow!("a transaction whose compare always holds failed")),
                    Err(e) => Err(anyhow!(CliError::from_client(e, "txn"))),
                }
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(c) => c.txn_pair(a, b, value).await,
        }
    }

    /// Writes every `(key, value)` of `batch`: one etcd transaction, or one put after another
    /// for swarmkv (whose keys of one batch lie in different partitions; it has no
    /// multi-partition transaction).
    pub async fn put_batch(&mut self, batch: Vec<([u8; 16], Vec<u8>)>) -> Result<()> {
        #[cfg(feature = "etcd")]
        if let Conn::Etcd(c) = self {
            return c.put_txn(batch).await;
        }
        for (key, value) in batch {
            self.put(&key, &value).await?;
        }
        Ok(())
    }
}

/// The CLI error for a failed phase: "unavailable" (exit 3) when the first swarmkv error in
/// the chain says so, else a failure (exit 1); the message keeps the whole chain.
pub fn exit_error(e: anyhow::Error) -> CliError {
    let unavailable = e
        .chain()
        .find_map(|c| c.downcast_ref::<CliError>())
        .is_some_and(|c| matches!(c, CliError::Unavailable(_)));
    if unavailable {
        CliError::Unavailable(format!("{e:#}"))
    } else {
        CliError::Other(e)
    }
}
