//! Test support: a fault-injecting filesystem and a tiny temporary directory.
//!
//! [`FaultFs`] wraps another [`Fs`] and fails chosen operations the way a
//! real disk does: a write that fails with EIO, an fsync that fails once, a
//! write that writes only part of its buffers, a device that runs out of
//! space partway through a write; and it can hold syncs until released, so
//! that a test can line up writers behind a group commit in progress.
//! Public so that the node's tests can use it.

use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::fs::{Fs, FsFile, OpenMode, RealFs};

/// What a failing write reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// ENOSPC: the device is full until [`FaultFs::free_space`].
    NoSpace,
    /// EIO.
    Io,
}

#[derive(Debug, Default)]
struct Faults {
    /// Bytes that may still be written before writes fail.
    write_budget: Option<(u64, WriteFault)>,
    /// Fail the sync after this many more successful ones.
    sync_fail_in: Option<u64>,
    short_writes: bool,
    /// Only files whose name ends with this are affected.
    filter: Option<String>,
    syncs: u64,
    writes: u64,
    /// `drop_cache` calls, with the file name of each.
    cache_drops: Vec<String>,
    /// Data syncs of affected files block while set.
    hold_syncs: bool,
    /// Syncs blocked by `hold_syncs` right now.
    held: u64,
}

/// A filesystem wrapper that injects faults. Cheap to clone; clones share
/// their fault settings.
#[derive(Debug, Clone)]
pub struct FaultFs {
    inner: Arc<dyn Fs>,
    faults: Arc<Mutex<Faults>>,
    /// Signalled when held syncs are released or start waiting.
    gate: Arc<Condvar>,
}

impl FaultFs {
    /// Wraps the real filesystem.
    pub fn new() -> Self {
        Self::wrap(Arc::new(RealFs))
    }

    pub fn wrap(inner: Arc<dyn Fs>) -> Self {
        FaultFs {
            inner,
            faults: Arc::new(Mutex::new(Faults::default())),
            gate: Arc::new(Condvar::new()),
        }
    }

    /// This filesystem as the store's option type.
    pub fn as_fs(&self) -> Arc<dyn Fs> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After `bytes` more bytes have been written (to affected files), every
    /// write fails with `fault`; a write that crosses the point writes the
    /// bytes before it first (a torn write).
    pub fn fail_writes_after(&self, bytes: u64, fault: WriteFault) {
        self.lock().write_budget = Some((bytes, fault));
    }

    /// The disk is full from now on: writes fail with ENOSPC.
    pub fn no_space(&self) {
        self.fail_writes_after(0, WriteFault::NoSpace);
    }

    /// Space was freed: writes succeed again.
    pub fn free_space(&self) {
        self.lock().write_budget = None;
    }

    /// The sync after `n` more successful ones fails with EIO (once).
    pub fn fail_sync_after(&self, n: u64) {
        self.lock().sync_fail_in = Some(n);
    }

    /// Every write writes at most half of what it was given (at least one
    /// byte).
    pub fn short_writes(&self, on: bool) {
        self.lock().short_writes = on;
    }

    /// Restricts faults to files whose name ends with `suffix` (e.g. ".log").
    pub fn only_files_ending_with(&self, suffix: Option<&str>) {
        self.lock().filter = suffix.map(str::to_owned);
    }

    /// From now on, data syncs of affected files block (after their fault
    /// check: a sync armed to fail fails at once) until
    /// [`FaultFs::release_syncs`].
    pub fn hold_syncs(&self) {
        self.lock().hold_syncs = true;
    }

    /// Lets held syncs (and later ones) proceed.
    pub fn release_syncs(&self) {
        self.lock().hold_syncs = false;
        self.gate.notify_all();
    }

