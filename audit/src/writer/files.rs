//! The writer's file handling: open/recover the last segment, create segments
//! atomically, write + fdatasync, preallocate zero-filled space ahead of the writes,
//! truncate back to the last durable length after a failure. Every record write goes
//! through [`SegmentFile::write_durable`], the one place a test can make I/O fail
//! (feature `testing`).
//!
//! **Preallocation (ADR 0013).** Appending changes the file's size, so every `fdatasync`
//! also writes the inode (and, on a journaled file system, commits the journal). The
//! segment is therefore extended ahead of the writes with real zero bytes (not
//! `fallocate`, whose unwritten extents need a metadata update on first write), synced
//! once; the flushes that follow overwrite allocated blocks and sync only data. The
//! reader treats the zeros as unwritten ([`crate::segment`]). The reserve is cut off
//! when a segment is sealed by rotation and at close.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::checkpoint::{LogKey, SignedCheckpoint};
use crate::error::{Error, Result};
use crate::record::Record;
use crate::segment::{self, Header, Line, Scan};
use crate::tree::{Frontier, leaf_hash};

/// Fault injection for tests: while `fail` is set, writes fail like a full disk.
#[cfg(feature = "testing")]
#[derive(Debug, Default)]
pub struct FailSwitch(std::sync::atomic::AtomicBool);

#[cfg(feature = "testing")]
impl FailSwitch {
    pub fn set(&self, fail: bool) {
        self.0.store(fail, std::sync::atomic::Ordering::SeqCst);
    }
    fn check(&self) -> std::io::Result<()> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
        }
        Ok(())
    }
}

/// Zeros written when extending the reserve.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// After a failed extension (a full disk), the next attempt waits this long.
const RESERVE_RETRY: Duration = Duration::from_secs(1);

/// The open segment being appended to.
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    file: File,
    /// Bytes known to be on stable storage; everything after is zeros (preallocated) or
    /// garbage from a failed write.
    pub durable_len: u64,
    /// The file's length: `durable_len` plus the zero-filled reserve.
    capacity: u64,
    /// Whether the last durable line is a checkpoint of the current size.
    pub sealed: bool,
    /// Bytes of reserve to keep ahead of the writes (0: plain appends).
    pub preallocate: u64,
    /// No extension before this (set after one failed).
    reserve_retry_at: Option<Instant>,
    #[cfg(feature = "testing")]
    pub fail: Option<std::sync::Arc<FailSwitch>>,
}

/// State recovered from disk at open.
pub(crate) struct Recovered {
    pub segment: SegmentFile,
    pub frontier: Frontier,
    pub last_time: i64,
    pub latest: Option<SignedCheckpoint>,
    /// Records before this one are covered by a checkpoint: the last segment's last
    /// checkpoint, or its start (a segment is begun only once the previous one is sealed).
    pub signed: u64,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

impl SegmentFile {
    fn open(path: PathBuf, durable_len: u64, capacity: u64, sealed: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open segment", &path, e))?;
        Ok(SegmentFile {
            path,
            file,
            durable_len,
            capacity: capacity.max(durable_len),
            sealed,
            preallocate: 0,
            reserve_retry_at: None,
            #[cfg(feature = "testing")]
            fail: None,
        })
    }

