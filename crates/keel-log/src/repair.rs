//! Explicit repair of a data directory that open refuses (what
//! `keel repair` runs): cut the log at its first bad point, after copying
//! everything cut away into a backup directory.
//!
//! Open never repairs anything but a torn tail, because anything else may
//! be acknowledged data. But a power loss can persist a later page of an
//! unsynced write and not an earlier one, leaving an invalid batch followed
//! by valid data; a disk can lose a segment. Then an operator needs a way
//! out, and this is it: an explicit decision, never taken by open.
//!
//! What it does, in order:
//! 1. Runs the offline check; a directory that check finds clean (a torn
//!    tail alone is clean: open cuts it) is left untouched.
//! 2. Takes the directory lock (so never under a running store) and walks
//!    the log in order, with open's rules, to its first bad point: a batch
//!    that is invalid or out of order where open does not accept a torn
//!    tail, an empty sealed segment, a segment that is missing, overlaps or
//!    starts elsewhere than where the log continues, or a last segment that
//!    was sealed (its successor is missing).
//! 3. Copies into a new directory `dir/repair-<n>/` every byte it will cut:
//!    the segment it truncates is copied whole, the index files and later
//!    segments it removes are moved there. Nothing is destroyed.
//! 4. Removes the index files (the new last segment's included) before the
//!    segments, and the later segments highest first, each step durable,
//!    then truncates the bad segment at the end of its last valid batch
//!    before the problem and fdatasyncs it, like a store's truncation: a
//!    crash midway leaves a directory that repair (run again) finishes.
//! 5. Checks the result, which must be clean.
//!
//! **Repair may discard entries that were acknowledged**: everything after
//! the first bad point goes, valid or not. That is the operator's decision.
//! In a raft group the leader re-replicates the lost suffix to this node if
//! a quorum still holds it; if this node's copy was needed for a quorum,
//! those entries may be lost for good. A hard state (`hardstate`) or log
//! start (`log.meta`) that is corrupt is never guessed at: repair refuses.

use std::fmt;
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_format::{Batch, BatchHeader, HEADER_LEN, MAX_BATCH_LEN};

use crate::check::{CheckReport, Problem, check_with};
use crate::error::{LogError, Result};
use crate::fs::{Fs, FsFile, OpenMode, RealFs, read_full_at, write_all_at};
use crate::recovery::{self, io_err};
use crate::segment::{self, Expect, Stop};

/// What `repair` did.
#[derive(Debug, Clone)]
pub struct RepairReport {
    pub dir: PathBuf,
    /// The offline check of the directory before the repair.
    pub before: CheckReport,
    /// The first problem in log order, where the log was cut; `None` when
    /// there was nothing to repair (and nothing was changed).
    pub cut_at: Option<Problem>,
    /// `dir/repair-<n>`: the original bytes of everything cut.
    pub backup_dir: Option<PathBuf>,
    /// The segment truncated at the cut, if the cut fell inside one.
    pub truncated: Option<TruncatedFile>,
    /// Index files and later segments removed (moved to the backup), in the
    /// order they were removed.
    pub removed: Vec<RemovedFile>,
    /// The log's last index after the repair.
    pub last_kept_index: u64,
    /// The first index no longer in the log (`last_kept_index + 1`).
    pub first_lost_index: u64,
    /// The highest index that the cut data shows existed: the highest valid
    /// batch found in it, or implied by the name of a removed segment.
    /// `None` when the cut data shows none (e.g. only a segment that went
    /// missing was after the cut): how many entries were lost is unknown.
    pub last_lost_index: Option<u64>,
    /// Valid batches (checksum and all) found in the cut data, at or after
    /// `first_lost_index`.
    pub valid_batches_cut: u64,
}

/// A segment cut back to its last valid batch before the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedFile {
    pub file: PathBuf,
    /// The file's new length: bytes `kept_bytes..old_len` were cut.
    pub kept_bytes: u64,
    pub old_len: u64,
    /// A copy of the whole original file.
    pub backup: PathBuf,
}

/// A file removed from the data directory (moved into the backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedFile {
    pub file: PathBuf,
    pub bytes: u64,
    pub backup: PathBuf,
}

impl RepairReport {
    /// True if anything was cut.
    pub fn repaired(&self) -> bool {
        self.cut_at.is_some()
    }

