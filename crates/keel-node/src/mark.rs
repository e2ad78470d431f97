//! The applied mark of a group (`groups/<g>/applied`): how far the group's
//! state machine is known to have applied committed entries, made durable
//! so that a restarted node never serves less than it served before.
//!
//! ```text
//! applied, 64 bytes: two slots of 32 bytes, written alternately in place
//! (pwrite + fdatasync); the valid slot with the higher sequence wins.
//!
//! slot, 32 bytes, little-endian
//!    0   8  sequence      increases with every write (the first write is 1)
//!    8   8  applied index every entry up to it is committed and applied
//!   16   8  end offset    the user offset after that entry
//!   24   4  CRC32C of bytes [0, 24)
//!   28   4  zero
//! ```
//!
//! A slot is valid when its CRC matches and its last 4 bytes are zero. A
//! write goes to the slot that does not hold the current winner, so a write
//! torn by a crash damages only that slot and the previous mark survives in
//! the other. A new file is 64 zero bytes (no valid slot: the mark is zero);
//! it is created through `applied.tmp`, fsync, rename and directory fsync,
//! so the file is either missing or complete.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How far a group is known to have applied its log: every entry up to
/// `index` is committed and applied; `end_offset` is the user offset after
/// that entry (the offset the next record takes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    /// The last applied (and committed) raft index; 0 = none.
    pub index: u64,
    /// The user offset after the entry at `index`.
    pub end_offset: u64,
}

const SLOT_LEN: usize = 32;
const FILE_LEN: usize = 2 * SLOT_LEN;

/// One decoded slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seq: u64,
    mark: Watermark,
}

fn encode_slot(s: Slot) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[0..8].copy_from_slice(&s.seq.to_le_bytes());
    b[8..16].copy_from_slice(&s.mark.index.to_le_bytes());
    b[16..24].copy_from_slice(&s.mark.end_offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a slot; `None` when it is not valid (any length other than 32
/// bytes, a CRC mismatch or a non-zero pad).
fn decode_slot(b: &[u8]) -> Option<Slot> {
    let b: &[u8; SLOT_LEN] = b.try_into().ok()?;
    let word = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let stored = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
    if stored != crc32c::crc32c(&b[..24]) || b[28..32] != [0u8; 4] {
        return None;
    }
    Some(Slot {
        seq: word(0),
        mark: Watermark {
            index: word(8),
            end_offset: word(16),
        },
    })
}

/// Which slot wins: the valid one with the higher sequence (on a tie, which
/// a correct writer never produces, the higher index).
fn winner(slots: [Option<Slot>; 2]) -> Option<(usize, Slot)> {
    match slots {
        [None, None] => None,
        [Some(a), None] => Some((0, a)),
        [None, Some(b)] => Some((1, b)),
        [Some(a), Some(b)] => {
            if (b.seq, b.mark.index) > (a.seq, a.mark.index) {
                Some((1, b))
            } else {
                Some((0, a))
            }
        }
    }
}

/// The applied mark file of a group, open for writing.
#[derive(Debug)]
pub struct MarkFile {
    path: PathBuf,
    file: File,
    /// The slot holding the durable mark and its contents; `None` while no
    /// slot was ever written (the mark is zero).
    winner: Option<(usize, Slot)>,
}

impl MarkFile {
    /// Opens the mark at `path`, creating it (64 zero bytes, the mark zero)
    /// when it is missing, and returns it with the durable mark.
    ///
    /// A file in which neither slot is valid and which is not all zeros is
    /// an error of kind `InvalidData` naming the file.
    pub fn open(path: &Path) -> io::Result<(MarkFile, Watermark)> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(with_path(e, "cannot open the applied mark", path)),
        };
        let len = file
            .metadata()
            .map_err(|e| with_path(e, "cannot read the applied mark", path))?
            .len();
        if len != FILE_LEN as u64 {
            return Err(damaged(
                path,
                &format!("it is {len} bytes long where {FILE_LEN} were expected"),
            ));
        }
        let mut b = [0u8; FILE_LEN];
        file.read_exact_at(&mut b, 0)
            .map_err(|e| with_path(e, "cannot read the applied mark", path))?;
        let slots = [decode_slot(&b[..SLOT_LEN]), decode_slot(&b[SLOT_LEN..])];
        let winner = winner(slots);
        if winner.is_none() && b.iter().any(|&x| x != 0) {
            return Err(damaged(path, "neither of its two slots is valid"));
        }
        let mark = winner.map(|(_, s)| s.mark).unwrap_or_default();
        Ok((
            MarkFile {
                path: path.to_path_buf(),
                file,
                winner,
            },
            mark,
        ))
    }

    /// Makes `w` the durable mark: writes the slot that does not hold the
    /// current one, then `fdatasync`. On an error the previous mark stays
    /// durable (and current). Writing an index lower than the current one
    /// is an error of kind `InvalidInput` (a mark never goes back).
    pub fn write(&mut self, w: Watermark) -> io::Result<()> {
        let cur = self.current();
        if w.index < cur.index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "applied mark {}: refusing to lower it from index {} to {} (a bug in the caller)",
                    self.path.display(),
                    cur.index,
                    w.index
                ),
            ));
        }
        let (slot, seq) = match self.winner {
            None => (0, 1),
            Some((i, s)) => (1 - i, s.seq.wrapping_add(1)),
        };
        let new = Slot { seq, mark: w };
        self.file
            .write_all_at(&encode_slot(new), (slot * SLOT_LEN) as u64)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| with_path(e, "cannot write the applied mark", &self.path))?;
        self.winner = Some((slot, new));
        Ok(())
    }

    /// The durable mark (the last one written, or the one read at open).
    pub fn current(&self) -> Watermark {
        self.winner.map(|(_, s)| s.mark).unwrap_or_default()
    }
}