    /// Waits until `n` syncs are held; false if that takes over `timeout`.
    pub fn wait_for_held_syncs(&self, n: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut f = self.lock();
        while f.held < n {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            f = self
                .gate
                .wait_timeout(f, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Clears every armed fault and releases held syncs.
    pub fn clear(&self) {
        let mut f = self.lock();
        f.write_budget = None;
        f.sync_fail_in = None;
        f.short_writes = false;
        f.hold_syncs = false;
        drop(f);
        self.gate.notify_all();
    }

    /// Successful data syncs so far (all files).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Write calls so far (all files).
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// The names of the files whose cached pages were dropped, in order.
    pub fn cache_drops(&self) -> Vec<String> {
        self.lock().cache_drops.clone()
    }

    fn affects(&self, path: &Path) -> bool {
        match &self.lock().filter {
            None => true,
            Some(suffix) => path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix.as_str())),
        }
    }
}

impl Default for FaultFs {
    fn default() -> Self {
        Self::new()
    }
}

impl Fs for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(FaultFile {
            inner,
            affected: self.affects(path),
            path: path.to_path_buf(),
            faults: self.faults.clone(),
            gate: self.gate.clone(),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        self.inner.lock(path)
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Arc<dyn FsFile>,
    affected: bool,
    path: PathBuf,
    faults: Arc<Mutex<Faults>>,
    gate: Arc<Condvar>,
}

impl FaultFile {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn fault_error(f: WriteFault) -> io::Error {
    match f {
        WriteFault::NoSpace => io::Error::from_raw_os_error(28), // ENOSPC
        WriteFault::Io => io::Error::from_raw_os_error(5),       // EIO
    }
}

/// Copies a prefix of `bufs` totalling at most `limit` bytes.
fn prefix(bufs: &[IoSlice<'_>], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(limit);
    for b in bufs {
        let take = (limit - out.len()).min(b.len());
        out.extend_from_slice(&b[..take]);
        if out.len() == limit {
            break;
        }
    }
    out
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }

    fn write_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut limit = total;
        {
            let mut f = self.faults();
            f.writes += 1;
            if self.affected {
                if let Some((budget, kind)) = f.write_budget {
                    if budget == 0 {
                        return Err(fault_error(kind));
                    }
                    // A write that crosses the fault point writes the bytes
                    // before it (a torn write); the next call hits the fault.
                    if (total as u64) > budget {
                        limit = budget as usize;
                    }
                }
                if f.short_writes && limit > 1 {
                    limit = limit.div_ceil(2);
                }
                if let Some((budget, kind)) = f.write_budget {
                    f.write_budget = Some((budget - limit as u64, kind));
                }
            }
        }
        let n = if limit == total {
            self.inner.write_at(bufs, pos)?
        } else {
            let part = prefix(bufs, limit);
            self.inner.write_at(&[IoSlice::new(&part)], pos)?
        };
        if n < limit {
            // The inner write was short: give the unused budget back.
            let mut f = self.faults();
            if let Some((budget, kind)) = f.write_budget {
                f.write_budget = Some((budget + (limit - n) as u64, kind));
            }
        }
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut f = self.faults();
        if self.affected
            && let Some(n) = f.sync_fail_in
        {
            if n == 0 {
                f.sync_fail_in = None;
                return Err(io::Error::from_raw_os_error(5));
            }
            f.sync_fail_in = Some(n - 1);
        }
        if self.affected && f.hold_syncs {
            f.held += 1;
            self.gate.notify_all();
            while f.hold_syncs {
                f = self.gate.wait(f).unwrap_or_else(|p| p.into_inner());
            }
            f.held -= 1;
        }
        drop(f);
        self.inner.sync_data()?;
        self.faults().syncs += 1;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn drop_cache(&self) -> io::Result<()> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.faults().cache_drops.push(name);
        self.inner.drop_cache()
    }
}

/// A temporary directory removed on drop (tests and benchmarks).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under `base` (or the system temp dir).
    pub fn new_in(base: Option<&Path>, prefix: &str) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = base
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}-{}-{nanos:x}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn new(prefix: &str) -> io::Result<Self> {
        Self::new_in(None, prefix)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
