//! The codec of every service here: prost's, behind a count of the
//! message's top-level fields made before decoding.
//!
//! A message's size is bounded by the transport (`max_decoding_message_size`),
//! but not what it decodes into: 16 MiB of empty records is two bytes each
//! on the wire and eight million `Bytes` handles (a quarter of a gigabyte)
//! in memory. The scan walks the wire format once without allocating and
//! refuses a message with more than [`MAX_RECORDS_PER_MESSAGE`] records
//! (plus a few other fields) with RESOURCE_EXHAUSTED, before any of it is
//! decoded. A message the scan cannot follow is left to prost, which
//! refuses it.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// The most records one request or response may carry.
pub const MAX_RECORDS_PER_MESSAGE: usize = 100_000;

/// Fields of a message besides its records (the log, offsets, ...).
const OTHER_FIELDS: usize = 64;

/// prost's codec with the field count checked before decoding.
#[derive(Debug, Clone)]
pub struct LimitedCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LimitedCodec<T, U> {
    fn default() -> Self {
        LimitedCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for LimitedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LimitedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LimitedDecoder { _pd: PhantomData }
    }
}

/// Decodes with prost after [`top_level_fields`] allowed it.
#[derive(Debug, Clone)]
pub struct LimitedDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for LimitedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let limit = MAX_RECORDS_PER_MESSAGE + OTHER_FIELDS;
        // The whole message is in one contiguous buffer (tonic collects it
        // before decoding); if not, the scan sees a prefix and counts less.
        if let Some(n) = top_level_fields(buf.chunk(), limit)
            && n > limit
        {
            let mut st = Status::resource_exhausted(format!(
                "the message carries more than {MAX_RECORDS_PER_MESSAGE} records; at most {MAX_RECORDS_PER_MESSAGE} per request: split it"
            ));
            st.metadata_mut().insert(
                crate::REFUSED_KEY,
                tonic::metadata::MetadataValue::from_static("request"),
            );
            return Err(st);
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Counts the top-level fields of a protobuf message, stopping once the
/// count passes `stop_after`. `None` when the bytes are not a message this
/// walk can follow (prost then reports the error).
pub fn top_level_fields(mut b: &[u8], stop_after: usize) -> Option<usize> {
    let mut n = 0usize;
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let skip = match key & 7 {
            0 => {
                varint(&mut b)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut b)?).ok()?,
            5 => 4,
            _ => return None, // groups: not used by these protocols
        };
        if skip > b.len() {
            return None;
        }
        b = &b[skip..];
        n += 1;
        if n > stop_after {
            return Some(n);
        }
    }
    Some(n)
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::AppendRequest;

    #[test]
    fn the_scan_counts_what_prost_decodes() {
        let req = AppendRequest {
            log: 7,
            records: vec![prost::bytes::Bytes::from_static(b"abc"); 10],
        };
        let wire = req.encode_to_vec();
        assert_eq!(top_level_fields(&wire, usize::MAX), Some(11));
        assert_eq!(top_level_fields(&wire, 3), Some(4), "stops early");
        assert_eq!(top_level_fields(&[], 3), Some(0));
    }

    #[test]
    fn a_truncated_or_foreign_message_is_left_to_prost() {
        let req = AppendRequest {
            log: 1,
            records: vec![prost::bytes::Bytes::from_static(b"abcdef")],
        };
        let wire = req.encode_to_vec();
        assert_eq!(top_level_fields(&wire[..wire.len() - 2], 100), None);
        assert_eq!(top_level_fields(&[0xff; 11], 100), None);
        assert_eq!(top_level_fields(&[0x0b], 100), None, "a group");
    }
}
