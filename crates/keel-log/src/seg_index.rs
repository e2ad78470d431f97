//! The index file of a sealed segment, so that opening a store does not
//! read the data of every sealed segment.
//!
//! ```text
//! Index file <first-index>.idx, beside <first-index>.log; little-endian.
//! Written once when the segment is sealed (after the next segment's file
//! exists durably), fsynced, never modified; removed before a truncation
//! makes the segment active again. Optional: if it is missing or fails any
//! check, open scans the segment and writes a new one.
//!
//!  off  len  field
//!    0    8  magic "KEELIDX1"
//!    8    8  first_index    first raft index of the segment (= file name)
//!   16    8  entry_count    >= 1
//!   24    8  data_len       length of the segment file when sealed
//!   32    8  base_offset    user offset of the first entry
//!   40    8  end_offset     user offset after the last entry
//!   48    4  run_count      number of term runs, 1 ..= entry_count
//!   52    4  reserved, 0
//!   56    .  run_count   x { u64 first index of the run, u64 term }
//!    .    .  entry_count x { u32 byte position, u32 base_offset - base_offset }
//!    .    4  CRC32C of every byte before it
//! ```
//!
//! On open an index is trusted only if its CRC matches, its numbers are
//! internally consistent (positions increasing by at least a batch header,
//! offsets non-decreasing, runs increasing), the segment file has exactly
//! `data_len` bytes, and the header of the last batch, read from the
//! segment, has the index, term, base offset and length the index claims.

use keel_format::{BatchHeader, HEADER_LEN};

use crate::fs::{FsFile, read_full_at};

const MAGIC: &[u8; 8] = b"KEELIDX1";
const FIXED: usize = 56;

/// The facts of a sealed segment, as kept in memory and in the index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegFacts {
    pub first_index: u64,
    pub data_len: u64,
    pub base_offset: u64,
    pub end_offset: u64,
    pub terms: Vec<(u64, u64)>,
    pub pos: Vec<u32>,
    pub off: Vec<u32>,
}

