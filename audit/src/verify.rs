//! The verifier: streams a log directory once, recomputing the tree from the bytes on
//! disk, and stops at the **first** fault, naming the segment, line and sequence number
//! and why ([`Fault`]). It needs only the log's public key ([`LogKey`]).
//!
//! What it checks, in order of reading:
//! - segments are contiguous: each header's `first_seq` equals its file name and the
//!   number of records before it, and its frontier equals the tree computed so far
//!   (a deleted, swapped or renamed segment fails here);
//! - every record parses, is canonical, and has `seq` = its position (a deleted,
//!   inserted or reordered record fails here, at that record);
//! - every checkpoint is signed by the log key, for this origin, at the size of the
//!   records before it, with the root computed from them (a changed byte that still
//!   parses fails here, located to the records since the previous checkpoint);
//! - every segment but the last ends with a checkpoint (a truncated archive fails);
//! - no signed checkpoint lies past the end of the data (records hidden behind a zero
//!   byte: a crash's torn tail never holds one);
//! - checkpoints obtained elsewhere (the journal, a witness) match the log at their
//!   size, and the log is not shorter than any of them (rollback to an older prefix).
//!
//! Records after the last checkpoint are reported as `unsigned_tail` (normal for a live
//! log; [`VerifyOptions::require_signed_tail`] makes them a fault).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::checkpoint::{LogKey, SignedCheckpoint};
use crate::error::{Error, Result};
use crate::record::Record;
use crate::segment::{self, Line, Scan};
use crate::tree::{Digest, Frontier, leaf_hash};

/// What to require beyond the log's own consistency.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Checkpoints kept off the box (exported to the journal, cosigned by a witness).
    /// The log must contain each of them as a prefix.
    pub trusted: Vec<SignedCheckpoint>,
    /// Fail when records follow the last checkpoint.
    pub require_signed_tail: bool,
    /// Fail on a torn last line (a crash's partial write, removed at reopen).
    pub reject_torn_tail: bool,
    /// Accept a first segment that does not start at record 0 (older segments pruned),
    /// trusting its header's frontier; its checkpoints still have to verify.
    pub allow_pruned_prefix: bool,
}

impl VerifyOptions {
    #[must_use]
    pub fn trusted(mut self, checkpoints: impl IntoIterator<Item = SignedCheckpoint>) -> Self {
        self.trusted.extend(checkpoints);
        self
    }
    #[must_use]
    pub fn strict(mut self) -> Self {
        self.require_signed_tail = true;
        self.reject_torn_tail = true;
        self
    }
}

/// Summary of an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    pub records: u64,
    pub segments: usize,
    pub checkpoints: u64,
    /// Root of all records.
    pub root: Digest,
    /// The last checkpoint in the log.
    pub latest: Option<SignedCheckpoint>,
    /// Records after the last checkpoint (not yet signed).
    pub unsigned_tail: u64,
    /// Bytes of a torn last line (a crash's partial write).
    pub torn_tail_bytes: u64,
}

/// Where the first fault is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fault {
    /// The segment file, if the fault is in one.
    pub segment: Option<PathBuf>,
    /// 1-based line number in the segment.
    pub line: Option<u64>,
    /// The sequence number of the record at fault, when known.
    pub seq: Option<u64>,
    pub kind: FaultKind,
}