    /// Entries no longer in the log: `Some(0)` when nothing was repaired,
    /// `None` when the cut data does not show how many there were.
    pub fn entries_lost(&self) -> Option<u64> {
        if !self.repaired() {
            return Some(0);
        }
        self.last_lost_index
            .map(|l| l.saturating_sub(self.first_lost_index) + 1)
    }
}

/// Repairs the data directory `dir` on the real filesystem. See the module
/// documentation: it may discard entries that were acknowledged.
pub fn repair(dir: &Path) -> Result<RepairReport> {
    repair_with(&RealFs, dir)
}

/// Repairs `dir` through the given filesystem layer.
pub fn repair_with(fs: &dyn Fs, dir: &Path) -> Result<RepairReport> {
    let before = check_with(fs, dir)?;
    if before.is_clean() {
        return Ok(nothing_to_do(dir, before));
    }
    let _lock = fs.lock(&dir.join(crate::store::LOCK_FILE)).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            LogError::Locked {
                dir: dir.to_path_buf(),
            }
        } else {
            LogError::io("lock", dir.join(crate::store::LOCK_FILE), e)
        }
    })?;
    // Again under the lock: the directory may have been in use.
    let before = check_with(fs, dir)?;
    if before.is_clean() {
        return Ok(nothing_to_do(dir, before));
    }
    if let Err(e) = recovery::read_hard_state(fs, dir) {
        return Err(unrepairable(e));
    }
    let floor = match recovery::read_floor(fs, dir) {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return Err(unrepairable(e)),
    };
    let listing = recovery::list(fs, dir)?;
    let mut names = listing.segments.clone();
    // Leftovers of an interrupted purge: open removes them; not ours.
    while names.len() >= 2 && names[1] - 1 <= floor.index {
        names.remove(0);
    }
    let Some(cut) = find_cut(fs, dir, &names, floor, &listing.indexes)? else {
        // What check reports is something open handles (no segment file
        // at all: open starts one).
        return Ok(nothing_to_do(dir, before));
    };

    // Everything about the data to cut is read before anything changes.
    let removed_segs: Vec<u64> = names[cut.first_removed..].to_vec();
    let new_last = match cut.trunc {
        Some(t) => Some(names[t.seg]),
        None => cut.first_removed.checked_sub(1).map(|k| names[k]),
    };
    let mut evidence = Evidence::new(cut.first_lost);
    if let Some(t) = cut.trunc {
        let path = dir.join(segment::segment_name(names[t.seg]));
        let file = fs
            .open(&path, OpenMode::Read)
            .map_err(io_err("open", &path))?;
        evidence
            .scan(&*file, t.old_len, t.pos)
            .map_err(io_err("read", &path))?;
    }
    for &name in &removed_segs {
        let path = dir.join(segment::segment_name(name));
        let file = fs
            .open(&path, OpenMode::Read)
            .map_err(io_err("open", &path))?;
        let len = file.size().map_err(io_err("stat", &path))?;
        evidence.implied_by_name(name);
        evidence
            .scan(&*file, len, 0)
            .map_err(io_err("read", &path))?;
    }
    let mut idx_to_remove: Vec<u64> = Vec::new();
    if let Some(last) = new_last.filter(|n| listing.indexes.contains(n)) {
        idx_to_remove.push(last);
    }
    idx_to_remove.extend(
        removed_segs
            .iter()
            .rev()
            .filter(|n| listing.indexes.contains(n)),
    );

    // The backup directory, then the copies and moves.
    let backup_dir = new_backup_dir(fs, dir, BACKUP_PREFIX)?;
    let mut report = RepairReport {
        dir: dir.to_path_buf(),
        before,
        cut_at: Some(cut.problem.clone()),
        backup_dir: Some(backup_dir.clone()),
        truncated: None,
        removed: Vec::new(),
        last_kept_index: cut.first_lost - 1,
        first_lost_index: cut.first_lost,
        last_lost_index: evidence.last,
        valid_batches_cut: evidence.valid,
    };
    let truncate = cut.trunc.filter(|t| t.pos < t.old_len);
    if let Some(t) = truncate {
        let name = segment::segment_name(names[t.seg]);
        let (from, to) = (dir.join(&name), backup_dir.join(&name));
        copy_file(fs, &from, &to)?;
        report.truncated = Some(TruncatedFile {
            file: from,
            kept_bytes: t.pos,
            old_len: t.old_len,
            backup: to,
        });
    }
    // Index files first: the remaining last segment must never carry one.
    for &n in &idx_to_remove {
        let name = segment::index_name(n);
        report.removed.push(move_file(fs, dir, &backup_dir, &name)?);
    }
    sync_both(fs, dir, &backup_dir)?;
    // Later segments highest first, each durable before the next, so that
    // a crash leaves a contiguous prefix.
    for &n in removed_segs.iter().rev() {
        let name = segment::segment_name(n);
        report.removed.push(move_file(fs, dir, &backup_dir, &name)?);
        sync_both(fs, dir, &backup_dir)?;
    }
    if let Some(t) = truncate {
        let path = dir.join(segment::segment_name(names[t.seg]));
        let file = fs
            .open(&path, OpenMode::ReadWrite)
            .map_err(io_err("open", &path))?;
        file.set_len(t.pos).map_err(io_err("truncate", &path))?;
        file.sync_data().map_err(io_err("fsync", &path))?;
    }
    if new_last.is_none() {
        // Nothing of the log is left: start its first segment, as open
        // does for an empty directory.
        let path = dir.join(segment::segment_name(floor.index + 1));
        fs.open(&path, OpenMode::Create)
            .map_err(io_err("create", &path))?;
    }
    sync_both(fs, dir, &backup_dir)?;

    let after = check_with(fs, dir)?;
    if !after.is_clean() {
        return Err(LogError::Unrepairable {
            path: dir.to_path_buf(),
            reason: format!(
                "after cutting the log at {} (originals in {}), the check still finds problems:\n{after}",
                describe(&cut.problem),
                backup_dir.display()
            ),
        });
    }
    tracing::warn!(
        dir = %dir.display(),
        cut_at = %describe(&cut.problem),
        first_lost_index = cut.first_lost,
        backup = %backup_dir.display(),
        "repaired the log by cutting it; entries after the cut are gone from this node"
    );
    Ok(report)
}

