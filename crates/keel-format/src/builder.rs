use std::cell::RefCell;

use bytes::{Bytes, BytesMut};

use crate::{Batch, EntryKind, FORMAT_VERSION, HEADER_LEN, RECORD_PREFIX_LEN, crc32c};

/// Builds the body of a batch in place, with room for the header reserved at
/// the front, so that sealing it (when the leader assigns term, index and
/// base offset) writes the header and the CRC without copying the records.
///
/// Small batches are built in a piece of a per-thread slab: a batch is
/// cloned several times on its way through the consensus core, and a
/// `Bytes` made from its own `Vec` costs two allocations (the buffer and,
/// at the first clone, the shared reference count), while pieces of a slab
/// share one allocation and one count per [`SLAB_LEN`] bytes. A small batch
/// that outgrew its piece is copied into the slab when sealed.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
    /// `buf` is not a slab piece (it grew, or was cloned).
    own_buf: bool,
}

/// Bytes per slab. A live batch keeps its whole slab allocated, so this
/// bounds what a long-lived small batch can pin.
const SLAB_LEN: usize = 16 << 10;
/// Batches up to this size are built in (or copied to) the slab; larger
/// ones keep their own buffer.
const SLAB_MAX_BATCH: usize = 1 << 10;

thread_local! {
    static SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// An empty buffer of capacity `n` carved from this thread's slab.
fn slab_piece(n: usize) -> BytesMut {
    SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() < n {
            // The old slab's tail is dropped; its batches keep it alive.
            *slab = BytesMut::with_capacity(SLAB_LEN);
        }
        let rest = slab.split_off(n);
        std::mem::replace(&mut *slab, rest)
    })
}

impl Clone for BatchBuilder {
    fn clone(&self) -> Self {
        BatchBuilder {
            buf: self.buf.clone(),
            count: self.count,
            own_buf: true,
        }
    }
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
        let cap = HEADER_LEN.saturating_add(body_capacity);
        let (mut buf, own_buf) = if cap <= SLAB_MAX_BATCH {
            (slab_piece(cap), false)
        } else {
            (BytesMut::with_capacity(cap), true)
        };
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        BatchBuilder {
            buf,
            count: 0,
            own_buf,
        }
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
        self.grow_for(RECORD_PREFIX_LEN + payload.len());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.count += 1;
    }

    pub(crate) fn push_raw_body(&mut self, body: &[u8]) {
        self.grow_for(body.len());
        self.buf.extend_from_slice(body);
    }

    /// Makes room for `n` more bytes. A slab piece that must grow moves to
    /// a buffer of its own, sized here: `BytesMut::reserve` on a shared
    /// buffer would allocate at least the whole slab's capacity.
    fn grow_for(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() >= n {
            return;
        }
        if self.own_buf {
            self.buf.reserve(n);
        } else {
            let len = self.buf.len();
            let mut own = BytesMut::with_capacity((len + n).max(2 * len));
            own.extend_from_slice(&self.buf);
            self.buf = own;
            self.own_buf = true;
        }
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
        let frame: Bytes = if self.own_buf && self.buf.len() <= SLAB_MAX_BATCH {
            let mut piece = slab_piece(self.buf.len());
            piece.extend_from_slice(&self.buf);
            piece.freeze()
        } else {
            self.buf.freeze()
        };
        Batch::from_encoded(frame)
    }
}
