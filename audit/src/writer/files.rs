//! The writer's file handling: open/recover the last segment, create segments
//! atomically, write + fdatasync, truncate back to the last durable length after a
//! failure. Every write goes through [`SegmentFile::write_durable`], the one place a
//! test can make I/O fail (feature `testing`).

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// The open segment being appended to.
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    file: File,
    /// Bytes known to be on stable storage; everything after is garbage from a failed write.
    pub durable_len: u64,
    /// Whether the last durable line is a checkpoint of the current size.
    pub sealed: bool,
    #[cfg(feature = "testing")]
    pub fail: Option<std::sync::Arc<FailSwitch>>,
}

/// State recovered from disk at open.
pub(crate) struct Recovered {
    pub segment: SegmentFile,
    pub frontier: Frontier,
    pub last_time: i64,
    pub latest: Option<SignedCheckpoint>,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

impl SegmentFile {
    fn open(path: PathBuf, durable_len: u64, sealed: bool) -> Result<Self> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open segment", &path, e))?;
        file.seek(SeekFrom::Start(durable_len))
            .map_err(|e| Error::io("seek segment", &path, e))?;
        Ok(SegmentFile {
            path,
            file,
            durable_len,
            sealed,
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
        SegmentFile::open(path, header.len() as u64, false)
    }

    /// Appends `buf` and fdatasyncs. On error the caller must [`repair`](Self::repair)
    /// before writing again; `durable_len` only moves on success.
    pub(crate) fn write_durable(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(feature = "testing")]
        if let Some(f) = &self.fail {
            f.check()?;
        }
        self.file.write_all(buf)?;
        self.file.sync_data()?;
        self.durable_len += buf.len() as u64;
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
        self.file
            .seek(SeekFrom::Start(self.durable_len))
            .map_err(|e| Error::io("seek segment", &self.path, e))?;
        Ok(())
    }
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
/// header and records, truncates a torn last line, and refuses a segment whose records
/// are out of sequence (that is tampering or a bug: run the verifier).
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
                // Signature checked: a checkpoint the key did not sign is not "latest".
                if let Ok(cp) = SignedCheckpoint::verify(note.as_bytes(), key) {
                    sealed = cp.size() == frontier.size();
                    latest = Some(cp);
                }
            }
            Line::Header | Line::Unknown => {
                return Err(bad(n, crate::verify::FaultKind::UnknownLine));
            }
        }
    }
    let durable_len = match scan.torn_at {
        Some(at) => {
            tracing::warn!(
                segment = %path.display(),
                bytes = scan.data.len() - at,
                "audit log: removing a partial last line left by a crash (never acknowledged)"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open segment", &path, e))?;
            f.set_len(at as u64)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io("truncate torn tail", &path, e))?;
            at as u64
        }
        None => scan.data.len() as u64,
    };
    let segment = SegmentFile::open(path, durable_len, sealed)?;
    Ok(Recovered {
        segment,
        frontier,
        last_time,
        latest,
    })
}
