//! The backup file format, version 1.
//!
//! ```text
//! file    = header section* trailer
//! header  = "SWKVBAK" 0x00 (8 bytes) | format version (u32 BE)
//! section = kind (u8) | length (u32 BE) | payload (postcard) | CRC32C of kind, length, payload (u32 BE)
//! trailer = CRC32C of every byte before it (u32 BE), then the end of the file
//! ```
//!
//! The sections come in one order: a [`Manifest`]; then for each group, the meta group 0
//! first and then the partitions' groups `1..=partitions` in order, a [`GroupHeader`]
//! followed by exactly `chunks` record sections (`(key, record)` pairs as a partition
//! snapshot holds them: a family tag, then the key); then the [`Summary`], which repeats every
//! group header. Every section carries its own CRC32C (a damaged byte is found where it is),
//! the trailer covers the whole file (a file cut at a section boundary, or sections swapped,
//! fails it), and the reader checks the order and the counts, so a truncated, damaged or
//! foreign file is refused with a [`BackupError`] naming the byte offset, never a panic.

use std::io::Read;

use serde::{Deserialize, Serialize};
use swarmkv_store::keys::{TAG_DATA, TAG_REVOKED_LEASE, TAG_SESSION};

use crate::core::{ClientError, GroupId, NodeId};

/// The first bytes of every backup file.
pub const MAGIC: [u8; 8] = *b"SWKVBAK\0";
/// The version of the format this build writes. Version 2: a partition's session records are
/// buckets of clients (the store's format 5), which a build reading only version 1 would not
/// understand; version 1's per-client records are still read (the store takes both).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The largest section accepted: a partition snapshot's chunks are about 1 MiB; a length
/// beyond this is damage, not a reason to allocate.
pub const MAX_SECTION_BYTES: u32 = 64 << 20;

const KIND_MANIFEST: u8 = 1;
const KIND_GROUP: u8 = 2;
const KIND_RECORDS: u8 = 3;
const KIND_SUMMARY: u8 = 4;

/// What the backup is of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The id of the cluster it was taken from (a restore forms a cluster with a new one).
    pub cluster_id: u64,
    /// The cluster's partition count: a restored cluster must have the same, since a key's
    /// partition is its hash modulo this.
    pub partitions: u32,
    /// When the backup started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The swarmkv version that took it.
    pub swarmkv: String,
}

/// One group in the backup: where it was frozen and what follows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeader {
    /// 0 for the meta group, `partition + 1` for a partition.
    pub group: GroupId,
    /// The applied index the group was frozen at: its revision in the backup.
    pub index: u64,
    /// The Raft term of the entry at `index`.
    pub term: u64,
    /// Record sections that follow (at least 1).
    pub chunks: u32,
    /// Records in those sections.
    pub records: u64,
    /// The node whose replica was frozen.
    pub node: NodeId,
}

/// The last section: when the backup ended, and every group header again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub finished_unix_ms: u64,
    pub groups: Vec<GroupHeader>,
}

/// Why a backup could not be taken, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a swarmkv backup: the file does not start with the backup signature")]
    NotABackup,
    #[error(
        "backup format version {found} is not one this swarmkv reads (it reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})"
    )]
    Version { found: u32 },
    #[error("the backup is truncated: it ends at byte {offset}, inside {what}")]
    Truncated { offset: u64, what: String },
    #[error("the backup is damaged at byte {offset}: {detail}")]
    Damaged { offset: u64, detail: String },
    #[error("reading or writing the backup: {0}")]
    Io(#[from] std::io::Error),
    #[error("the cluster could not give the backup: {0}")]
    Cluster(#[from] ClientError),
    #[error("staging the backup in the store: {0}")]
    Store(#[from] swarmkv_store::StoreError),
    #[error("{path}: {detail}")]
    Target {
        path: std::path::PathBuf,
        detail: String,
    },
}

impl BackupError {
    /// Whether the file itself is at fault (damaged, truncated, of another format), as
    /// opposed to the disk, the cluster or the target directory.
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            BackupError::NotABackup
                | BackupError::Version { .. }
                | BackupError::Truncated { .. }
                | BackupError::Damaged { .. }
        )
    }
}

/// Writes a backup section by section: each call returns the bytes to append.
#[derive(Debug, Default)]
pub struct Encoder {
    crc: u32,
    bytes: u64,
}

impl Encoder {
    /// A new file: returns the encoder and the header bytes.
    pub fn new() -> (Encoder, Vec<u8>) {
        let mut e = Encoder::default();
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        e.account(&header);
        (e, header)
    }