/// Creates the file, 64 zero bytes, atomically and durably; returns it
/// open for reading and writing.
fn create(path: &Path) -> io::Result<File> {
    let tmp = {
        let mut name = path.as_os_str().to_os_string();
        name.push(".tmp");
        PathBuf::from(name)
    };
    let fail = |e| with_path(e, "cannot create the applied mark", path);
    let mut f = File::create(&tmp).map_err(fail)?;
    f.write_all(&[0u8; FILE_LEN]).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)?;
    sync_parent(path).map_err(fail)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(fail)
}

/// fsyncs the directory that holds `path`.
fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn damaged(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the applied mark {} is damaged: {why}. Restore the group's directory from a backup, \
             or delete this file to restart the group from its latest snapshot and log \
             (this node may then briefly serve older data than it did before)",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("keel-node-mark-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn wm(index: u64, end_offset: u64) -> Watermark {
        Watermark { index, end_offset }
    }

    fn slots(path: &Path) -> [Option<Slot>; 2] {
        let b = std::fs::read(path).unwrap();
        [decode_slot(&b[..32]), decode_slot(&b[32..])]
    }

    #[test]
    fn a_missing_file_starts_at_zero_and_is_created_as_zeros() {
        let d = TempDir::new("missing");
        let p = d.0.join("applied");
        let (m, w) = MarkFile::open(&p).unwrap();
        assert_eq!(w, Watermark::default());
        assert_eq!(m.current(), Watermark::default());
        assert_eq!(std::fs::read(&p).unwrap(), vec![0u8; 64]);
        assert!(!d.0.join("applied.tmp").exists());
        drop(m);
        let (_, w) = MarkFile::open(&p).unwrap();
        assert_eq!(w, Watermark::default());
    }

    #[test]
    fn a_written_mark_survives_reopening() {
        let d = TempDir::new("round-trip");
        let p = d.0.join("applied");
        let (mut m, _) = MarkFile::open(&p).unwrap();
        m.write(wm(5, 50)).unwrap();
        m.write(wm(9, 77)).unwrap();
        assert_eq!(m.current(), wm(9, 77));
        drop(m);
        let (mut m, w) = MarkFile::open(&p).unwrap();
        assert_eq!(w, wm(9, 77));
        m.write(wm(12, 80)).unwrap();
        drop(m);
        assert_eq!(MarkFile::open(&p).unwrap().1, wm(12, 80));
    }

    #[test]
    fn writes_alternate_between_the_slots() {
        let d = TempDir::new("alternate");
        let p = d.0.join("applied");
        let (mut m, _) = MarkFile::open(&p).unwrap();
        m.write(wm(1, 10)).unwrap();
        assert_eq!(
            slots(&p),
            [
                Some(Slot {
                    seq: 1,
                    mark: wm(1, 10)
                }),
                None
            ]
        );
        m.write(wm(2, 20)).unwrap();
        assert_eq!(
            slots(&p),
            [
                Some(Slot {
                    seq: 1,
                    mark: wm(1, 10)
                }),
                Some(Slot {
                    seq: 2,
                    mark: wm(2, 20)
                })
            ]
        );
        m.write(wm(3, 30)).unwrap();
        assert_eq!(
            slots(&p),
            [
                Some(Slot {
                    seq: 3,
                    mark: wm(3, 30)
                }),
                Some(Slot {
                    seq: 2,
                    mark: wm(2, 20)
                })
            ]
        );
        // A reopened file continues where the winner is.
        drop(m);
        let (mut m, _) = MarkFile::open(&p).unwrap();
        m.write(wm(4, 40)).unwrap();
        assert_eq!(
            slots(&p)[1],
            Some(Slot {
                seq: 4,
                mark: wm(4, 40)
            })
        );
    }

    #[test]
    fn a_torn_write_leaves_the_other_slot_winning() {
        let d = TempDir::new("torn");
        let p = d.0.join("applied");
        let (mut m, _) = MarkFile::open(&p).unwrap();
        m.write(wm(1, 10)).unwrap();
        m.write(wm(2, 20)).unwrap();
        drop(m);
        // The next write goes to slot 0: tear it in several ways.
        let good = std::fs::read(&p).unwrap();
        let torn: [fn(&mut [u8]); 4] = [
            |s| s.fill(0),
            |s| s.fill(0xa5),
            // The new slot's first half landed, the rest is the old slot.
            |s| {
                s[..16].copy_from_slice(
                    &encode_slot(Slot {
                        seq: 3,
                        mark: wm(3, 30),
                    })[..16],
                )
            },
            |s| s[31] = 1,
        ];
        for (i, tear) in torn.iter().enumerate() {
            let mut b = good.clone();
            tear(&mut b[..32]);
            std::fs::write(&p, &b).unwrap();
            let (mut m, w) = MarkFile::open(&p).unwrap();
            assert_eq!(w, wm(2, 20), "tear {i}");
            // And the next write goes to the damaged slot again.
            m.write(wm(3, 30)).unwrap();
            assert_eq!(slots(&p)[1].unwrap().mark, wm(2, 20), "tear {i}");
            assert_eq!(MarkFile::open(&p).unwrap().1, wm(3, 30), "tear {i}");
        }
    }

    #[test]
    fn both_slots_corrupt_is_an_error_naming_the_file() {
        let d = TempDir::new("corrupt");
        let p = d.0.join("applied");
        let (mut m, _) = MarkFile::open(&p).unwrap();
        m.write(wm(1, 10)).unwrap();
        m.write(wm(2, 20)).unwrap();
        drop(m);
        let mut b = std::fs::read(&p).unwrap();
        b[3] ^= 1;
        b[40] ^= 1;
        std::fs::write(&p, &b).unwrap();
        let e = MarkFile::open(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("delete this file"), "{msg}");
    }

    #[test]
    fn a_file_of_the_wrong_length_is_an_error() {
        let d = TempDir::new("length");
        let p = d.0.join("applied");
        for len in [0, 1, 32, 63, 65, 128] {
            std::fs::write(&p, vec![0u8; len]).unwrap();
            let e = MarkFile::open(&p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len}");
        }
    }

    #[test]
    fn a_write_never_lowers_the_index() {
        let d = TempDir::new("lower");
        let p = d.0.join("applied");
        let (mut m, _) = MarkFile::open(&p).unwrap();
        m.write(wm(5, 50)).unwrap();
        let e = m.write(wm(4, 40)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(m.current(), wm(5, 50));
        // The same index again is fine.
        m.write(wm(5, 50)).unwrap();
        drop(m);
        assert_eq!(MarkFile::open(&p).unwrap().1, wm(5, 50));
    }

    #[test]
    fn random_bytes_on_disk_give_an_error_or_a_mark_never_a_panic() {
        let d = TempDir::new("garbage");
        let p = d.0.join("applied");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let len = match round % 4 {
                0 => 64,
                _ => (next() % 140) as usize,
            };
            let b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for s in b.chunks(32) {
                let _ = decode_slot(s);
            }
            std::fs::write(&p, &b).unwrap();
            if let Ok((m, w)) = MarkFile::open(&p) {
                assert_eq!(m.current(), w);
            }
        }
    }
}
