//! Opening a data directory: rebuild the in-memory index from the files,
//! cut a torn tail, refuse anything else that is wrong.
//!
//! Rules (see ARCHITECTURE.md, "keel-log"):
//! - Sealed segments (all but the last) are loaded from their index file
//!   when it passes its checks, otherwise scanned in full (and the index
//!   file rewritten). Every batch of a scanned sealed segment must be valid
//!   up to the exact end of the file.
//! - The last segment is always scanned in full. Its first invalid batch
//!   starts a torn tail: the writer appends in order and acknowledges a
//!   write only once it and everything before it is fdatasynced, so nothing
//!   from the first invalid batch on was acknowledged (it is the write a
//!   crash interrupted; a power loss may have kept a later page of it and
//!   not an earlier one). The tail is copied to `torn-<n>/` beside the
//!   segments, then cut, logged and reported. No search for valid-looking
//!   batches further on: a client payload can embed one, and crafted
//!   headers made that search quadratic.
//! - Any corruption, a gap between segments, a first segment that starts
//!   after the floor recorded in `log.meta`, or a last segment that has an
//!   index file (it was sealed, so its successor existed) fails the open
//!   with an error naming the file and byte offset.
//! - Leftovers of interrupted operations are removed: `*.tmp` files,
//!   segments wholly below the floor (an interrupted purge), index files
//!   without a segment.
//!
//! Open never cuts anything but a torn tail: whatever else it would cut
//! may be entries that were acknowledged as durable. When the damage is
//! real (a power loss that persisted a later page of an unsynced write and
//! not an earlier one, a lost segment), the way out is the explicit
//! `repair` (`repair.rs`): it cuts the log at the first bad point, keeping
//! a copy of everything it cuts. **It may discard acknowledged entries**:
//! that is an operator's decision, which raft makes safe only if a quorum
//! of the group still holds those entries (the leader re-replicates them
//! to the repaired node); it is never taken here.

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::error::LogError;
use crate::fs::{Fs, FsFile, OpenMode};
use crate::mem_index::{LogIndex, SegMeta};
use crate::meta::{self, Floor, HardState};
use crate::seg_index::{self, SegFacts};
use crate::segment::{self, Expect, INDEX_EXT, SEGMENT_EXT, Stop};

/// What open found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub entries: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub hard_state: HardState,
    /// Set when the last segment ended in a torn write that was cut off.
    pub torn_tail: Option<TornTail>,
    /// Zero bytes after the data of the last segment (space preallocated
    /// by a store that did not close cleanly), cut off. Not a torn write.
    pub zero_tail_bytes: u64,
    /// Segments whose data was read in full (the last one, and sealed ones
    /// without a usable index file).
    pub scanned: Vec<PathBuf>,
    /// Index files written because they were missing or invalid.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Leftovers of interrupted operations that were removed.
    pub removed: Vec<PathBuf>,
}

/// A torn write at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the valid data ends (the file's new length on open).
    pub offset: u64,
    /// Bytes after `offset` (cut on open; only reported by `check`).
    pub bytes: u64,
    pub reason: String,
    /// Where open kept the bytes it cut (`None` from `check`, which cuts
    /// nothing).
    pub copy: Option<PathBuf>,
}

/// Directories holding the torn tails open cut: `torn-1`, `torn-2`, ...
pub(crate) const TORN_PREFIX: &str = "torn-";

/// Copies bytes `from..len` of the last segment into a new `torn-<n>/`
/// directory beside it (durably) before open cuts them; returns the copy.
fn keep_torn_tail(
    fs: &dyn Fs,
    dir: &Path,
    segment: &Path,
    file: &dyn FsFile,
    from: u64,
    len: u64,
) -> Result<PathBuf, LogError> {
    let keep = crate::repair::new_backup_dir(fs, dir, TORN_PREFIX)?;
    let name = segment
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = keep.join(format!("{name}.from-{from}"));
    let dst = fs
        .open(&copy, OpenMode::Create)
        .map_err(io_err("create", &copy))?;
    let mut buf = vec![0u8; (1 << 20).min((len - from) as usize)];
    let mut at = from;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        let got =
            crate::fs::read_full_at(file, &mut buf[..want], at).map_err(io_err("read", segment))?;
        if got == 0 {
            break;
        }
        crate::fs::write_all_at(&*dst, &mut [io::IoSlice::new(&buf[..got])], at - from)
            .map_err(|p| LogError::io("write", &copy, p.error))?;
        at += got as u64;
    }
    dst.sync_data().map_err(io_err("fsync", &copy))?;
    fs.sync_dir(&keep).map_err(io_err("fsync", &keep))?;
    Ok(copy)
}