/// Why verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    NoSegments,
    BadHeader,
    WrongOrigin,
    /// A segment starts elsewhere than where the previous one ended (deleted, swapped
    /// or renamed segment).
    SegmentOutOfOrder {
        expected: u64,
        found: u64,
    },
    /// A segment's recorded tree state differs from the records before it.
    StartStateMismatch,
    MalformedRecord {
        reason: String,
    },
    /// A record is not at its position (deleted, inserted or reordered record).
    SeqMismatch {
        expected: u64,
        found: u64,
    },
    BadCheckpoint {
        reason: &'static str,
    },
    /// A checkpoint's size is not the number of records before it.
    CheckpointSizeMismatch {
        checkpoint: u64,
        records: u64,
    },
    /// The records `from_seq..=to_seq` do not hash to the checkpoint's root: one of them
    /// was changed (or records were inserted/deleted and renumbered).
    RootMismatch {
        from_seq: u64,
        to_seq: u64,
    },
    UnknownLine,
    /// A partial last line in a segment that is not the last, or when rejected.
    TornLine,
    /// Non-zero bytes at `offset`, further past the end of the data than a crash's
    /// partial write can reach (bytes appended after a zero run: tampering).
    StrayBytes {
        offset: u64,
    },
    /// A segment other than the last does not end with a checkpoint of its last record
    /// (truncated archive).
    NotSealed,
    /// The log is shorter than a trusted checkpoint: rolled back to an older prefix.
    Rollback {
        trusted_size: u64,
        log_size: u64,
    },
    /// The log's root at a trusted checkpoint's size differs from it (history rewritten).
    TrustedRootMismatch {
        size: u64,
    },
    /// Records after the last checkpoint, when not allowed.
    UnsignedTail {
        records: u64,
    },
    /// A checkpoint signed by the log key past the end of the data (after a zero byte or
    /// inside a partial line): records it covered were hidden. A crash cannot leave this,
    /// since a checkpoint is written only after the records before it are durable.
    HiddenCheckpoint {
        offset: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.segment {
            let name = s.file_name().map_or(s.as_os_str(), |n| n);
            write!(f, "{}", name.to_string_lossy())?;
            if let Some(l) = self.line {
                write!(f, " line {l}")?;
            }
            if let Some(q) = self.seq {
                write!(f, " (seq {q})")?;
            }
            f.write_str(": ")?;
        }
        match &self.kind {
            FaultKind::NoSegments => f.write_str("no segment files"),
            FaultKind::BadHeader => f.write_str("missing or malformed segment header"),
            FaultKind::WrongOrigin => f.write_str("segment of another log (origin)"),
            FaultKind::SegmentOutOfOrder { expected, found } => write!(
                f,
                "segment starts at seq {found}, expected {expected} (segment deleted, swapped or renamed)"
            ),
            FaultKind::StartStateMismatch => {
                f.write_str("segment's starting tree state differs from the records before it")
            }
            FaultKind::MalformedRecord { reason } => write!(f, "malformed record: {reason}"),
            FaultKind::SeqMismatch { expected, found } => write!(
                f,
                "record has seq {found}, expected {expected} (record deleted, inserted or reordered)"
            ),
            FaultKind::BadCheckpoint { reason } => write!(f, "checkpoint rejected: {reason}"),
            FaultKind::CheckpointSizeMismatch {
                checkpoint,
                records,
            } => write!(
                f,
                "checkpoint size {checkpoint} but {records} records precede it"
            ),
            FaultKind::RootMismatch { from_seq, to_seq } => write!(
                f,
                "records {from_seq}..={to_seq} do not match the checkpoint's root (a record in this range was changed)"
            ),
            FaultKind::UnknownLine => f.write_str("unknown line"),
            FaultKind::TornLine => f.write_str("partial line (truncated write)"),
            FaultKind::StrayBytes { offset } => write!(
                f,
                "data at byte {offset}, far past the end of the log (not a crash's partial write)"
            ),
            FaultKind::NotSealed => {
                f.write_str("segment does not end with a checkpoint (truncated archive)")
            }
            FaultKind::Rollback {
                trusted_size,
                log_size,
            } => write!(
                f,
                "log has {log_size} records but a trusted checkpoint has {trusted_size} (rolled back or truncated)"
            ),
            FaultKind::TrustedRootMismatch { size } => write!(
                f,
                "log's root at size {size} differs from the trusted checkpoint (history rewritten)"
            ),
            FaultKind::UnsignedTail { records } => {
                write!(f, "{records} records after the last checkpoint")
            }
            FaultKind::HiddenCheckpoint { offset } => write!(
                f,
                "a signed checkpoint at byte {offset}, past the end of the data (records hidden behind a zero byte or a cut line; a crash cannot leave this)"
            ),
        }
    }
}

/// What the walker shows its visitor (one at a time, short-lived).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Item<'a> {
    Record {
        line: &'a [u8],
        record: Record,
        leaf: Digest,
    },
    Checkpoint(&'a SignedCheckpoint),
}

fn fault(segment: Option<&Path>, line: Option<usize>, seq: Option<u64>, kind: FaultKind) -> Error {
    Error::Tampered(Box::new(Fault {
        segment: segment.map(Path::to_path_buf),
        line: line.map(|l| l as u64 + 1),
        seq,
        kind,
    }))
}

