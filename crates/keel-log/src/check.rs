//! Offline verification of a data directory (what `keel check` runs).
//! Read-only: it reads every byte of every segment, whatever the index
//! files say, and reports every problem it can find rather than stopping at
//! the first.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::LogError;
use crate::fs::{Fs, OpenMode, RealFs};
use crate::meta::{self, HardState};
use crate::recovery::{self, TornTail};
use crate::seg_index::{self, SegFacts};
use crate::segment::{self, Expect, Stop};

/// What `check` found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub dir: PathBuf,
    /// `None` when no hard state was ever saved (or it is unreadable; see
    /// `problems`).
    pub hard_state: Option<HardState>,
    /// The log's start recorded in `log.meta` (0 when absent).
    pub floor_index: u64,
    pub floor_term: u64,
    pub segments: Vec<SegmentSummary>,
    pub entries: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub first_offset: u64,
    pub next_offset: u64,
    /// A torn write at the end of the last segment (open would cut it).
    pub torn_tail: Option<TornTail>,
    /// Everything wrong; empty for a healthy directory.
    pub problems: Vec<Problem>,
    /// Things open would tidy up (leftovers of interrupted operations).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub file: PathBuf,
    pub first_index: u64,
    pub entries: u64,
    pub bytes: u64,
    pub index_file: IndexFileStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexFileStatus {
    Absent,
    Valid,
    Invalid(String),
}

/// One problem: the file, the byte offset when known, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub offset: Option<u64>,
    pub message: String,
}

impl CheckReport {
    /// No problems (a torn tail alone is not a problem: open repairs it).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, file: PathBuf, offset: Option<u64>, message: impl Into<String>) {
        self.problems.push(Problem {
            file,
            offset,
            message: message.into(),
        });
    }
}

/// Verifies the data directory `dir` on the real filesystem.
pub fn check(dir: &Path) -> Result<CheckReport, LogError> {
    check_with(&RealFs, dir)
}

