//! A node's HTTP gateway served in-process on a free loopback port, for the tests that speak
//! HTTP to it (or run the CLI against it); stopped when dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use serde_json::Value;
use swarmkv::http::HttpError;
use swarmkv::{Client, NodeHandle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http::{request, Reply};

pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), HttpError>>,
}

impl Gateway {
    /// The gateway in front of `client` (`swarmkv::http::serve_on`).
    pub async fn for_client(client: Client) -> Result<Gateway> {
        Gateway::serve(|listener, stop| swarmkv::http::serve_on(listener, Arc::new(client), stop))
            .await
    }

    /// The gateway of a node that may not be in a cluster yet, as `swarmkv start` serves it
    /// (`swarmkv::http::serve_node`).
    pub async fn for_node(node: NodeHandle) -> Result<Gateway> {
        Gateway::serve(|listener, stop| swarmkv::http::serve_node(listener, node, stop)).await
    }

    async fn serve<F, Fut>(serve: F) -> Result<Gateway>
    where
        F: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = Result<(), HttpError>> + Send + 'static,
    {
        let listener = swarmkv::http::bind(([127, 0, 0, 1], 0).into()).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        ));
        Ok(Gateway {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The gateway's URL, as the CLI's `--endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn call(&self, method: &str, target: &str, body: &[u8]) -> Result<Reply> {
        request(self.addr, method, target, body).await
    }

    pub async fn get(&self, target: &str) -> Result<Reply> {
        self.call("GET", target, b"").await
    }

    pub async fn put(&self, target: &str, body: &[u8]) -> Result<Reply> {
        self.call("PUT", target, body).await
    }

    pub async fn cas(&self, key_path: &str, body: Value) -> Result<Reply> {
        let target = format!("/v1/kv/{key_path}/cas");
        self.call("POST", &target, body.to_string().as_bytes())
            .await
    }

    /// Stops accepting and waits for the server to return.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}
