//! Watches: a stream of the put and delete events of a key or a prefix, from a position, that
//! survives the loss of the node it reads through.
//!
//! # Ordering guarantee, exactly
//!
//! Keys are hash-partitioned and each partition is its own Raft group, so revisions are
//! **per partition**: an event's revision is the Raft index, in its partition's log, of the
//! write that made it. There is no global revision and no order between partitions.
//!
//! - **Within a partition**, events come in revision order, each exactly once, with no gap:
//!   across long-poll timeouts, node kills, disconnects and resumes from a [`Cursor`]. Events
//!   of one revision (a range delete, a lease's deletion) come in the order the operation made
//!   them, and together unless the consumer stops between them (the cursor then records how
//!   many of them were delivered).
//! - **A single key** lives in one partition, so its events are totally ordered and complete.
//! - **Across partitions**, events interleave in no defined order, and their revisions are
//!   unrelated numbers that must not be compared. Two writes to keys of different partitions
//!   may be delivered in either order even when the second was started after the first was
//!   acknowledged. A multi-partition operation (`delete_range`) is seen as independent events
//!   in each partition, not as one atomic change.
//! - Every event delivered was committed and applied (never rolled back later).
//!
//! # How
//!
//! One task per partition long-polls a replica (through the first of the given clients' nodes)
//! for events after its position, with [`crate::wire::Call::Watch`]; see `driver/watch.rs`
//! for why any replica's answer is an exact slice of the partition's one event sequence. The
//! position advances as the consumer takes events, so [`Watch::cursor`] always describes
//! exactly what was delivered: resuming from it repeats and loses nothing. When a node fails
//! or has no answer, the task moves to the next client's node and asks again from the same
//! position.
//!
//! A client of a node's HTTP gateway ([`Client::http`]) reads the gateway's server-sent events
//! instead (the gateway runs this watch on its node and sends each event with the cursor after
//! it); when the connection breaks it reconnects with that cursor, so the guarantees are the
//! same.
//!
//! When the events after a position are no longer kept (retention, see
//! `swarmkv_store::history`), the watch ends with [`WatchError::Compacted`]: the caller must
//! re-read the current state and watch from there.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::Stream;
use swarmkv_store::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Client, Transport};
use crate::core::routing::partition_of;
use crate::core::ClientError;
use crate::wire::{Answer, Call, WatchReply, WatchRequest};

/// What to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchTarget {
    /// One key (one partition).
    Key(Vec<u8>),
    /// Every key starting with these bytes (every partition; empty: the whole keyspace).
    Prefix(Vec<u8>),
}

impl WatchTarget {
    /// The key range `[start, end)` watched.
    fn range(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            WatchTarget::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            WatchTarget::Prefix(p) => (p.clone(), swarmkv_store::keys::prefix_end(p)),
        }
    }

    /// The partitions whose events can match.
    fn partitions(&self, partitions: u32) -> Vec<u32> {
        match self {
            WatchTarget::Key(k) => vec![partition_of(k, partitions)],
            WatchTarget::Prefix(_) => (0..partitions).collect(),
        }
    }
}

/// A watch's position in one partition: every event with a revision up to `after` was
/// delivered, and so were the first `skip` events of revision `after + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    pub after: u64,
    pub skip: u32,
}

/// Where a watch stands, per partition: what to resume from. Printed and parsed as text for
/// HTTP (the SSE `id:`, so `Last-Event-ID` resumes) and the CLI: comma-separated
/// `PARTITION=REV` (or `PARTITION=REV~SKIP` in the middle of a revision's events), plus
/// `*=REV` for every partition not listed; `now` when empty.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The position of every partition not in `at`; `None`: where the partition is when the
    /// watch starts.
    base: Option<u64>,
    at: BTreeMap<u32, Position>,
}

impl Cursor {
    /// Start now: events after the moment the watch starts.
    pub fn now() -> Cursor {
        Cursor::default()
    }

