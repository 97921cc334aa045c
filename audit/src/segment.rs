//! Segment files: `audit-<first seq, 20 digits>.log` in the log directory.
//!
//! Every line ends with `\n` and is one of:
//! - the **header** (first line): `{"segment":1,"origin":"…","first_seq":N,"frontier":["<b64>",…]}`,
//!   the right edge of the Merkle tree before record `N` (so a segment can be reopened
//!   without reading older ones, and a verifier checks it against what precedes it);
//! - a **record** (`{"v":1,…}`, see [`crate::record`]): the line without `\n` is the leaf;
//! - a **checkpoint**: `{"checkpoint":"<signed note, JSON-escaped>"}`, committing to every
//!   record before it. A segment other than the last ends with a checkpoint of its last
//!   record (sealed at rotation).
//!
//! The writer preallocates: a segment may end in zero bytes, space written ahead so that
//! each flush overwrites allocated blocks instead of growing the file (ADR 0013). No
//! line contains a zero byte, so **the log's data ends at the first zero byte** (or at
//! the end of the file); zeros after it are unwritten space, not data.
//!
//! A crash leaves the last, never-acknowledged group of a write partly on disk: a last
//! line without `\n`, and after a power loss possibly pages of it beyond a page that did
//! not reach the disk (zeros). Both are a **torn tail** — from the start of the partial
//! line to the last non-zero byte — removed (zeroed) at reopen. Non-zero bytes further
//! past the end of the data than one group can reach ([`MAX_TORN_BYTES`]) cannot be a
//! torn write: readers report them as stray bytes.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tree::Digest;

pub(crate) const SEGMENT_VERSION: u32 = 1;
const PREFIX: &str = "audit-";
const SUFFIX: &str = ".log";

/// The first line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub segment: u32,
    pub origin: String,
    pub first_seq: u64,
    /// Base64 roots of the perfect subtrees on the tree's right edge, largest first.
    pub frontier: Vec<String>,
}

impl Header {
    pub(crate) fn new(origin: &str, first_seq: u64, frontier: &[Digest]) -> Header {
        Header {
            segment: SEGMENT_VERSION,
            origin: origin.to_owned(),
            first_seq,
            frontier: frontier.iter().map(|h| B64.encode(h)).collect(),
        }
    }

    pub(crate) fn line(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec(self).map_err(Error::RecordJson)?;
        v.push(b'\n');
        Ok(v)
    }

    pub(crate) fn frontier_hashes(&self) -> Option<Vec<Digest>> {
        self.frontier
            .iter()
            .map(|s| {
                B64.decode(s)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
            })
            .collect()
    }
}

#[derive(Serialize)]
struct CheckpointOut<'a> {
    checkpoint: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointIn {
    checkpoint: String,
}

/// The line (with `\n`) that stores a signed checkpoint note.
pub(crate) fn checkpoint_line(note: &str) -> Result<Vec<u8>> {
    let mut v =
        serde_json::to_vec(&CheckpointOut { checkpoint: note }).map_err(Error::RecordJson)?;
    v.push(b'\n');
    Ok(v)
}

/// What a line is, by its fixed prefix.
pub(crate) enum Line<'a> {
    Record(&'a [u8]),
    Checkpoint(String),
    Header,
    Unknown,
}

pub(crate) fn classify(line: &[u8]) -> Line<'_> {
    if line.starts_with(b"{\"v\":") {
        Line::Record(line)
    } else if line.starts_with(b"{\"checkpoint\":") {
        serde_json::from_slice::<CheckpointIn>(line)
            .map_or(Line::Unknown, |c| Line::Checkpoint(c.checkpoint))
    } else if line.starts_with(b"{\"segment\":") {
        Line::Header
    } else {
        Line::Unknown
    }
}

pub(crate) fn parse_header(line: &[u8]) -> Option<Header> {
    serde_json::from_slice::<Header>(line)
        .ok()
        .filter(|h| h.segment == SEGMENT_VERSION)
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{first_seq:020}{SUFFIX}"))
}

/// Segment files in the directory, ordered by the first sequence number in their name.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(num) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        // Exactly 20 digits: `u64::from_str` would also take a leading `+`, making a
        // second name for the same number.
        if num.len() == 20
            && num.bytes().all(|b| b.is_ascii_digit())
            && let Ok(seq) = num.parse::<u64>()
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The most bytes a torn tail can span: a crash interrupts at most one group, which the
/// committer bounds at 8 MiB plus the records of the call that crossed the bound.
pub(crate) const MAX_TORN_BYTES: usize = 16 << 20;