pub(crate) fn encode(f: &SegFacts) -> Vec<u8> {
    let mut b = Vec::with_capacity(FIXED + f.terms.len() * 16 + f.pos.len() * 8 + 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&f.first_index.to_le_bytes());
    b.extend_from_slice(&(f.pos.len() as u64).to_le_bytes());
    b.extend_from_slice(&f.data_len.to_le_bytes());
    b.extend_from_slice(&f.base_offset.to_le_bytes());
    b.extend_from_slice(&f.end_offset.to_le_bytes());
    b.extend_from_slice(&(f.terms.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(i, t) in &f.terms {
        b.extend_from_slice(&i.to_le_bytes());
        b.extend_from_slice(&t.to_le_bytes());
    }
    for (p, o) in f.pos.iter().zip(&f.off) {
        b.extend_from_slice(&p.to_le_bytes());
        b.extend_from_slice(&o.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The largest index file a segment of `seg_len` bytes can have: every
/// entry takes at least a batch header. Bounds the read before allocating.
pub(crate) fn max_len_for(seg_len: u64) -> u64 {
    let entries = seg_len / HEADER_LEN as u64;
    FIXED as u64 + entries * 24 + 4
}

/// Decodes and checks an index file's bytes on their own.
pub(crate) fn decode(b: &[u8]) -> Result<SegFacts, String> {
    if b.len() < FIXED + 4 {
        return Err(format!("{} bytes is too short for an index file", b.len()));
    }
    let body = &b[..b.len() - 4];
    let stored = u32_at(b, b.len() - 4);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(format!(
            "index checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    if &b[..8] != MAGIC {
        return Err("bad index file magic".into());
    }
    let first_index = u64_at(b, 8);
    let count = u64_at(b, 16);
    let data_len = u64_at(b, 24);
    let base_offset = u64_at(b, 32);
    let end_offset = u64_at(b, 40);
    let runs = u32_at(b, 48) as u64;
    let expect_len = (FIXED as u64)
        .checked_add(runs.checked_mul(16).ok_or("run count overflows")?)
        .and_then(|v| v.checked_add(count.checked_mul(8)?))
        .ok_or("entry count overflows")?;
    if expect_len != body.len() as u64 {
        return Err(format!(
            "index holds {} bytes, its counts say {expect_len}",
            body.len()
        ));
    }
    if count == 0 || runs == 0 || runs > count || first_index == 0 {
        return Err("index counts out of range".into());
    }
    if end_offset < base_offset || data_len > u32::MAX as u64 {
        return Err("index offsets or length out of range".into());
    }
    let mut terms = Vec::with_capacity(runs as usize);
    let mut at = FIXED;
    for _ in 0..runs {
        terms.push((u64_at(b, at), u64_at(b, at + 8)));
        at += 16;
    }
    let last_index = first_index
        .checked_add(count - 1)
        .ok_or("index range overflows")?;
    if terms[0].0 != first_index {
        return Err("first term run does not start at the first index".into());
    }
    for w in terms.windows(2) {
        if w[1].0 <= w[0].0 || w[1].1 <= w[0].1 {
            return Err("term runs are not increasing".into());
        }
    }
    if terms[terms.len() - 1].0 > last_index {
        return Err("term run past the last entry".into());
    }
    let mut pos = Vec::with_capacity(count as usize);
    let mut off = Vec::with_capacity(count as usize);
    for _ in 0..count {
        pos.push(u32_at(b, at));
        off.push(u32_at(b, at + 4));
        at += 8;
    }
    if pos[0] != 0 || off[0] != 0 {
        return Err("first entry is not at position 0, offset delta 0".into());
    }
    for k in 1..pos.len() {
        if (pos[k] as u64) < pos[k - 1] as u64 + HEADER_LEN as u64 || off[k] < off[k - 1] {
            return Err(format!("entry {k} of the index is out of order"));
        }
    }
    let last_pos = *pos.last().unwrap_or(&0) as u64;
    if last_pos + HEADER_LEN as u64 > data_len
        || base_offset + (*off.last().unwrap_or(&0) as u64) > end_offset
    {
        return Err("last entry runs past the data".into());
    }
    Ok(SegFacts {
        first_index,
        data_len,
        base_offset,
        end_offset,
        terms,
        pos,
        off,
    })
}

/// Reads the index file and checks it against its segment file.
pub(crate) fn load(
    idx: &dyn FsFile,
    seg: &dyn FsFile,
    name_index: u64,
) -> Result<SegFacts, String> {
    let seg_len = seg
        .size()
        .map_err(|e| format!("cannot stat segment: {e}"))?;
    let idx_len = idx.size().map_err(|e| format!("cannot stat index: {e}"))?;
    if idx_len > max_len_for(seg_len) {
        return Err(format!(
            "index of {idx_len} bytes is too large for a segment of {seg_len} bytes"
        ));
    }
    let mut b = vec![0u8; idx_len as usize];
    let got = read_full_at(idx, &mut b, 0).map_err(|e| format!("cannot read index: {e}"))?;
    if got != b.len() {
        return Err("index file shrank while reading".into());
    }
    let f = decode(&b)?;
    if f.first_index != name_index {
        return Err(format!(
            "index is for first index {}, the file name says {name_index}",
            f.first_index
        ));
    }
    if f.data_len != seg_len {
        return Err(format!(
            "index covers {} bytes, the segment has {seg_len}",
            f.data_len
        ));
    }
    // The last batch header must be what the index says.
    let last_pos = *f.pos.last().unwrap_or(&0) as u64;
    let mut h = [0u8; HEADER_LEN];
    if read_full_at(seg, &mut h, last_pos).map_err(|e| format!("cannot read segment: {e}"))?
        != HEADER_LEN
    {
        return Err("segment shorter than its index says".into());
    }
    let h = BatchHeader::parse(&h).map_err(|e| format!("last batch header: {e}"))?;
    let last_index = f.first_index + f.pos.len() as u64 - 1;
    let last_term = f.terms.last().map(|r| r.1).unwrap_or(0);
    let last_base = f.base_offset + *f.off.last().unwrap_or(&0) as u64;
    if h.index != last_index
        || h.term != last_term
        || h.base_offset != last_base
        || h.end_offset() != f.end_offset
        || last_pos + h.length as u64 != seg_len
    {
        return Err("the last batch in the segment does not match the index".into());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> SegFacts {
        SegFacts {
            first_index: 10,
            data_len: 300,
            base_offset: 100,
            end_offset: 107,
            terms: vec![(10, 2), (12, 5)],
            pos: vec![0, 100, 200],
            off: vec![0, 3, 3],
        }
    }

    #[test]
    fn round_trips() {
        let f = facts();
        assert_eq!(decode(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let b = encode(&facts());
        for i in 0..b.len() * 8 {
            let mut m = b.clone();
            m[i / 8] ^= 1 << (i % 8);
            assert!(decode(&m).is_err(), "flip {i} not caught");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let b = encode(&facts());
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn huge_counts_with_a_valid_crc_are_rejected_without_allocating() {
        let mut b = encode(&facts());
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let n = b.len();
        let crc = crc32c::crc32c(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&b).is_err());
    }
}
