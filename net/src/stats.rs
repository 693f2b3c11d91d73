//! Counts of what the long-lived streams write: frames, and the writes that carry them.
//!
//! Every `poll_write` on a yamux stream becomes one yamux frame, one noise message and, since
//! yamux flushes the socket after each frame, one `write` syscall. So the ratio of frames to
//! stream writes says how well a writer joins what is queued; these counters measure it
//! without timing anything. The stream tasks count into one shared [`Counters`] (relaxed
//! atomics: they are statistics, not synchronisation) and [`crate::NetHandle::stats`] reads
//! a [`NetStats`] snapshot of it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::AsyncWrite;

/// What one kind of stream has written since the network started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Length-prefixed frames written.
    pub frames: u64,
    /// Writes on the streams that carried them (each one yamux frame and one socket write).
    pub writes: u64,
}

/// A snapshot of the counters of the long-lived streams (see [`crate::NetHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// `/swarmkv/raft-stream/1`: Raft frames to peers.
    pub raft: StreamStats,
    /// `/swarmkv/kv-stream/1`: requests to peers and answers to theirs.
    pub kv: StreamStats,
}

/// The live counters of one kind of stream.
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    frames: AtomicU64,
    writes: AtomicU64,
}

impl StreamCounters {
    /// Counts `n` frames as written.
    pub(crate) fn frames_written(&self, n: usize) {
        self.frames.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> StreamStats {
        StreamStats {
            frames: self.frames.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }
}

/// The live counters of every kind of stream, shared by the handle and the stream tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub raft: Arc<StreamCounters>,
    pub kv: Arc<StreamCounters>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> NetStats {
        NetStats {
            raft: self.raft.snapshot(),
            kv: self.kv.snapshot(),
        }
    }
}

/// A stream's writing side that counts its successful writes into `counters`.
pub(crate) struct CountedWriter<W> {
    inner: W,
    counters: Arc<StreamCounters>,
}

impl<W> CountedWriter<W> {
    pub(crate) fn new(inner: W, counters: Arc<StreamCounters>) -> Self {
        Self { inner, counters }
    }

    /// The counters its writes go to.
    pub(crate) fn counters(&self) -> &StreamCounters {
        &self.counters
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;

    #[test]
    fn a_counted_writer_counts_each_write_it_passes_on() -> std::io::Result<()> {
        futures::executor::block_on(async {
            let counters = Counters::default();
            let mut wire = Vec::new();
            let mut w = CountedWriter::new(
                futures::io::Cursor::new(&mut wire),
                Arc::clone(&counters.kv),
            );
            w.write_all(b"one").await?;
            w.write_all(b"two").await?;
            w.flush().await?;
            w.counters().frames_written(5);
            assert_eq!(
                counters.snapshot(),
                NetStats {
                    raft: StreamStats::default(),
                    kv: StreamStats {
                        frames: 5,
                        writes: 2
                    },
                }
            );
            assert_eq!(wire, b"onetwo");
            Ok(())
        })
    }
}