    /// Start at revision `rev` (inclusive) in every partition. Since revisions are per
    /// partition, this means "every event whose own partition's revision is at least `rev`";
    /// `from_revision(1)` is everything still kept.
    pub fn from_revision(rev: u64) -> Cursor {
        Cursor {
            base: Some(rev.saturating_sub(1)),
            at: BTreeMap::new(),
        }
    }

    /// The position in `partition`, if the cursor fixes one.
    pub fn position(&self, partition: u32) -> Option<Position> {
        self.at
            .get(&partition)
            .copied()
            .or_else(|| self.base.map(|after| Position { after, skip: 0 }))
    }

    /// Sets the position in `partition`.
    pub fn set(&mut self, partition: u32, pos: Position) {
        self.at.insert(partition, pos);
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.base {
            parts.push(format!("*={b}"));
        }
        for (p, pos) in &self.at {
            if pos.skip == 0 {
                parts.push(format!("{p}={}", pos.after));
            } else {
                parts.push(format!("{p}={}~{}", pos.after, pos.skip));
            }
        }
        if parts.is_empty() {
            f.write_str("now")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// A cursor's text did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad watch cursor {text:?}: {why} (expected `now` or entries like `*=12,3=40,7=9~1`)")]
pub struct CursorParseError {
    pub text: String,
    pub why: String,
}

impl FromStr for Cursor {
    type Err = CursorParseError;

    fn from_str(text: &str) -> Result<Cursor, CursorParseError> {
        let bad = |why: &str| CursorParseError {
            text: text.to_string(),
            why: why.to_string(),
        };
        let mut c = Cursor::now();
        let t = text.trim();
        if t.is_empty() || t == "now" {
            return Ok(c);
        }
        for entry in t.split(',') {
            let (p, pos) = entry
                .split_once('=')
                .ok_or_else(|| bad("an entry lacks `=`"))?;
            let (after, skip) = match pos.split_once('~') {
                Some((a, s)) => (a, s.parse::<u32>().map_err(|_| bad("bad skip count"))?),
                None => (pos, 0),
            };
            let after = after.parse::<u64>().map_err(|_| bad("bad revision"))?;
            if p == "*" {
                if skip != 0 || c.base.is_some() {
                    return Err(bad("one `*=REV` at most, without `~`"));
                }
                c.base = Some(after);
            } else {
                let p = p.parse::<u32>().map_err(|_| bad("bad partition"))?;
                if c.at.insert(p, Position { after, skip }).is_some() {
                    return Err(bad("a partition appears twice"));
                }
            }
        }
        Ok(c)
    }
}

/// One event of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The partition of the key (revisions are per partition).
    pub partition: u32,
    pub event: Event,
}

/// Why a watch ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The events after the requested position are no longer kept: re-read the current state
    /// (a get or scan) and watch again from now.
    #[error(
        "partition {partition}: the events after revision {requested} were compacted (the \
         history starts after revision {compacted}); re-read the current state and watch from now"
    )]
    Compacted {
        partition: u32,
        requested: u64,
        compacted: u64,
    },
    /// No node could serve a partition for the watch's give-up time.
    #[error("partition {partition}: no node could serve the watch: {reason}")]
    Unavailable { partition: u32, reason: String },
    /// The watch could not start (no client given, or a cursor naming unknown partitions).
    #[error("bad watch: {0}")]
    BadRequest(String),
    /// Over HTTP: the gateway could not be reached, or its stream broke and could not be
    /// resumed within the give-up time.
    #[error("the gateway could not serve the watch: {reason}")]
    Unreachable { reason: String },
    /// Over HTTP: the gateway refused the watch (a wrong token, say) or sent what is not a
    /// watch's stream.
    #[error("{0}")]
    Gateway(String),
}

/// Tuning of a watch.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// How long one long-poll may wait on a replica for an event.
    pub poll_wait: Duration,
    /// How long a partition may find no node to serve it before the watch fails.
    pub give_up: Duration,
}

impl Default for WatchOptions {
    fn default() -> WatchOptions {
        WatchOptions {
            poll_wait: Duration::from_secs(2),
            give_up: Duration::from_secs(60),
        }
    }
}

/// An event on its way to the consumer, with its place among its revision's events.
pub(super) struct Pending {
    partition: u32,
    event: Event,
    index: u32,
    count: u32,
}

