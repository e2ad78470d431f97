//! Segment files: naming, and the scanner that validates their content.
//!
//! ```text
//! Segment file <first-index>.log, the first index as 20 decimal digits
//! (00000000000000000001.log), so that names sort like the indexes.
//!
//!   batch(first_index) batch(first_index + 1) ... batch(last_index)
//!
//! Nothing else: no file header, no padding, no trailer. Each batch is a
//! keel-format batch (its own length, CRC32C, term, index, kind, base offset,
//! record count, timestamp; see keel_format), written exactly as the leader
//! encoded it. Indexes are contiguous, terms non-decreasing, user offsets
//! dense (an entry's base offset is the previous entry's end offset), both
//! within a file and across consecutive files. A segment is *sealed* when
//! the next one is created; sealed segments never change except by a
//! truncation that makes one active again (its index file is removed first).
//! ```

use bytes::{Bytes, BytesMut};
use keel_format::{Batch, BatchHeader, HEADER_LEN, MAX_BATCH_LEN};

use crate::fs::{FsFile, read_full_at};

pub(crate) const SEGMENT_EXT: &str = "log";
pub(crate) const INDEX_EXT: &str = "idx";

/// `00000000000000000042.log`
pub(crate) fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.{SEGMENT_EXT}")
}

/// `00000000000000000042.idx`
pub(crate) fn index_name(first_index: u64) -> String {
    format!("{first_index:020}.{INDEX_EXT}")
}

/// Parses `<20 digits>.<ext>`; anything else is not ours.
pub(crate) fn parse_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Where a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The file ended exactly after a valid batch.
    Eof,
    /// Bytes at `pos` are not a valid batch (could be a torn write).
    Undecodable { pos: u64, reason: String },
    /// A valid batch at `pos` breaks the log's order (never a torn write).
    Rejected { pos: u64, reason: String },
}

/// The per-entry facts the in-memory index keeps, collected by a scan.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scanned {
    pub pos: Vec<u32>,
    /// `base_offset - self.base_offset` per entry.
    pub off: Vec<u32>,
    /// `(first index, term)` where the term changes.
    pub terms: Vec<(u64, u64)>,
    pub base_offset: u64,
    pub end_offset: u64,
    pub last_term: u64,
    /// End of the valid prefix.
    pub end_pos: u64,
    pub stop: Option<Stop>,
}

/// What a scan expects the first batch to continue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    pub index: u64,
    /// `None`: take the first batch's base offset (check mode after a break).
    pub offset: Option<u64>,
    pub min_term: u64,
}

const CHUNK: usize = 1 << 20;

/// Reads a file front to back in bounded chunks.
pub(crate) struct ChunkReader<'a> {
    file: &'a dyn FsFile,
    len: u64,
    /// File position of `buf[0]`.
    at: u64,
    buf: BytesMut,
}

impl<'a> ChunkReader<'a> {
    pub fn new(file: &'a dyn FsFile, len: u64, start: u64) -> Self {
        ChunkReader {
            file,
            len,
            at: start,
            buf: BytesMut::new(),
        }
    }

    /// Makes `n` bytes available at the front; returns false if the file
    /// ends first. `n` is bounded by the caller (at most MAX_BATCH_LEN).
    fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        if self.buf.len() >= n {
            return Ok(true);
        }
        let have_end = self.at + self.buf.len() as u64;
        let left = self.len.saturating_sub(have_end);
        if (self.buf.len() as u64) + left < n as u64 {
            return Ok(false);
        }
        let want = (n - self.buf.len()).max(CHUNK).min(left as usize);
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let got = read_full_at(self.file, &mut self.buf[old..], have_end)?;
        self.buf.truncate(old + got);
        Ok(self.buf.len() >= n)
    }
}

