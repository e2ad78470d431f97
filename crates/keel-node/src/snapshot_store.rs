//! A group's snapshots on disk (`groups/<g>/snapshot/`): `<index:020>.snap`
//! files, each a header padded with zeros to a multiple of 4 KiB, then the
//! state machine's data.
//!
//! ```text
//! header, little-endian
//!    0   8  magic "KEELSNP1"
//!    8   8  index          the last raft index the snapshot covers
//!   16   8  term           the term of the entry at index
//!   24   8  next offset    the user offset the first record after index takes
//!   32   8  data length    n
//!   40   4  CRC32C of the data
//!   44   4  membership length k (<= 1 MiB), then k bytes: the configuration
//!           entry body (version 2) in force at index, opaque here
//!    .   4  CRC32C of the header bytes before it
//!    .      zeros up to the next multiple of 4096 (data start, d)
//!    d   n  the data
//! ```
//!
//! A file is whole when its header CRC matches and its length is exactly
//! `d + n`; the data CRC is checked when the data is read in full
//! ([`SnapshotStore::open_data`]), not at open.
//!
//! Other files in the directory, all removed at [`SnapshotStore::open`]:
//!
//! - `tmp-<index:020>`: a snapshot being taken ([`SnapshotWriter`]),
//!   renamed to `<index:020>.snap` once written and synced;
//! - `incoming`: a snapshot being received from a leader
//!   ([`SnapshotStore::stage`]), renamed once complete;
//! - `tmp-big-<index:020>`: a copy made when a header does not fit the
//!   4 KiB left for it in front of the data (a membership over 4044 bytes).
//!
//! Files being written leave a 4 KiB gap in front of the data, so the
//! header goes in place at the end; only a larger header costs a copy.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// The longest membership (configuration entry body) a header holds.
pub const MAX_MEMBERSHIP_LEN: usize = 1 << 20;

const MAGIC: &[u8; 8] = b"KEELSNP1";
/// Headers are padded to a multiple of this; data starts there.
const ALIGN: u64 = 4096;
/// Header bytes before the membership.
const FIXED_LEN: usize = 48;
/// Room left in front of the data of a file being written.
const GAP: u64 = ALIGN;
const INCOMING: &str = "incoming";
const TMP_PREFIX: &str = "tmp-";
const SUFFIX: &str = ".snap";

/// A snapshot on disk: what its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last raft index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The user offset the first record after `index` takes.
    pub next_offset: u64,
    /// The length of the data in bytes.
    pub size: u64,
    /// CRC32C of the data.
    pub data_crc: u32,
    /// The configuration entry body in force at `index` (opaque here).
    pub membership: Bytes,
}

/// What the caller says about a snapshot it writes or receives; the store
/// adds the size and the data CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    /// The last raft index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// The user offset the first record after `index` takes.
    pub next_offset: u64,
    /// The configuration entry body in force at `index`, at most
    /// [`MAX_MEMBERSHIP_LEN`] bytes.
    pub membership: Bytes,
}

impl NewSnapshot {
    fn with_data(self, size: u64, data_crc: u32) -> SnapshotInfo {
        SnapshotInfo {
            index: self.index,
            term: self.term,
            next_offset: self.next_offset,
            size,
            data_crc,
            membership: self.membership,
        }
    }
}

fn header_len(membership_len: usize) -> usize {
    FIXED_LEN + membership_len + 4
}

/// Where the data starts in a file whose membership is that long.
fn data_start(membership_len: usize) -> u64 {
    (header_len(membership_len) as u64).div_ceil(ALIGN) * ALIGN
}

/// The header, padded with zeros to where the data starts.
fn encode_header(info: &SnapshotInfo) -> Vec<u8> {
    let k = info.membership.len();
    let mut b = Vec::with_capacity(data_start(k) as usize);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&info.index.to_le_bytes());
    b.extend_from_slice(&info.term.to_le_bytes());
    b.extend_from_slice(&info.next_offset.to_le_bytes());
    b.extend_from_slice(&info.size.to_le_bytes());
    b.extend_from_slice(&info.data_crc.to_le_bytes());
    b.extend_from_slice(&(k as u32).to_le_bytes());
    b.extend_from_slice(&info.membership);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b.resize(data_start(k) as usize, 0);
    b
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The membership length a header announces, once its fixed part is there.
fn announced_membership_len(b: &[u8]) -> Result<usize, String> {
    if b.len() < FIXED_LEN + 4 {
        return Err(format!(
            "{} bytes, shorter than the smallest header ({})",
            b.len(),
            FIXED_LEN + 4
        ));
    }
    if &b[..8] != MAGIC {
        return Err("it does not start with KEELSNP1: not a keel snapshot".into());
    }
    let k = u32_at(b, 44) as usize;
    if k > MAX_MEMBERSHIP_LEN {
        return Err(format!(
            "the header announces a membership of {k} bytes (at most {MAX_MEMBERSHIP_LEN})"
        ));
    }
    Ok(k)
}

