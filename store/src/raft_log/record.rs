//! The record framing of the raft log, and the rule that tells a torn final write from damage.
//!
//! A record is `[len u32 LE][crc32c u32 LE][kind u8][group u64 LE][payload]`, where `len`
//! counts kind, group and payload and the CRC32C covers the same bytes. Segments are
//! preallocated with zeros, so a zero `len` where a record would start marks the end of what
//! was written. The high bit of `kind` marks the last record of a batch: replay applies a
//! batch only once it has read that record, which makes every batch atomic across a crash.

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState};

use crate::error::{Result, StoreError};

/// Bytes of `len` and `crc` in front of every record.
pub(crate) const FRAME: usize = 8;
/// Bytes of `kind` and `group` at the start of every record's checked body.
const PREFIX: usize = 9;
/// The unit a disk writes atomically (at least): a torn write leaves whole sectors unwritten.
const SECTOR: usize = 512;
/// Flag in `kind`: this record closes its batch.
const BATCH_END: u8 = 0x80;
/// First bytes of the header record of every segment.
const MAGIC: &[u8; 8] = b"swkv-log";
/// Version of this format, in every segment header.
pub(crate) const VERSION: u32 = 1;

/// What a record says. Entries are one record each, so a read fetches exactly one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// At offset 0 of every segment: magic, format version, segment id.
    Header = 1,
    Entry = 2,
    HardState = 3,
    ConfState = 4,
    /// Entries up to `index` are gone; payload `(index, term)`.
    Compact = 5,
    /// Snapshot installed: every entry gone, the log restarts after `(index, term)`.
    Reset = 6,
    /// The group's replica was destroyed: forget it.
    RemoveGroup = 7,
}

/// A decoded payload.
pub(crate) enum Payload {
    Header { segment: u64 },
    Entry(Entry),
    HardState(HardState),
    ConfState(ConfState),
    Compact { index: u64, term: u64 },
    Reset { index: u64, term: u64 },
    RemoveGroup,
}

/// Appends one record whose payload `payload` writes, and returns where it starts in `buf`.
pub(crate) fn put(
    buf: &mut Vec<u8>,
    kind: Kind,
    group: u64,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<usize> {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME]);
    buf.push(kind as u8);
    buf.extend_from_slice(&group.to_le_bytes());
    payload(buf)?;
    let len = buf.len() - start - FRAME;
    // The whole record's length must fit the index's u32 too.
    let max = u32::MAX as usize - FRAME;
    if len > max {
        let what = "raft log record";
        return Err(StoreError::TooLarge { what, len, max });
    }
    let len32 = len as u32;
    buf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
    seal(buf, start);
    Ok(start)
}

/// Writes the CRC of the record at `start` (the last one in `buf`).
fn seal(buf: &mut [u8], start: usize) {
    let crc = crc32c::crc32c(&buf[start + FRAME..]);
    buf[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

/// Marks the record at `start`, the last one in `buf`, as the end of its batch.
pub(crate) fn end_batch(buf: &mut [u8], start: usize) {
    buf[start + FRAME] |= BATCH_END;
    seal(buf, start);
}

pub(crate) fn put_message(
    buf: &mut Vec<u8>,
    kind: Kind,
    group: u64,
    m: &impl Message,
) -> Result<usize> {
    put(buf, kind, group, |b| {
        m.write_to_vec(b)
            .map_err(|e| StoreError::corrupt("raft log", format!("group {group} {kind:?}"), e))
    })
}

pub(crate) fn put_pair(buf: &mut Vec<u8>, kind: Kind, group: u64, a: u64, b: u64) -> Result<usize> {
    put(buf, kind, group, |buf| {
        buf.extend_from_slice(&a.to_le_bytes());
        buf.extend_from_slice(&b.to_le_bytes());
        Ok(())
    })
}

pub(crate) fn put_header(buf: &mut Vec<u8>, segment: u64) -> Result<usize> {
    put(buf, Kind::Header, 0, |buf| {
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&segment.to_le_bytes());
        Ok(())
    })
}

/// One step of reading a segment.
pub(crate) enum Frame<'a> {
    /// Nothing more was written here (a zero length, or the file ends).
    End,
    /// A record whose CRC checks out.
    Good {
        kind: u8,
        batch_end: bool,
        group: u64,
        payload: &'a [u8],
        next: usize,
    },
    /// A record that does not check out; it claims to end at `end` (maybe past the file).
    Bad { end: u64, detail: String },
}

/// Reads the record at `off` of a segment's bytes.
pub(crate) fn parse(buf: &[u8], off: usize) -> Frame<'_> {
    let rest = &buf[off.min(buf.len())..];
    if rest.len() < FRAME {
        if rest.iter().all(|b| *b == 0) {
            return Frame::End;
        }
        return Frame::Bad {
            end: (off + FRAME) as u64,
            detail: "a record frame runs past the end of the file".into(),
        };
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len == 0 {
        return Frame::End;
    }
    let end = (off + FRAME) as u64 + len as u64;
    if len < PREFIX {
        return Frame::Bad {
            end,
            detail: format!("record length {len} is too short"),
        };
    }
    if FRAME + len > rest.len() {
        return Frame::Bad {
            end,
            detail: format!("a record of {len} bytes runs past the end of the file"),
        };
    }
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    let body = &rest[FRAME..FRAME + len];
    if crc32c::crc32c(body) != crc {
        return Frame::Bad {
            end,
            detail: "record checksum mismatch".into(),
        };
    }
    let mut group = [0u8; 8];
    group.copy_from_slice(&body[1..PREFIX]);
    Frame::Good {
        kind: body[0] & !BATCH_END,
        batch_end: body[0] & BATCH_END != 0,
        group: u64::from_le_bytes(group),
        payload: &body[PREFIX..],
        next: off + FRAME + len,
    }
}