/// A segment's bytes split into complete lines (ranges exclude the `\n`), with the torn
/// tail a crash left, if any.
pub(crate) struct Scan {
    pub data: Vec<u8>,
    pub lines: Vec<(usize, usize)>,
    /// Where the data ends: the first zero byte, or the end of the file.
    pub end: usize,
    /// Start of a torn tail (a partial last line, or a crash's residue after `end`).
    pub torn_at: Option<usize>,
    /// End of the torn tail: one past its last non-zero byte.
    pub torn_end: usize,
    /// Offset of a non-zero byte too far past the torn tail's start to be one.
    pub stray_at: Option<usize>,
}

impl Scan {
    pub(crate) fn read(path: &Path) -> Result<Scan> {
        let data = fs::read(path).map_err(|e| Error::io("read segment", path, e))?;
        Ok(Scan::from_bytes(data))
    }

    pub(crate) fn from_bytes(data: Vec<u8>) -> Scan {
        let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in data.iter().take(end).enumerate() {
            if *b == b'\n' {
                lines.push((start, i));
                start = i + 1;
            }
        }
        // One past the last non-zero byte: beyond `end` only after a torn write.
        let last = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let torn_end = last.max(end);
        let torn_at = (start < torn_end).then_some(start);
        let stray_at = (torn_end - start > MAX_TORN_BYTES).then(|| {
            let from = start + MAX_TORN_BYTES;
            data.iter()
                .skip(from)
                .position(|b| *b != 0)
                .map_or(from, |i| from + i)
        });
        Scan {
            data,
            lines,
            end,
            torn_at,
            torn_end,
            stray_at,
        }
    }

    pub(crate) fn line(&self, i: usize) -> &[u8] {
        self.lines
            .get(i)
            .and_then(|&(a, b)| self.data.get(a..b))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scan_splits_lines_and_finds_a_torn_tail() {
        let s = Scan::from_bytes(b"a\nbc\nde".to_vec());
        assert_eq!(s.lines.len(), 2);
        assert_eq!(s.line(1), b"bc");
        assert_eq!((s.torn_at, s.torn_end), (Some(5), 7));
        assert_eq!(Scan::from_bytes(b"a\n".to_vec()).torn_at, None);
    }

    #[test]
    fn zeros_are_unwritten_space_and_a_residue_after_them_is_torn() {
        // Preallocated: the data ends at the first zero byte; nothing is torn.
        let s = Scan::from_bytes(b"a\nbc\n\0\0\0\0".to_vec());
        assert_eq!(
            (s.lines.len(), s.end, s.torn_at, s.stray_at),
            (2, 5, None, None)
        );
        // A page of the last group missing (zeros) before one that reached the disk:
        // torn from the partial line to the residue's last byte.
        let s = Scan::from_bytes(b"a\nbc\nd\0\0ef\n\0\0".to_vec());
        assert_eq!((s.lines.len(), s.end), (2, 6));
        assert_eq!((s.torn_at, s.torn_end, s.stray_at), (Some(5), 11, None));
        // The missing page ends exactly at a line end: still torn (the residue).
        let s = Scan::from_bytes(b"a\n\0\0x\0".to_vec());
        assert_eq!((s.lines.len(), s.torn_at, s.torn_end), (1, Some(2), 5));
        // A non-zero byte further away than any group reaches is not a torn write.
        let mut far = b"a\n".to_vec();
        far.resize(2 + MAX_TORN_BYTES + 10, 0);
        far.push(b'x');
        let s = Scan::from_bytes(far);
        assert_eq!(s.stray_at, Some(2 + MAX_TORN_BYTES + 10));
    }

    #[test]
    fn only_twenty_digit_names_are_segments() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "audit-00000000000000000060.log",
            "audit-+0000000000000000060.log",
            "audit-0000000000000000060.log",
            "audit-00000000000000000061.log.tmp",
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let found = list(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![(60, dir.path().join("audit-00000000000000000060.log"))]
        );
    }

    #[test]
    fn checkpoint_lines_round_trip_and_classify() {
        let note = "o\n1\nAAAA\n\n\u{2014} o AAAA\n";
        let line = checkpoint_line(note).unwrap();
        assert_eq!(line.split(|b| *b == b'\n').count(), 2);
        match classify(&line[..line.len() - 1]) {
            Line::Checkpoint(n) => assert_eq!(n, note),
            _ => panic!("not a checkpoint"),
        }
        let h = Header::new("o", 3, &[[1; 32]]);
        let hl = h.line().unwrap();
        assert!(matches!(classify(&hl[..hl.len() - 1]), Line::Header));
        assert_eq!(parse_header(&hl[..hl.len() - 1]).unwrap(), h);
    }
}
