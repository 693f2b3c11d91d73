//! What the long-lived streams (`raft_stream.rs`, `kv_stream.rs`) have in common: opening a
//! stream a peer has taken, accepting the peers' streams, and reading length-prefixed frames
//! up to a limit.
//!
//! libp2p-stream drops an inbound stream when its accept queue is full (two peers opening at
//! the same moment), and whatever was written to a dropped stream is lost without an error on
//! the writer's side. So the reader of a stream writes one byte first ([`send_accept`]), and
//! the opener ([`open`]) writes nothing before it has read that byte.

use std::io;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

use crate::codec::{read_frame, OversizedFrame};
use crate::handle::Command;
use crate::NetError;

/// How often opening a stream is tried for one frame before the frame is reported failed.
const OPEN_ATTEMPTS: usize = 3;
/// The byte a reader writes first, once it owns the stream.
const ACCEPTED: u8 = 1;

/// Opens a `protocol` stream to `peer` and waits for its reader to take it.
pub(crate) async fn open(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
) -> Result<libp2p::Stream, String> {
    let mut last = String::new();
    for _ in 0..OPEN_ATTEMPTS {
        let mut s = match control.open_stream(peer, protocol.clone()).await {
            Ok(s) => s,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut first = [0u8; 1];
        match s.read_exact(&mut first).await {
            Ok(()) if first[0] == ACCEPTED => return Ok(s),
            Ok(()) => {
                last = format!(
                    "{protocol} stream answered {:#x}, not its accept byte",
                    first[0]
                )
            }
            Err(e) => last = format!("{protocol} stream not taken by {peer}: {e}"),
        }
    }
    Err(last)
}

/// Tells the opener of `stream` that its frames will be read (see [`open`]).
pub(crate) async fn send_accept(stream: &mut libp2p::Stream) -> io::Result<()> {
    stream.write_all(&[ACCEPTED]).await?;
    stream.flush().await
}

/// Accepts every inbound `protocol` stream and runs `serve` on it in a task of its own, until
/// the event loop is gone.
pub(crate) fn accept_each<F, Fut>(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    commands: mpsc::WeakSender<Command>,
    serve: F,
) -> Result<(), NetError>
where
    F: Fn(PeerId, libp2p::Stream, mpsc::WeakSender<Command>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut incoming = control
        .accept(protocol.clone())
        .map_err(|e| NetError::Setup(format!("{protocol}: {e}")))?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            if commands.upgrade().is_none() {
                return;
            }
            tokio::spawn(serve(peer, stream, commands.clone()));
        }
    });
    Ok(())
}

/// Reads length-prefixed frames until the stream ends (the peer opens another when it has
/// more to send) and hands each to the event loop as `to_command` makes it. A length over
/// `max_frame` is reported as refused and ends the reading: the stream's position is lost,
/// and dropping it resets it.
pub(crate) async fn read_frames<R>(
    mut reader: R,
    peer: PeerId,
    protocol: &'static str,
    max_frame: usize,
    commands: &mpsc::WeakSender<Command>,
    mut to_command: impl FnMut(Vec<u8>) -> Command,
) where
    R: futures::AsyncRead + Unpin + Send,
{
    loop {
        let (command, last) = match read_frame(&mut reader, max_frame).await {
            Ok(frame) => (to_command(frame), false),
            Err(e) => match oversized(&e) {
                Some(o) => {
                    let reason = o.to_string();
                    (
                        Command::StreamFrameRefused {
                            peer,
                            protocol,
                            reason,
                        },
                        true,
                    )
                }
                None => return,
            },
        };
        let Some(commands) = commands.upgrade() else {
            return;
        };
        if commands.send(command).await.is_err() || last {
            return;
        }
    }
}

/// The size refusal inside a frame reader's error, if that is what it is.
fn oversized(e: &io::Error) -> Option<OversizedFrame> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<OversizedFrame>())
        .copied()
}

/// Writes `bytes` as they are on a new `protocol` stream to `peer`, closes its writing side
/// and returns what the peer writes back until it closes its side or `wait` passes (tests
/// only: a peer's view of garbage and oversized frames).
pub(crate) async fn send_raw(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    bytes: Vec<u8>,
    wait: Duration,
) -> Result<Vec<u8>, NetError> {
    let failed = |e: String| NetError::RequestFailed { peer, reason: e };
    let mut s = open(&mut control, peer, protocol).await.map_err(failed)?;
    s.write_all(&bytes)
        .await
        .map_err(|e| failed(e.to_string()))?;
    s.close().await.map_err(|e| failed(e.to_string()))?;
    let mut back = Vec::new();
    // A reset or the deadline ends the answer as well as a close does.
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut back)).await;
    Ok(back)
}
