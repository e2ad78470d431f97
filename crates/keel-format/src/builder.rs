use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use crate::{Batch, EntryKind, FORMAT_VERSION, HEADER_LEN, RECORD_PREFIX_LEN, crc32c};

/// Builds the body of a batch in place, with room for the header reserved at
/// the front, so that sealing it (when the leader assigns term, index and
/// base offset) writes the header and the CRC without copying the records.
///
/// Small sealed batches are copied into a per-thread slab instead: a batch
/// is cloned several times on its way through the consensus core, and a
/// `Bytes` made from its own `Vec` costs two allocations (the buffer and,
/// at the first clone, the shared reference count), while slices of a slab
/// share one allocation and one count per [`SLAB_LEN`] bytes.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
}

/// Bytes per slab. A live batch keeps its whole slab allocated, so this
/// bounds what a long-lived small batch can pin.
const SLAB_LEN: usize = 16 << 10;
/// Sealed batches up to this size go to the slab; larger ones keep their
/// own buffer (the copy would cost more than the allocation saves).
const SLAB_MAX_BATCH: usize = 1 << 10;

thread_local! {
    static SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Copies `frame` into this thread's slab and returns it as shared bytes.
fn slab_copy(frame: &[u8]) -> Bytes {
    SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() < frame.len() {
            // The old slab's tail is dropped; its batches keep it alive.
            *slab = BytesMut::with_capacity(SLAB_LEN);
        }
        slab.extend_from_slice(frame);
        slab.split_to(frame.len()).freeze()
    })
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
        let mut buf = Vec::with_capacity(HEADER_LEN + body_capacity);
        buf.resize(HEADER_LEN, 0);
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
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    pub(crate) fn push_raw_body(&mut self, body: &[u8]) {
        self.buf.extend_from_slice(body);
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
        let frame = if self.buf.len() <= SLAB_MAX_BATCH {
            slab_copy(&self.buf)
        } else {
            Bytes::from(self.buf)
        };
        Batch::from_encoded(frame)
    }
}