pub(super) enum Item {
    /// Events of one partition (possibly none) and the revision the partition's task has
    /// reached once they are delivered.
    Batch {
        partition: u32,
        events: Vec<Pending>,
        through: u64,
    },
    Failed(WatchError),
    /// One event from the gateway's stream, with the cursor just after it (over HTTP the
    /// gateway keeps the positions).
    Sse {
        event: WatchEvent,
        cursor: Cursor,
    },
}

enum Queued {
    Event(Pending),
    Progress { partition: u32, through: u64 },
}

/// A running watch: a [`Stream`] of events (see the module docs for the order), and the
/// [`Cursor`] of exactly what it delivered. Dropping it stops its tasks.
pub struct Watch {
    rx: mpsc::Receiver<Item>,
    tasks: Vec<JoinHandle<()>>,
    cursor: Cursor,
    queue: VecDeque<Queued>,
    done: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One long-poll through `client`'s node.
async fn watch_call(client: &Client, req: WatchRequest) -> Result<WatchReply, ClientError> {
    match &client.transport {
        Transport::Local(h) => Ok(h.watch(req).await),
        Transport::Remote { .. } => match client.remote_call(Call::Watch { req, hops: 0 }).await? {
            Answer::Watch(r) => Ok(r),
            Answer::Reply(Err(e)) => Err(e),
            other => Err(ClientError::Disconnected(format!("unexpected {other:?}"))),
        },
        Transport::Http(_) => Err(ClientError::BadRequest(
            "a gateway serves watches as a stream, not as polls".into(),
        )),
    }
}

impl Watch {
    /// Starts watching `target` from `from`, reading through the nodes of `sources` (the
    /// first one, then the next when it fails). A partition `from` does not fix starts now:
    /// its position is taken before this returns, so events after the return are all seen.
    pub async fn start(
        sources: Vec<Arc<Client>>,
        target: WatchTarget,
        from: Cursor,
        options: WatchOptions,
    ) -> Result<Watch, WatchError> {
        let Some(first) = sources.first() else {
            return Err(WatchError::BadRequest("no client to watch through".into()));
        };
        // A gateway watches through its own node and resumes on any: its stream is enough.
        if let Transport::Http(http) = &first.transport {
            return super::http::sse::watch(http, target, from, options).await;
        }
        let partitions = target.partitions(first.partitions());
        if let Some(p) = from.at.keys().find(|p| **p >= first.partitions()) {
            return Err(WatchError::BadRequest(format!(
                "the cursor names partition {p}; the cluster has {}",
                first.partitions()
            )));
        }
        let (start, end) = target.range();
        let mut cursor = from;
        // Positions of the partitions that start now.
        let unknown: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| cursor.position(*p).is_none())
            .collect();
        let found = join_all(
            unknown
                .iter()
                .map(|p| start_position(&sources, *p, &start, &end, options)),
        )
        .await;
        for (p, r) in unknown.iter().zip(found) {
            cursor.set(*p, Position { after: r?, skip: 0 });
        }
        let (tx, rx) = mpsc::channel(64);
        let mut tasks = Vec::with_capacity(partitions.len());
        for p in partitions {
            let pos = cursor.position(p).unwrap_or_default();
            let follow = Follow {
                partition: p,
                sources: sources.clone(),
                start: start.clone(),
                end: end.clone(),
                options,
                tx: tx.clone(),
            };
            tasks.push(tokio::spawn(follow.run(pos)));
        }
        Ok(Watch {
            rx,
            tasks,
            cursor,
            queue: VecDeque::new(),
            done: false,
        })
    }

    /// A watch fed by one task that sends [`Item::Sse`] events (the HTTP transport's).
    pub(super) fn of_stream(
        rx: mpsc::Receiver<Item>,
        task: JoinHandle<()>,
        cursor: Cursor,
    ) -> Watch {
        Watch {
            rx,
            tasks: vec![task],
            cursor,
            queue: VecDeque::new(),
            done: false,
        }
    }

