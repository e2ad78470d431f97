use bytes::Bytes;

use crate::{FORMAT_VERSION, FormatError, HEADER_LEN, MAX_BATCH_LEN, RECORD_PREFIX_LEN, crc32c};

/// What an entry is. Only `Data` carries records and consumes user offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// Records appended by users.
    Data = 0,
    /// The empty entry every new leader appends to open its term.
    Noop = 1,
    /// A cluster configuration (body defined by the consensus core).
    Config = 2,
    /// Marks the point a snapshot was installed (body defined by the core).
    SnapshotMarker = 3,
    /// A control entry whose body belongs to the layer that hosts the raft
    /// group (opaque to this crate and to the consensus core): takes no user
    /// offsets, `record_count` 0.
    Command = 4,
}

impl EntryKind {
    /// The kind with this byte value, or `FormatError::Kind` for an unknown one.
    #[inline]
    pub fn from_u8(v: u8) -> Result<Self, FormatError> {
        Ok(match v {
            0 => EntryKind::Data,
            1 => EntryKind::Noop,
            2 => EntryKind::Config,
            3 => EntryKind::SnapshotMarker,
            4 => EntryKind::Command,
            other => return Err(FormatError::Kind(other)),
        })
    }

    /// Every kind but `Data` is a control entry: no records, no offsets.
    pub fn is_control(self) -> bool {
        self != EntryKind::Data
    }
}

/// The decoded fixed header of a batch (see the crate documentation for the
/// layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub length: u32,
    pub crc: u32,
    pub kind: EntryKind,
    pub record_count: u32,
    pub term: u64,
    pub index: u64,
    pub base_offset: u64,
    pub timestamp: u64,
}

#[inline]
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
#[inline]
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
#[inline]
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl BatchHeader {
    /// Parses and sanity-checks the fixed header at the start of `buf`.
    /// Does not look at the body or the CRC; use it to learn how many bytes
    /// the whole batch takes before reading them.
    pub fn parse(buf: &[u8]) -> Result<Self, FormatError> {
        if buf.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let length = le_u32(buf, 0);
        if (length as usize) < HEADER_LEN || length as usize > MAX_BATCH_LEN {
            return Err(FormatError::BadLength {
                length: length as u64,
                min: HEADER_LEN,
                max: MAX_BATCH_LEN,
            });
        }
        let version = buf[8];
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let kind = EntryKind::from_u8(buf[9])?;
        let flags = le_u16(buf, 10);
        if flags != 0 {
            return Err(FormatError::Flags(flags));
        }
        let record_count = le_u32(buf, 12);
        let index = le_u64(buf, 24);
        if index == 0 {
            return Err(FormatError::ZeroIndex);
        }
        if kind.is_control() && record_count != 0 {
            return Err(FormatError::ControlWithRecords {
                kind: kind as u8,
                count: record_count,
            });
        }
        let base_offset = le_u64(buf, 32);
        if base_offset.checked_add(record_count as u64).is_none() {
            return Err(FormatError::OffsetOverflow {
                base: base_offset,
                count: record_count,
            });
        }
        // A data record needs at least its length prefix.
        let body = length as usize - HEADER_LEN;
        if (record_count as usize).saturating_mul(RECORD_PREFIX_LEN) > body {
            return Err(FormatError::Records("more records than the body can hold"));
        }
        Ok(BatchHeader {
            length,
            crc: le_u32(buf, 4),
            kind,
            record_count,
            term: le_u64(buf, 16),
            index,
            base_offset,
            timestamp: le_u64(buf, 40),
        })
    }

    /// The user offset that follows this entry's records.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + self.record_count as u64
    }
}

/// One encoded, validated raft entry. Cloning is a reference-count bump; the
/// bytes are the ones that go to disk and over the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    frame: Bytes,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("index", &self.index())
            .field("term", &self.term())
            .field("kind", &self.kind())
            .field("base_offset", &self.base_offset())
            .field("records", &self.record_count())
            .field("len", &self.len())
            .finish()
    }
}

impl Batch {
    /// Validates `frame` as exactly one batch: header sanity, total length,
    /// CRC, and for data entries that the records fill the body exactly.
    pub fn decode(frame: Bytes) -> Result<Self, FormatError> {
        let header = BatchHeader::parse(&frame)?;
        let length = header.length as usize;
        if frame.len() < length {
            return Err(FormatError::Truncated {
                needed: length,
                available: frame.len(),
            });
        }
        if frame.len() > length {
            return Err(FormatError::BadLength {
                length: frame.len() as u64,
                min: length,
                max: length,
            });
        }
        let computed = crc32c(&frame[8..]);
        if computed != header.crc {
            return Err(FormatError::Checksum {
                stored: header.crc,
                computed,
            });
        }
        if header.kind == EntryKind::Data {
            check_records(&frame[HEADER_LEN..], header.record_count)?;
        }
        Ok(Batch { frame })
    }

