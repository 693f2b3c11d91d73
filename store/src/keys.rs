//! Key layout of every tree: `[group id BE u64][tag u8][rest]`.
//!
//! Big-endian integers make byte order equal numeric order, so one group's records are one
//! contiguous range and a family's records iterate in numeric order. The layout is part of the
//! on-disk format: change it only together with [`crate::FORMAT_VERSION`].

/// Kv tree: the partition's event history (see [`crate::history`]): alone, the compacted
/// revision; followed by a revision and an event number, one event. It sorts before the
/// partition's data, so snapshots (which copy from [`TAG_DATA`] on) leave it out.
pub const TAG_HISTORY: u8 = 0x00;
/// Kv tree: the apply state (applied index, term, conf state) of the partition.
pub const TAG_APPLY_STATE: u8 = 0x01;
/// Kv tree: user data, followed by the user key.
pub const TAG_DATA: u8 = 0x02;
/// Kv tree: client sessions (deduplication of retried writes), followed by a bucket number:
/// the records of the bucket's clients (see [`crate::sessions`]).
pub const TAG_SESSION: u8 = 0x03;
/// Kv tree: leases revoked in this partition, followed by the lease id. A put naming one of
/// them is refused, so a put racing the lease's revocation cannot leave a key behind.
pub const TAG_REVOKED_LEASE: u8 = 0x04;
/// Snapshot trees: descriptor of a snapshot, followed by the snapshot index.
pub const TAG_SNAP_HEADER: u8 = 0x01;
/// Snapshot trees: a chunk, followed by snapshot index and chunk sequence number.
pub const TAG_SNAP_CHUNK: u8 = 0x02;

/// `[group][tag]`: a record that exists once per group, or the prefix of a family.
pub fn group_tag(group: u64, tag: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(tag);
    k
}

/// `[group][tag][index]`.
pub fn group_tag_index(group: u64, tag: u8, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(tag);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// `[group][TAG_DATA][user key]`.
pub fn data_key(group: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.push(TAG_DATA);
    k.extend_from_slice(key);
    k
}

/// `[group][TAG_REVOKED_LEASE][lease]`: present once the partition deleted the lease's keys.
pub fn revoked_lease_key(group: u64, lease: u64) -> Vec<u8> {
    group_tag_index(group, TAG_REVOKED_LEASE, lease)
}

/// `[group][TAG_SNAP_CHUNK][index][seq]`.
pub fn chunk_key(group: u64, index: u64, seq: u32) -> Vec<u8> {
    let mut k = group_tag_index(group, TAG_SNAP_CHUNK, index);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The group id a key starts with, if it is long enough to have one.
pub fn group_of(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The big-endian u64 at `key[at..at + 8]`.
pub fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = key.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The big-endian u32 at `key[at..at + 4]`.
pub fn u32_at(key: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = key.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` when
/// no such string exists (the prefix is empty or all 0xff): the exclusive end of a prefix scan.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Renders a user key for error messages: printable ASCII as is, other bytes escaped.
pub fn display_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_sort_by_group_then_index() {
        let mut keys = [
            group_tag_index(2, TAG_DATA, 1),
            group_tag_index(1, TAG_DATA, 256),
            group_tag_index(1, TAG_DATA, 2),
        ];
        keys.sort();
        assert_eq!(keys[0], group_tag_index(1, TAG_DATA, 2));
        assert_eq!(group_of(&keys[2]), Some(2));
        assert_eq!(u64_at(&keys[1], 9), Some(256));
    }

    #[test]
    fn prefix_end_handles_carry_and_all_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[0x01, 0xff]), Some(vec![0x02]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
