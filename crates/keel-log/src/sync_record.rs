//! Test-only: a filesystem that records, beside every segment, how much of
//! it the last completed `fdatasync` made durable, so that a fault-test
//! runner can kill a process and then cut each segment back to what a power
//! loss would have left (`<segment>.synced`). Only with the
//! `fault-injection` feature; never in a build that serves users.
//!
//! Sidecar format: `<segment file name>.synced` holds the durable data
//! length of the segment as 20 ASCII digits and a newline (rewritten in
//! place after each completed `fdatasync` of the segment; written as 0 when
//! the segment is created). The sidecar is written after the sync returns
//! and before the store learns of it, so every acknowledgement that depends
//! on the sync happens after the sidecar covers it. The sidecar itself is
//! never synced: the runner simulates a crash of the process (kill -9),
//! after which the page cache (and so the sidecar) survives.
//!
//! What counts as data: keel-log writes zeros ahead of the data (and extends
//! the file with `set_len`) so that `fdatasync` has less to persist. Those
//! writes are all zeros and do not move the data end; a write with any
//! non-zero byte does. A `set_len` below the data end (a truncation) lowers
//! it. Cutting a segment to its recorded length therefore removes exactly
//! the bytes written since the last completed sync; recovery then sees the
//! end of the file (or a torn tail) where a crash would have left it.
//!
//! With `skip_segment_sync`, `fdatasync` of segments is not performed at
//! all (and the recorded length does not move): the store reports writes
//! durable that are not. That is the deliberate bug the fault tests must
//! catch (`KEEL_FAULT_SKIP_FSYNC` in the `keel` binary).

use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fs::{Fs, FsFile, OpenMode, RealFs};
use crate::segment::SEGMENT_EXT;

/// Suffix of the sidecar file next to each segment.
pub const SYNCED_SUFFIX: &str = ".synced";

/// The real filesystem plus sync records for segments (module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncRecordFs {
    /// Pretend to fdatasync segments without doing it (the bug switch).
    pub skip_segment_sync: bool,
}

impl SyncRecordFs {
    pub fn new_arc(skip_segment_sync: bool) -> Arc<dyn Fs> {
        Arc::new(SyncRecordFs { skip_segment_sync })
    }
}

/// The sidecar path of a segment.
pub fn synced_path(segment: &Path) -> PathBuf {
    let mut s = segment.as_os_str().to_owned();
    s.push(SYNCED_SUFFIX);
    PathBuf::from(s)
}

/// Reads a sidecar: `Ok(None)` if there is none.
pub fn read_synced_len(segment: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(synced_path(segment)) {
        Ok(s) => s.trim().parse::<u64>().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a length", synced_path(segment).display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Simulates the loss of everything not yet fsynced in a store directory
/// whose process is dead: cuts every segment that has a sidecar back to the
/// recorded length. Returns (segment, old length, new length) for each
/// segment it shortened.
pub fn cut_to_synced(dir: &Path) -> io::Result<Vec<(PathBuf, u64, u64)>> {
    let mut cut = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if !is_segment(&path) {
            continue;
        }
        let Some(synced) = read_synced_len(&path)? else {
            continue;
        };
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        let len = f.metadata()?.len();
        if len > synced {
            f.set_len(synced)?;
            f.sync_all()?;
            cut.push((path, len, synced));
        }
    }
    Ok(cut)
}

fn is_segment(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| crate::segment::parse_name(n, SEGMENT_EXT).is_some())
}

/// The position after the last non-zero byte of a file (its zero tail is
/// preallocated space, not data).
fn data_end_of(f: &dyn FsFile) -> io::Result<u64> {
    const CHUNK: u64 = 64 << 10;
    let mut end = f.size()?;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let want = (end - start) as usize;
        let got = crate::fs::read_full_at(f, &mut buf[..want], start)?;
        if let Some(i) = buf[..got].iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[derive(Debug)]
struct Recorded {
    inner: Arc<dyn FsFile>,
    sidecar: std::fs::File,
    /// End of the last data (non-zero) write, lowered by truncations.
    data_end: Mutex<u64>,
    skip_sync: bool,
}

impl Recorded {
    fn record(&self, len: u64) -> io::Result<()> {
        let text = format!("{len:020}\n");
        self.sidecar.write_all_at(text.as_bytes(), 0)
    }
}

impl FsFile for Recorded {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
        let n = self.inner.write_at(bufs, pos)?;
        let data = bufs.iter().any(|b| b.iter().any(|&x| x != 0));
        if data && n > 0 {
            let mut end = self.data_end.lock().unwrap_or_else(|p| p.into_inner());
            *end = (*end).max(pos + n as u64);
        }
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.skip_sync {
            return Ok(());
        }
        self.inner.sync_data()?;
        let end = *self.data_end.lock().unwrap_or_else(|p| p.into_inner());
        self.record(end)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        let mut end = self.data_end.lock().unwrap_or_else(|p| p.into_inner());
        *end = (*end).min(len);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.inner.drop_cache()
    }
}

impl Fs for SyncRecordFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let inner = RealFs.open(path, mode)?;
        if mode == OpenMode::Read || !is_segment(path) {
            return Ok(inner);
        }
        let had_record = matches!(read_synced_len(path), Ok(Some(_)));
        let sidecar = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(synced_path(path))?;
        let data_end = if mode == OpenMode::Create {
            0
        } else {
            data_end_of(&*inner)?
        };
        let f = Recorded {
            inner,
            sidecar,
            data_end: Mutex::new(data_end),
            skip_sync: self.skip_segment_sync,
        };
        if mode == OpenMode::Create {
            // A new segment holds nothing durable yet.
            f.sidecar.set_len(0)?;
            f.record(0)?;
        } else if !had_record {
            // First open of a segment written before records were kept:
            // what it holds now is what there is.
            f.record(data_end)?;
        }
        Ok(Arc::new(f))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)?;
        if is_segment(path) {
            let _ = std::fs::remove_file(synced_path(path));
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        RealFs.lock(path)
    }
}
