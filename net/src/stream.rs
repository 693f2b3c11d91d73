//! What the long-lived streams (`raft_stream.rs`, `kv_stream.rs`) have in common: opening a
//! stream a peer has taken, accepting the peers' streams, reading length-prefixed frames up to
//! a limit, and writing what queued for a stream in one write per turn.
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

use crate::codec::{push_frame, read_frame, OversizedFrame};
use crate::handle::Command;
use crate::stats::CountedWriter;
use crate::NetError;

/// How often opening a stream is tried for one frame before the frame is reported failed.
const OPEN_ATTEMPTS: usize = 3;
/// The byte a reader writes first, once it owns the stream.
const ACCEPTED: u8 = 1;
/// How many bytes of queued frames one turn of a writer joins at most: enough for hundreds
/// of small requests or answers, small enough that one large batch neither holds much memory
/// nor keeps the frames behind it waiting long. A frame larger than this goes alone.
const JOIN: usize = 256 << 10;

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

/// Writes `first` and the frames queued behind it in `rx`, each with its length prefix, as
/// one buffer with one `write_all` and one flush, and counts them. It takes no more frames
/// once the buffer holds [`JOIN`] bytes.
///
/// Each write on a yamux stream is a yamux frame, a noise message and a socket write of its
/// own, so joining the frames before writing turns N small frames into one of each (yamux
/// still splits what it sends at its 16 KiB frame size). What is left in `rx` waits for the
/// next turn. `buf` is kept by the caller between turns so a busy stream does not allocate.
pub(crate) async fn write_queued<W>(
    writer: &mut CountedWriter<W>,
    first: Vec<u8>,
    rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    buf: &mut Vec<u8>,
) -> io::Result<()>
where
    W: futures::AsyncWrite + Unpin,
{
    buf.clear();
    if buf.capacity() > 2 * JOIN {
        // Only a frame larger than JOIN grows it this far: do not keep that much per stream.
        buf.shrink_to(JOIN);
    }
    push_frame(buf, &first)?;
    let mut frames = 1;
    while buf.len() < JOIN {
        let Ok(next) = rx.try_recv() else {
            break;
        };
        push_frame(buf, &next)?;
        frames += 1;
    }
    writer.write_all(buf).await?;
    writer.flush().await?;
    writer.counters().frames_written(frames);
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::Counters;

    /// Reads back every frame of `wire`, one by one as a stream reader does.
    fn read_all(wire: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        futures::executor::block_on(async {
            let mut cursor = futures::io::Cursor::new(wire);
            let mut frames = Vec::new();
            while (cursor.position() as usize) < wire.len() {
                frames.push(read_frame(&mut cursor, JOIN).await?);
            }
            Ok(frames)
        })
    }

    #[test]
    fn queued_frames_leave_in_one_write_and_a_turn_stops_taking_more_at_the_bound() -> io::Result<()>
    {
        let counters = Counters::default();
        let mut wire = Vec::new();
        let mut writer = CountedWriter::new(
            futures::io::Cursor::new(&mut wire),
            Arc::clone(&counters.kv),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        let small: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        for frame in &small[1..] {
            let _ = tx.send(frame.clone());
        }
        let mut buf = Vec::new();
        futures::executor::block_on(write_queued(
            &mut writer,
            small[0].clone(),
            &mut rx,
            &mut buf,
        ))?;
        let stats = counters.snapshot().kv;
        assert_eq!((stats.frames, stats.writes), (100, 1));

        // Three frames of half the bound: the first two fill a turn, the third waits.
        let half = vec![7u8; JOIN / 2];
        for _ in 0..2 {
            let _ = tx.send(half.clone());
        }
        futures::executor::block_on(write_queued(&mut writer, half.clone(), &mut rx, &mut buf))?;
        assert_eq!(counters.snapshot().kv.frames, 102);
        assert_eq!(rx.try_recv().ok(), Some(half.clone()));
        drop(writer);

        let mut want = small;
        want.extend([half.clone(), half]);
        assert_eq!(read_all(&wire)?, want);
        Ok(())
    }
}
