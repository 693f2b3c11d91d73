//! Length-prefixed, size-bounded frames: the request-response codec (snapshots, hello) and the
//! frame reader and writers of the long-lived streams.
//!
//! A frame is bytes only: a big-endian `u32` length, then that many bytes. The reader refuses a
//! length above its limit *before* allocating, so a peer cannot make us buffer more than the
//! configured frame size. Decoding the postcard envelope happens in the protocol's handler,
//! which refuses an undecodable frame with a typed reason instead of resetting the stream.
//!
//! An oversized *request* is not an I/O error but a [`Frame::Oversized`] value: libp2p's
//! request-response only logs a failed `read_request` and never tells the application, so the
//! refusal travels up as a request and its handler reports it and answers with an error.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::StreamProtocol;

/// An inbound request as the codec read it.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A frame within the limit (not decoded yet).
    Data(Vec<u8>),
    /// A frame announcing more bytes than the limit; its body was not read.
    Oversized(OversizedFrame),
}

impl Frame {
    /// The bytes of a frame, or why they were not read.
    pub(crate) fn into_bytes(self) -> Result<Vec<u8>, OversizedFrame> {
        match self {
            Frame::Data(bytes) => Ok(bytes),
            Frame::Oversized(o) => Err(o),
        }
    }
}

/// Frame codec with separate limits for requests and responses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameCodec {
    max_request: usize,
    max_response: usize,
}

impl FrameCodec {
    pub(crate) fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
        }
    }
}

/// The error a reader returns for a frame above the limit; recognised by the handlers.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("frame of {size} bytes exceeds the {limit}-byte limit")]
pub(crate) struct OversizedFrame {
    pub size: usize,
    pub limit: usize,
}

pub(crate) async fn read_frame<T>(io: &mut T, limit: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let size = u32::from_be_bytes(len) as usize;
    if size > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            OversizedFrame { size, limit },
        ));
    }
    let mut buf = vec![0u8; size];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The length prefix of a frame of `size` bytes.
fn frame_len(size: usize) -> io::Result<[u8; 4]> {
    u32::try_from(size)
        .map(u32::to_be_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than 4 GiB"))
}

/// Appends `frame` to `buf` with its length prefix, so frames joined in one buffer are still
/// read one by one.
pub(crate) fn push_frame(buf: &mut Vec<u8>, frame: &[u8]) -> io::Result<()> {
    buf.extend_from_slice(&frame_len(frame.len())?);
    buf.extend_from_slice(frame);
    Ok(())
}

/// Writes one frame; a small one goes out with its length prefix in one write.
pub(crate) async fn write_frame<T>(io: &mut T, frame: &[u8]) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    write_parts(io, &[frame]).await
}

/// Parts at least this large are written as they are; smaller ones are gathered into writes
/// of about this size, since every write becomes a yamux frame and a noise message.
const GATHER: usize = 64 << 10;

/// Writes one frame whose body is `parts` back to back: small parts are gathered with the
/// length prefix into as few writes as they fill, large ones are written without a copy.
pub(crate) async fn write_parts<T, P>(io: &mut T, parts: &[P]) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    P: AsRef<[u8]>,
{
    let total: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let mut buf = Vec::with_capacity(GATHER.min(total + 4));
    buf.extend_from_slice(&frame_len(total)?);
    for part in parts {
        let part = part.as_ref();
        if part.len() >= GATHER {
            if !buf.is_empty() {
                io.write_all(&buf).await?;
                buf.clear();
            }
            io.write_all(part).await?;
        } else {
            buf.extend_from_slice(part);
            if buf.len() >= GATHER {
                io.write_all(&buf).await?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        io.write_all(&buf).await?;
    }
    Ok(())
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, self.max_request).await {
            Ok(bytes) => Ok(Frame::Data(bytes)),
            Err(e) => match e.get_ref().and_then(|r| r.downcast_ref::<OversizedFrame>()) {
                Some(oversized) => Ok(Frame::Oversized(*oversized)),
                None => Err(e),
            },
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Data(bytes) => write_frame(io, &bytes).await,
            Frame::Oversized(o) => Err(io::Error::new(io::ErrorKind::InvalidInput, o)),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::{CountedWriter, Counters};

    #[test]
    fn frames_round_trip_and_oversize_is_refused_before_reading() -> anyhow::Result<()> {
        futures::executor::block_on(async {
            // A small frame goes out with its length prefix in one write.
            let mut wire = Vec::new();
            let counters = Counters::default();
            let mut counted = CountedWriter::new(
                futures::io::Cursor::new(&mut wire),
                Arc::clone(&counters.raft),
            );
            write_frame(&mut counted, b"hello").await?;
            assert_eq!(counters.snapshot().raft.writes, 1);
            let got = read_frame(&mut futures::io::Cursor::new(&wire), 5).await?;
            assert_eq!(got, b"hello");
            let err = read_frame(&mut futures::io::Cursor::new(&wire), 4)
                .await
                .err();
            let oversized = err
                .as_ref()
                .and_then(|e| e.get_ref())
                .and_then(|e| e.downcast_ref::<OversizedFrame>());
            assert!(
                matches!(oversized, Some(OversizedFrame { size: 5, limit: 4 })),
                "{err:?}"
            );
            // A frame written as parts (small ones gathered, large ones as they are) reads back
            // as one frame.
            let parts = vec![b"ab".to_vec(), vec![7u8; GATHER + 1], b"c".to_vec()];
            let mut wire2 = Vec::new();
            write_parts(&mut futures::io::Cursor::new(&mut wire2), &parts).await?;
            let got = read_frame(&mut futures::io::Cursor::new(&wire2), 1 << 20).await?;
            assert_eq!(got, parts.concat());
            // A truncated frame is an error, not a hang or a panic.
            let truncated = read_frame(&mut futures::io::Cursor::new(&wire[..6]), 64).await;
            assert!(truncated.is_err());
            Ok(())
        })
    }
}
