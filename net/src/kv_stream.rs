//! Client requests on one long-lived stream per peer, answered on the same stream.
//!
//! Like the Raft traffic (`raft_stream.rs`), client requests do not pay a new yamux stream, a
//! protocol proposal, a closing handshake and a timer each: a requester keeps one
//! `/swarmkv/kv-stream/1` stream per peer and tags each request with an id; the peer answers
//! each request with its id, in any order, on the same stream. This is how a light client
//! talks to a node and how a node forwards a request to another.
//!
//! - Requester: [`spawn_link`] opens the stream (after the reader's accept byte, see
//!   `stream.rs`) and runs a writer and a reader task. Answers come back to the event
//!   loop as [`Command::KvAnswer`]; a broken stream as [`Command::KvLinkBroken`], which fails
//!   every request still waiting on it (the kv handler, `kv.rs`, keeps them and their
//!   deadlines).
//! - Server: [`spawn_acceptor`] reads each peer's requests and hands them to the event loop as
//!   [`Command::KvStreamRequest`], with the sender of the stream's writer task; the
//!   [`crate::KvResponder`] writes the answer through it without going through the event loop.
//!   An undecodable request is refused and skipped, an oversized one drops the stream.
//!
//! On both sides one writer task owns the stream's writing half, and each turn it writes
//! everything queued for it as one buffer (`stream::write_queued`): a burst of N requests or
//! answers leaves in one write, not N.

use std::sync::Arc;
use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use tokio::sync::mpsc;

use crate::codec::read_frame;
use crate::handle::Command;
use crate::protocol::{
    decode, encode, KvStreamAnswer, KvStreamRequest, KV_STREAM_PROTOCOL, KV_STREAM_PROTOCOL_NAME,
};
use crate::stats::{CountedWriter, StreamCounters};
use crate::stream::{accept_each, open, read_frames, send_accept, write_queued};

/// The requester's side of one peer's kv stream, as the kv handler (`kv.rs`) holds it.
#[derive(Debug)]
pub(crate) struct KvLink {
    /// Encoded requests for the writer task.
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Which link this is (a broken link's report names it, so a newer link is not failed).
    pub generation: u64,
}

/// Starts the writer and reader tasks of a kv link to `peer`; its writes count into
/// `counters`.
pub(crate) fn spawn_link(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    generation: u64,
    commands: mpsc::WeakSender<Command>,
    max_frame: usize,
    open_timeout: Duration,
    counters: Arc<StreamCounters>,
) -> KvLink {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let opened =
            tokio::time::timeout(open_timeout, open(&mut control, peer, KV_STREAM_PROTOCOL))
                .await
                .unwrap_or_else(|_| Err(format!("no kv stream to {peer} within {open_timeout:?}")));
        let stream = match opened {
            Ok(s) => s,
            Err(reason) => {
                broken(&commands, peer, generation, reason, false).await;
                return;
            }
        };
        let (reader, writer) = stream.split();
        tokio::spawn(read_answers(
            reader,
            peer,
            generation,
            commands.clone(),
            max_frame,
        ));
        let mut writer = CountedWriter::new(writer, counters);
        let mut buf = Vec::new();
        while let Some(frame) = rx.recv().await {
            if let Err(e) = write_queued(&mut writer, frame, &mut rx, &mut buf).await {
                broken(&commands, peer, generation, e.to_string(), true).await;
                return;
            }
        }
        // The event loop dropped the link: close our half so the peer's reader ends.
        let _ = writer.close().await;
    });
    KvLink { tx, generation }
}

async fn broken(
    commands: &mpsc::WeakSender<Command>,
    peer: PeerId,
    generation: u64,
    reason: String,
    opened: bool,
) {
    if let Some(commands) = commands.upgrade() {
        let _ = commands
            .send(Command::KvLinkBroken {
                peer,
                generation,
                reason,
                opened,
            })
            .await;
    }
}

async fn read_answers(
    mut reader: ReadHalf<libp2p::Stream>,
    peer: PeerId,
    generation: u64,
    commands: mpsc::WeakSender<Command>,
    max_frame: usize,
) {
    loop {
        let reason = match read_frame(&mut reader, max_frame).await {
            Ok(frame) => match decode::<KvStreamAnswer>(&frame) {
                Ok(KvStreamAnswer::V1 { id, result }) => {
                    let Some(commands) = commands.upgrade() else {
                        return;
                    };
                    if commands
                        .send(Command::KvAnswer { peer, id, result })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                // Which request it answers is unknown: the link cannot be trusted any more.
                Err(reason) => format!("undecodable answer: {reason}"),
            },
            Err(e) => e.to_string(),
        };
        broken(&commands, peer, generation, reason, true).await;
        return;
    }
}

/// Accepts the peers' kv streams and serves each in tasks of its own, requests up to
/// `max_frame` bytes, answers counted into `counters`. Ends when the event loop is gone.
pub(crate) fn spawn_acceptor(
    control: libp2p_stream::Control,
    commands: mpsc::WeakSender<Command>,
    max_frame: usize,
    counters: Arc<StreamCounters>,
) -> Result<(), crate::NetError> {
    accept_each(
        control,
        KV_STREAM_PROTOCOL,
        commands,
        move |peer, stream, commands| {
            serve_stream(peer, stream, commands, max_frame, Arc::clone(&counters))
        },
    )
}

async fn serve_stream(
    peer: PeerId,
    mut stream: libp2p::Stream,
    commands: mpsc::WeakSender<Command>,
    max_frame: usize,
    counters: Arc<StreamCounters>,
) {
    if send_accept(&mut stream).await.is_err() {
        return;
    }
    let (reader, writer) = stream.split();
    let (answers, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(write_answers(CountedWriter::new(writer, counters), rx));
    // An undecodable request is refused and skipped: its length kept the stream in step.
    let to_command = |frame: Vec<u8>| match decode::<KvStreamRequest>(&frame) {
        Ok(KvStreamRequest::V1 { id, payload }) => Command::KvStreamRequest {
            peer,
            id,
            payload,
            answers: answers.clone(),
        },
        Err(reason) => Command::StreamFrameRefused {
            peer,
            protocol: KV_STREAM_PROTOCOL_NAME,
            reason,
        },
    };
    read_frames(
        reader,
        peer,
        KV_STREAM_PROTOCOL_NAME,
        max_frame,
        &commands,
        to_command,
    )
    .await;
}

async fn write_answers(
    mut writer: CountedWriter<WriteHalf<libp2p::Stream>>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut buf = Vec::new();
    while let Some(frame) = rx.recv().await {
        if write_queued(&mut writer, frame, &mut rx, &mut buf)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Encodes a request for a kv link.
pub(crate) fn encode_request(id: u64, payload: Vec<u8>) -> Result<Vec<u8>, crate::NetError> {
    Ok(encode(&KvStreamRequest::V1 { id, payload })?)
}

/// Encodes an answer for a kv stream's writer.
pub(crate) fn encode_answer(
    id: u64,
    result: Result<Vec<u8>, String>,
) -> Result<Vec<u8>, crate::NetError> {
    Ok(encode(&KvStreamAnswer::V1 { id, result })?)
}
