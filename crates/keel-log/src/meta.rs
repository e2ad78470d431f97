//! Small metadata files, replaced atomically: the raft hard state and the
//! log's start (its "floor").
//!
//! ```text
//! hardstate, 28 bytes, little-endian
//!    0   8  magic "KEELHST1"
//!    8   8  term
//!   16   8  vote          node id voted for in `term`; 0 = none
//!   24   4  CRC32C of bytes [0, 24)
//!
//! log.meta, 36 bytes, little-endian: the log's floor. Entries with index
//! <= floor_index are not in the log (purged, or covered by a snapshot).
//!    0   8  magic "KEELMET1"
//!    8   8  floor_index   last index before the log; first_index = floor_index + 1
//!   16   8  floor_term    term of entry floor_index (0 if floor_index is 0)
//!   24   8  floor_offset  user offset after entry floor_index
//!   32   4  CRC32C of bytes [0, 32)
//! ```
//!
//! A missing `log.meta` means floor 0 (the log starts at index 1, offset 0).
//! Both are written by [`replace`]: write `<name>.tmp`, fsync it, rename it
//! over `<name>`, fsync the directory. A reader sees the old or the new file,
//! never a mix; a leftover `.tmp` is removed on open.

use std::io::{self, IoSlice};
use std::path::Path;

use crate::fs::{Fs, OpenMode, read_full_at, write_all_at};

pub(crate) const HARD_STATE_FILE: &str = "hardstate";
pub(crate) const META_FILE: &str = "log.meta";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The raft hard state the store keeps beside the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: u64,
    /// Node id voted for in `term`; 0 = none.
    pub vote: u64,
}

/// The log's start: entries up to `index` are not in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Floor {
    pub index: u64,
    pub term: u64,
    pub offset: u64,
}

const HS_MAGIC: &[u8; 8] = b"KEELHST1";
const META_MAGIC: &[u8; 8] = b"KEELMET1";

fn seal(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn words<const N: usize>(b: &[u8], magic: &[u8; 8]) -> Result<[u64; N], String> {
    let want = 8 + 8 * N + 4;
    if b.len() != want {
        return Err(format!("{} bytes where {want} were expected", b.len()));
    }
    let stored = u32::from_le_bytes([b[want - 4], b[want - 3], b[want - 2], b[want - 1]]);
    let computed = crc32c::crc32c(&b[..want - 4]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    if &b[..8] != magic {
        return Err("bad magic".into());
    }
    let mut out = [0u64; N];
    for (i, w) in out.iter_mut().enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[8 + 8 * i..16 + 8 * i]);
        *w = u64::from_le_bytes(a);
    }
    Ok(out)
}

pub(crate) fn encode_hard_state(hs: HardState) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(HS_MAGIC);
    b.extend_from_slice(&hs.term.to_le_bytes());
    b.extend_from_slice(&hs.vote.to_le_bytes());
    seal(b)
}

pub(crate) fn decode_hard_state(b: &[u8]) -> Result<HardState, String> {
    let [term, vote] = words::<2>(b, HS_MAGIC)?;
    Ok(HardState { term, vote })
}

pub(crate) fn encode_floor(f: Floor) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(META_MAGIC);
    b.extend_from_slice(&f.index.to_le_bytes());
    b.extend_from_slice(&f.term.to_le_bytes());
    b.extend_from_slice(&f.offset.to_le_bytes());
    seal(b)
}

pub(crate) fn decode_floor(b: &[u8]) -> Result<Floor, String> {
    let [index, term, offset] = words::<3>(b, META_MAGIC)?;
    if index == 0 && term != 0 {
        return Err("floor index 0 with a non-zero term".into());
    }
    if index >= crate::MAX_INDEX {
        return Err(format!("floor index {index} is out of range"));
    }
    Ok(Floor {
        index,
        term,
        offset,
    })
}

/// Reads a small file whole; `Ok(None)` if it does not exist. Files larger
/// than `max` are reported as such without reading them.
pub(crate) fn read_small(fs: &dyn Fs, path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match fs.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.size()?.min(max + 1);
    let mut b = vec![0u8; len as usize];
    let n = read_full_at(&*f, &mut b, 0)?;
    b.truncate(n);
    Ok(Some(b))
}

/// Which step of an atomic replace failed.
#[derive(Debug)]
pub(crate) struct ReplaceError {
    pub step: &'static str,
    pub path: std::path::PathBuf,
    pub error: io::Error,
}

/// Atomically replaces `dir/name` with `bytes` (tmp file, fsync, rename,
/// fsync directory). On failure before the rename the tmp file is removed.
pub(crate) fn replace(
    fs: &dyn Fs,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), ReplaceError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let dst = dir.join(name);
    let fail = |step, path: &Path, error| ReplaceError {
        step,
        path: path.to_path_buf(),
        error,
    };
    let written = (|| {
        let f = fs
            .open(&tmp, OpenMode::Create)
            .map_err(|e| fail("create", &tmp, e))?;
        write_all_at(&*f, &mut [IoSlice::new(bytes)], 0)
            .map_err(|p| fail("write", &tmp, p.error))?;
        f.sync_data().map_err(|e| fail("fsync", &tmp, e))
    })();
    if let Err(e) = written {
        let _ = fs.remove(&tmp);
        return Err(e);
    }
    fs.rename(&tmp, &dst).map_err(|e| fail("rename", &dst, e))?;
    fs.sync_dir(dir).map_err(|e| fail("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_round_trips_and_catches_flips() {
        let hs = HardState { term: 7, vote: 3 };
        let b = encode_hard_state(hs);
        assert_eq!(decode_hard_state(&b).unwrap(), hs);
        for i in 0..b.len() * 8 {
            let mut m = b.clone();
            m[i / 8] ^= 1 << (i % 8);
            assert!(decode_hard_state(&m).is_err(), "flip {i}");
        }
        assert!(decode_hard_state(&b[..27]).is_err());
    }

    #[test]
    fn floor_round_trips() {
        let f = Floor {
            index: 9,
            term: 2,
            offset: 77,
        };
        assert_eq!(decode_floor(&encode_floor(f)).unwrap(), f);
        assert!(decode_floor(&encode_hard_state(HardState::default())).is_err());
    }
}