/// Decodes a header: `b` holds at least the whole header (padding and data
/// after it are ignored). Any input gives a result or an error, never a
/// panic.
fn decode_header(b: &[u8]) -> Result<SnapshotInfo, String> {
    let k = announced_membership_len(b)?;
    let len = header_len(k);
    if b.len() < len {
        return Err(format!(
            "the header is cut short: {} of its {len} bytes",
            b.len()
        ));
    }
    let stored = u32_at(b, len - 4);
    let computed = crc32c::crc32c(&b[..len - 4]);
    if stored != computed {
        return Err(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(SnapshotInfo {
        index: u64_at(b, 8),
        term: u64_at(b, 16),
        next_offset: u64_at(b, 24),
        size: u64_at(b, 32),
        data_crc: u32_at(b, 40),
        membership: Bytes::copy_from_slice(&b[FIXED_LEN..FIXED_LEN + k]),
    })
}

/// Reads and checks the header of the snapshot file `file` (`path`, whose
/// name says `index`), and that the file is exactly header plus data.
/// Returns the header and where the data starts. Errors are plain reasons.
fn read_header(file: &File, index: u64) -> Result<(SnapshotInfo, u64), String> {
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot read its length: {e}"))?
        .len();
    let mut b = vec![0u8; file_len.min(GAP) as usize];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let k = announced_membership_len(&b)?;
    let len = header_len(k) as u64;
    if len > file_len {
        return Err(format!(
            "the file ({file_len} bytes) is shorter than its header ({len} bytes)"
        ));
    }
    if len > b.len() as u64 {
        b = vec![0u8; len as usize];
        file.read_exact_at(&mut b, 0)
            .map_err(|e| format!("cannot read it: {e}"))?;
    }
    let info = decode_header(&b)?;
    if info.index != index {
        return Err(format!(
            "its header says index {} where its name says {index}",
            info.index
        ));
    }
    let start = data_start(k);
    match start.checked_add(info.size) {
        Some(want) if want == file_len => Ok((info, start)),
        _ => Err(format!(
            "the file is {file_len} bytes long where its header says {start} + {} bytes",
            info.size
        )),
    }
}

fn file_name(index: u64) -> String {
    format!("{index:020}{SUFFIX}")
}

/// The index a snapshot file name carries (`<20 digits>.snap`), if it is one.
fn snap_index(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, "cannot fsync the snapshot directory", dir))
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The latest snapshot, open.
#[derive(Debug)]
struct Latest {
    info: SnapshotInfo,
    path: PathBuf,
    data_start: u64,
    file: File,
}

/// A snapshot being received.
#[derive(Debug)]
struct Staged {
    file: File,
    len: u64,
    crc: u32,
}

/// The snapshots of one group, in one directory: the latest one, snapshots
/// being taken ([`SnapshotWriter`]) and one being received
/// ([`stage`](Self::stage)).
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    latest: Option<Latest>,
    staged: Option<Staged>,
}

