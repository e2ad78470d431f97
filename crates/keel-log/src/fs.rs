//! The filesystem layer: every file operation the store performs goes
//! through [`Fs`] and [`FsFile`], so that tests can inject failures at the
//! I/O boundary (see [`crate::testing::FaultFs`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing file, read only.
    Read,
    /// Existing file, read and write.
    ReadWrite,
    /// Create (or truncate to empty) and open read and write.
    Create,
}

/// A directory of files. Paths are absolute or relative to the process.
pub trait Fs: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in the directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Takes an exclusive lock on `path` (created if missing). Fails with
    /// `ErrorKind::WouldBlock` if someone else holds it. The lock lasts as
    /// long as the returned guard.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>>;
}

/// An open file. All positions are explicit, so readers on other threads
/// share the handle with the writer.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Reads at `pos`; returns how many bytes were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes the buffers, in order, at `pos`; returns how many bytes were
    /// written, which may be fewer than asked (a short write).
    fn write_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    /// Asks the kernel to forget its cached pages of this file, so that
    /// the next reads come from the device. Recovery does it to the last
    /// segment before reading it: after a failed fsync the kernel may keep
    /// pages that never reached the disk as clean cache, and a restarted
    /// process would read them back and count them durable. The default
    /// does nothing (for files that are not the kernel's).
    fn drop_cache(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl RealFs {
    pub fn new_arc() -> Arc<dyn Fs> {
        Arc::new(RealFs)
    }
}

#[derive(Debug)]
struct RealFile {
    file: File,
    /// Where the file cursor is, if known (`UNKNOWN` otherwise): vectored
    /// writes go through the cursor (std has no stable `pwritev`), and
    /// knowing it saves an `lseek` per write when writes follow each other.
    cursor: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::Create => o.read(true).write(true).create(true).truncate(true),
        };
        Ok(Arc::new(RealFile {
            file: o.open(path)?,
            cursor: AtomicU64::new(0),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if let Ok(name) = e.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Box::new(f)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "lock held by someone else",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
        match bufs {
            [] => Ok(0),
            [one] => self.file.write_at(one, pos),
            many => {
                // The store performs its writes one at a time, so the cursor
                // is ours; readers use pread and never move it, nor does
                // set_len.
                let mut f = &self.file;
                if self.cursor.swap(UNKNOWN, Ordering::AcqRel) != pos {
                    f.seek(SeekFrom::Start(pos))?;
                }
                let n = f.write_vectored(many)?;
                self.cursor.store(pos + n as u64, Ordering::Release);
                Ok(n)
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn drop_cache(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor this value owns; it
        // reads and writes no memory of ours.
        let rc =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        match rc {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(file: &dyn FsFile, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A write that stopped partway: how many bytes made it, and why it stopped.
#[derive(Debug)]
pub(crate) struct PartialWrite {
    pub written: u64,
    pub error: io::Error,
}

/// Writes every buffer at `pos`, retrying short writes.
pub(crate) fn write_all_at(
    file: &dyn FsFile,
    mut bufs: &mut [IoSlice<'_>],
    pos: u64,
) -> Result<(), PartialWrite> {
    // Linux refuses more than IOV_MAX (1024) buffers in one call.
    const MAX_IOV: usize = 1024;
    let mut written = 0u64;
    while !bufs.is_empty() {
        let n = bufs.len().min(MAX_IOV);
        match file.write_at(&bufs[..n], pos + written) {
            Ok(0) => {
                return Err(PartialWrite {
                    written,
                    error: io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes"),
                });
            }
            Ok(n) => {
                written += n as u64;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(PartialWrite { written, error }),
        }
    }
    Ok(())
}