    /// Bytes of the file so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn account(&mut self, b: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.bytes += b.len() as u64;
    }

    fn section(&mut self, kind: u8, value: &impl Serialize) -> Result<Vec<u8>, BackupError> {
        let payload = postcard::to_stdvec(value).map_err(|e| BackupError::Damaged {
            offset: self.bytes,
            detail: format!("cannot encode a section: {e}"),
        })?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_SECTION_BYTES)
            .ok_or_else(|| BackupError::Damaged {
                offset: self.bytes,
                detail: format!("a section of {} bytes is too large", payload.len()),
            })?;
        let mut out = Vec::with_capacity(payload.len() + 9);
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        self.account(&out);
        Ok(out)
    }

    pub fn manifest(&mut self, m: &Manifest) -> Result<Vec<u8>, BackupError> {
        self.section(KIND_MANIFEST, m)
    }

    pub fn group(&mut self, h: &GroupHeader) -> Result<Vec<u8>, BackupError> {
        self.section(KIND_GROUP, h)
    }

    pub fn records(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>, BackupError> {
        self.section(KIND_RECORDS, &records)
    }

    /// The summary section and the trailer: the end of the file.
    pub fn finish(mut self, s: &Summary) -> Result<Vec<u8>, BackupError> {
        let mut out = self.section(KIND_SUMMARY, s)?;
        out.extend_from_slice(&self.crc.to_be_bytes());
        Ok(out)
    }
}

/// One section of a backup, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Manifest(Manifest),
    Group(GroupHeader),
    Records(Vec<(Vec<u8>, Vec<u8>)>),
    Summary(Summary),
}

/// Where the reader is in the file's structure.
#[derive(Debug)]
enum Expect {
    Manifest,
    /// A group header (or the summary, once every group is read).
    Group,
    /// More record sections of the current group.
    Records {
        left: u32,
        records: u64,
    },
    Trailer,
    Done,
}

/// Reads a backup section by section, checking every checksum, the order of the sections
/// and their counts as it goes.
pub struct BackupReader<R> {
    inner: R,
    offset: u64,
    crc: u32,
    expect: Expect,
    manifest: Option<Manifest>,
    /// Headers of the groups read so far.
    groups: Vec<GroupHeader>,
}

impl<R: Read> BackupReader<R> {
    /// Reads and checks the header.
    pub fn open(inner: R) -> Result<BackupReader<R>, BackupError> {
        let mut r = BackupReader {
            inner,
            offset: 0,
            crc: 0,
            expect: Expect::Manifest,
            manifest: None,
            groups: Vec::new(),
        };
        let mut magic = [0u8; 8];
        match r.fill(&mut magic, "the header") {
            Err(BackupError::Truncated { .. }) => return Err(BackupError::NotABackup),
            other => other?,
        }
        if magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let mut version = [0u8; 4];
        r.fill(&mut version, "the header")?;
        let found = u32::from_be_bytes(version);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
            return Err(BackupError::Version { found });
        }
        Ok(r)
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The manifest, once read.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// Fills `buf` from the file, counting it in the whole-file checksum.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), BackupError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(BackupError::Truncated {
                        offset: self.offset + done as u64,
                        what: what.to_string(),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Reads a section's `len` bytes of payload in pieces, so that a damaged length makes the
    /// reader allocate no more than the file holds.
    fn read_payload(&mut self, len: usize) -> Result<Vec<u8>, BackupError> {
        let mut payload = Vec::new();
        let mut piece = vec![0u8; len.min(64 << 10)];
        while payload.len() < len {
            let n = (len - payload.len()).min(piece.len());
            self.fill(&mut piece[..n], "a section")?;
            payload.extend_from_slice(&piece[..n]);
        }
        Ok(payload)
    }

    fn damaged(&self, offset: u64, detail: impl Into<String>) -> BackupError {
        BackupError::Damaged {
            offset,
            detail: detail.into(),
        }
    }