/// Verifies `dir` through the given filesystem layer. Errors only when the
/// directory cannot be listed; everything else is a reported problem.
pub fn check_with(fs: &dyn Fs, dir: &Path) -> Result<CheckReport, LogError> {
    let mut r = CheckReport {
        dir: dir.to_path_buf(),
        ..CheckReport::default()
    };
    let listing = recovery::list(fs, dir)?;
    for t in &listing.temps {
        r.notes
            .push(format!("leftover temporary file {t} (removed on open)"));
    }
    match recovery::read_hard_state(fs, dir) {
        Ok(hs) => r.hard_state = hs,
        Err(e) => r.problem(dir.join(meta::HARD_STATE_FILE), Some(0), e.to_string()),
    }
    let floor = match recovery::read_floor(fs, dir) {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            r.problem(dir.join(meta::META_FILE), Some(0), e.to_string());
            Default::default()
        }
    };
    r.floor_index = floor.index;
    r.floor_term = floor.term;
    r.first_index = floor.index + 1;
    r.first_offset = floor.offset;

    let mut names = listing.segments.clone();
    for &huge in names.iter().filter(|&&n| n >= crate::MAX_INDEX) {
        r.problems.push(Problem {
            file: dir.join(segment::segment_name(huge)),
            offset: None,
            message: "segment name is an index out of range".into(),
        });
    }
    names.retain(|&n| n < crate::MAX_INDEX);
    while names.len() >= 2 && names[1] - 1 <= floor.index {
        let n = names.remove(0);
        r.notes.push(format!(
            "{} lies wholly below the log start (an interrupted purge; removed on open)",
            segment::segment_name(n)
        ));
    }
    if names.is_empty() {
        r.problem(dir.to_path_buf(), None, "no segment files");
    }
    let mut next_index = floor.index + 1;
    let mut next_offset = Some(floor.offset);
    let mut last_term = floor.term;
    let mut first_seen = true;
    for (k, &name) in names.iter().enumerate() {
        let path = dir.join(segment::segment_name(name));
        let is_last = k + 1 == names.len();
        if name != next_index {
            if name > next_index {
                r.problem(
                    dir.join(segment::segment_name(next_index)),
                    None,
                    format!(
                        "missing segment: entries {next_index}..{} are in no file",
                        name - 1
                    ),
                );
            } else {
                r.problem(
                    path.clone(),
                    Some(0),
                    format!(
                        "segment starts at {name}, overlapping entries up to {}",
                        next_index - 1
                    ),
                );
            }
            next_offset = None;
            last_term = 0;
        }
        let file = match fs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) => {
                r.problem(path, None, format!("cannot open: {e}"));
                next_index = name;
                continue;
            }
        };
        let len = match file.size() {
            Ok(l) => l,
            Err(e) => {
                r.problem(path, None, format!("cannot stat: {e}"));
                continue;
            }
        };
        let expect = Expect {
            index: name,
            offset: next_offset,
            min_term: last_term,
        };
        let s = match segment::scan(&*file, len, expect, |_| {}) {
            Ok(s) => s,
            Err(e) => {
                r.problem(path, None, format!("cannot read: {e}"));
                continue;
            }
        };
        if first_seen {
            r.first_offset = s.base_offset;
            first_seen = false;
        }
        match &s.stop {
            Some(Stop::Eof) | None => {}
            Some(Stop::Rejected { pos, reason }) => {
                r.problem(path.clone(), Some(*pos), reason.clone())
            }
            Some(Stop::Undecodable { pos, reason }) => {
                if is_last {
                    // Open's rule: the last segment's first invalid batch
                    // starts the tail a crash tore (open cuts it).
                    r.torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: *pos,
                        bytes: len - pos,
                        reason: reason.clone(),
                        copy: None,
                    })
                } else {
                    r.problem(
                        path.clone(),
                        Some(*pos),
                        format!("{reason} (in a sealed segment)"),
                    )
                }
            }
        }
        let entries = s.pos.len() as u64;
        let has_index = listing.indexes.contains(&name);
        let idx_path = dir.join(segment::index_name(name));
        let index_file = if !has_index {
            IndexFileStatus::Absent
        } else {
            let facts = SegFacts {
                first_index: name,
                data_len: s.end_pos,
                base_offset: s.base_offset,
                end_offset: s.end_offset,
                terms: s.terms.clone(),
                pos: s.pos.clone(),
                off: s.off.clone(),
            };
            let loaded = fs
                .open(&idx_path, OpenMode::Read)
                .map_err(|e| e.to_string())
                .and_then(|idx| seg_index::load(&*idx, &*file, name));
            match loaded {
                Ok(f) if f == facts => IndexFileStatus::Valid,
                Ok(_) => IndexFileStatus::Invalid("does not match the segment's data".into()),
                Err(e) => IndexFileStatus::Invalid(e),
            }
        };
        if is_last && has_index {
            r.problem(
                dir.join(segment::segment_name(name + entries)),
                None,
                format!(
                    "missing segment: {} was sealed (it has an index file), so a segment after it existed",
                    segment::segment_name(name)
                ),
            );
        }
        if !is_last && entries == 0 {
            r.problem(
                path.clone(),
                Some(0),
                "segment is empty but is not the last one",
            );
        }
        r.segments.push(SegmentSummary {
            file: path,
            first_index: name,
            entries,
            bytes: len,
            index_file,
        });
        r.entries += entries;
        next_index = name + entries;
        next_offset = Some(s.end_offset);
        last_term = s.last_term;
    }
    for &orphan in &listing.indexes {
        if !listing.segments.contains(&orphan) {
            r.notes.push(format!(
                "index file {} has no segment (removed on open)",
                segment::index_name(orphan)
            ));
        }
    }
    r.last_index = next_index.saturating_sub(1).max(floor.index);
    r.next_offset = next_offset.unwrap_or(0);
    Ok(r)
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data directory {}", self.dir.display())?;
        match self.hard_state {
            Some(hs) => writeln!(f, "  hard state: term {}, vote {}", hs.term, hs.vote)?,
            None => writeln!(f, "  hard state: none saved")?,
        }
        writeln!(
            f,
            "  log start: after index {} (term {})",
            self.floor_index, self.floor_term
        )?;
        writeln!(
            f,
            "  {} segment(s), {} entries, indexes {}..={}, offsets {}..{}",
            self.segments.len(),
            self.entries,
            self.first_index,
            self.last_index,
            self.first_offset,
            self.next_offset
        )?;
        for s in &self.segments {
            let idx = match &s.index_file {
                IndexFileStatus::Absent => "no index file".to_string(),
                IndexFileStatus::Valid => "index file ok".to_string(),
                IndexFileStatus::Invalid(why) => {
                    format!("index file invalid ({why}); open rebuilds it")
                }
            };
            writeln!(
                f,
                "    {}: {} entries from {}, {} bytes, {idx}",
                s.file.display(),
                s.entries,
                s.first_index,
                s.bytes
            )?;
        }
        if let Some(t) = &self.torn_tail {
            writeln!(
                f,
                "  torn tail: {} at byte {} ({} bytes; {}); open cuts it",
                t.file.display(),
                t.offset,
                t.bytes,
                t.reason
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if self.problems.is_empty() {
            write!(f, "  OK: no problems found")
        } else {
            writeln!(f, "  {} problem(s):", self.problems.len())?;
            for (i, p) in self.problems.iter().enumerate() {
                let at = p
                    .offset
                    .map(|o| format!(" at byte {o}"))
                    .unwrap_or_default();
                let nl = if i + 1 == self.problems.len() {
                    ""
                } else {
                    "\n"
                };
                write!(f, "    {}{at}: {}{nl}", p.file.display(), p.message)?;
            }
            Ok(())
        }
    }
}