impl SnapshotStore {
    /// Opens the directory, creating it if needed: removes interrupted
    /// writes (`tmp-*`, `incoming`), finds the newest snapshot and removes
    /// older ones.
    ///
    /// A newest snapshot whose header is damaged, or whose length does not
    /// match its header, is an error of kind `InvalidData` naming the file;
    /// the store does not fall back to an older one by itself.
    pub fn open(dir: &Path) -> io::Result<SnapshotStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| with_path(e, "cannot create the snapshot directory", dir))?;
        let mut snaps = Vec::new();
        let mut removed = false;
        for entry in std::fs::read_dir(dir)
            .map_err(|e| with_path(e, "cannot list the snapshot directory", dir))?
        {
            let entry =
                entry.map_err(|e| with_path(e, "cannot list the snapshot directory", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == INCOMING || name.starts_with(TMP_PREFIX) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| {
                    with_path(e, "cannot remove the interrupted snapshot write", &path)
                })?;
                removed = true;
            } else if let Some(index) = snap_index(name) {
                snaps.push(index);
            }
        }
        snaps.sort_unstable();
        let latest = match snaps.pop() {
            None => None,
            Some(index) => {
                let path = dir.join(file_name(index));
                let file = File::open(&path)
                    .map_err(|e| with_path(e, "cannot open the snapshot", &path))?;
                let (info, data_start) =
                    read_header(&file, index).map_err(|why| damaged(&path, &why))?;
                Some(Latest {
                    info,
                    path,
                    data_start,
                    file,
                })
            }
        };
        for index in snaps {
            let path = dir.join(file_name(index));
            std::fs::remove_file(&path)
                .map_err(|e| with_path(e, "cannot remove the old snapshot", &path))?;
            removed = true;
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
            latest,
            staged: None,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest snapshot, if any.
    pub fn latest(&self) -> Option<&SnapshotInfo> {
        self.latest.as_ref().map(|l| &l.info)
    }

    fn latest_of(&self, index: u64) -> io::Result<&Latest> {
        match &self.latest {
            Some(l) if l.info.index == index => Ok(l),
            l => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "snapshot {index} in {} is not the latest (the latest is {})",
                    self.dir.display(),
                    l.as_ref()
                        .map_or("none".to_string(), |l| l.info.index.to_string())
                ),
            )),
        }
    }

    /// Reads up to `max_len` bytes of the data of snapshot `index` from
    /// `offset` (empty at the end of the data). `NotFound` when that
    /// snapshot is not the latest (any more); `InvalidInput` when `offset`
    /// is past the end. The data CRC is not checked here.
    pub fn read_chunk(&self, index: u64, offset: u64, max_len: usize) -> io::Result<Bytes> {
        let l = self.latest_of(index)?;
        if offset > l.info.size {
            return Err(invalid_input(format!(
                "snapshot {}: offset {offset} is past the end of its {} bytes of data",
                l.path.display(),
                l.info.size
            )));
        }
        let n = (max_len as u64).min(l.info.size - offset) as usize;
        let mut b = vec![0u8; n];
        l.file
            .read_exact_at(&mut b, l.data_start + offset)
            .map_err(|e| with_path(e, "cannot read the snapshot", &l.path))?;
        Ok(Bytes::from(b))
    }

    /// A reader over the latest snapshot's data. It checks the data CRC
    /// when it reaches the end, and fails with `InvalidData` if the CRC
    /// does not match or the file ends early. `NotFound` when there is no
    /// snapshot.
    pub fn open_data(&self) -> io::Result<DataReader> {
        let l = self.latest.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no snapshot in {}", self.dir.display()),
            )
        })?;
        let file = l
            .file
            .try_clone()
            .map_err(|e| with_path(e, "cannot open the snapshot", &l.path))?;
        Ok(DataReader::new(
            file,
            l.path.clone(),
            l.data_start,
            l.info.size,
            l.info.data_crc,
        ))
    }

    /// Starts writing the snapshot at `index` into `tmp-<index:020>`. The
    /// writer needs only the directory, so it may run on another thread;
    /// hand what [`SnapshotWriter::finish`] returns to
    /// [`install`](Self::install).
    pub fn begin(&self, index: u64) -> io::Result<SnapshotWriter> {
        let tmp = self.dir.join(format!("{TMP_PREFIX}{index:020}"));
        let fail = |e| with_path(e, "cannot create the snapshot file", &tmp);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(fail)?;
        file.seek(SeekFrom::Start(GAP)).map_err(fail)?;
        Ok(SnapshotWriter {
            dir: self.dir.clone(),
            index,
            out: Some(BufWriter::with_capacity(256 << 10, file)),
            tmp,
            len: 0,
            crc: 0,
            done: false,
        })
    }

    /// Makes a snapshot written by a [`SnapshotWriter`] the latest and
    /// deletes older ones. Returns false, having deleted its file, when
    /// the store already holds a later snapshot (one received while this
    /// one was being written).
    pub fn install(&mut self, info: SnapshotInfo) -> io::Result<bool> {
        let path = self.dir.join(file_name(info.index));
        if let Some(l) = &self.latest
            && info.index < l.info.index
        {
            std::fs::remove_file(&path)
                .map_err(|e| with_path(e, "cannot remove the superseded snapshot", &path))?;
            sync_dir(&self.dir)?;
            return Ok(false);
        }
        let file =
            File::open(&path).map_err(|e| with_path(e, "cannot open the snapshot", &path))?;
        let (found, data_start) =
            read_header(&file, info.index).map_err(|why| damaged(&path, &why))?;
        if found != info {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} does not hold the snapshot being installed: found {found:?}, expected {info:?}",
                    path.display()
                ),
            ));
        }
        let index = info.index;
        self.latest = Some(Latest {
            info,
            path,
            data_start,
            file,
        });
        self.remove_older_than(index)?;
        Ok(true)
    }

    fn remove_older_than(&self, index: u64) -> io::Result<()> {
        let mut removed = false;
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| with_path(e, "cannot list the snapshot directory", &self.dir))?
        {
            let entry =
                entry.map_err(|e| with_path(e, "cannot list the snapshot directory", &self.dir))?;
            if entry
                .file_name()
                .to_str()
                .and_then(snap_index)
                .is_some_and(|i| i < index)
            {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|e| with_path(e, "cannot remove the old snapshot", &path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Appends a chunk of a snapshot being received to `incoming`. Offset 0
    /// starts a new one (dropping whatever was staged); any other offset
    /// must be the length staged so far (`InvalidInput` otherwise). Not
    /// synced: [`commit_staged`](Self::commit_staged) does that.
    pub fn stage(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let path = self.dir.join(INCOMING);
        if offset == 0 {
            self.staged = None;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| with_path(e, "cannot create", &path))?;
            self.staged = Some(Staged {
                file,
                len: 0,
                crc: 0,
            });
        }
        let staged = match &mut self.staged {
            Some(s) if s.len == offset => s,
            s => {
                return Err(invalid_input(format!(
                    "snapshot chunk at offset {offset}, but {} bytes are staged in {}",
                    s.as_ref().map_or(0, |s| s.len),
                    path.display()
                )));
            }
        };
        staged
            .file
            .write_all_at(data, GAP + staged.len)
            .map_err(|e| with_path(e, "cannot write", &path))?;
        staged.len += data.len() as u64;
        staged.crc = crc32c::crc32c_append(staged.crc, data);
        Ok(())
    }

    /// How many bytes are staged, if a snapshot is being received.
    pub fn staged_len(&self) -> Option<u64> {
        self.staged.as_ref().map(|s| s.len)
    }

    /// A reader over the staged data (checked against the CRC of the bytes
    /// staged). `NotFound` when nothing is staged.
    pub fn staged_reader(&self) -> io::Result<DataReader> {
        let path = self.dir.join(INCOMING);
        let s = self.staged.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no snapshot is staged in {}", self.dir.display()),
            )
        })?;
        let file = s
            .file
            .try_clone()
            .map_err(|e| with_path(e, "cannot open", &path))?;
        Ok(DataReader::new(file, path, GAP, s.len, s.crc))
    }

    /// Turns the staged data into the snapshot `meta` describes: writes
    /// the header, syncs, renames it to `<index:020>.snap`, syncs the
    /// directory, makes it the latest and deletes older snapshots.
    /// `InvalidInput` when nothing is staged or when `meta.index` is below
    /// the latest snapshot's. On an I/O error the staged data is dropped.
    pub fn commit_staged(&mut self, meta: NewSnapshot) -> io::Result<SnapshotInfo> {
        check_membership(&meta)?;
        if let Some(l) = &self.latest
            && meta.index < l.info.index
        {
            return Err(invalid_input(format!(
                "received snapshot {} is older than the latest snapshot {} in {}",
                meta.index,
                l.info.index,
                self.dir.display()
            )));
        }
        let Some(staged) = self.staged.take() else {
            return Err(invalid_input(format!(
                "no snapshot is staged in {}",
                self.dir.display()
            )));
        };
        let incoming = self.dir.join(INCOMING);
        let info = meta.with_data(staged.len, staged.crc);
        if let Err(e) = seal(&self.dir, staged.file, &incoming, &info) {
            let _ = std::fs::remove_file(&incoming);
            return Err(e);
        }
        self.install(info.clone())?;
        Ok(info)
    }
}