    /// The next section; `None` once the summary and the trailer are read and checked and
    /// the file has ended.
    pub fn next_item(&mut self) -> Result<Option<Item>, BackupError> {
        match self.expect {
            Expect::Done => return Ok(None),
            Expect::Trailer => {
                let before = self.crc;
                let at = self.offset;
                let mut trailer = [0u8; 4];
                self.fill(&mut trailer, "the trailer")?;
                if u32::from_be_bytes(trailer) != before {
                    return Err(self.damaged(at, "the whole-file checksum does not match"));
                }
                let mut extra = [0u8; 1];
                loop {
                    match self.inner.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => {
                            return Err(
                                self.damaged(self.offset, "data after the end of the backup")
                            )
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                self.expect = Expect::Done;
                return Ok(None);
            }
            _ => {}
        }
        let start = self.offset;
        let mut head = [0u8; 5];
        self.fill(&mut head, "a section header")?;
        let kind = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_SECTION_BYTES {
            return Err(self.damaged(start, format!("a section claims {len} bytes")));
        }
        let payload = self.read_payload(len as usize)?;
        let mut crc = [0u8; 4];
        self.fill(&mut crc, "a section's checksum")?;
        let want = crc32c::crc32c_append(crc32c::crc32c(&head), &payload);
        if u32::from_be_bytes(crc) != want {
            return Err(self.damaged(start, "the section that starts there fails its checksum"));
        }
        let undecodable = |e: postcard::Error| BackupError::Damaged {
            offset: start,
            detail: format!("a section does not decode: {e}"),
        };
        let item = match kind {
            KIND_MANIFEST => Item::Manifest(postcard::from_bytes(&payload).map_err(undecodable)?),
            KIND_GROUP => Item::Group(postcard::from_bytes(&payload).map_err(undecodable)?),
            KIND_RECORDS => Item::Records(postcard::from_bytes(&payload).map_err(undecodable)?),
            KIND_SUMMARY => Item::Summary(postcard::from_bytes(&payload).map_err(undecodable)?),
            other => return Err(self.damaged(start, format!("unknown section kind {other}"))),
        };
        self.check_order(start, &item)?;
        Ok(Some(item))
    }

    /// Checks that `item` comes where it does, and moves the expectation on.
    fn check_order(&mut self, at: u64, item: &Item) -> Result<(), BackupError> {
        let partitions = self.manifest.as_ref().map_or(0, |m| m.partitions);
        let next_group = self.groups.len() as u64;
        self.expect = match (&self.expect, item) {
            (Expect::Manifest, Item::Manifest(m)) => {
                if m.partitions == 0 {
                    return Err(self.damaged(at, "the manifest names no partitions"));
                }
                self.manifest = Some(m.clone());
                Expect::Group
            }
            (Expect::Group, Item::Group(h)) => {
                if next_group > u64::from(partitions) || h.group != next_group {
                    return Err(self.damaged(
                        at,
                        format!("group {} where group {next_group} belongs", h.group),
                    ));
                }
                if h.chunks == 0 {
                    return Err(self.damaged(at, format!("group {} has no chunks", h.group)));
                }
                self.groups.push(h.clone());
                Expect::Records {
                    left: h.chunks,
                    records: h.records,
                }
            }
            (Expect::Records { left, records }, Item::Records(r)) => {
                let (left, records) = (*left - 1, *records);
                let Some(records) = records.checked_sub(r.len() as u64) else {
                    return Err(self.damaged(at, "a group holds more records than its header says"));
                };
                if let Some((k, _)) = r.iter().find(|(k, _)| {
                    !matches!(
                        k.first(),
                        Some(&TAG_DATA | &TAG_SESSION | &TAG_REVOKED_LEASE)
                    )
                }) {
                    return Err(self.damaged(
                        at,
                        format!(
                            "a record outside a partition's families: {:?}",
                            k.escape_ascii().to_string()
                        ),
                    ));
                }
                match (left, records) {
                    (0, 0) => Expect::Group,
                    (0, _) => {
                        return Err(
                            self.damaged(at, "a group holds fewer records than its header says")
                        )
                    }
                    _ => Expect::Records { left, records },
                }
            }
            (Expect::Group, Item::Summary(s)) => {
                if next_group != u64::from(partitions) + 1 {
                    return Err(self.damaged(
                        at,
                        format!(
                            "the summary after {next_group} of {} groups",
                            u64::from(partitions) + 1
                        ),
                    ));
                }
                if s.groups != self.groups {
                    return Err(self.damaged(at, "the summary does not match the groups read"));
                }
                Expect::Trailer
            }
            (expect, item) => {
                let what = match item {
                    Item::Manifest(_) => "a manifest",
                    Item::Group(_) => "a group header",
                    Item::Records(_) => "records",
                    Item::Summary(_) => "the summary",
                };
                return Err(self.damaged(at, format!("{what} where {expect:?} was expected")));
            }
        };
        Ok(())
    }
}

/// Reads a whole backup and checks it; returns its manifest and summary.
pub fn verify(inner: impl Read) -> Result<(Manifest, Summary), BackupError> {
    let mut r = BackupReader::open(inner)?;
    let mut summary = None;
    while let Some(item) = r.next_item()? {
        if let Item::Summary(s) = item {
            summary = Some(s);
        }
    }
    match (r.manifest.take(), summary) {
        (Some(m), Some(s)) => Ok((m, s)),
        _ => Err(BackupError::Truncated {
            offset: r.offset,
            what: "the file".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small backup of 2 partitions: (file, offsets where each section starts).
    fn sample() -> Result<(Vec<u8>, Vec<usize>), BackupError> {
        let (mut e, mut file) = Encoder::new();
        let mut bounds = vec![file.len()];
        let m = Manifest {
            cluster_id: 7,
            partitions: 2,
            started_unix_ms: 1,
            swarmkv: "test".into(),
        };
        file.extend(e.manifest(&m)?);
        bounds.push(file.len());
        let mut groups = Vec::new();
        for g in 0..3u64 {
            let h = GroupHeader {
                group: g,
                index: 10 + g,
                term: 6,
                chunks: 2,
                records: 3,
                node: 1,
            };
            file.extend(e.group(&h)?);
            bounds.push(file.len());
            let r1 = vec![(vec![TAG_DATA, b'a', g as u8], vec![1, 2, 3])];
            let r2 = vec![
                (vec![TAG_DATA, b'b'], vec![4]),
                (vec![TAG_SESSION, 9], vec![5]),
            ];
            file.extend(e.records(&r1)?);
            bounds.push(file.len());
            file.extend(e.records(&r2)?);
            bounds.push(file.len());
            groups.push(h);
        }
        file.extend(e.finish(&Summary {
            finished_unix_ms: 2,
            groups,
        })?);
        bounds.push(file.len() - 4);
        Ok((file, bounds))
    }

    #[test]
    fn a_written_backup_reads_back_whole() -> Result<(), BackupError> {
        let (file, _) = sample()?;
        let (m, s) = verify(file.as_slice())?;
        assert_eq!(m.partitions, 2);
        assert_eq!(s.groups.len(), 3);
        assert_eq!(s.groups[2].index, 12);
        Ok(())
    }

    #[test]
    fn a_backup_cut_anywhere_is_refused_as_truncated() -> Result<(), BackupError> {
        let (file, bounds) = sample()?;
        // Every section boundary, and every byte besides: a cut is never taken for an end.
        for cut in bounds.iter().copied().chain(0..file.len()) {
            let err = verify(&file[..cut]).err();
            assert!(
                matches!(
                    err,
                    Some(BackupError::Truncated { .. } | BackupError::NotABackup)
                ),
                "cut at {cut} of {}: {err:?}",
                file.len()
            );
        }
        Ok(())
    }

    #[test]
    fn every_flipped_byte_is_refused_with_its_reason() -> Result<(), BackupError> {
        let (file, _) = sample()?;
        for at in 0..file.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = file.clone();
                bad[at] ^= bit;
                let err = verify(bad.as_slice()).err();
                assert!(
                    err.as_ref().is_some_and(BackupError::is_bad_file),
                    "byte {at} ^ {bit:#x}: {err:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn another_version_and_another_file_are_refused() -> Result<(), BackupError> {
        let (mut file, _) = sample()?;
        file[11] = 3;
        assert!(matches!(
            verify(file.as_slice()),
            Err(BackupError::Version { found: 3 })
        ));
        file[11] = 0;
        assert!(matches!(
            verify(file.as_slice()),
            Err(BackupError::Version { found: 0 })
        ));
        // Version 1 (per-client session records, which the store still reads) is read: the
        // header is under the whole-file checksum, which is redone for it.
        file[11] = 1;
        let end = file.len() - 4;
        let crc = crc32c::crc32c(&file[..end]);
        file[end..].copy_from_slice(&crc.to_be_bytes());
        verify(file.as_slice())?;
        assert!(matches!(
            verify(&b"{\"hello\": 1}"[..]),
            Err(BackupError::NotABackup)
        ));
        Ok(())
    }

    #[test]
    fn data_after_the_end_and_reordered_sections_are_refused() -> Result<(), BackupError> {
        let (file, bounds) = sample()?;
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            verify(longer.as_slice()),
            Err(BackupError::Damaged { .. })
        ));
        // Group 1's sections swapped with group 2's: every section is intact, the order is not.
        let (g1, g2, end) = (bounds[4], bounds[7], bounds[10]);
        let mut swapped = file[..g1].to_vec();
        swapped.extend_from_slice(&file[g2..end]);
        swapped.extend_from_slice(&file[g1..g2]);
        swapped.extend_from_slice(&file[end..]);
        assert!(matches!(
            verify(swapped.as_slice()),
            Err(BackupError::Damaged { .. })
        ));
        Ok(())
    }
}
