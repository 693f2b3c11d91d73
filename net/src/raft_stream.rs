//! Raft traffic on one long-lived stream per peer and direction.
//!
//! A request-response exchange per Raft frame costs a new yamux stream (its opening, the
//! protocol proposal, its closing), an ack travelling back and a timer, each a separate
//! encrypted write on the socket: about six small writes per frame on each side, and the
//! next frame to a peer waited for the ack. Here each peer gets one outbound stream,
//! `/swarmkv/raft-stream/1`, on which frames follow each other as the same length-prefixed
//! `RaftFrame`s, so a frame costs one write and ordering comes from the stream itself.
//!
//! - Outbound: [`spawn_link`] starts a task per peer that owns its stream (opened once the
//!   peer's reader confirms it with one byte, see [`open`]), writes the frames
//!   the event loop hands it one at a time and reports each as written (or failed) through
//!   the command channel; the event loop's [`crate::outbox::Outbox`] keeps coalescing what
//!   queues up meanwhile. A failed or stalled write drops the stream; the next frame opens a
//!   new one. "Written" means handed to the connection, not received: Raft resends what is
//!   lost, as it does for any lost message.
//! - Inbound: [`spawn_acceptor`] reads every peer's stream in a task of its own and hands
//!   each frame to the event loop, which treats it like a request-response frame (held until
//!   the peer proves its cluster, then decoded). A frame over the limit is reported and the
//!   stream is dropped without reading its body. A stream is read only as fast as the event
//!   loop takes its frames, which is the backpressure: yamux's window stops the writer.

use std::io;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

use crate::codec::{read_frame, write_parts, OversizedFrame};
use crate::handle::Command;

/// The protocol name of the long-lived Raft streams.
pub(crate) const RAFT_STREAM_PROTOCOL_NAME: &str = "/swarmkv/raft-stream/1";
/// The protocol of the long-lived Raft streams.
pub const RAFT_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new(RAFT_STREAM_PROTOCOL_NAME);

/// A frame for a link: its id (for the report) and its parts, written back to back.
pub(crate) type LinkFrame = (u64, Vec<Vec<u8>>);

/// Starts the writer task of `peer`; frames sent to the returned channel go out in order.
/// The task ends when the channel is dropped or the event loop is gone.
pub(crate) fn spawn_link(
    control: libp2p_stream::Control,
    peer: PeerId,
    commands: mpsc::WeakSender<Command>,
    timeout: Duration,
) -> mpsc::UnboundedSender<LinkFrame> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(link(control, peer, rx, commands, timeout));
    tx
}

async fn link(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut frames: mpsc::UnboundedReceiver<LinkFrame>,
    commands: mpsc::WeakSender<Command>,
    timeout: Duration,
) {
    let mut stream: Option<libp2p::Stream> = None;
    while let Some((id, parts)) = frames.recv().await {
        let result =
            match tokio::time::timeout(timeout, write(&mut control, &mut stream, peer, &parts))
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("raft stream write stalled for {timeout:?}")),
            };
        if result.is_err() {
            // A half-written frame cannot be continued: the next one starts a new stream.
            stream = None;
        }
        let Some(commands) = commands.upgrade() else {
            return;
        };
        if commands
            .send(Command::RaftWritten { peer, id, result })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn write(
    control: &mut libp2p_stream::Control,
    stream: &mut Option<libp2p::Stream>,
    peer: PeerId,
    parts: &[Vec<u8>],
) -> Result<(), String> {
    if stream.is_none() {
        *stream = Some(open(control, peer, RAFT_STREAM_PROTOCOL).await?);
    }
    let Some(s) = stream.as_mut() else {
        return Err("no raft stream".to_string());
    };
    // Small parts are gathered with the length prefix into one write (one yamux frame).
    write_parts(s, parts).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())
}

/// How often opening a stream is tried for one frame before the frame is reported failed.
const OPEN_ATTEMPTS: usize = 3;
/// The byte a reader writes first, once it owns the stream.
const ACCEPTED: u8 = 1;

/// Opens a `protocol` stream to `peer` and waits for its reader to take it. libp2p-stream
/// drops an inbound stream when its accept queue is full (two peers opening at the same
/// moment), and whatever was written to a dropped stream is lost without an error on our
/// side: the reader's first byte is the proof that frames written from now on will be read.
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

/// Writes `bytes` as they are on a new `protocol` stream to `peer`, closes its writing side
/// and returns what the peer writes back until it closes its side or `wait` passes (tests
/// only: a peer's view of garbage and oversized frames).
pub(crate) async fn send_raw(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    bytes: Vec<u8>,
    wait: Duration,
) -> Result<Vec<u8>, crate::NetError> {
    let failed = |e: String| crate::NetError::RequestFailed { peer, reason: e };
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

/// Accepts the peers' Raft streams and reads each in a task of its own, frames up to
/// `max_frame` bytes. Ends when the event loop is gone.
pub(crate) fn spawn_acceptor(
    control: libp2p_stream::Control,
    commands: mpsc::WeakSender<Command>,
    max_frame: usize,
) -> Result<(), crate::NetError> {
    accept_each(
        control,
        RAFT_STREAM_PROTOCOL,
        commands,
        move |peer, stream, commands| read_stream(peer, stream, commands, max_frame),
    )
}

/// Accepts every inbound `protocol` stream and runs `serve` on it in a task of its own, until
/// the event loop is gone.
pub(crate) fn accept_each<F, Fut>(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    commands: mpsc::WeakSender<Command>,
    serve: F,
) -> Result<(), crate::NetError>
where
    F: Fn(PeerId, libp2p::Stream, mpsc::WeakSender<Command>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut incoming = control
        .accept(protocol.clone())
        .map_err(|e| crate::NetError::Setup(format!("{protocol}: {e}")))?;
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

async fn read_stream(
    peer: PeerId,
    mut stream: libp2p::Stream,
    commands: mpsc::WeakSender<Command>,
    max_frame: usize,
) {
    if send_accept(&mut stream).await.is_err() {
        return;
    }
    let to_command = |frame| Command::RaftInbound { peer, frame };
    read_frames(
        stream,
        peer,
        RAFT_STREAM_PROTOCOL_NAME,
        max_frame,
        &commands,
        to_command,
    )
    .await;
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

/// Tells the opener of `stream` that its frames will be read (see [`open`]).
pub(crate) async fn send_accept(stream: &mut libp2p::Stream) -> io::Result<()> {
    stream.write_all(&[ACCEPTED]).await?;
    stream.flush().await
}

/// The size refusal inside a frame reader's error, if that is what it is.
pub(crate) fn oversized(e: &io::Error) -> Option<OversizedFrame> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<OversizedFrame>())
        .copied()
}