fn pair(payload: &[u8]) -> std::result::Result<(u64, u64), String> {
    if payload.len() != 16 {
        return Err(format!(
            "expected 16 bytes of index and term, found {}",
            payload.len()
        ));
    }
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&payload[..8]);
    b.copy_from_slice(&payload[8..]);
    Ok((u64::from_le_bytes(a), u64::from_le_bytes(b)))
}

/// Decodes a record whose CRC checked out. An error here is not a torn write (the bytes are
/// the ones written): another program or format wrote them.
pub(crate) fn decode(kind: u8, payload: &[u8]) -> std::result::Result<Payload, String> {
    let pb = |e: protobuf::ProtobufError| format!("undecodable record of kind {kind}: {e}");
    Ok(match kind {
        k if k == Kind::Header as u8 => {
            if payload.len() != 20 || &payload[..8] != MAGIC {
                return Err("not a swarmkv raft log segment header".into());
            }
            let mut v = [0u8; 4];
            v.copy_from_slice(&payload[8..12]);
            let version = u32::from_le_bytes(v);
            if version != VERSION {
                return Err(format!(
                    "format version {version}, this build reads {VERSION}"
                ));
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&payload[12..]);
            Payload::Header {
                segment: u64::from_le_bytes(id),
            }
        }
        k if k == Kind::Entry as u8 => {
            Payload::Entry(Entry::parse_from_bytes(payload).map_err(pb)?)
        }
        k if k == Kind::HardState as u8 => {
            Payload::HardState(HardState::parse_from_bytes(payload).map_err(pb)?)
        }
        k if k == Kind::ConfState as u8 => {
            Payload::ConfState(ConfState::parse_from_bytes(payload).map_err(pb)?)
        }
        k if k == Kind::Compact as u8 => {
            let (index, term) = pair(payload)?;
            Payload::Compact { index, term }
        }
        k if k == Kind::Reset as u8 => {
            let (index, term) = pair(payload)?;
            Payload::Reset { index, term }
        }
        k if k == Kind::RemoveGroup as u8 => Payload::RemoveGroup,
        k => return Err(format!("unknown record kind {k}")),
    })
}

/// Whether a bad record at `off`, claiming to end at `end`, in the last segment can be the
/// torn final write of a crash rather than damage. `data_end` is one past the segment's last
/// non-zero byte. As etcd's `isTornEntry`: a torn write leaves whole sectors unwritten, i.e.
/// zero (the file was preallocated with zeros and nothing is ever written past the end), so
/// the record is torn if a sector it overlaps is entirely zero; and a record reaching past
/// the last written byte was cut short, whatever the sector size of the disk was.
pub(crate) fn looks_torn(buf: &[u8], off: usize, end: u64, data_end: usize) -> bool {
    if end > data_end as u64 {
        return true;
    }
    let end = end as usize;
    let mut sector = off / SECTOR * SECTOR;
    while sector < end {
        let bytes = &buf[sector..(sector + SECTOR).min(buf.len())];
        if bytes.iter().all(|b| *b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_a_flipped_byte_fails_its_checksum() -> Result<()> {
        let mut buf = Vec::new();
        put_pair(&mut buf, Kind::Compact, 7, 10, 3)?;
        let start = put_pair(&mut buf, Kind::Reset, 8, 20, 4)?;
        end_batch(&mut buf, start);
        let Frame::Good {
            kind,
            batch_end,
            group,
            payload,
            next,
        } = parse(&buf, start)
        else {
            panic!("record does not parse");
        };
        assert_eq!(
            (kind, batch_end, group, next),
            (Kind::Reset as u8, true, 8, buf.len())
        );
        assert!(matches!(
            decode(kind, payload),
            Ok(Payload::Reset { index: 20, term: 4 })
        ));
        assert!(matches!(parse(&buf, buf.len()), Frame::End));
        buf[start + 12] ^= 1;
        assert!(matches!(parse(&buf, start), Frame::Bad { .. }));
        Ok(())
    }

    #[test]
    fn torn_rule_needs_a_zero_sector_or_a_cut_past_the_data() {
        let buf = vec![1u8; 2048];
        assert!(!looks_torn(&buf, 100, 200, 2048));
        assert!(looks_torn(&buf, 100, 4000, 2048));
        let mut holed = buf.clone();
        holed[512..1024].fill(0);
        assert!(looks_torn(&holed, 100, 600, 2048));
        assert!(!looks_torn(&holed, 1100, 1200, 2048));
    }
}