    /// Creates `audit-<first_seq>.log` with its header: written to a temporary file,
    /// fsynced, renamed, directory fsynced, so a crash leaves either no segment or a
    /// complete header.
    pub(crate) fn create(dir: &Path, key: &LogKey, frontier: &Frontier) -> Result<Self> {
        let first_seq = frontier.size();
        let path = segment::segment_path(dir, first_seq);
        let tmp = path.with_extension("tmp");
        let header = Header::new(key.origin(), first_seq, frontier.hashes()).line()?;
        {
            let mut f = File::create(&tmp).map_err(|e| Error::io("create segment", &tmp, e))?;
            f.write_all(&header)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io("write segment header", &tmp, e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename segment", &path, e))?;
        sync_dir(dir)?;
        let len = header.len() as u64;
        SegmentFile::open(path, len, len, false)
    }

    /// Appends `buf` and fdatasyncs. On error the caller must [`repair`](Self::repair)
    /// before writing again; `durable_len` only moves on success.
    pub(crate) fn write_durable(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(feature = "testing")]
        if let Some(f) = &self.fail {
            f.check()?;
        }
        self.file.write_all_at(buf, self.durable_len)?;
        self.file.sync_data()?;
        self.durable_len += buf.len() as u64;
        self.capacity = self.capacity.max(self.durable_len);
        Ok(())
    }

    /// Bytes of zero-filled reserve left ahead of the writes.
    pub(crate) fn reserve(&self) -> u64 {
        self.capacity - self.durable_len
    }

    /// Whether the last attempt to extend the reserve failed (disk full).
    pub(crate) fn reserve_short(&self) -> bool {
        self.reserve_retry_at.is_some()
    }

    /// Extends the zero-filled reserve to `preallocate` bytes once less than half of it is
    /// left. Off the acknowledgement path (called after a group's replies). A failure
    /// (full disk) is not an error: the log keeps writing into what reserve is left and
    /// then appends; it is logged, and retried after [`RESERVE_RETRY`].
    pub(crate) fn top_up(&mut self) {
        if self.preallocate == 0 || self.reserve() >= self.preallocate / 2 {
            return;
        }
        if self.reserve_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let target = self.durable_len + self.preallocate;
        match self.extend_to(target) {
            Ok(()) => self.reserve_retry_at = None,
            Err(e) => {
                // What did get written is zeros: usable reserve, synced or not.
                if let Ok(m) = self.file.metadata() {
                    self.capacity = m.len().max(self.durable_len);
                }
                self.reserve_retry_at = Some(Instant::now() + RESERVE_RETRY);
                tracing::warn!(error = %e, segment = %self.path.display(),
                    reserve = self.reserve(),
                    "audit log: cannot preallocate space (disk full?); writing into what is left");
            }
        }
    }

    fn extend_to(&mut self, target: u64) -> std::io::Result<()> {
        #[cfg(feature = "testing")]
        if let Some(f) = &self.fail {
            f.check()?;
        }
        zero_range(&self.file, self.capacity, target)?;
        self.file.sync_data()?;
        self.capacity = target;
        Ok(())
    }

    /// Cuts the reserve off (a sealed segment keeps only its data).
    pub(crate) fn trim(&mut self) -> Result<()> {
        if self.capacity == self.durable_len {
            return Ok(());
        }
        self.file
            .set_len(self.durable_len)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io("trim segment", &self.path, e))?;
        self.capacity = self.durable_len;
        Ok(())
    }

