//! `GET /v1/backup`: the backup file as the gateway streams it.

use std::time::Instant;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Method;

use super::{Answer, Asked, HttpTransport};
use crate::core::ClientError;

/// The body of a backup being received.
pub struct BackupStream {
    body: Incoming,
}

impl BackupStream {
    /// The next piece of the file; `None` at its end. A body that breaks off is
    /// `Disconnected` (the file is then incomplete, which its reader also finds).
    pub async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => {
                    return Some(Err(ClientError::Disconnected(format!(
                        "the backup stream broke off: {e}"
                    ))))
                }
            }
        }
    }
}

impl HttpTransport {
    /// Opens `GET /v1/backup` on the first gateway that serves it; gateways that cannot be
    /// reached or answer that they did nothing (503) are left for the next, as for any call,
    /// until `retry_for` has passed.
    pub(crate) async fn backup(&self) -> Result<BackupStream, ClientError> {
        let until = Instant::now() + self.retry_for;
        let mut pause = std::time::Duration::from_millis(100);
        let mut left_this_round = self.endpoints.len();
        loop {
            let endpoint = self.endpoint().clone();
            let request = self
                .request_to(&endpoint, Method::GET, "/v1/backup")
                .body(Full::new(Bytes::new()))
                .map_err(|e| ClientError::BadRequest(format!("cannot make the request: {e}")))?;
            let error = match self.client.request(request).await {
                Err(e) => super::send_error(&endpoint, &e),
                Ok(response) if response.status().is_success() => {
                    return Ok(BackupStream {
                        body: response.into_body(),
                    })
                }
                Ok(response) => {
                    let answer = Answer::collect(response).await;
                    if !answer.did_nothing() {
                        return Err(answer.error(&Asked::default()));
                    }
                    answer.error(&Asked::default())
                }
            };
            if !matches!(
                error,
                ClientError::Unavailable { .. } | ClientError::NotLeader { .. }
            ) {
                return Err(error);
            }
            self.move_on(&endpoint);
            left_this_round = left_this_round.saturating_sub(1);
            if left_this_round > 0 {
                continue;
            }
            left_this_round = self.endpoints.len();
            if Instant::now() + pause > until {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(1));
        }
    }
}
