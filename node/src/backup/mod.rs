//! Backups of a whole cluster, and restoring one as a new cluster.
//!
//! # Layout
//! - [`format`]: the file: a header, checksummed sections (a manifest, then each group's
//!   records), and a checksum over the whole file; written section by section and read the
//!   same way, so neither side holds more than one section in memory.
//! - [`take`]: takes a backup through a [`crate::Client`]: each group frozen on a replica
//!   after a linearizable barrier, then its chunks read one at a time.
//! - [`restore`]: checks a file end to end, prepares a data directory from it, and stages its
//!   groups when that node starts, as the starting state of the new cluster it forms.
//!
//! What a backup means under load: each group (the meta group and every partition) is copied
//! at one applied index of its own, which holds every write acknowledged before the backup
//! reached that group; the groups are copied one after another, so there is no single point
//! in time across partitions (none is needed for single-partition transactions, and none is
//! promised for anything spanning partitions).

pub mod format;
pub mod restore;
pub mod take;

pub use format::{BackupError, BackupReader, Encoder, GroupHeader, Item, Manifest, Summary};