fn nothing_to_do(dir: &Path, before: CheckReport) -> RepairReport {
    let last = before.last_index;
    RepairReport {
        dir: dir.to_path_buf(),
        before,
        cut_at: None,
        backup_dir: None,
        truncated: None,
        removed: Vec::new(),
        last_kept_index: last,
        first_lost_index: last + 1,
        last_lost_index: None,
        valid_batches_cut: 0,
    }
}

fn unrepairable(e: LogError) -> LogError {
    let (path, reason) = match &e {
        LogError::Corrupt { file, .. } => (file.clone(), e.to_string()),
        _ => return e,
    };
    LogError::Unrepairable {
        path,
        reason: format!(
            "{reason}; repair only cuts the log and never guesses a hard state or a log start"
        ),
    }
}

fn describe(p: &Problem) -> String {
    match p.offset {
        Some(o) => format!("{} byte {o} ({})", p.file.display(), p.message),
        None => format!("{} ({})", p.file.display(), p.message),
    }
}

/// Where the log is cut.
struct Cut {
    /// Segments `names[first_removed..]` are removed.
    first_removed: usize,
    /// The segment cut inside, kept as the last one.
    trunc: Option<Trunc>,
    first_lost: u64,
    problem: Problem,
}

#[derive(Clone, Copy)]
struct Trunc {
    seg: usize,
    /// End of its last valid batch before the problem.
    pos: u64,
    old_len: u64,
}

