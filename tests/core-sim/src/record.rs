//! The recording: every byte the core stores or relays, appended to `recording.log`, so a
//! test can later prove the core never saw plaintext or keys.
//!
//! Format: a sequence of records, each one JSON header line
//! `{"at_ms":<i64>,"kind":"<kind>","meta":"<text>","len":<n>}\n` followed by exactly `n`
//! raw bytes and one `\n`. The payload is kept raw (not escaped or encoded) so a scan of the
//! file for plaintext, hex or base64url finds it exactly as the core received it. Kinds:
//! `http.request` (any request body; meta = method and path), `relay.request` /
//! `relay.response` (the kmsMessages relayed, one JSON array), `ws.in` / `ws.out` (every
//! realm connection text frame), `store` (each content item stored; meta = room id).

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub at_ms: i64,
    pub kind: String,
    pub meta: String,
    pub len: usize,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: Header,
    pub payload: Vec<u8>,
}

pub struct Recorder {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish()
    }
}

impl Recorder {
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        let path = dir.join("recording.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Self {
            path,
            file: Mutex::new(file),
            clock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. A failure is logged, not returned: recording is for tests and
    /// must not change what the core answers.
    pub fn record(&self, kind: &str, meta: &str, payload: &[u8]) {
        let header = Header {
            at_ms: self.clock.now_ms(),
            kind: kind.to_owned(),
            meta: meta.to_owned(),
            len: payload.len(),
        };
        let Ok(mut line) = serde_json::to_vec(&header) else {
            return;
        };
        line.push(b'\n');
        line.extend_from_slice(payload);
        line.push(b'\n');
        let Ok(mut f) = self.file.lock() else {
            tracing::error!("recording lock poisoned");
            return;
        };
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, "recording write failed");
        }
    }
}

/// Reads every complete record of a recording; a torn last record is ignored.
pub fn read_all(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let Ok(header) = serde_json::from_str::<Header>(line.trim_end()) else {
            break;
        };
        let mut payload = vec![0; header.len + 1];
        if r.read_exact(&mut payload).is_err() {
            break;
        }
        payload.pop();
        out.push(Record { header, payload });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn records_round_trip_with_raw_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::open(dir.path(), Arc::new(ManualClock::new(7))).unwrap();
        rec.record("http.request", "POST /x", b"line one\nline two");
        rec.record("ws.in", "", b"");
        let all = read_all(rec.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].payload, b"line one\nline two");
        assert_eq!(all[0].header.at_ms, 7);
        assert_eq!(all[1].header.kind, "ws.in");
        let raw = std::fs::read(rec.path()).unwrap();
        assert!(raw.windows(8).any(|w| w == b"line one"));
    }
}