pub(crate) struct Recovered {
    pub index: LogIndex,
    pub hard_state: HardState,
    pub report: RecoveryReport,
    pub next_sid: u64,
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |e| LogError::io(op, path, e)
}

pub(crate) fn read_hard_state(fs: &dyn Fs, dir: &Path) -> Result<Option<HardState>, LogError> {
    let path = dir.join(meta::HARD_STATE_FILE);
    match meta::read_small(fs, &path, 64).map_err(io_err("read", &path))? {
        None => Ok(None),
        Some(b) => meta::decode_hard_state(&b)
            .map(Some)
            .map_err(|r| LogError::corrupt(&path, 0, r)),
    }
}

pub(crate) fn read_floor(fs: &dyn Fs, dir: &Path) -> Result<Option<Floor>, LogError> {
    let path = dir.join(meta::META_FILE);
    match meta::read_small(fs, &path, 64).map_err(io_err("read", &path))? {
        None => Ok(None),
        Some(b) => meta::decode_floor(&b)
            .map(Some)
            .map_err(|r| LogError::corrupt(&path, 0, r)),
    }
}

/// The files of a data directory, sorted out by kind.
pub(crate) struct Listing {
    pub segments: Vec<u64>,
    pub indexes: BTreeSet<u64>,
    pub temps: Vec<String>,
}

pub(crate) fn list(fs: &dyn Fs, dir: &Path) -> Result<Listing, LogError> {
    let names = fs.list(dir).map_err(io_err("list", dir))?;
    let mut segments = BTreeSet::new();
    let mut indexes = BTreeSet::new();
    let mut temps = Vec::new();
    for n in names {
        if let Some(i) = segment::parse_name(&n, SEGMENT_EXT) {
            segments.insert(i);
        } else if let Some(i) = segment::parse_name(&n, INDEX_EXT) {
            indexes.insert(i);
        } else if n.ends_with(meta::TMP_SUFFIX) {
            temps.push(n);
        }
    }
    Ok(Listing {
        segments: segments.into_iter().collect(),
        indexes,
        temps,
    })
}

fn remove_file(fs: &dyn Fs, path: PathBuf, report: &mut RecoveryReport) -> Result<(), LogError> {
    match fs.remove(&path) {
        Ok(()) => {
            info!(file = %path.display(), "removed a leftover of an interrupted operation");
            report.removed.push(path);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io("remove", path, e)),
    }
}

fn meta_from_facts(sid: u64, f: SegFacts, file: Arc<dyn FsFile>) -> SegMeta {
    SegMeta {
        sid,
        first_index: f.first_index,
        base_offset: f.base_offset,
        end_pos: f.data_len,
        end_offset: f.end_offset,
        pos: f.pos,
        off: f.off,
        file: Some(file),
    }
}

fn push_terms(all: &mut Vec<(u64, u64)>, runs: &[(u64, u64)]) {
    for &(i, t) in runs {
        if all.last().is_none_or(|&(_, last)| last != t) {
            all.push((i, t));
        }
    }
}