/// Walks the log in order with open's rules and finds its first bad point.
fn find_cut(
    fs: &dyn Fs,
    dir: &Path,
    names: &[u64],
    floor: crate::meta::Floor,
    indexes: &std::collections::BTreeSet<u64>,
) -> Result<Option<Cut>> {
    let mut next_index = floor.index + 1;
    let mut next_offset = floor.offset;
    let mut last_term = floor.term;
    for (k, &name) in names.iter().enumerate() {
        let path = dir.join(segment::segment_name(name));
        let is_last = k + 1 == names.len();
        if name != next_index || name >= crate::MAX_INDEX {
            let message = if name >= crate::MAX_INDEX {
                "segment name is an index out of range".to_string()
            } else if name > next_index {
                format!(
                    "a segment is missing: the log continues at index {next_index}, but the next segment file starts at index {name}"
                )
            } else {
                format!(
                    "segment starts at index {name}, but the log already holds up to index {}",
                    next_index - 1
                )
            };
            return Ok(Some(Cut {
                first_removed: k,
                trunc: None,
                first_lost: next_index,
                problem: Problem {
                    file: path,
                    offset: Some(0),
                    message,
                },
            }));
        }
        let file = fs
            .open(&path, OpenMode::Read)
            .map_err(io_err("open", &path))?;
        let len = file.size().map_err(io_err("stat", &path))?;
        let expect = Expect {
            index: name,
            offset: Some(next_offset),
            min_term: last_term,
        };
        let s = segment::scan(&*file, len, expect, |_| {}).map_err(io_err("read", &path))?;
        let kept = s.pos.len() as u64;
        let cut_here = |pos: u64, message: String| Cut {
            first_removed: k + 1,
            trunc: Some(Trunc {
                seg: k,
                pos: s.end_pos,
                old_len: len,
            }),
            first_lost: name + kept,
            problem: Problem {
                file: path.clone(),
                offset: Some(pos),
                message,
            },
        };
        match &s.stop {
            Some(Stop::Eof) | None => {}
            Some(Stop::Rejected { pos, reason }) => {
                return Ok(Some(cut_here(*pos, reason.clone())));
            }
            Some(Stop::Undecodable { pos, reason }) if !is_last => {
                return Ok(Some(cut_here(
                    *pos,
                    format!("{reason} (in a sealed segment)"),
                )));
            }
            // The last segment: a torn tail or unwritten preallocated space,
            // whatever follows: open cuts it (keeping a copy); only a
            // missing successor (below) makes it ours.
            Some(Stop::Undecodable { .. }) => {}
        }
        if !is_last && kept == 0 {
            return Ok(Some(cut_here(
                0,
                "segment is empty but is not the last one".into(),
            )));
        }
        if is_last && indexes.contains(&name) {
            return Ok(Some(cut_here(
                s.end_pos,
                format!(
                    "the last segment was sealed (it has an index file), so the segment after it, {}, is missing",
                    segment::segment_name(name + kept)
                ),
            )));
        }
        next_index = name + kept;
        next_offset = s.end_offset;
        last_term = s.last_term;
    }
    Ok(None)
}

/// What the data after the cut shows existed.
struct Evidence {
    first_lost: u64,
    last: Option<u64>,
    valid: u64,
}

impl Evidence {
    fn new(first_lost: u64) -> Self {
        Evidence {
            first_lost,
            last: None,
            valid: 0,
        }
    }

    fn saw(&mut self, index: u64) {
        if index >= self.first_lost {
            self.last = Some(self.last.map_or(index, |l| l.max(index)));
        }
    }

    /// A removed segment named `name` means entries up to `name - 1`
    /// existed.
    fn implied_by_name(&mut self, name: u64) {
        if name > self.first_lost {
            self.saw(name - 1);
        }
    }

    /// Every valid batch in `file` from `from` on, skipping invalid bytes.
    fn scan(&mut self, file: &dyn FsFile, len: u64, from: u64) -> io::Result<()> {
        let mut at = Some(from);
        while let Some(p) = at {
            if p >= len {
                break;
            }
            match batch_at(file, len, p)? {
                Some(b) => {
                    if b.index() >= self.first_lost {
                        self.valid += 1;
                    }
                    self.saw(b.index());
                    at = Some(p + b.len() as u64);
                }
                None => at = segment::find_valid_batch_after(file, len, p)?,
            }
        }
        Ok(())
    }
}

/// The valid batch starting exactly at `pos`, if there is one.
fn batch_at(file: &dyn FsFile, len: u64, pos: u64) -> io::Result<Option<Batch>> {
    if pos + HEADER_LEN as u64 > len {
        return Ok(None);
    }
    let mut h = [0u8; HEADER_LEN];
    if read_full_at(file, &mut h, pos)? != HEADER_LEN {
        return Ok(None);
    }
    let Ok(header) = BatchHeader::parse(&h) else {
        return Ok(None);
    };
    let length = header.length as u64;
    if length as usize > MAX_BATCH_LEN || pos + length > len {
        return Ok(None);
    }
    let mut frame = vec![0u8; length as usize];
    if read_full_at(file, &mut frame, pos)? != frame.len() {
        return Ok(None);
    }
    Ok(Batch::decode(Bytes::from(frame)).ok())
}