    /// After a failed write: reopen the file (a failed fsync leaves the old descriptor's
    /// error state and page cache unreliable), cut everything after the durable length
    /// and sync that. Succeeds on a full disk (truncation needs no space).
    pub(crate) fn repair(&mut self) -> Result<()> {
        #[cfg(feature = "testing")]
        if let Some(f) = &self.fail {
            f.check()
                .map_err(|e| Error::io("repair segment", &self.path, e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|e| Error::io("reopen segment", &self.path, e))?;
        file.set_len(self.durable_len)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("truncate segment", &self.path, e))?;
        self.file = file;
        self.capacity = self.durable_len;
        Ok(())
    }
}

/// Overwrites `from..to` with zeros.
fn zero_range(f: &File, from: u64, to: u64) -> std::io::Result<()> {
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
        f.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Removes leftovers of an interrupted segment creation.
fn remove_temporaries(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("audit-") && name.ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(|e| Error::io("remove temporary", dir, e))?;
        }
    }
    Ok(())
}

/// Reopens the last segment (or creates the first): rebuilds the tree edge from its
/// header and records, zeroes a torn tail (a crash's partial group), and refuses a
/// segment whose records are out of sequence, whose checkpoints do not match its
/// records, that hides a signed checkpoint in its torn tail, or that holds stray bytes
/// past its end (that is tampering or a bug: run the verifier).
pub(crate) fn recover(dir: &Path, key: &LogKey) -> Result<Recovered> {
    remove_temporaries(dir)?;
    let segs = segment::list(dir)?;
    let Some((name_seq, path)) = segs.last().cloned() else {
        let seg = SegmentFile::create(dir, key, &Frontier::new())?;
        return Ok(Recovered {
            segment: seg,
            frontier: Frontier::new(),
            last_time: i64::MIN,
            latest: None,
            signed: 0,
        });
    };
    let bad = |line: usize, kind| {
        Error::Tampered(Box::new(crate::verify::Fault {
            segment: Some(path.clone()),
            line: Some(line as u64 + 1),
            seq: None,
            kind,
        }))
    };
    let scan = Scan::read(&path)?;
    let header = segment::parse_header(scan.line(0))
        .filter(|h| h.first_seq == name_seq && h.origin == key.origin())
        .ok_or_else(|| bad(0, crate::verify::FaultKind::BadHeader))?;
    let mut frontier = header
        .frontier_hashes()
        .and_then(|h| Frontier::from_parts(header.first_seq, h))
        .ok_or_else(|| bad(0, crate::verify::FaultKind::BadHeader))?;
    let mut last_time = i64::MIN;
    let mut latest = None;
    let mut sealed = false;
    let mut signed = header.first_seq;
    for n in 1..scan.lines.len() {
        sealed = false;
        match segment::classify(scan.line(n)) {
            Line::Record(line) => {
                let rec = Record::decode(line).map_err(|e| {
                    bad(
                        n,
                        crate::verify::FaultKind::MalformedRecord {
                            reason: e.to_string(),
                        },
                    )
                })?;
                if rec.seq != frontier.size() {
                    return Err(bad(
                        n,
                        crate::verify::FaultKind::SeqMismatch {
                            expected: frontier.size(),
                            found: rec.seq,
                        },
                    ));
                }
                frontier.push(leaf_hash(line));
                last_time = rec.time;
            }
            Line::Checkpoint(note) => {
                // As the verifier: signed by the log key, at this size, with this root.
                // Reopening signs the records after the last checkpoint; it must not do
                // so over records that contradict a checkpoint already signed.
                let cp = crate::verify::check_checkpoint(&note, key, &frontier, signed)
                    .map_err(|kind| bad(n, kind))?;
                signed = cp.size();
                sealed = true;
                latest = Some(cp);
            }
            Line::Header | Line::Unknown => {
                return Err(bad(n, crate::verify::FaultKind::UnknownLine));
            }
        }
    }
    if let Some(at) = scan.stray_at {
        return Err(Error::Tampered(Box::new(crate::verify::Fault {
            segment: Some(path.clone()),
            line: None,
            seq: None,
            kind: crate::verify::FaultKind::StrayBytes { offset: at as u64 },
        })));
    }
    // Zeroing a torn tail that holds a signed checkpoint would destroy the evidence of
    // hidden records: refuse, and leave the file as it is for the verifier.
    crate::verify::check_torn_tail(&scan, key).map_err(|kind| {
        Error::Tampered(Box::new(crate::verify::Fault {
            segment: Some(path.clone()),
            line: None,
            seq: None,
            kind,
        }))
    })?;
    let capacity = scan.data.len() as u64;
    let durable_len = match scan.torn_at {
        Some(at) => {
            tracing::warn!(
                segment = %path.display(),
                bytes = scan.torn_end - at,
                "audit log: removing the partial last write a crash left (never acknowledged)"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open segment", &path, e))?;
            zero_range(&f, at as u64, scan.torn_end as u64)
                .and_then(|()| f.sync_data())
                .map_err(|e| Error::io("remove torn tail", &path, e))?;
            at as u64
        }
        None => scan.end as u64,
    };
    let segment = SegmentFile::open(path, durable_len, capacity, sealed)?;
    Ok(Recovered {
        segment,
        frontier,
        last_time,
        latest,
        signed,
    })
}