/// Rebuilds the in-memory index from the directory, repairing only what is
/// safe to repair (torn tail, leftovers). `first_sid` numbers the segments.
///
/// `remove_temps` is false when the store rebuilds its index while running
/// (after ENOSPC): a `.tmp` file may then be a hard state being saved.
pub(crate) fn recover(
    fs: &dyn Fs,
    dir: &Path,
    first_sid: u64,
    remove_temps: bool,
) -> Result<Recovered, LogError> {
    let mut report = RecoveryReport::default();
    let listing = list(fs, dir)?;
    let mut dir_changed = false;
    if remove_temps {
        for t in &listing.temps {
            remove_file(fs, dir.join(t), &mut report)?;
            dir_changed = true;
        }
    }
    let hard_state = read_hard_state(fs, dir)?.unwrap_or_default();
    let floor = read_floor(fs, dir)?.unwrap_or_default();

    let mut names = listing.segments;
    if let Some(&huge) = names.iter().find(|&&n| n >= crate::MAX_INDEX) {
        return Err(LogError::corrupt(
            dir.join(segment::segment_name(huge)),
            0,
            "segment name is an index out of range",
        ));
    }
    // An interrupted purge leaves whole segments below the floor.
    while names.len() >= 2 && names[1] - 1 <= floor.index {
        let first = names.remove(0);
        remove_file(fs, dir.join(segment::segment_name(first)), &mut report)?;
        remove_file(fs, dir.join(segment::index_name(first)), &mut report)?;
        dir_changed = true;
    }
    if let Some(&first) = names.first() {
        if first > floor.index + 1 {
            return Err(LogError::MissingSegment {
                expected: dir.join(segment::segment_name(floor.index + 1)),
                detail: format!(
                    "the log starts at index {} but the first segment file starts at index {first}",
                    floor.index + 1
                ),
            });
        }
        if first <= floor.index {
            let path = dir.join(segment::segment_name(first));
            return Err(LogError::corrupt(
                path,
                0,
                format!(
                    "segment starts at index {first}, at or below the log's start floor {} recorded in {}",
                    floor.index,
                    meta::META_FILE
                ),
            ));
        }
    } else {
        // A new directory, or an interrupted reset: start an empty segment.
        let path = dir.join(segment::segment_name(floor.index + 1));
        fs.open(&path, OpenMode::Create)
            .map_err(io_err("create", &path))?;
        names.push(floor.index + 1);
        dir_changed = true;
    }

    let mut sid = first_sid;
    let mut segs = VecDeque::with_capacity(names.len());
    let mut terms: Vec<(u64, u64)> = Vec::new();
    let mut next_index = floor.index + 1;
    let mut next_offset = floor.offset;
    let mut last_term = floor.term;
    for (k, &name) in names.iter().enumerate() {
        let path = dir.join(segment::segment_name(name));
        let is_last = k + 1 == names.len();
        if name > next_index {
            return Err(LogError::MissingSegment {
                expected: dir.join(segment::segment_name(next_index)),
                detail: format!(
                    "the segment before it ends at index {}, the next segment file starts at index {name}",
                    next_index - 1
                ),
            });
        }
        if name < next_index {
            return Err(LogError::corrupt(
                path,
                0,
                format!(
                    "segment starts at index {name}, but the previous segment already holds up to index {}",
                    next_index - 1
                ),
            ));
        }
        let file = fs
            .open(&path, OpenMode::ReadWrite)
            .map_err(io_err("open", &path))?;
        if is_last {
            // Read what the device holds, not what the page cache kept
            // of writes whose fsync failed (see `FsFile::drop_cache`).
            if let Err(e) = file.drop_cache() {
                warn!(file = %path.display(), error = %e, "could not drop the last segment's cached pages; reading it through the page cache");
            }
        }
        let len = file.size().map_err(io_err("stat", &path))?;
        if len > u32::MAX as u64 {
            return Err(LogError::corrupt(
                &path,
                0,
                format!("segment of {len} bytes is larger than 4 GiB"),
            ));
        }
        let has_index = listing.indexes.contains(&name);
        let idx_path = dir.join(segment::index_name(name));

        // Sealed segment with a usable index file: no data read.
        if !is_last && has_index {
            let loaded = fs
                .open(&idx_path, OpenMode::Read)
                .map_err(|e| e.to_string())
                .and_then(|idx| seg_index::load(&*idx, &*file, name));
            match loaded {
                Ok(f) if f.base_offset == next_offset && f.terms[0].1 >= last_term => {
                    next_index = f.first_index + f.pos.len() as u64;
                    next_offset = f.end_offset;
                    last_term = f.terms[f.terms.len() - 1].1;
                    push_terms(&mut terms, &f.terms);
                    segs.push_back(meta_from_facts(sid, f, file));
                    sid += 1;
                    continue;
                }
                Ok(_) => {
                    warn!(file = %idx_path.display(), "index file does not continue the previous segment; scanning the segment")
                }
                Err(reason) => {
                    warn!(file = %idx_path.display(), %reason, "index file unusable; scanning the segment")
                }
            }
        }

        let expect = Expect {
            index: name,
            offset: Some(next_offset),
            min_term: last_term,
        };
        let mut s = segment::scan(&*file, len, expect, |_| {}).map_err(io_err("read", &path))?;
        report.scanned.push(path.clone());
        match s.stop.take() {
            Some(Stop::Eof) | None => {}
            Some(Stop::Rejected { pos, reason }) => {
                return Err(LogError::corrupt(&path, pos, reason));
            }
            Some(Stop::Undecodable { pos, reason }) => {
                if !is_last {
                    return Err(LogError::corrupt(
                        &path,
                        pos,
                        format!("{reason} (in a sealed segment, so not a torn write)"),
                    ));
                }
                if segment::is_zero_from(&*file, len, pos).map_err(io_err("read", &path))? {
                    info!(file = %path.display(), offset = pos, bytes = len - pos, "cutting the unwritten preallocated tail of the last segment");
                    file.set_len(pos).map_err(io_err("truncate", &path))?;
                    file.sync_data().map_err(io_err("fsync", &path))?;
                    report.zero_tail_bytes = len - pos;
                } else {
                    let copy = keep_torn_tail(fs, dir, &path, &*file, pos, len)?;
                    warn!(
                        file = %path.display(),
                        offset = pos,
                        bytes_cut = len - pos,
                        copy = %copy.display(),
                        %reason,
                        "torn tail: cutting the last segment back to its last valid batch (the write a crash interrupted; nothing from there on was acknowledged); the bytes cut are kept in the copy"
                    );
                    file.set_len(pos).map_err(io_err("truncate", &path))?;
                    file.sync_data().map_err(io_err("fsync", &path))?;
                    report.torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: pos,
                        bytes: len - pos,
                        reason,
                        copy: Some(copy),
                    });
                }
            }
        }
        if !is_last && s.pos.is_empty() {
            return Err(LogError::corrupt(
                &path,
                0,
                "segment is empty but is not the last one",
            ));
        }
        if is_last && has_index {
            return Err(LogError::MissingSegment {
                expected: dir.join(segment::segment_name(name + s.pos.len() as u64)),
                detail: format!(
                    "{} was sealed (it has an index file), so a segment after it existed",
                    segment::segment_name(name)
                ),
            });
        }
        next_index = name + s.pos.len() as u64;
        next_offset = s.end_offset;
        last_term = s.last_term;
        push_terms(&mut terms, &s.terms);
        let facts = SegFacts {
            first_index: name,
            data_len: s.end_pos,
            base_offset: s.base_offset,
            end_offset: s.end_offset,
            terms: s.terms,
            pos: s.pos,
            off: s.off,
        };
        if is_last {
            // The previous process may have died between write and fsync:
            // what is recovered must be durable before it is reported so.
            file.sync_data().map_err(io_err("fsync", &path))?;
        } else {
            rewrite_index(fs, &idx_path, &facts, &mut report);
        }
        segs.push_back(meta_from_facts(sid, facts, file));
        sid += 1;
    }
    for &orphan in &listing.indexes {
        if !names.contains(&orphan) {
            remove_file(fs, dir.join(segment::index_name(orphan)), &mut report)?;
            dir_changed = true;
        }
    }
    if dir_changed {
        fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
    }
    let last_index = next_index - 1;
    let index = LogIndex {
        floor,
        segs,
        terms,
        last_index,
    };
    report.segments = index.segs.len();
    report.entries = index.entries();
    report.first_index = index.first_index();
    report.last_index = last_index;
    report.hard_state = hard_state;
    Ok(Recovered {
        index,
        hard_state,
        report,
        next_sid: sid,
    })
}

/// Writes a sealed segment's index file; failure only costs a scan on the
/// next open.
pub(crate) fn write_index(fs: &dyn Fs, path: &Path, facts: &SegFacts) -> io::Result<()> {
    let bytes = seg_index::encode(facts);
    let f = fs.open(path, OpenMode::Create)?;
    crate::fs::write_all_at(&*f, &mut [io::IoSlice::new(&bytes)], 0).map_err(|p| p.error)?;
    f.sync_data()
}

fn rewrite_index(fs: &dyn Fs, path: &Path, facts: &SegFacts, report: &mut RecoveryReport) {
    match write_index(fs, path, facts) {
        Ok(()) => report.rebuilt_indexes.push(path.to_path_buf()),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "could not rewrite a segment index file; the next open scans the segment again");
            let _ = fs.remove(path);
        }
    }
}
