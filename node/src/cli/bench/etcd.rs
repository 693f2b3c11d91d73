//! The etcd driver of `swarmkv bench` (cargo feature `etcd`): the same workload against an
//! etcd cluster, so that one binary measures both systems and the comparison does not depend
//! on two clients being written alike.
//!
//! It does what `../shared/bench/etcd-baseline/bench` does: one `etcd_client::Client` (one
//! gRPC / HTTP-2 channel) per bench client, `Put` without lease or prev_kv, `Range` by
//! default (linearizable: ReadIndex through the leader) or with `serializable`, and the
//! preload as transactions of puts.

use std::time::Duration;

use anyhow::{Context as _, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};

/// How long one etcd request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One bench client's channel to one etcd member. Cloning shares the channel.
#[derive(Clone)]
pub struct EtcdConn {
    kv: KvClient,
}

impl EtcdConn {
    /// Connects to the member at `endpoint` (`http://HOST:PORT`).
    pub async fn connect(endpoint: &str) -> Result<EtcdConn> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let client = Client::connect([endpoint], Some(options))
            .await
            .with_context(|| format!("cannot connect to etcd at {endpoint}"))?;
        Ok(EtcdConn {
            kv: client.kv_client(),
        })
    }

    /// `Put` (no lease, no prev_kv).
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.kv.put(key, value, None).await?;
        Ok(())
    }

    /// `Range` of one key, linearizable unless `serializable`; whether the key exists.
    pub async fn get(&mut self, key: &[u8], serializable: bool) -> Result<bool> {
        let options = serializable.then(|| GetOptions::new().with_serializable());
        let response = self.kv.get(key, options).await?;
        Ok(!response.kvs().is_empty())
    }

    /// The transaction of the `txn` op: if `a`'s version is not the largest number (always),
    /// put `value` at `a` and at `b`.
    pub async fn txn_pair(&mut self, a: &[u8], b: &[u8], value: &[u8]) -> Result<()> {
        let when = Compare::version(a.to_vec(), CompareOp::NotEqual, i64::MAX);
        let then = [
            TxnOp::put(a.to_vec(), value.to_vec(), None),
            TxnOp::put(b.to_vec(), value.to_vec(), None),
        ];
        let r = self.kv.txn(Txn::new().when([when]).and_then(then)).await?;
        anyhow::ensure!(
            r.succeeded(),
            "a transaction whose compare always holds failed"
        );
        Ok(())
    }

    /// One transaction putting every `(key, value)` of `batch` (etcd allows 128 operations
    /// per transaction by default; the preload uses 100).
    pub async fn put_txn(&mut self, batch: Vec<([u8; 16], Vec<u8>)>) -> Result<()> {
        let ops: Vec<TxnOp> = batch
            .into_iter()
            .map(|(key, value)| TxnOp::put(key.to_vec(), value, None))
            .collect();
        self.kv.txn(Txn::new().and_then(ops)).await?;
        Ok(())
    }
}
