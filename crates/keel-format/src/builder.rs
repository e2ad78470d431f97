use bytes::{BufMut, BytesMut};

use crate::{Batch, EntryKind, FORMAT_VERSION, HEADER_LEN, RECORD_PREFIX_LEN, crc32c};

/// Builds the body of a batch in place, with room for the header reserved at
/// the front, so that sealing it (when the leader assigns term, index and
/// base offset) writes the header and the CRC without copying the records.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// `body_capacity` is the expected bytes of records (prefixes included).
    pub fn with_capacity(body_capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + body_capacity);
        buf.put_bytes(0, HEADER_LEN);
        BatchBuilder { buf, count: 0 }
    }

    /// Builds a data batch body holding one record.
    pub fn single(payload: &[u8]) -> Self {
        let mut b = Self::with_capacity(RECORD_PREFIX_LEN + payload.len());
        b.push(payload);
        b
    }

    /// Appends one record. Panics only if one record exceeds 4 GiB, which
    /// callers bound far lower (the record size limit).
    pub fn push(&mut self, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("a record is bounded far below 4 GiB");
        self.buf.put_u32_le(len);
        self.buf.put_slice(payload);
        self.count += 1;
    }

    pub(crate) fn push_raw_body(&mut self, body: &[u8]) {
        self.buf.put_slice(body);
    }

    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Bytes the sealed batch will take, header included.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the header and the CRC and returns the finished batch.
    /// For a control kind the records pushed so far must be none (the body is
    /// raw); `base_offset` is then the next user offset.
    pub fn seal(
        mut self,
        kind: EntryKind,
        term: u64,
        index: u64,
        base_offset: u64,
        timestamp: u64,
    ) -> Batch {
        assert!(index >= 1, "raft indexes start at 1");
        let count = if kind == EntryKind::Data {
            self.count
        } else {
            0
        };
        let length = u32::try_from(self.buf.len()).expect("a batch is bounded by MAX_BATCH_LEN");
        let h = &mut self.buf[..HEADER_LEN];
        h[0..4].copy_from_slice(&length.to_le_bytes());
        h[8] = FORMAT_VERSION;
        h[9] = kind as u8;
        h[10..12].copy_from_slice(&0u16.to_le_bytes());
        h[12..16].copy_from_slice(&count.to_le_bytes());
        h[16..24].copy_from_slice(&term.to_le_bytes());
        h[24..32].copy_from_slice(&index.to_le_bytes());
        h[32..40].copy_from_slice(&base_offset.to_le_bytes());
        h[40..48].copy_from_slice(&timestamp.to_le_bytes());
        let crc = crc32c(&self.buf[8..]);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Batch::from_encoded(self.buf.freeze())
    }
}