    /// Exactly what was delivered so far: resume from it to continue without loss or repeat.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// The next event; `None` once the watch has ended (after an error).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, WatchError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchEvent, WatchError>>> {
        loop {
            match self.queue.pop_front() {
                Some(Queued::Event(d)) => {
                    let rev = d.event.revision;
                    let pos = if d.index + 1 >= d.count {
                        Position {
                            after: rev,
                            skip: 0,
                        }
                    } else {
                        Position {
                            after: rev - 1,
                            skip: d.index + 1,
                        }
                    };
                    self.cursor.set(d.partition, pos);
                    return Poll::Ready(Some(Ok(WatchEvent {
                        partition: d.partition,
                        event: d.event,
                    })));
                }
                Some(Queued::Progress { partition, through }) => {
                    let cur = self.cursor.position(partition).unwrap_or_default();
                    if through > cur.after {
                        self.cursor.set(
                            partition,
                            Position {
                                after: through,
                                skip: 0,
                            },
                        );
                    }
                    continue;
                }
                None => {}
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Item::Failed(e))) => {
                    self.done = true;
                    for t in &self.tasks {
                        t.abort();
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Item::Sse { event, cursor })) => {
                    self.cursor = cursor;
                    return Poll::Ready(Some(Ok(event)));
                }
                Poll::Ready(Some(Item::Batch {
                    partition,
                    events,
                    through,
                })) => {
                    self.queue.extend(events.into_iter().map(Queued::Event));
                    self.queue
                        .push_back(Queued::Progress { partition, through });
                }
            }
        }
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent, WatchError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

