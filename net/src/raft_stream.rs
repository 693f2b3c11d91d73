//! Raft traffic on one long-lived stream per peer and direction.
//!
//! Raft frames are not request-response exchanges, which would cost a new yamux stream each
//! (its opening, the protocol proposal, its closing), an ack travelling back and a timer, each
//! a separate encrypted write on the socket: about six small writes per frame on each side,
//! and the next frame to a peer would wait for the ack. Instead each peer gets one outbound
//! stream, `/swarmkv/raft-stream/1`, on which length-prefixed `RaftFrame`s follow each other,
//! so a frame costs one write and ordering comes from the stream itself.
//!
//! - Outbound: [`spawn_link`] starts a task per peer that owns its stream (opened once the
//!   peer's reader confirms it with one byte, see `stream.rs`), writes the frames
//!   the Raft handler hands it one at a time and reports each as written (or failed) through
//!   the command channel; the Raft handler's [`crate::outbox::Outbox`] keeps coalescing what
//!   queues up meanwhile. A failed or stalled write drops the stream; the next frame opens a
//!   new one. "Written" means handed to the connection, not received: Raft resends what is
//!   lost, as it does for any lost message.
//! - Inbound: [`spawn_acceptor`] reads every peer's stream in a task of its own and hands
//!   each frame to the event loop, which holds it until the peer proves its cluster and then
//!   decodes it (`raft.rs`). A frame over the limit is reported and the stream is dropped
//!   without reading its body. A stream is read only as fast as the event loop takes its
//!   frames, which is the backpressure: yamux's window stops the writer.

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::codec::write_parts;
use crate::handle::Command;
use crate::protocol::{RAFT_STREAM_PROTOCOL, RAFT_STREAM_PROTOCOL_NAME};
use crate::stats::{CountedWriter, StreamCounters};
use crate::stream::{accept_each, open, read_frames, send_accept};

/// A frame for a link: its id (for the report) and its parts, written back to back.
pub(crate) type LinkFrame = (u64, Vec<Vec<u8>>);

/// Starts the writer task of `peer`; frames sent to the returned channel go out in order,
/// their writes counted into `counters`. The task ends when the channel is dropped or the
/// event loop is gone.
pub(crate) fn spawn_link(
    control: libp2p_stream::Control,
    peer: PeerId,
    commands: mpsc::WeakSender<Command>,
    timeout: Duration,
    counters: Arc<StreamCounters>,
) -> mpsc::UnboundedSender<LinkFrame> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(link(control, peer, rx, commands, timeout, counters));
    tx
}

async fn link(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut frames: mpsc::UnboundedReceiver<LinkFrame>,
    commands: mpsc::WeakSender<Command>,
    timeout: Duration,
    counters: Arc<StreamCounters>,
) {
    let mut stream: Option<CountedWriter<libp2p::Stream>> = None;
    while let Some((id, parts)) = frames.recv().await {
        let written = write(&mut control, &mut stream, peer, &parts, &counters);
        let result = match tokio::time::timeout(timeout, written).await {
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
    stream: &mut Option<CountedWriter<libp2p::Stream>>,
    peer: PeerId,
    parts: &[Vec<u8>],
    counters: &Arc<StreamCounters>,
) -> Result<(), String> {
    if stream.is_none() {
        let opened = open(control, peer, RAFT_STREAM_PROTOCOL).await?;
        *stream = Some(CountedWriter::new(opened, Arc::clone(counters)));
    }
    let Some(s) = stream.as_mut() else {
        return Err("no raft stream".to_string());
    };
    // The outbox already joined everything queued for the peer into this one frame; its
    // small parts are gathered with the length prefix into one write (one yamux frame).
    write_parts(s, parts).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    counters.frames_written(1);
    Ok(())
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