fn check_membership(meta: &NewSnapshot) -> io::Result<()> {
    if meta.membership.len() > MAX_MEMBERSHIP_LEN {
        return Err(invalid_input(format!(
            "snapshot {}: membership of {} bytes (at most {MAX_MEMBERSHIP_LEN})",
            meta.index,
            meta.membership.len()
        )));
    }
    Ok(())
}

/// Completes a written file `from` (`file`, data at `GAP`): puts the header
/// in front, syncs, renames it to `<index:020>.snap` and syncs the
/// directory. A header larger than the gap costs a copy of the data.
fn seal(dir: &Path, file: File, from: &Path, info: &SnapshotInfo) -> io::Result<()> {
    let dst = dir.join(file_name(info.index));
    let header = encode_header(info);
    if header.len() as u64 == GAP {
        let fail = |e| with_path(e, "cannot write the snapshot", from);
        file.write_all_at(&header, 0).map_err(fail)?;
        file.sync_data().map_err(fail)?;
        drop(file);
    } else {
        let big = dir.join(format!("{TMP_PREFIX}big-{:020}", info.index));
        let copied = (|| {
            let fail = |e| with_path(e, "cannot write the snapshot", &big);
            let mut out = File::create(&big).map_err(fail)?;
            out.write_all(&header).map_err(fail)?;
            let mut src = file;
            src.seek(SeekFrom::Start(GAP))
                .map_err(|e| with_path(e, "cannot read", from))?;
            let n = io::copy(&mut src.take(info.size), &mut out).map_err(fail)?;
            if n != info.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ends after {n} of its {} bytes of data",
                        from.display(),
                        info.size
                    ),
                ));
            }
            out.sync_data().map_err(fail)
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&big);
            return Err(e);
        }
        std::fs::remove_file(from).map_err(|e| with_path(e, "cannot remove", from))?;
        return finish_rename(dir, &big, &dst);
    }
    finish_rename(dir, from, &dst)
}