    /// Splits the first batch off the front of `buf` and validates it. On
    /// error `buf` is left untouched.
    pub fn decode_front(buf: &mut Bytes) -> Result<Self, FormatError> {
        let header = BatchHeader::parse(buf)?;
        let length = header.length as usize;
        if buf.len() < length {
            return Err(FormatError::Truncated {
                needed: length,
                available: buf.len(),
            });
        }
        let batch = Batch::decode(buf.slice(..length))?;
        let _ = buf.split_to(length);
        Ok(batch)
    }

    /// Wraps bytes produced by this crate's encoder without re-checking.
    pub(crate) fn from_encoded(frame: Bytes) -> Self {
        debug_assert!(Batch::decode(frame.clone()).is_ok());
        Batch { frame }
    }

    /// Encodes a control entry (no records).
    pub fn control(
        kind: EntryKind,
        body: &[u8],
        term: u64,
        index: u64,
        next_offset: u64,
        timestamp: u64,
    ) -> Self {
        assert!(kind.is_control(), "Batch::control needs a control kind");
        let mut b = crate::BatchBuilder::with_capacity(body.len());
        b.push_raw_body(body);
        b.seal(kind, term, index, next_offset, timestamp)
    }

    #[inline]
    pub fn as_bytes(&self) -> &Bytes {
        &self.frame
    }
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        self.frame
    }
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&self) -> usize {
        self.frame.len()
    }
    #[inline]
    pub fn crc(&self) -> u32 {
        le_u32(&self.frame, 4)
    }
    #[inline]
    pub fn kind(&self) -> EntryKind {
        // The kind byte was validated on construction.
        EntryKind::from_u8(self.frame[9]).unwrap_or(EntryKind::Data)
    }
    #[inline]
    pub fn record_count(&self) -> u32 {
        le_u32(&self.frame, 12)
    }
    #[inline]
    pub fn term(&self) -> u64 {
        le_u64(&self.frame, 16)
    }
    #[inline]
    pub fn index(&self) -> u64 {
        le_u64(&self.frame, 24)
    }
    #[inline]
    pub fn base_offset(&self) -> u64 {
        le_u64(&self.frame, 32)
    }
    #[inline]
    pub fn end_offset(&self) -> u64 {
        self.base_offset() + self.record_count() as u64
    }
    #[inline]
    pub fn timestamp(&self) -> u64 {
        le_u64(&self.frame, 40)
    }
    #[inline]
    pub fn body(&self) -> Bytes {
        self.frame.slice(HEADER_LEN..)
    }
    pub fn header(&self) -> BatchHeader {
        // Validated on construction; parse cannot fail here.
        BatchHeader::parse(&self.frame)
            .expect("batch header was validated when the batch was built")
    }
    /// The records of a data entry, as zero-copy slices of the frame.
    pub fn records(&self) -> Records {
        let count = if self.kind() == EntryKind::Data {
            self.record_count()
        } else {
            0
        };
        Records {
            frame: self.frame.clone(),
            pos: HEADER_LEN,
            left: count,
        }
    }
}

fn check_records(mut body: &[u8], count: u32) -> Result<(), FormatError> {
    for _ in 0..count {
        if body.len() < RECORD_PREFIX_LEN {
            return Err(FormatError::Records("record length prefix cut short"));
        }
        let len = le_u32(body, 0) as usize;
        body = &body[RECORD_PREFIX_LEN..];
        if body.len() < len {
            return Err(FormatError::Records("record payload runs past the batch"));
        }
        body = &body[len..];
    }
    if !body.is_empty() {
        return Err(FormatError::Records(
            "bytes left over after the last record",
        ));
    }
    Ok(())
}

/// Iterator over the records of a data batch.
pub struct Records {
    frame: Bytes,
    pos: usize,
    left: u32,
}

impl Iterator for Records {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let len = le_u32(&self.frame, self.pos) as usize;
        let start = self.pos + RECORD_PREFIX_LEN;
        self.pos = start + len;
        Some(self.frame.slice(start..start + len))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Records {}