/// Checks a checkpoint line against the tree of the records before it (`f`; `signed`:
/// the size of the previous checkpoint, to locate a mismatch): signed by `key` for its
/// origin, at exactly that size, with that root. Shared by the verifier and by the
/// writer's reopen, so both refuse the same things.
pub(crate) fn check_checkpoint(
    note: &str,
    key: &LogKey,
    f: &Frontier,
    signed: u64,
) -> std::result::Result<SignedCheckpoint, FaultKind> {
    let cp = SignedCheckpoint::verify(note.as_bytes(), key).map_err(|e| {
        let reason = match e {
            Error::Checkpoint { reason } => reason,
            _ => "not a valid checkpoint",
        };
        FaultKind::BadCheckpoint { reason }
    })?;
    if cp.size() != f.size() {
        return Err(FaultKind::CheckpointSizeMismatch {
            checkpoint: cp.size(),
            records: f.size(),
        });
    }
    if cp.root() != f.root() {
        return Err(FaultKind::RootMismatch {
            from_seq: signed,
            to_seq: f.size().saturating_sub(1),
        });
    }
    Ok(cp)
}

/// Fails if a checkpoint signed by `key` lies in the segment's torn tail (see
/// [`FaultKind::HiddenCheckpoint`]). A crash's torn tail holds at most one unsynced
/// group of records, or a part of one checkpoint line, never a whole signed checkpoint.
pub(crate) fn check_torn_tail(scan: &Scan, key: &LogKey) -> std::result::Result<(), FaultKind> {
    let Some(at) = scan.torn_at else {
        return Ok(());
    };
    let tail = scan.data.get(at..scan.torn_end).unwrap_or_default();
    let mut offset = at;
    // Only pieces that end in a newline are whole lines; a piece starts after the last
    // zero byte before it.
    let mut pieces = tail.split(|b| *b == b'\n').peekable();
    while let Some(piece) = pieces.next() {
        let complete = pieces.peek().is_some();
        let start = piece.iter().rposition(|b| *b == 0).map_or(0, |z| z + 1);
        if complete
            && let Line::Checkpoint(note) = segment::classify(&piece[start..])
            && SignedCheckpoint::verify(note.as_bytes(), key).is_ok()
        {
            return Err(FaultKind::HiddenCheckpoint {
                offset: (offset + start) as u64,
            });
        }
        offset += piece.len() + 1;
    }
    Ok(())
}

/// Verifies the log in `dir` with `key`.
pub fn verify_dir(dir: &Path, key: &LogKey, opts: &VerifyOptions) -> Result<Verified> {
    walk(dir, key, opts, &mut |_| Ok(()))
}

struct Walk<'o> {
    f: Frontier,
    signed: u64,
    checkpoints: u64,
    latest: Option<SignedCheckpoint>,
    trusted: Vec<&'o SignedCheckpoint>,
    next_trusted: usize,
}

impl Walk<'_> {
    /// Compares trusted checkpoints of the current size with the current root.
    fn check_trusted(&mut self, seg: &Path, line: usize) -> Result<()> {
        while let Some(t) = self.trusted.get(self.next_trusted) {
            if t.size() != self.f.size() {
                break;
            }
            if t.root() != self.f.root() {
                return Err(fault(
                    Some(seg),
                    Some(line),
                    self.f.size().checked_sub(1),
                    FaultKind::TrustedRootMismatch { size: t.size() },
                ));
            }
            self.next_trusted += 1;
        }
        Ok(())
    }
}

