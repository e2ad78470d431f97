//! keel's record format: one encoding of a raft entry, end to end.
//!
//! A raft entry is a **batch**. The leader encodes it once; the same bytes are
//! written to its disk, sent to followers, checked against the CRC at every
//! hop and served to readers. This crate is the only place that knows the
//! layout. It is pure (no I/O) so that the consensus core, the log store and
//! the transport can all depend on it.
//!
//! ```text
//! Batch, all integers little-endian
//!
//!  off  len  field
//!    0    4  length        total bytes of the batch, header included
//!                          (HEADER_LEN ..= MAX_BATCH_LEN)
//!    4    4  crc           CRC32C (Castagnoli) of bytes [8, length)
//!    8    1  version       FORMAT_VERSION (1)
//!    9    1  kind          0 data, 1 no-op, 2 configuration, 3 snapshot marker,
//!                          4 command (a control entry for the layer that
//!                          hosts the raft group)
//!   10    2  flags         reserved, 0; a reader rejects unknown bits
//!   12    4  record_count  number of records; 0 for every control entry
//!   16    8  term          raft term of the entry
//!   24    8  index         raft index of the entry (>= 1)
//!   32    8  base_offset   user offset of the first record; for a control
//!                          entry, the offset the next record will take
//!   40    8  timestamp     milliseconds since the Unix epoch, set by the
//!                          leader when it proposed the entry
//!   48    .  body
//!
//! Body of a data entry: record_count records, each
//!    u32 length, then `length` bytes of payload.
//! Body of a control entry: opaque to this crate (the consensus core defines
//! the configuration encoding; a command's body belongs to the hosting
//! layer); record_count is 0.
//! ```
//!
//! User offsets are dense per log: the records of an entry take
//! `base_offset .. base_offset + record_count`, so every entry, control
//! entries included, tells the offset that follows it (`end_offset`).

mod batch;
mod builder;
mod error;

pub use batch::{Batch, BatchHeader, EntryKind, Records};
pub use builder::BatchBuilder;
pub use error::FormatError;

/// Bytes of the fixed batch header.
pub const HEADER_LEN: usize = 48;
/// Bytes of the length prefix in front of every record in a data body.
pub const RECORD_PREFIX_LEN: usize = 4;
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Hard upper bound on one encoded batch. A length field above it is
/// corruption, not a reason to allocate.
pub const MAX_BATCH_LEN: usize = 64 << 20;

/// CRC32C as used by the format (Castagnoli polynomial).
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() <= SHORT_CRC_MAX && std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { short_crc32c_sse42(bytes) };
    }
    ::crc32c::crc32c(bytes)
}

/// Up to this many bytes a plain loop of CRC instructions beats the
/// `crc32c` crate, whose three-way interleaving costs more to set up than a
/// small batch (a header and a record or two) takes to checksum.
#[cfg(target_arch = "x86_64")]
const SHORT_CRC_MAX: usize = 128;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn short_crc32c_sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut words = bytes.chunks_exact(8);
    let mut crc = u64::from(u32::MAX);
    for w in &mut words {
        let w: [u8; 8] = w.try_into().expect("chunks of 8");
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(w));
    }
    let mut crc = crc as u32;
    for &b in words.remainder() {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}

#[cfg(test)]
mod tests;
