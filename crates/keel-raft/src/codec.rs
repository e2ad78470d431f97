//! Wire encoding of [`Message`]s, for the peer transport.
//!
//! ```text
//! Message, all integers little-endian
//!
//!  off len field
//!    0   1 version      CODEC_VERSION (1)
//!    1   1 kind         see `Kind` below
//!    2   8 group
//!   10   8 from
//!   18   8 to
//!   26   8 term
//!   34   . body, by kind:
//!
//!  1 Append              u64 prev_index, u64 prev_term, u64 commit,
//!                        u32 entry count, then the entries: keel-format
//!                        batches back to back (each carries its length and
//!                        its CRC, checked here)
//!  2 AppendResponse      u64 index, u8 reject (0 none, 1 log ends, 2 conflict),
//!                        u64 a, u64 b   (log ends: a = last index;
//!                                        conflict: a = term, b = first index)
//!  3 Heartbeat           u64 commit, u64 read_seq
//!  4 HeartbeatResponse   u64 read_seq
//!  5 Vote                u8 flags (1 pre, 2 transfer), u64 last_index, u64 last_term
//!  6 VoteResponse        u8 flags (1 pre, 2 granted)
//!  7 TimeoutNow          (empty)
//!  8 ReadIndex           u64 ctx
//!  9 ReadIndexResponse   u64 ctx, u8 has_index, u64 index
//! 10 Snapshot            u64 index, u64 term, u64 next_offset, u64 size,
//!                        u32 n + n bytes configuration (as in a Config entry:
//!                        version 2, with member info; version 1 is read),
//!                        u64 offset, u8 done, u32 n + n bytes data
//! 11 SnapshotResponse    u64 index, u64 next_offset, u8 installed
//! ```
//!
//! The transport frames messages (a length prefix); this module encodes and
//! decodes one message. Decoding never panics and never allocates more than
//! the input could hold: every count is checked against the bytes left, and
//! entries are zero-copy slices of the input, CRC-checked.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use keel_format::{Batch, FormatError, HEADER_LEN};
use thiserror::Error;

use crate::message::{Append, AppendResponse, Message, MessageBody, RejectHint, VoteRequest};
use crate::snapshot::{SnapshotChunk, SnapshotMeta};

