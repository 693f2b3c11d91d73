//! Waiting for a group's apply to move past an index, without polling: what a watch's
//! long-poll waits on.
//!
//! The store has no async runtime, so this is a plain [`Future`] over a waker table: a waiter
//! registers its waker under the table's lock after checking the applied index under that same
//! lock, and every apply (and snapshot install) updates the applied index before it takes the
//! lock to wake the group's waiters. So a waiter either sees the new index or is registered in
//! time to be woken: no wake-up is lost. A dropped waiter removes its waker.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crate::backend::Backend;
use crate::group;
use crate::store::Store;

/// The wakers of every group's waiters, by waiter id.
#[derive(Default)]
pub(crate) struct ApplyWaiters {
    next_id: AtomicU64,
    table: Mutex<HashMap<u64, HashMap<u64, Waker>>>,
}

impl ApplyWaiters {
    /// Wakes the waiters of `group` (its applied index has just changed).
    pub(crate) fn wake(&self, group: u64) {
        let woken = {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            t.remove(&group)
        };
        for (_, w) in woken.into_iter().flatten() {
            w.wake();
        }
    }
}

/// Resolves once `group` has applied past `index` (or its state was replaced: an install, or
/// the group removed from the store), with the applied index then. Cancel it by dropping it
/// (e.g. under a timeout).
pub struct AppliedPast<B: Backend> {
    store: Store<B>,
    group: u64,
    index: u64,
    id: u64,
    /// The applied index when the wait began: any change ends the wait (an install may move
    /// it anywhere, a removal back to 0).
    start: Option<u64>,
}

impl<B: Backend> Future for AppliedPast<B> {
    type Output = u64;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let this = self.get_mut();
        let waiters = &this.store.inner.waiters;
        let mut t = waiters.table.lock().unwrap_or_else(|p| p.into_inner());
        let applied = match this.store.shared_group(this.group) {
            Ok(shared) => group::read(&shared).meta.apply.index,
            // The store failed: let the caller find out by reading.
            Err(_) => return Poll::Ready(0),
        };
        let start = *this.start.get_or_insert(applied);
        if applied > this.index || applied != start {
            if let Some(g) = t.get_mut(&this.group) {
                g.remove(&this.id);
            }
            return Poll::Ready(applied);
        }
        t.entry(this.group)
            .or_default()
            .insert(this.id, cx.waker().clone());
        Poll::Pending
    }
}

impl<B: Backend> Drop for AppliedPast<B> {
    fn drop(&mut self) {
        let mut t = self
            .store
            .inner
            .waiters
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(g) = t.get_mut(&self.group) {
            g.remove(&self.id);
            if g.is_empty() {
                t.remove(&self.group);
            }
        }
    }
}

impl<B: Backend> Store<B> {
    /// A future that resolves once `group` has applied past `index`, or its applied index
    /// changed some other way (snapshot install, removal): the caller reads again then.
    pub fn applied_past(&self, group: u64, index: u64) -> AppliedPast<B> {
        AppliedPast {
            store: self.clone(),
            group,
            index,
            id: self.inner.waiters.next_id.fetch_add(1, Ordering::Relaxed),
            start: None,
        }
    }
}