const BACKUP_PREFIX: &str = "repair-";

/// Creates `dir/<prefix><n>` with the next unused `n`, durably (repair's
/// `repair-<n>`, open's `torn-<n>`).
pub(crate) fn new_backup_dir(fs: &dyn Fs, dir: &Path, prefix: &str) -> Result<PathBuf> {
    let names = fs.list(dir).map_err(io_err("list", dir))?;
    let n = names
        .iter()
        .filter_map(|n| n.strip_prefix(prefix)?.parse::<u64>().ok())
        .max()
        .map_or(1, |m| m + 1);
    let path = dir.join(format!("{prefix}{n}"));
    fs.create_dir_all(&path)
        .map_err(io_err("create directory", &path))?;
    fs.sync_dir(dir).map_err(io_err("fsync", dir))?;
    Ok(path)
}

/// Copies a file byte for byte, durably.
fn copy_file(fs: &dyn Fs, from: &Path, to: &Path) -> Result<()> {
    let src = fs
        .open(from, OpenMode::Read)
        .map_err(io_err("open", from))?;
    let len = src.size().map_err(io_err("stat", from))?;
    let dst = fs
        .open(to, OpenMode::Create)
        .map_err(io_err("create", to))?;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = 0;
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        let got = read_full_at(&*src, &mut buf[..want], at).map_err(io_err("read", from))?;
        if got == 0 {
            break;
        }
        write_all_at(&*dst, &mut [IoSlice::new(&buf[..got])], at)
            .map_err(|p| LogError::io("write", to, p.error))?;
        at += got as u64;
    }
    dst.sync_data().map_err(io_err("fsync", to))?;
    Ok(())
}

/// Moves `dir/name` into the backup directory.
fn move_file(fs: &dyn Fs, dir: &Path, backup: &Path, name: &str) -> Result<RemovedFile> {
    let (from, to) = (dir.join(name), backup.join(name));
    let bytes = fs
        .open(&from, OpenMode::Read)
        .and_then(|f| f.size())
        .map_err(io_err("stat", &from))?;
    fs.rename(&from, &to).map_err(io_err("rename", &from))?;
    Ok(RemovedFile {
        file: from,
        bytes,
        backup: to,
    })
}

fn sync_both(fs: &dyn Fs, dir: &Path, backup: &Path) -> Result<()> {
    fs.sync_dir(backup).map_err(io_err("fsync", backup))?;
    fs.sync_dir(dir).map_err(io_err("fsync", dir))
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(cut) = &self.cut_at else {
            return write!(
                f,
                "data directory {}: nothing to repair (open accepts it as it is); nothing was changed",
                self.dir.display()
            );
        };
        writeln!(f, "repaired data directory {}", self.dir.display())?;
        writeln!(f, "  cut the log at {}", describe(cut))?;
        writeln!(f, "  the log now ends at index {}", self.last_kept_index)?;
        if let Some(t) = &self.truncated {
            writeln!(
                f,
                "  truncated {}: bytes {}..{} cut ({} bytes); the whole original is in {}",
                t.file.display(),
                t.kept_bytes,
                t.old_len,
                t.old_len - t.kept_bytes,
                t.backup.display()
            )?;
        }
        for r in &self.removed {
            writeln!(
                f,
                "  removed {} ({} bytes); moved to {}",
                r.file.display(),
                r.bytes,
                r.backup.display()
            )?;
        }
        match (self.entries_lost(), self.last_lost_index) {
            (Some(n), Some(last)) => writeln!(
                f,
                "  entries lost: {n} (indexes {}..={last}, as far as the cut data shows; {} valid batches were cut)",
                self.first_lost_index, self.valid_batches_cut
            )?,
            _ => writeln!(
                f,
                "  entries lost: from index {} on, how many is unknown (the cut data holds no valid entry after it)",
                self.first_lost_index
            )?,
        }
        if let Some(b) = &self.backup_dir {
            writeln!(
                f,
                "  the original bytes of everything cut are in {}",
                b.display()
            )?;
        }
        write!(
            f,
            "  entries cut may have been acknowledged: raft re-replicates them from the leader if a quorum still holds them"
        )
    }
}