pub const CODEC_VERSION: u8 = 1;
/// Bytes before the body.
pub const MESSAGE_HEADER_LEN: usize = 34;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("message truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("unsupported message codec version {0} (this build speaks 1)")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("invalid field: {0}")]
    Field(&'static str),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("entry {position} of an append is invalid: {source}")]
    Entry { position: u32, source: FormatError },
}

mod kind {
    pub const APPEND: u8 = 1;
    pub const APPEND_RESPONSE: u8 = 2;
    pub const HEARTBEAT: u8 = 3;
    pub const HEARTBEAT_RESPONSE: u8 = 4;
    pub const VOTE: u8 = 5;
    pub const VOTE_RESPONSE: u8 = 6;
    pub const TIMEOUT_NOW: u8 = 7;
    pub const READ_INDEX: u8 = 8;
    pub const READ_INDEX_RESPONSE: u8 = 9;
    pub const SNAPSHOT: u8 = 10;
    pub const SNAPSHOT_RESPONSE: u8 = 11;
}

/// Bytes `encode` will write for `m`.
pub fn encoded_len(m: &Message) -> usize {
    MESSAGE_HEADER_LEN
        + match &m.body {
            MessageBody::Append(a) => 28 + a.entries.iter().map(|e| e.len()).sum::<usize>(),
            MessageBody::AppendResponse(_) => 25,
            MessageBody::Heartbeat { .. } => 16,
            MessageBody::HeartbeatResponse { .. } => 8,
            MessageBody::Vote(_) => 17,
            MessageBody::VoteResponse { .. } => 1,
            MessageBody::TimeoutNow => 0,
            MessageBody::ReadIndex { .. } => 8,
            MessageBody::ReadIndexResponse { .. } => 17,
            MessageBody::Snapshot(c) => {
                36 + crate::conf_change::encode(&c.meta.membership).len() + 13 + c.data.len()
            }
            MessageBody::SnapshotResponse { .. } => 17,
        }
}

/// Appends the encoding of `m` to `out`.
pub fn encode(m: &Message, out: &mut BytesMut) {
    out.reserve(encoded_len(m));
    out.put_u8(CODEC_VERSION);
    let k = match &m.body {
        MessageBody::Append(_) => kind::APPEND,
        MessageBody::AppendResponse(_) => kind::APPEND_RESPONSE,
        MessageBody::Heartbeat { .. } => kind::HEARTBEAT,
        MessageBody::HeartbeatResponse { .. } => kind::HEARTBEAT_RESPONSE,
        MessageBody::Vote(_) => kind::VOTE,
        MessageBody::VoteResponse { .. } => kind::VOTE_RESPONSE,
        MessageBody::TimeoutNow => kind::TIMEOUT_NOW,
        MessageBody::ReadIndex { .. } => kind::READ_INDEX,
        MessageBody::ReadIndexResponse { .. } => kind::READ_INDEX_RESPONSE,
        MessageBody::Snapshot(_) => kind::SNAPSHOT,
        MessageBody::SnapshotResponse { .. } => kind::SNAPSHOT_RESPONSE,
    };
    out.put_u8(k);
    out.put_u64_le(m.group);
    out.put_u64_le(m.from);
    out.put_u64_le(m.to);
    out.put_u64_le(m.term);
    match &m.body {
        MessageBody::Append(a) => {
            out.put_u64_le(a.prev_index);
            out.put_u64_le(a.prev_term);
            out.put_u64_le(a.commit);
            out.put_u32_le(a.entries.len() as u32);
            for e in &a.entries {
                out.put_slice(e.as_bytes());
            }
        }
        MessageBody::AppendResponse(r) => {
            out.put_u64_le(r.index);
            let (tag, a, b) = match r.reject {
                None => (0, 0, 0),
                Some(RejectHint::LogEnds { last_index }) => (1, last_index, 0),
                Some(RejectHint::Conflict { term, first_index }) => (2, term, first_index),
            };
            out.put_u8(tag);
            out.put_u64_le(a);
            out.put_u64_le(b);
        }
        MessageBody::Heartbeat { commit, read_seq } => {
            out.put_u64_le(*commit);
            out.put_u64_le(*read_seq);
        }
        MessageBody::HeartbeatResponse { read_seq } => out.put_u64_le(*read_seq),
        MessageBody::Vote(v) => {
            out.put_u8(u8::from(v.pre) | (u8::from(v.transfer) << 1));
            out.put_u64_le(v.last_index);
            out.put_u64_le(v.last_term);
        }
        MessageBody::VoteResponse { pre, granted } => {
            out.put_u8(u8::from(*pre) | (u8::from(*granted) << 1))
        }
        MessageBody::TimeoutNow => {}
        MessageBody::ReadIndex { ctx } => out.put_u64_le(*ctx),
        MessageBody::ReadIndexResponse { ctx, index } => {
            out.put_u64_le(*ctx);
            out.put_u8(u8::from(index.is_some()));
            out.put_u64_le(index.unwrap_or(0));
        }
        MessageBody::Snapshot(c) => {
            out.put_u64_le(c.meta.index);
            out.put_u64_le(c.meta.term);
            out.put_u64_le(c.meta.next_offset);
            out.put_u64_le(c.meta.size);
            let conf = crate::conf_change::encode(&c.meta.membership);
            out.put_u32_le(conf.len() as u32);
            out.put_slice(&conf);
            out.put_u64_le(c.offset);
            out.put_u8(u8::from(c.done));
            out.put_u32_le(c.data.len() as u32);
            out.put_slice(&c.data);
        }
        MessageBody::SnapshotResponse {
            index,
            next_offset,
            installed,
        } => {
            out.put_u64_le(*index);
            out.put_u64_le(*next_offset);
            out.put_u8(u8::from(*installed));
        }
    }
}

/// Encodes `m` into a new buffer.
pub fn encode_to_bytes(m: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(encoded_len(m));
    encode(m, &mut out);
    out.freeze()
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), CodecError> {
        if self.buf.remaining() < n {
            return Err(CodecError::Truncated {
                what,
                needed: n - self.buf.remaining(),
            });
        }
        Ok(())
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32_le())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }
    /// A `u32` length and that many bytes (zero-copy).
    fn bytes(&mut self, what: &'static str) -> Result<Bytes, CodecError> {
        let n = self.u32(what)? as usize;
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }
    fn flags(&mut self, what: &'static str, allowed: u8) -> Result<u8, CodecError> {
        let f = self.u8(what)?;
        if f & !allowed != 0 {
            return Err(CodecError::Field(what));
        }
        Ok(f)
    }
}