/// Scans a segment from its start: decodes every batch, checks it continues
/// `expect`, and records the index facts. Stops at the first problem; the
/// result's `end_pos` is the end of the valid prefix.
pub(crate) fn scan(
    file: &dyn FsFile,
    len: u64,
    expect: Expect,
    mut keep: impl FnMut(&Batch),
) -> std::io::Result<Scanned> {
    let mut s = Scanned {
        base_offset: expect.offset.unwrap_or(0),
        end_offset: expect.offset.unwrap_or(0),
        last_term: expect.min_term,
        ..Scanned::default()
    };
    let mut r = ChunkReader::new(file, len, 0);
    let mut next_index = expect.index;
    let mut offset_known = expect.offset.is_some();
    loop {
        let pos = r.at;
        if pos == len {
            s.stop = Some(Stop::Eof);
            break;
        }
        if !r.fill(HEADER_LEN)? {
            s.stop = Some(Stop::Undecodable {
                pos,
                reason: format!("{} bytes left, less than a batch header", len - pos),
            });
            break;
        }
        let header = match BatchHeader::parse(&r.buf[..HEADER_LEN]) {
            Ok(h) => h,
            Err(e) => {
                s.stop = Some(Stop::Undecodable {
                    pos,
                    reason: e.to_string(),
                });
                break;
            }
        };
        let length = header.length as usize;
        if !r.fill(length)? {
            s.stop = Some(Stop::Undecodable {
                pos,
                reason: format!(
                    "batch of {length} bytes runs past the end of the file ({} bytes left)",
                    len - pos
                ),
            });
            break;
        }
        let batch = match Batch::decode(r.buf.split_to(length).freeze()) {
            Ok(b) => b,
            Err(e) => {
                // `split_to` consumed the bytes; the scan stops here anyway.
                s.stop = Some(Stop::Undecodable {
                    pos,
                    reason: e.to_string(),
                });
                break;
            }
        };
        r.at += length as u64;
        if !offset_known {
            s.base_offset = batch.base_offset();
            s.end_offset = batch.base_offset();
            offset_known = true;
        }
        if let Err(reason) = check_order(&batch, next_index, s.end_offset, s.last_term) {
            s.stop = Some(Stop::Rejected { pos, reason });
            break;
        }
        if pos > u32::MAX as u64 || batch.end_offset() - s.base_offset > u32::MAX as u64 {
            s.stop = Some(Stop::Rejected {
                pos,
                reason: "segment larger than 4 GiB or 4 Gi offsets".into(),
            });
            break;
        }
        s.pos.push(pos as u32);
        s.off.push((batch.base_offset() - s.base_offset) as u32);
        if s.terms.last().is_none_or(|&(_, t)| t != batch.term()) {
            s.terms.push((batch.index(), batch.term()));
        }
        s.last_term = batch.term();
        s.end_offset = batch.end_offset();
        s.end_pos = pos + length as u64;
        next_index += 1;
        keep(&batch);
    }
    Ok(s)
}

/// Checks that `b` continues a log whose next index, next offset and last
/// term are given.
pub(crate) fn check_order(
    b: &Batch,
    next_index: u64,
    next_offset: u64,
    last_term: u64,
) -> Result<(), String> {
    if b.index() != next_index {
        return Err(format!(
            "entry has index {} where {next_index} was expected",
            b.index()
        ));
    }
    if b.term() < last_term {
        return Err(format!(
            "entry {} has term {}, below the previous entry's term {last_term}",
            b.index(),
            b.term()
        ));
    }
    if b.base_offset() != next_offset {
        return Err(format!(
            "entry {} has base offset {} where {next_offset} was expected",
            b.index(),
            b.base_offset()
        ));
    }
    Ok(())
}

/// True if every byte from `from` to `len` is zero: space the writer
/// preallocated and never wrote, not a torn write.
pub(crate) fn is_zero_from(file: &dyn FsFile, len: u64, from: u64) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; CHUNK.min(len.saturating_sub(from) as usize)];
    let mut at = from;
    while at < len {
        let want = ((len - at) as usize).min(chunk.len());
        let got = read_full_at(file, &mut chunk[..want], at)?;
        if got == 0 {
            break;
        }
        if chunk[..got].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += got as u64;
    }
    Ok(true)
}

/// Looks for any valid batch (checksum and all) starting after `from`.
/// Used to tell a torn tail (nothing valid after the damage) from corruption
/// in the middle of the data. Reads in bounded chunks; allocates at most one
/// candidate batch at a time, bounded by MAX_BATCH_LEN and the file.
pub(crate) fn find_valid_batch_after(
    file: &dyn FsFile,
    len: u64,
    from: u64,
) -> std::io::Result<Option<u64>> {
    let mut chunk = vec![0u8; CHUNK + HEADER_LEN];
    let mut start = from + 1;
    while start + HEADER_LEN as u64 <= len {
        let want = ((len - start) as usize).min(chunk.len());
        let got = read_full_at(file, &mut chunk[..want], start)?;
        if got < HEADER_LEN {
            break;
        }
        let candidates = got - HEADER_LEN + 1;
        for i in 0..candidates {
            let Ok(h) = BatchHeader::parse(&chunk[i..i + HEADER_LEN]) else {
                continue;
            };
            let at = start + i as u64;
            let length = h.length as u64;
            if at + length > len || length as usize > MAX_BATCH_LEN {
                continue;
            }
            let mut frame = vec![0u8; length as usize];
            if read_full_at(file, &mut frame, at)? != frame.len() {
                continue;
            }
            if Batch::decode(Bytes::from(frame)).is_ok() {
                return Ok(Some(at));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_strangers() {
        assert_eq!(segment_name(1), "00000000000000000001.log");
        assert_eq!(parse_name(&segment_name(42), SEGMENT_EXT), Some(42));
        assert_eq!(parse_name(&index_name(u64::MAX), INDEX_EXT), Some(u64::MAX));
        assert_eq!(parse_name("1.log", SEGMENT_EXT), None);
        assert_eq!(parse_name("0000000000000000000x.log", SEGMENT_EXT), None);
        assert_eq!(parse_name("00000000000000000001.idx", SEGMENT_EXT), None);
        assert_eq!(parse_name("00000000000000000001log", SEGMENT_EXT), None);
        // 20 digits that overflow u64.
        assert_eq!(parse_name("99999999999999999999.log", SEGMENT_EXT), None);
    }
}
