use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::*;

fn sample() -> Batch {
    let mut b = BatchBuilder::new();
    b.push(b"hello");
    b.push(b"");
    b.push(b"world!");
    b.seal(EntryKind::Data, 7, 42, 1000, 1_700_000_000_000)
}

#[test]
fn data_batch_round_trips() {
    let batch = sample();
    let again = Batch::decode(batch.as_bytes().clone()).unwrap();
    assert_eq!(again, batch);
    assert_eq!(again.term(), 7);
    assert_eq!(again.index(), 42);
    assert_eq!(again.kind(), EntryKind::Data);
    assert_eq!(again.base_offset(), 1000);
    assert_eq!(again.end_offset(), 1003);
    assert_eq!(again.record_count(), 3);
    assert_eq!(again.timestamp(), 1_700_000_000_000);
    let recs: Vec<Bytes> = again.records().collect();
    assert_eq!(
        recs,
        vec![
            Bytes::from_static(b"hello"),
            Bytes::new(),
            Bytes::from_static(b"world!")
        ]
    );
    assert_eq!(again.len(), HEADER_LEN + 3 * RECORD_PREFIX_LEN + 11);
    assert_eq!(again.header().length as usize, again.len());
}

#[test]
fn control_batch_has_no_records_and_keeps_next_offset() {
    let c = Batch::control(EntryKind::Config, b"cfg-bytes", 3, 9, 55, 1);
    let d = Batch::decode(c.as_bytes().clone()).unwrap();
    assert_eq!(d.kind(), EntryKind::Config);
    assert_eq!(d.record_count(), 0);
    assert_eq!(d.base_offset(), 55);
    assert_eq!(d.end_offset(), 55);
    assert_eq!(&d.body()[..], b"cfg-bytes");
    assert_eq!(d.records().count(), 0);
}

#[test]
fn a_command_batch_round_trips_and_takes_no_offsets() {
    let c = Batch::control(EntryKind::Command, b"\x01opaque", 4, 17, 300, 12);
    assert_eq!(c.as_bytes()[9], 4, "kind byte of a command");
    let d = Batch::decode(c.as_bytes().clone()).unwrap();
    assert_eq!(d, c);
    assert_eq!(d.kind(), EntryKind::Command);
    assert!(d.kind().is_control());
    assert_eq!((d.term(), d.index(), d.timestamp()), (4, 17, 12));
    assert_eq!(d.record_count(), 0);
    assert_eq!(d.base_offset(), 300);
    assert_eq!(d.end_offset(), 300, "a command takes no offsets");
    assert_eq!(d.header().end_offset(), 300);
    assert_eq!(&d.body()[..], b"\x01opaque");
    assert_eq!(d.records().count(), 0);
    // A command claiming records is refused like any control entry.
    let mut m = BytesMut::from(&c.as_bytes()[..]);
    m[12..16].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        BatchHeader::parse(&m),
        Err(FormatError::ControlWithRecords { kind: 4, count: 1 })
    ));
    assert_eq!(EntryKind::from_u8(4), Ok(EntryKind::Command));
    assert!(matches!(EntryKind::from_u8(5), Err(FormatError::Kind(5))));
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let bytes = sample().into_bytes();
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut m = BytesMut::from(&bytes[..]);
            m[byte] ^= 1 << bit;
            assert!(
                Batch::decode(m.freeze()).is_err(),
                "flip of bit {bit} in byte {byte} went unnoticed"
            );
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = sample().into_bytes();
    for cut in 0..bytes.len() {
        let err = Batch::decode(bytes.slice(..cut)).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn huge_length_field_is_rejected_without_allocation() {
    let mut m = BytesMut::from(&sample().into_bytes()[..]);
    m[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        BatchHeader::parse(&m),
        Err(FormatError::BadLength { .. })
    ));
    m[0..4].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        BatchHeader::parse(&m),
        Err(FormatError::BadLength { .. })
    ));
}

#[test]
fn record_count_beyond_body_is_rejected_by_the_header_check() {
    let mut m = BytesMut::from(&sample().into_bytes()[..]);
    m[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        BatchHeader::parse(&m),
        Err(FormatError::Records(_))
    ));
}

#[test]
fn control_entry_claiming_records_is_rejected() {
    let mut m = BytesMut::from(&Batch::control(EntryKind::Noop, b"", 1, 1, 0, 0).into_bytes()[..]);
    m[12..16].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        BatchHeader::parse(&m),
        Err(FormatError::ControlWithRecords { .. })
    ));
}

#[test]
fn decode_front_splits_a_stream() {
    let a = sample();
    let b = Batch::control(EntryKind::Noop, b"", 8, 43, 1003, 0);
    let mut stream = BytesMut::new();
    stream.extend_from_slice(a.as_bytes());
    stream.extend_from_slice(b.as_bytes());
    stream.extend_from_slice(&b.as_bytes()[..10]);
    let mut s = stream.freeze();
    assert_eq!(Batch::decode_front(&mut s).unwrap(), a);
    assert_eq!(Batch::decode_front(&mut s).unwrap(), b);
    let before = s.len();
    assert!(Batch::decode_front(&mut s).is_err());
    assert_eq!(s.len(), before, "a failed decode must not consume input");
}

proptest! {
    #[test]
    fn decode_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Batch::decode(Bytes::from(data.clone()));
        let mut b = Bytes::from(data);
        let _ = Batch::decode_front(&mut b);
    }

    #[test]
    fn arbitrary_records_round_trip(
        recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
        term in 1u64..u64::MAX, index in 1u64..u64::MAX, base in 0u64..(u64::MAX / 2), ts in any::<u64>(),
    ) {
        let mut b = BatchBuilder::new();
        for r in &recs { b.push(r); }
        let batch = b.seal(EntryKind::Data, term, index, base, ts);
        let d = Batch::decode(batch.as_bytes().clone()).unwrap();
        prop_assert_eq!(d.term(), term);
        prop_assert_eq!(d.index(), index);
        prop_assert_eq!(d.base_offset(), base);
        prop_assert_eq!(d.timestamp(), ts);
        let got: Vec<Vec<u8>> = d.records().map(|r| r.to_vec()).collect();
        prop_assert_eq!(got, recs);
    }
}

#[test]
fn crc32c_matches_the_crate_at_every_short_length() {
    let data: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for start in 0..8 {
        for end in start..data.len() {
            let s = &data[start..end];
            assert_eq!(
                crate::crc32c(s),
                ::crc32c::crc32c(s),
                "bytes {start}..{end}"
            );
        }
    }
    assert_eq!(crate::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn builders_in_the_slab_stay_apart() {
    // Many small batches (several slabs' worth), some grown past their
    // piece, some cloned before sealing: each must decode to what was
    // pushed, whatever its neighbours did.
    let mut sealed = Vec::new();
    for i in 0..2000u64 {
        let mut b = BatchBuilder::single(&i.to_le_bytes());
        if i % 7 == 0 {
            b.push(&vec![i as u8; (i % 300) as usize]);
        }
        let b = if i % 11 == 0 { b.clone() } else { b };
        let n = b.record_count();
        sealed.push((i, n, b.seal(EntryKind::Data, 1, i + 1, 0, 0)));
    }
    for (i, n, batch) in sealed {
        let again = Batch::decode(batch.as_bytes().clone()).unwrap();
        assert_eq!(again.record_count(), n);
        let records: Vec<Bytes> = again.records().collect();
        assert_eq!(&records[0][..], &i.to_le_bytes()[..]);
        if i % 7 == 0 {
            assert_eq!(&records[1][..], &vec![i as u8; (i % 300) as usize][..]);
        }
    }
}
