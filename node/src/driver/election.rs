//! The driver's side of elections: election requests go to the meta leader, served by its
//! core or forwarded there like lease requests (their answers share the lease requests'
//! table of origins). Everything else (candidates dying with their leases, observers) happens
//! in the core's turn: see `core::election`.

use super::{Driver, Origin};
use crate::core::{ElectionRequest, META_GROUP};
use crate::wire::Call;

impl Driver {
    /// Serves an election request here if this node leads the meta group, else forwards it
    /// to the meta leader gossip names.
    pub(crate) fn election_anywhere(&mut self, req: ElectionRequest, origin: Origin, hops: u8) {
        if self.disk.core.is_leader(META_GROUP) {
            let id = self.io.next_id;
            self.io.next_id += 1;
            self.io.leases.track(id, origin);
            self.disk.core.handle_election(id, req);
            return;
        }
        self.forward_to_meta_leader(
            Call::Election {
                req,
                hops: hops + 1,
            },
            origin,
            hops,
        );
    }
}
