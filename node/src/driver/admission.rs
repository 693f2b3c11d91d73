//! Admission control: how many client requests a node holds at once, by count and by bytes.
//!
//! Every request a node takes on (from its own clients, from light clients, or forwarded by
//! another node) holds a [`Permit`] until it is answered, whether it waits here for Raft or
//! travels on to the partition's leader. When the budget is spent the request is refused at
//! once with [`ClientError::Busy`](crate::core::ClientError::Busy): nothing was done, and
//! the caller should come back after the hinted delay. Without this a write flood grows the
//! pending map, the proposals and the forwarding tasks until the process runs out of memory;
//! with it the node's memory for requests stays under `max_bytes` plus a small cost per
//! request, and the requests it did admit keep their latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::core::{Request, RequestBody};

/// Fixed cost counted for each request besides its keys and values (the pending entry,
/// the session, the answer channel).
const OVERHEAD: usize = 256;

/// The shared budget. Cheap to clone; permits give back what they took when dropped.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    count: AtomicUsize,
    bytes: AtomicUsize,
    max_count: usize,
    max_bytes: usize,
}

/// One admitted request's share of the budget, returned when the request is answered.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.count.fetch_sub(1, Ordering::AcqRel);
        self.inner.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Admission {
    /// A budget of `max_count` requests and `max_bytes` of their keys and values.
    pub fn new(max_count: usize, max_bytes: usize) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                count: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                max_count: max_count.max(1),
                max_bytes: max_bytes.max(1),
            }),
        }
    }

    /// Admits `req` if both budgets have room; `None` means refuse it as busy. A single
    /// request larger than the whole byte budget is still admitted when nothing else is in
    /// flight, so a small budget never makes a valid request impossible.
    pub fn try_admit(&self, req: &Request) -> Option<Permit> {
        let size = request_bytes(req);
        let inner = &self.inner;
        let count = inner.count.fetch_add(1, Ordering::AcqRel);
        let bytes = inner.bytes.fetch_add(size, Ordering::AcqRel);
        let alone = count == 0;
        if count >= inner.max_count || (bytes + size > inner.max_bytes && !alone) {
            inner.count.fetch_sub(1, Ordering::AcqRel);
            inner.bytes.fetch_sub(size, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            inner: inner.clone(),
            bytes: size,
        })
    }

    /// Requests admitted and not answered yet.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inner.count.load(Ordering::Acquire)
    }
}

/// What a request weighs: its keys and values plus a fixed overhead.
pub fn request_bytes(req: &Request) -> usize {
    use swarmkv_store::{CasAction, Compare, KvOp};
    let payload = match &req.body {
        RequestBody::Get { key, .. } => key.len(),
        RequestBody::Scan { start, end, .. } => start.len() + end.as_ref().map_or(0, Vec::len),
        RequestBody::Write { op, .. } => match op {
            KvOp::Put { key, value, .. } => key.len() + value.len(),
            KvOp::Delete { key, .. } => key.len(),
            KvOp::Cas {
                key,
                compare,
                action,
            } => {
                let expected = match compare {
                    Compare::Value(v) => v.len(),
                    _ => 0,
                };
                let new = match action {
                    CasAction::Put(v) => v.len(),
                    _ => 0,
                };
                key.len() + expected + new
            }
            KvOp::DeleteRange { start, end } => start.len() + end.as_ref().map_or(0, Vec::len),
            KvOp::DeleteLease { .. } => 0,
            KvOp::Txn(txn) => txn.payload_bytes(),
        },
    };
    payload + OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Consistency;

    fn get(key_len: usize) -> Request {
        Request {
            partition: 0,
            body: RequestBody::Get {
                key: vec![b'k'; key_len],
                consistency: Consistency::Linearizable,
            },
        }
    }

    #[test]
    fn the_count_budget_refuses_the_request_past_it_and_permits_give_it_back() {
        let admission = Admission::new(2, 1 << 20);
        let a = admission.try_admit(&get(1));
        let b = admission.try_admit(&get(1));
        assert!(a.is_some() && b.is_some());
        assert!(admission.try_admit(&get(1)).is_none());
        assert_eq!(admission.in_flight(), 2);
        drop(a);
        assert!(admission.try_admit(&get(1)).is_some());
        drop(b);
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn the_byte_budget_refuses_big_requests_but_never_a_lone_one() {
        let admission = Admission::new(100, 10_000);
        let big = admission.try_admit(&get(50_000));
        assert!(
            big.is_some(),
            "a lone request is admitted whatever its size"
        );
        assert!(admission.try_admit(&get(10)).is_none());
        drop(big);
        let small: Vec<_> = (0..30)
            .filter_map(|_| admission.try_admit(&get(10)))
            .collect();
        // 10,000 bytes hold 37 requests of 266 bytes; 30 fit.
        assert_eq!(small.len(), 30);
        assert!(admission.try_admit(&get(5_000)).is_none());
    }
}