/// A partition's current applied revision, from the first node that answers.
async fn start_position(
    sources: &[Arc<Client>],
    partition: u32,
    start: &[u8],
    end: &Option<Vec<u8>>,
    options: WatchOptions,
) -> Result<u64, WatchError> {
    let since = Instant::now();
    let mut source = 0;
    let mut backoff = Duration::from_millis(50);
    loop {
        let req = WatchRequest {
            partition,
            after: None,
            start: start.to_vec(),
            end: end.clone(),
            wait_ms: 0,
        };
        let reason = match watch_call(&sources[source % sources.len()], req).await {
            Ok(WatchReply::Events { through, .. }) => return Ok(through),
            Ok(WatchReply::Compacted { compacted }) => {
                format!("a start-now request answered compacted at {compacted}")
            }
            Ok(WatchReply::Unavailable(r)) => r,
            Err(e) => e.to_string(),
        };
        if since.elapsed() > options.give_up {
            return Err(WatchError::Unavailable { partition, reason });
        }
        source += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The task following one partition.
struct Follow {
    partition: u32,
    sources: Vec<Arc<Client>>,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    options: WatchOptions,
    tx: mpsc::Sender<Item>,
}

impl Follow {
    async fn run(self, mut pos: Position) {
        let n = self.sources.len();
        let mut source = 0usize;
        let mut failing_since: Option<Instant> = None;
        let mut compacted_answers = 0usize;
        let mut backoff = Duration::from_millis(50);
        let wait_ms = u32::try_from(self.options.poll_wait.as_millis()).unwrap_or(u32::MAX);
        loop {
            let req = WatchRequest {
                partition: self.partition,
                after: Some(pos.after),
                start: self.start.clone(),
                end: self.end.clone(),
                wait_ms,
            };
            let reason = match watch_call(&self.sources[source % n], req).await {
                Ok(WatchReply::Events { events, through }) => {
                    failing_since = None;
                    compacted_answers = 0;
                    backoff = Duration::from_millis(50);
                    let fresh = self.fresh(events, pos);
                    if through < pos.after {
                        // This node's replica is behind us: another may be ahead.
                        source += 1;
                    }
                    if !fresh.is_empty() || through > pos.after {
                        let item = Item::Batch {
                            partition: self.partition,
                            events: fresh,
                            through,
                        };
                        if self.tx.send(item).await.is_err() {
                            return;
                        }
                        if through > pos.after {
                            pos = Position {
                                after: through,
                                skip: 0,
                            };
                        }
                    }
                    continue;
                }
                Ok(WatchReply::Compacted { compacted }) => {
                    // Another node's replica may still have the events: ask each once.
                    compacted_answers += 1;
                    if compacted_answers >= n {
                        let _ = self
                            .tx
                            .send(Item::Failed(WatchError::Compacted {
                                partition: self.partition,
                                requested: pos.after,
                                compacted,
                            }))
                            .await;
                        return;
                    }
                    source += 1;
                    continue;
                }
                Ok(WatchReply::Unavailable(r)) => r,
                Err(e) => e.to_string(),
            };
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() > self.options.give_up {
                let _ = self
                    .tx
                    .send(Item::Failed(WatchError::Unavailable {
                        partition: self.partition,
                        reason,
                    }))
                    .await;
                return;
            }
            log::debug!(
                "watch of partition {}: {reason}; trying the next node",
                self.partition
            );
            source += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// The events of an answer not delivered yet, each with its place among its revision's.
    fn fresh(&self, events: Vec<Event>, pos: Position) -> Vec<Pending> {
        let mut out = Vec::with_capacity(events.len());
        let mut events = events.into_iter().peekable();
        let mut group: Vec<Event> = Vec::new();
        while let Some(e) = events.next() {
            let rev = e.revision;
            group.push(e);
            if events.peek().is_some_and(|n| n.revision == rev) {
                continue;
            }
            let count = group.len() as u32;
            for (index, e) in group.drain(..).enumerate() {
                let index = index as u32;
                let delivered = rev <= pos.after || (rev == pos.after + 1 && index < pos.skip);
                if !delivered {
                    out.push(Pending {
                        partition: self.partition,
                        event: e,
                        index,
                        count,
                    });
                }
            }
        }
        out
    }
}

impl Client {
    /// Watches `target` from `from` through this client's node only; see [`Watch::start`] to
    /// survive the loss of that node.
    pub async fn watch(
        self: &Arc<Self>,
        target: WatchTarget,
        from: Cursor,
    ) -> Result<Watch, WatchError> {
        Watch::start(vec![self.clone()], target, from, WatchOptions::default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_and_parse_back() {
        let mut c = Cursor::from_revision(13);
        c.set(3, Position { after: 40, skip: 0 });
        c.set(7, Position { after: 9, skip: 1 });
        let text = c.to_string();
        assert_eq!(text, "*=12,3=40,7=9~1");
        assert_eq!(text.parse::<Cursor>(), Ok(c.clone()));
        assert_eq!(c.position(3), Some(Position { after: 40, skip: 0 }));
        assert_eq!(c.position(5), Some(Position { after: 12, skip: 0 }));
        assert_eq!(Cursor::now().to_string(), "now");
        assert_eq!("now".parse::<Cursor>(), Ok(Cursor::now()));
        assert_eq!(Cursor::now().position(0), None);
        for bad in ["3", "x=1", "1=y", "1=2~z", "*=1,*=2", "1=1,1=2", "*=1~2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad} parsed");
        }
    }

    fn ev(rev: u64, key: &str) -> Event {
        Event {
            kind: swarmkv_store::EventKind::Delete,
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            revision: rev,
            create_rev: 0,
            version: 0,
            lease: 0,
        }
    }

    #[test]
    fn events_already_delivered_are_dropped_even_inside_a_revision() {
        let (tx, _rx) = mpsc::channel(1);
        let f = Follow {
            partition: 2,
            sources: Vec::new(),
            start: Vec::new(),
            end: None,
            options: WatchOptions::default(),
            tx,
        };
        let events = vec![ev(4, "a"), ev(5, "a"), ev(5, "b"), ev(5, "c"), ev(6, "d")];
        let fresh = f.fresh(events, Position { after: 4, skip: 2 });
        let got: Vec<(u64, String, u32, u32)> = fresh
            .iter()
            .map(|p| {
                (
                    p.event.revision,
                    String::from_utf8_lossy(&p.event.key).into_owned(),
                    p.index,
                    p.count,
                )
            })
            .collect();
        assert_eq!(got, vec![(5, "c".into(), 2, 3), (6, "d".into(), 0, 1)]);
    }
}