fn finish_rename(dir: &Path, from: &Path, dst: &Path) -> io::Result<()> {
    std::fs::rename(from, dst).map_err(|e| with_path(e, "cannot rename the snapshot to", dst))?;
    sync_dir(dir)
}

fn damaged(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "snapshot {} is damaged: {why}; move it away to fall back to an older snapshot or to none",
            path.display()
        ),
    )
}

/// Writes the data of a snapshot being taken into `tmp-<index:020>`,
/// computing its length and CRC as it goes. Dropping it without
/// [`finish`](Self::finish) removes the file.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    index: u64,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    len: u64,
    crc: u32,
    /// The file was renamed: nothing to clean up.
    done: bool,
}

impl SnapshotWriter {
    /// The index this snapshot is taken at.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Completes the snapshot: writes its header, `fdatasync`s, renames it
    /// to `<index:020>.snap` and fsyncs the directory. Hand the result to
    /// [`SnapshotStore::install`]. `meta.index` must be the index given to
    /// [`SnapshotStore::begin`] (`InvalidInput` otherwise).
    pub fn finish(mut self, meta: NewSnapshot) -> io::Result<SnapshotInfo> {
        if meta.index != self.index {
            return Err(invalid_input(format!(
                "snapshot {} finished as index {}",
                self.index, meta.index
            )));
        }
        check_membership(&meta)?;
        let out = self.out.take().expect("a writer is finished once");
        let file = out
            .into_inner()
            .map_err(|e| with_path(e.into_error(), "cannot write the snapshot", &self.tmp))?;
        let info = meta.with_data(self.len, self.crc);
        seal(&self.dir, file, &self.tmp, &info)?;
        self.done = true;
        Ok(info)
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| io::Error::other("finished"))?;
        let n = out.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.done {
            // Drop the buffer unwritten: the file goes anyway.
            if let Some(out) = self.out.take() {
                let _ = out.into_parts();
            }
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reads the data of a snapshot and checks it: the read that reaches the
/// end of the data fails with `InvalidData` when the data CRC does not
/// match, and a file that ends early fails with `InvalidData` too.
#[derive(Debug)]
pub struct DataReader {
    file: File,
    path: PathBuf,
    pos: u64,
    remaining: u64,
    crc: u32,
    expected: u32,
    checked: bool,
}

impl DataReader {
    fn new(file: File, path: PathBuf, start: u64, len: u64, expected: u32) -> DataReader {
        DataReader {
            file,
            path,
            pos: start,
            remaining: len,
            crc: 0,
            expected,
            checked: false,
        }
    }

    fn check(&mut self) -> io::Result<()> {
        if !self.checked {
            if self.crc != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "snapshot {} is damaged: data checksum mismatch (stored {:#010x}, computed {:#010x}); \
                         move it away and let this node catch up from its peers, or restore the group from a backup",
                        self.path.display(),
                        self.expected,
                        self.crc
                    ),
                ));
            }
            self.checked = true;
        }
        Ok(())
    }
}

