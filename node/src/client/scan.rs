//! A scan that also says where a watch continues from: the records of a range and, for each
//! partition, the revision its replica read them at. Watching from that cursor delivers every
//! later change exactly once and none that the records already show (scan, then watch).

use std::collections::BTreeMap;

use futures::future::join_all;
use swarmkv_store::KvRecord;

use super::{unexpected, Client, Cursor, Position, Transport};
use crate::core::{ClientError, Consistency, Request, RequestBody, Response};

/// What [`Client::scan_with_cursor`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The records, in key order.
    pub records: Vec<(Vec<u8>, KvRecord)>,
    /// True when the limit cut the scan: keys of the range after the last record exist and
    /// were not read (a watch from the cursor shows them only if they change later).
    pub more: bool,
    /// Per partition, the revision (the partition's applied Raft index) the records were
    /// read at: each partition's records are its state at exactly that revision.
    pub revisions: BTreeMap<u32, u64>,
}

impl Scan {
    /// The watch position right after the scan: every partition after the revision it was
    /// read at.
    pub fn cursor(&self) -> Cursor {
        let mut cursor = Cursor::now();
        for (&partition, &after) in &self.revisions {
            cursor.set(partition, Position { after, skip: 0 });
        }
        cursor
    }
}

impl Client {
    /// The first `limit` keys (0: all) of `[start, end)` across every partition, in key
    /// order, with the revision each partition was read at: `watch(target, scan.cursor())`
    /// then delivers every change made after the scan, exactly once, and nothing the scan
    /// returned. Each partition is read in one piece, at one revision; different partitions
    /// are read at unrelated revisions (there is no global one). Over HTTP the scan is one
    /// request, so at most 10 000 records come back (`more` says whether the range had more).
    pub async fn scan_with_cursor(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<Scan, ClientError> {
        if let Transport::Http(h) = &self.transport {
            return h.scan_with_cursor(start, end, limit, consistency).await;
        }
        let calls = (0..self.partitions).map(|p| {
            self.call(Request {
                partition: p,
                body: RequestBody::Scan {
                    start: start.to_vec(),
                    end: end.map(<[u8]>::to_vec),
                    limit,
                    consistency,
                },
            })
        });
        let mut scan = Scan {
            records: Vec::new(),
            more: false,
            revisions: BTreeMap::new(),
        };
        for (p, r) in (0..self.partitions).zip(join_all(calls).await) {
            match r? {
                Response::Scan {
                    records,
                    more,
                    revision,
                } => {
                    scan.records.extend(records);
                    scan.more |= more;
                    scan.revisions.insert(p, revision);
                }
                other => return Err(unexpected(other)),
            }
        }
        scan.records.sort_by(|a, b| a.0.cmp(&b.0));
        if limit != 0 && scan.records.len() > limit {
            scan.records.truncate(limit);
            scan.more = true;
        }
        Ok(scan)
    }
}