pub(crate) fn walk(
    dir: &Path,
    key: &LogKey,
    opts: &VerifyOptions,
    visit: &mut dyn FnMut(Item<'_>) -> Result<()>,
) -> Result<Verified> {
    let segs = segment::list(dir)?;
    if segs.is_empty() {
        return Err(fault(None, None, None, FaultKind::NoSegments));
    }
    let mut trusted: Vec<&SignedCheckpoint> = opts.trusted.iter().collect();
    trusted.sort_by_key(|c| c.size());
    let mut w = Walk {
        f: Frontier::new(),
        signed: 0,
        checkpoints: 0,
        latest: None,
        trusted,
        next_trusted: 0,
    };
    let mut torn_tail_bytes = 0;
    let last = segs.len() - 1;
    for (i, (name_seq, path)) in segs.iter().enumerate() {
        let path = path.as_path();
        let scan = Scan::read(path)?;
        let header = segment::parse_header(scan.line(0))
            .filter(|h| h.first_seq == *name_seq && !scan.lines.is_empty())
            .ok_or_else(|| fault(Some(path), Some(0), None, FaultKind::BadHeader))?;
        if header.origin != key.origin() {
            return Err(fault(Some(path), Some(0), None, FaultKind::WrongOrigin));
        }
        let start = header
            .frontier_hashes()
            .and_then(|h| Frontier::from_parts(header.first_seq, h))
            .ok_or_else(|| fault(Some(path), Some(0), None, FaultKind::BadHeader))?;
        if i == 0 && header.first_seq != 0 && opts.allow_pruned_prefix {
            w.f = start;
            w.signed = header.first_seq;
        } else if header.first_seq != w.f.size() {
            return Err(fault(
                Some(path),
                Some(0),
                None,
                FaultKind::SegmentOutOfOrder {
                    expected: w.f.size(),
                    found: header.first_seq,
                },
            ));
        } else if start != w.f {
            return Err(fault(
                Some(path),
                Some(0),
                None,
                FaultKind::StartStateMismatch,
            ));
        }
        if i == 0 {
            w.check_trusted(path, 0)?;
        }
        let mut sealed = false;
        for n in 1..scan.lines.len() {
            sealed = false;
            match segment::classify(scan.line(n)) {
                Line::Record(line) => {
                    let expected = w.f.size();
                    let record = Record::decode(line).map_err(|e| {
                        fault(
                            Some(path),
                            Some(n),
                            Some(expected),
                            FaultKind::MalformedRecord {
                                reason: e.to_string(),
                            },
                        )
                    })?;
                    if record.seq != expected {
                        return Err(fault(
                            Some(path),
                            Some(n),
                            Some(record.seq),
                            FaultKind::SeqMismatch {
                                expected,
                                found: record.seq,
                            },
                        ));
                    }
                    let leaf = leaf_hash(line);
                    w.f.push(leaf);
                    visit(Item::Record { line, record, leaf })?;
                    w.check_trusted(path, n)?;
                }
                Line::Checkpoint(note) => {
                    let cp = check_checkpoint(&note, key, &w.f, w.signed)
                        .map_err(|kind| fault(Some(path), Some(n), None, kind))?;
                    w.signed = w.f.size();
                    w.checkpoints += 1;
                    visit(Item::Checkpoint(&cp))?;
                    w.latest = Some(cp);
                    sealed = true;
                }
                Line::Header | Line::Unknown => {
                    return Err(fault(Some(path), Some(n), None, FaultKind::UnknownLine));
                }
            }
        }
        if let Some(offset) = scan.stray_at {
            return Err(fault(
                Some(path),
                None,
                None,
                FaultKind::StrayBytes {
                    offset: offset as u64,
                },
            ));
        }
        check_torn_tail(&scan, key).map_err(|kind| fault(Some(path), None, None, kind))?;
        if let Some(at) = scan.torn_at {
            if i != last || opts.reject_torn_tail {
                return Err(fault(
                    Some(path),
                    Some(scan.lines.len()),
                    None,
                    FaultKind::TornLine,
                ));
            }
            torn_tail_bytes = (scan.torn_end - at) as u64;
        }
        if i != last && !sealed {
            return Err(fault(Some(path), None, None, FaultKind::NotSealed));
        }
    }
    if let Some(t) = w.trusted.get(w.next_trusted) {
        return Err(fault(
            None,
            None,
            None,
            FaultKind::Rollback {
                trusted_size: t.size(),
                log_size: w.f.size(),
            },
        ));
    }
    let unsigned_tail = w.f.size() - w.signed;
    if opts.require_signed_tail && unsigned_tail > 0 {
        return Err(fault(
            None,
            None,
            Some(w.signed),
            FaultKind::UnsignedTail {
                records: unsigned_tail,
            },
        ));
    }
    Ok(Verified {
        records: w.f.size(),
        segments: segs.len(),
        checkpoints: w.checkpoints,
        root: w.f.root(),
        latest: w.latest,
        unsigned_tail,
        torn_tail_bytes,
    })
}