impl Read for DataReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            self.check()?;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.remaining) as usize;
        let got = self
            .file
            .read_at(&mut buf[..n], self.pos)
            .map_err(|e| with_path(e, "cannot read the snapshot", &self.path))?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} is damaged: it ends {} bytes before the end of its data",
                    self.path.display(),
                    self.remaining
                ),
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..got]);
        self.pos += got as u64;
        self.remaining -= got as u64;
        if self.remaining == 0 {
            self.check()?;
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let p =
                std::env::temp_dir().join(format!("keel-node-snap-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn meta(index: u64, membership: &[u8]) -> NewSnapshot {
        NewSnapshot {
            index,
            term: 3,
            next_offset: index * 10,
            membership: Bytes::copy_from_slice(membership),
        }
    }

    fn take(
        store: &mut SnapshotStore,
        index: u64,
        bytes: &[u8],
        membership: &[u8],
    ) -> SnapshotInfo {
        let mut w = store.begin(index).unwrap();
        // In uneven pieces, through the buffer and around it.
        for piece in bytes.chunks(7777) {
            w.write_all(piece).unwrap();
        }
        let info = w.finish(meta(index, membership)).unwrap();
        assert!(store.install(info.clone()).unwrap());
        info
    }

    fn read_all(store: &SnapshotStore) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        store.open_data()?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_taken_snapshot_survives_reopening_with_its_data() {
        let d = TempDir::new("take");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        assert!(s.latest().is_none());
        assert_eq!(s.open_data().unwrap_err().kind(), io::ErrorKind::NotFound);
        let bytes = data(300_000, 1);
        let info = take(&mut s, 42, &bytes, b"membership");
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.data_crc, crc32c::crc32c(&bytes));
        assert_eq!(info.next_offset, 420);
        assert_eq!(s.latest(), Some(&info));
        assert_eq!(read_all(&s).unwrap(), bytes);
        drop(s);
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest(), Some(&info));
        assert_eq!(read_all(&s).unwrap(), bytes);
        assert_eq!(names(&d.0), vec![file_name(42)]);
        let len = std::fs::metadata(d.0.join(file_name(42))).unwrap().len();
        assert_eq!(len, 4096 + bytes.len() as u64);
    }

    #[test]
    fn an_empty_snapshot_round_trips() {
        let d = TempDir::new("empty");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let info = take(&mut s, 1, &[], b"");
        assert_eq!(info.size, 0);
        drop(s);
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest(), Some(&info));
        assert!(read_all(&s).unwrap().is_empty());
        assert!(s.read_chunk(1, 0, 100).unwrap().is_empty());
    }

    #[test]
    fn a_membership_larger_than_the_gap_is_copied_behind_a_bigger_header() {
        let d = TempDir::new("big-header");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let membership = data(10_000, 9);
        let bytes = data(50_000, 2);
        let info = take(&mut s, 7, &bytes, &membership);
        assert_eq!(info.membership, membership);
        assert_eq!(names(&d.0), vec![file_name(7)]);
        let len = std::fs::metadata(d.0.join(file_name(7))).unwrap().len();
        assert_eq!(len, 3 * 4096 + bytes.len() as u64);
        drop(s);
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest(), Some(&info));
        assert_eq!(read_all(&s).unwrap(), bytes);
        assert_eq!(s.read_chunk(7, 49_990, 100).unwrap(), &bytes[49_990..]);
    }

    #[test]
    fn read_chunk_covers_the_whole_data_and_only_the_latest() {
        let d = TempDir::new("chunks");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let bytes = data(100_001, 3);
        take(&mut s, 5, &bytes, b"m");
        let mut got = Vec::new();
        loop {
            let c = s.read_chunk(5, got.len() as u64, 4096).unwrap();
            if c.is_empty() {
                break;
            }
            assert!(c.len() <= 4096);
            got.extend_from_slice(&c);
        }
        assert_eq!(got, bytes);
        assert_eq!(
            s.read_chunk(5, 100_002, 10).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            s.read_chunk(4, 0, 10).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        take(&mut s, 9, b"newer", b"m");
        assert_eq!(
            s.read_chunk(5, 0, 10).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(s.read_chunk(9, 1, 10).unwrap(), &b"ewer"[..]);
    }

    #[test]
    fn a_received_snapshot_is_staged_then_committed() {
        let d = TempDir::new("receive");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        take(&mut s, 3, b"old", b"m");
        let bytes = data(70_000, 4);
        // A first attempt, abandoned and restarted at offset 0.
        s.stage(0, &bytes[..1000]).unwrap();
        s.stage(0, &bytes[..30_000]).unwrap();
        assert_eq!(
            s.stage(10, &bytes[10..20]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        s.stage(30_000, &bytes[30_000..]).unwrap();
        assert_eq!(s.staged_len(), Some(70_000));
        let mut staged = Vec::new();
        s.staged_reader().unwrap().read_to_end(&mut staged).unwrap();
        assert_eq!(staged, bytes);
        assert_eq!(s.latest().unwrap().index, 3);
        let info = s.commit_staged(meta(20, b"conf")).unwrap();
        assert_eq!(info.size, 70_000);
        assert_eq!(info.data_crc, crc32c::crc32c(&bytes));
        assert_eq!(s.staged_len(), None);
        assert_eq!(s.latest(), Some(&info));
        assert_eq!(names(&d.0), vec![file_name(20)]);
        drop(s);
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest(), Some(&info));
        assert_eq!(read_all(&s).unwrap(), bytes);
    }

    #[test]
    fn staging_needs_a_start_and_committing_needs_something_staged() {
        let d = TempDir::new("stage-refusals");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(
            s.stage(5, b"x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            s.commit_staged(meta(1, b"")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            s.staged_reader().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        take(&mut s, 10, b"ten", b"");
        s.stage(0, b"older").unwrap();
        assert_eq!(
            s.commit_staged(meta(9, b"")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(s.staged_len(), Some(5));
    }

    #[test]
    fn interrupted_writes_are_removed_at_open() {
        let d = TempDir::new("leftovers");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let info = take(&mut s, 4, b"four", b"");
        let w = s.begin(8).unwrap();
        std::mem::forget(w); // a crash: no cleanup
        s.stage(0, b"partial").unwrap();
        std::fs::write(d.0.join("tmp-big-00000000000000000009"), b"x").unwrap();
        drop(s);
        assert_eq!(names(&d.0).len(), 4);
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest(), Some(&info));
        assert_eq!(names(&d.0), vec![file_name(4)]);
    }

    #[test]
    fn a_dropped_writer_removes_its_file() {
        let d = TempDir::new("dropped");
        let s = SnapshotStore::open(&d.0).unwrap();
        let mut w = s.begin(8).unwrap();
        w.write_all(&data(1000, 0)).unwrap();
        drop(w);
        assert!(names(&d.0).is_empty());
    }

    #[test]
    fn a_corrupt_newest_header_is_an_error_naming_the_file() {
        let d = TempDir::new("corrupt-header");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        take(&mut s, 1, b"one", b"m");
        drop(s);
        // An older snapshot to fall back to, and a newer one that is damaged.
        let good = std::fs::read(d.0.join(file_name(1))).unwrap();
        let mut s = SnapshotStore::open(&d.0).unwrap();
        take(&mut s, 2, b"two", b"m");
        drop(s);
        std::fs::write(d.0.join(file_name(1)), &good).unwrap();
        let newest = d.0.join(file_name(2));
        let mut b = std::fs::read(&newest).unwrap();
        b[17] ^= 0x40; // the term
        std::fs::write(&newest, &b).unwrap();
        let e = SnapshotStore::open(&d.0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(msg.contains(&newest.display().to_string()), "{msg}");
        assert!(msg.contains("move it away"), "{msg}");
        // Nothing was removed; moving it away falls back to the older one.
        assert_eq!(names(&d.0), vec![file_name(1), file_name(2)]);
        std::fs::remove_file(&newest).unwrap();
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest().unwrap().index, 1);
    }

    #[test]
    fn a_file_whose_length_does_not_match_its_header_is_an_error() {
        let d = TempDir::new("length");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        take(&mut s, 1, b"some data", b"m");
        drop(s);
        let p = d.0.join(file_name(1));
        let b = std::fs::read(&p).unwrap();
        for cut in [b.len() - 1, 4096, 100, 0] {
            std::fs::write(&p, &b[..cut]).unwrap();
            let e = SnapshotStore::open(&d.0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        assert_eq!(
            SnapshotStore::open(&d.0).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Renamed under another index.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(d.0.join(file_name(2)), &b).unwrap();
        assert_eq!(
            SnapshotStore::open(&d.0).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_flipped_data_byte_makes_the_data_reader_fail() {
        let d = TempDir::new("data-crc");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let bytes = data(20_000, 5);
        take(&mut s, 6, &bytes, b"m");
        drop(s);
        let p = d.0.join(file_name(6));
        let mut b = std::fs::read(&p).unwrap();
        b[4096 + 12_345] ^= 1;
        std::fs::write(&p, &b).unwrap();
        // Open does not read the data.
        let s = SnapshotStore::open(&d.0).unwrap();
        let e = read_all(&s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(&p.display().to_string()));
        // Reading exactly the data length also fails: the last read checks.
        let mut r = s.open_data().unwrap();
        let mut buf = vec![0u8; bytes.len()];
        assert_eq!(
            r.read_exact(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_data_reader_fails_when_the_file_is_cut_short_under_it() {
        let d = TempDir::new("short");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        take(&mut s, 6, &data(20_000, 5), b"m");
        let p = d.0.join(file_name(6));
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(4096 + 10_000)
            .unwrap();
        let e = read_all(&s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn older_snapshots_are_deleted_after_install() {
        let d = TempDir::new("older");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        take(&mut s, 10, b"a", b"");
        take(&mut s, 20, b"b", b"");
        assert_eq!(names(&d.0), vec![file_name(20)]);
        // Written but not installed (a crash before install): the newest
        // wins at open and the older one goes.
        let w = {
            let mut w = s.begin(30).unwrap();
            w.write_all(b"c").unwrap();
            w
        };
        let info30 = w.finish(meta(30, b"")).unwrap();
        assert_eq!(names(&d.0), vec![file_name(20), file_name(30)]);
        drop(s);
        let s = SnapshotStore::open(&d.0).unwrap();
        assert_eq!(s.latest(), Some(&info30));
        assert_eq!(names(&d.0), vec![file_name(30)]);
    }

    #[test]
    fn a_snapshot_taken_while_a_later_one_was_received_is_discarded() {
        let d = TempDir::new("superseded");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let mut w = s.begin(10).unwrap();
        w.write_all(b"taken").unwrap();
        s.stage(0, b"received").unwrap();
        let received = s.commit_staged(meta(50, b"")).unwrap();
        let taken = w.finish(meta(10, b"")).unwrap();
        assert!(!s.install(taken).unwrap());
        assert_eq!(s.latest(), Some(&received));
        assert_eq!(names(&d.0), vec![file_name(50)]);
    }

    #[test]
    fn a_writer_is_send_and_works_on_another_thread() {
        fn is_send<T: Send>(_: &T) {}
        let d = TempDir::new("thread");
        let mut s = SnapshotStore::open(&d.0).unwrap();
        let w = s.begin(3).unwrap();
        is_send(&w);
        let info = std::thread::spawn(move || {
            let mut w = w;
            w.write_all(b"from a thread").unwrap();
            w.finish(meta(3, b"m")).unwrap()
        })
        .join()
        .unwrap();
        assert!(s.install(info).unwrap());
        assert_eq!(read_all(&s).unwrap(), b"from a thread");
    }

    #[test]
    fn finishing_under_another_index_is_refused() {
        let d = TempDir::new("index");
        let s = SnapshotStore::open(&d.0).unwrap();
        let w = s.begin(3).unwrap();
        assert_eq!(
            w.finish(meta(4, b"")).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(names(&d.0).is_empty());
    }

    #[test]
    fn headers_round_trip_and_catch_flips() {
        let info = meta(77, b"conf body").with_data(1234, 0xdead_beef);
        let b = encode_header(&info);
        assert_eq!(b.len(), 4096);
        assert_eq!(decode_header(&b).unwrap(), info);
        let len = header_len(info.membership.len());
        for i in 0..len * 8 {
            let mut m = b.clone();
            m[i / 8] ^= 1 << (i % 8);
            assert!(decode_header(&m).is_err(), "flip {i}");
        }
    }

    #[test]
    fn random_bytes_on_disk_give_an_error_never_a_panic() {
        let d = TempDir::new("garbage");
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = encode_header(&meta(1, b"m").with_data(0, 0));
        for round in 0..400 {
            let len = match round % 5 {
                0 => (next() % 64) as usize,
                1 => (next() % 9000) as usize,
                _ => 4096,
            };
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Often a real magic and a plausible membership length, so
            // that the later checks are reached too.
            if round % 3 == 0 && b.len() >= 48 {
                b[..8].copy_from_slice(MAGIC);
                let k = (next() % 6000) as u32;
                b[44..48].copy_from_slice(&k.to_le_bytes());
            }
            if round % 7 == 0 && b.len() >= valid.len() {
                b[..valid.len()].copy_from_slice(&valid);
                let i = (next() as usize) % valid.len();
                b[i] ^= (next() as u8) | 1;
            }
            let _ = decode_header(&b);
            let dir = d.0.join(format!("r{round}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file_name(1)), &b).unwrap();
            if let Ok(s) = SnapshotStore::open(&dir) {
                let _ = read_all(&s);
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