/// Decodes one message that fills `frame` exactly. Entries are slices of
/// `frame` (no copy), each CRC-checked.
pub fn decode(frame: Bytes) -> Result<Message, CodecError> {
    let mut r = Reader { buf: frame };
    let version = r.u8("version")?;
    if version != CODEC_VERSION {
        return Err(CodecError::Version(version));
    }
    let k = r.u8("kind")?;
    let group = r.u64("group")?;
    let from = r.u64("from")?;
    let to = r.u64("to")?;
    let term = r.u64("term")?;
    let body = match k {
        kind::APPEND => {
            let prev_index = r.u64("prev_index")?;
            let prev_term = r.u64("prev_term")?;
            let commit = r.u64("commit")?;
            let count = r.u32("entry count")?;
            if (count as usize).saturating_mul(HEADER_LEN) > r.buf.remaining() {
                return Err(CodecError::Field(
                    "entry count exceeds the bytes that follow",
                ));
            }
            let mut entries = Vec::with_capacity(count as usize);
            for position in 0..count {
                let e = Batch::decode_front(&mut r.buf)
                    .map_err(|source| CodecError::Entry { position, source })?;
                entries.push(e);
            }
            MessageBody::Append(Append {
                prev_index,
                prev_term,
                commit,
                entries,
            })
        }
        kind::APPEND_RESPONSE => {
            let index = r.u64("index")?;
            let tag = r.u8("reject")?;
            let a = r.u64("hint")?;
            let b = r.u64("hint")?;
            let reject = match tag {
                0 => None,
                1 => Some(RejectHint::LogEnds { last_index: a }),
                2 => Some(RejectHint::Conflict {
                    term: a,
                    first_index: b,
                }),
                _ => return Err(CodecError::Field("reject kind")),
            };
            MessageBody::AppendResponse(AppendResponse { index, reject })
        }
        kind::HEARTBEAT => MessageBody::Heartbeat {
            commit: r.u64("commit")?,
            read_seq: r.u64("read_seq")?,
        },
        kind::HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse {
            read_seq: r.u64("read_seq")?,
        },
        kind::VOTE => {
            let f = r.flags("vote flags", 0b11)?;
            MessageBody::Vote(VoteRequest {
                pre: f & 1 != 0,
                transfer: f & 2 != 0,
                last_index: r.u64("last_index")?,
                last_term: r.u64("last_term")?,
            })
        }
        kind::VOTE_RESPONSE => {
            let f = r.flags("vote response flags", 0b11)?;
            MessageBody::VoteResponse {
                pre: f & 1 != 0,
                granted: f & 2 != 0,
            }
        }
        kind::TIMEOUT_NOW => MessageBody::TimeoutNow,
        kind::READ_INDEX => MessageBody::ReadIndex { ctx: r.u64("ctx")? },
        kind::READ_INDEX_RESPONSE => {
            let ctx = r.u64("ctx")?;
            let has = r.flags("has_index", 1)?;
            let index = r.u64("index")?;
            MessageBody::ReadIndexResponse {
                ctx,
                index: (has == 1).then_some(index),
            }
        }
        kind::SNAPSHOT => {
            let index = r.u64("snapshot index")?;
            let term = r.u64("snapshot term")?;
            let next_offset = r.u64("snapshot next offset")?;
            let size = r.u64("snapshot size")?;
            let conf = r.bytes("snapshot configuration")?;
            let membership = crate::conf_change::decode(&conf)
                .map_err(|_| CodecError::Field("snapshot configuration"))?;
            let offset = r.u64("chunk offset")?;
            let done = r.flags("chunk done", 1)? == 1;
            let data = r.bytes("chunk data")?;
            if offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > size)
            {
                return Err(CodecError::Field("chunk runs past the snapshot size"));
            }
            MessageBody::Snapshot(SnapshotChunk {
                meta: SnapshotMeta {
                    index,
                    term,
                    membership,
                    next_offset,
                    size,
                },
                offset,
                data,
                done,
            })
        }
        kind::SNAPSHOT_RESPONSE => MessageBody::SnapshotResponse {
            index: r.u64("snapshot index")?,
            next_offset: r.u64("next offset")?,
            installed: r.flags("installed", 1)? == 1,
        },
        other => return Err(CodecError::Kind(other)),
    };
    if r.buf.has_remaining() {
        return Err(CodecError::Trailing(r.buf.remaining()));
    }
    Ok(Message {
        group,
        from,
        to,
        term,
        body,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{BatchBuilder, EntryKind};

    fn samples() -> Vec<Message> {
        let e1 = BatchBuilder::single(b"hello").seal(EntryKind::Data, 3, 7, 10, 99);
        let e2 = keel_format::Batch::control(EntryKind::Noop, b"", 3, 8, 11, 99);
        let m = |body| Message {
            group: 42,
            from: 1,
            to: 2,
            term: 3,
            body,
        };
        vec![
            m(MessageBody::Append(Append {
                prev_index: 6,
                prev_term: 2,
                commit: 5,
                entries: vec![e1, e2],
            })),
            m(MessageBody::Append(Append {
                prev_index: 0,
                prev_term: 0,
                commit: 0,
                entries: vec![],
            })),
            m(MessageBody::AppendResponse(AppendResponse {
                index: 9,
                reject: None,
            })),
            m(MessageBody::AppendResponse(AppendResponse {
                index: 9,
                reject: Some(RejectHint::LogEnds { last_index: 4 }),
            })),
            m(MessageBody::AppendResponse(AppendResponse {
                index: 9,
                reject: Some(RejectHint::Conflict {
                    term: 2,
                    first_index: 3,
                }),
            })),
            m(MessageBody::Heartbeat {
                commit: 5,
                read_seq: 77,
            }),
            m(MessageBody::HeartbeatResponse { read_seq: 77 }),
            m(MessageBody::Vote(VoteRequest {
                pre: true,
                last_index: 8,
                last_term: 3,
                transfer: true,
            })),
            m(MessageBody::VoteResponse {
                pre: false,
                granted: true,
            }),
            m(MessageBody::TimeoutNow),
            m(MessageBody::ReadIndex { ctx: 5 }),
            m(MessageBody::ReadIndexResponse {
                ctx: 5,
                index: Some(8),
            }),
            m(MessageBody::ReadIndexResponse {
                ctx: 5,
                index: None,
            }),
            m(MessageBody::Snapshot(SnapshotChunk {
                meta: SnapshotMeta {
                    index: 90,
                    term: 3,
                    membership: crate::Membership::new([1, 2, 3], [4]),
                    next_offset: 1234,
                    size: 10,
                },
                offset: 4,
                data: Bytes::from_static(b"abcdef"),
                done: true,
            })),
            m(MessageBody::SnapshotResponse {
                index: 90,
                next_offset: 4,
                installed: false,
            }),
            m(MessageBody::Snapshot(SnapshotChunk {
                meta: SnapshotMeta {
                    index: 91,
                    term: 3,
                    membership: membership_with_info(),
                    next_offset: 1234,
                    size: 6,
                },
                offset: 0,
                data: Bytes::from_static(b"abcdef"),
                done: false,
            })),
        ]
    }

    /// A joint configuration with info for an outgoing voter, incoming
    /// voters and a learner.
    fn membership_with_info() -> crate::Membership {
        let mut m = crate::Membership::new([2, 3, 4], [5]);
        m.outgoing = [1, 2, 3].into_iter().collect();
        for (id, info) in [(1, &b"one"[..]), (3, b""), (4, b"four"), (5, b"five")] {
            m.info.insert(id, Bytes::from_static(info));
        }
        m
    }

    #[test]
    fn a_snapshot_meta_carries_member_info() {
        let m = samples().pop().unwrap();
        let back = decode(encode_to_bytes(&m)).unwrap();
        assert_eq!(back, m);
        let MessageBody::Snapshot(c) = back.body else {
            panic!("not a snapshot chunk: {back:?}");
        };
        assert_eq!(c.meta.membership, membership_with_info());
        assert_eq!(&c.meta.membership.info[&4][..], b"four");
        // Info for a node that is not a member is refused on the wire too.
        let mut bad = m.clone();
        if let MessageBody::Snapshot(c) = &mut bad.body {
            c.meta.membership.info.insert(9, Bytes::from_static(b"?"));
        }
        assert_eq!(
            decode(encode_to_bytes(&bad)),
            Err(CodecError::Field("snapshot configuration"))
        );
    }

    #[test]
    fn every_kind_round_trips_and_entries_are_the_same_bytes() {
        for m in samples() {
            let bytes = encode_to_bytes(&m);
            assert_eq!(bytes.len(), encoded_len(&m), "{:?}", m.body.kind());
            let back = decode(bytes).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_an_error() {
        for m in samples() {
            let bytes = encode_to_bytes(&m);
            for cut in 0..bytes.len() {
                assert!(
                    decode(bytes.slice(..cut)).is_err(),
                    "{} cut at {cut}",
                    m.body.kind()
                );
            }
            let mut longer = BytesMut::from(&bytes[..]);
            longer.put_u8(0);
            assert!(matches!(
                decode(longer.freeze()),
                Err(CodecError::Trailing(1))
            ));
        }
    }

    #[test]
    fn a_corrupt_entry_is_refused_with_its_position() {
        let m = &samples()[0];
        let mut b = BytesMut::from(&encode_to_bytes(m)[..]);
        let last = b.len() - 1;
        b[last] ^= 0xFF; // inside the second entry
        let mut first_entry_byte = BytesMut::from(&encode_to_bytes(m)[..]);
        first_entry_byte[MESSAGE_HEADER_LEN + 28 + HEADER_LEN] ^= 1;
        assert!(matches!(
            decode(b.freeze()),
            Err(CodecError::Entry { position: 1, .. })
        ));
        assert!(matches!(
            decode(first_entry_byte.freeze()),
            Err(CodecError::Entry { position: 0, .. })
        ));
    }

    #[test]
    fn a_huge_entry_count_is_refused_without_allocating() {
        let m = &samples()[1];
        let mut b = BytesMut::from(&encode_to_bytes(m)[..]);
        let at = MESSAGE_HEADER_LEN + 24;
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(b.freeze()), Err(CodecError::Field(_))));
    }

    #[test]
    fn unknown_versions_kinds_and_flags_are_refused() {
        let m = &samples()[7];
        let good = encode_to_bytes(m);
        let mut v = BytesMut::from(&good[..]);
        v[0] = 2;
        assert_eq!(decode(v.freeze()), Err(CodecError::Version(2)));
        let mut k = BytesMut::from(&good[..]);
        k[1] = 200;
        assert_eq!(decode(k.freeze()), Err(CodecError::Kind(200)));
        let mut f = BytesMut::from(&good[..]);
        f[MESSAGE_HEADER_LEN] = 0x80;
        assert!(matches!(decode(f.freeze()), Err(CodecError::Field(_))));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Bytes::from(data));
        }

        #[test]
        fn mutated_messages_never_panic(i in 0usize..16, pos in any::<usize>(), byte in any::<u8>()) {
            let bytes = encode_to_bytes(&samples()[i]);
            let mut b = BytesMut::from(&bytes[..]);
            let p = pos % b.len();
            b[p] = byte;
            let _ = decode(b.freeze());
        }
    }
}
