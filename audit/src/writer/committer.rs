//! The committer thread: group commit, checkpoints, rotation, self-repair.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::files::{Recovered, SegmentFile};
use super::{Health, Job, LogConfig, Receipt, Shared, lock_poisoned};
use crate::checkpoint::{CheckpointSigner, LogKey, SignedCheckpoint};
use crate::error::Error;
use crate::record::Record;
use crate::segment;
use crate::tree::{Frontier, leaf_hash};

/// How often an unhealthy log retries by itself.
const RETRY: Duration = Duration::from_secs(1);
/// Upper bound on bytes written by one group (bounds memory and latency).
const MAX_GROUP_BYTES: usize = 8 << 20;

pub(super) struct Committer {
    config: LogConfig,
    key: LogKey,
    signer: Arc<dyn CheckpointSigner>,
    seg: SegmentFile,
    frontier: Frontier,
    last_time: i64,
    shared: Arc<Shared>,
    /// Records since the last checkpoint.
    unsigned: u64,
    last_checkpoint_at: Instant,
    /// A write failed: the segment must be cut back before the next write.
    broken: bool,
    signing_ok: bool,
}

impl Committer {
    pub(super) fn new(
        config: LogConfig,
        key: LogKey,
        signer: Arc<dyn CheckpointSigner>,
        recovered: Recovered,
        shared: Arc<Shared>,
    ) -> Self {
        let unsigned = recovered.frontier.size()
            - recovered
                .latest
                .as_ref()
                .map_or(0, |c| c.size().min(recovered.frontier.size()));
        Committer {
            config,
            key,
            signer,
            seg: recovered.segment,
            frontier: recovered.frontier,
            last_time: recovered.last_time,
            shared,
            unsigned,
            last_checkpoint_at: Instant::now(),
            broken: false,
            signing_ok: true,
        }
    }

    pub(super) fn run(mut self, rx: &mpsc::Receiver<Job>) -> Option<SignedCheckpoint> {
        loop {
            match rx.recv_timeout(self.timeout()) {
                Ok(first) => {
                    let mut group = vec![first];
                    while group.len() < self.config.max_group {
                        match rx.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    self.commit(group);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.maybe_checkpoint();
            self.maybe_rotate();
        }
        self.checkpoint_if_unsigned();
        lock_poisoned(&self.shared.latest).clone()
    }

    fn timeout(&self) -> Duration {
        if self.broken || !self.signing_ok {
            return RETRY;
        }
        if self.unsigned > 0 {
            return self
                .config
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint_at.elapsed())
                .max(Duration::from_millis(1));
        }
        Duration::from_hours(1)
    }

    fn update_health(&self, f: impl FnOnce(&mut Health)) {
        let mut h = lock_poisoned(&self.shared.health);
        f(&mut h);
    }

    fn write_failed(&mut self, op: &'static str, e: &std::io::Error) {
        self.broken = true;
        tracing::error!(error = %e, op, segment = %self.seg.path.display(),
            "audit log write failed: records are refused until writing works again");
        self.update_health(|h| {
            h.writable = false;
            h.last_error = Some((op, e.kind()));
        });
    }

    /// Cuts the segment back to its durable length after a failure.
    fn repair(&mut self) -> bool {
        if !self.broken {
            return true;
        }
        match self.seg.repair() {
            Ok(()) => {
                self.broken = false;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "audit log repair failed; retrying");
                false
            }
        }
    }

    fn commit(&mut self, group: Vec<Job>) {
        let path = self.seg.path.clone();
        let io_err = |kind: std::io::ErrorKind| {
            Error::io(
                "append",
                path.clone(),
                std::io::Error::new(kind, "audit log write failed"),
            )
        };
        if !self.repair() {
            for job in group {
                (job.reply)(Err(io_err(std::io::ErrorKind::Other)));
            }
            return;
        }
        let now = self.config.clock.now_ms().max(self.last_time);
        let mut seq = self.frontier.size();
        let mut buf = Vec::with_capacity(256 * group.len());
        let mut leaves = Vec::with_capacity(group.len());
        let mut accepted = Vec::with_capacity(group.len());
        let mut rest = group.into_iter();
        for job in rest.by_ref() {
            let (mark, leaf_mark) = (buf.len(), leaves.len());
            let mut receipts = Vec::with_capacity(job.events.len());
            let mut failed = None;
            for (k, event) in job.events.into_iter().enumerate() {
                let s = seq + k as u64;
                let start = buf.len();
                match Record::stamp(event, s, now).encode_into(&mut buf) {
                    Ok(()) => {
                        leaves.push(leaf_hash(buf.get(start..).unwrap_or_default()));
                        buf.push(b'\n');
                        receipts.push(Receipt { seq: s, time: now });
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                buf.truncate(mark);
                leaves.truncate(leaf_mark);
                (job.reply)(Err(e));
                continue;
            }
            seq += receipts.len() as u64;
            accepted.push((job.reply, receipts));
            if buf.len() >= MAX_GROUP_BYTES {
                break;
            }
        }
        // Jobs beyond the byte bound go in a following group.
        let rest: Vec<Job> = rest.collect();
        if buf.is_empty() {
            for (reply, receipts) in accepted {
                reply(Ok(receipts));
            }
        } else {
            match self.seg.write_durable(&buf) {
                Ok(()) => {
                    self.unsigned += leaves.len() as u64;
                    for leaf in leaves {
                        self.frontier.push(leaf);
                    }
                    self.last_time = now;
                    self.seg.sealed = false;
                    let size = self.frontier.size();
                    self.update_health(|h| {
                        h.writable = true;
                        h.last_error = None;
                        h.size = size;
                    });
                    // Mirror each durable record (exact line bytes) before acknowledging.
                    if let Some(sink) = &self.config.on_record {
                        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            sink(line);
                        }
                    }
                    for (reply, receipts) in accepted {
                        reply(Ok(receipts));
                    }
                }
                Err(e) => {
                    self.write_failed("append", &e);
                    for (reply, _) in accepted {
                        reply(Err(io_err(e.kind())));
                    }
                }
            }
        }
        if !rest.is_empty() {
            self.commit(rest);
        }
    }

    fn tick(&mut self) {
        if self.broken {
            // Prove the disk takes writes again with a checkpoint line (a real write).
            if self.repair() {
                self.checkpoint();
            }
            return;
        }
        self.maybe_checkpoint();
    }

    fn maybe_checkpoint(&mut self) {
        let due = self.unsigned >= self.config.checkpoint_every
            || (self.unsigned > 0
                && (!self.signing_ok
                    || self.last_checkpoint_at.elapsed() >= self.config.checkpoint_interval));
        if due && !self.broken {
            self.checkpoint();
        }
    }

    pub(super) fn checkpoint_if_unsigned(&mut self) {
        if !self.seg.sealed || self.unsigned > 0 {
            self.checkpoint();
        }
    }

    /// Signs the current tree and writes the checkpoint; returns whether it was written.
    fn checkpoint(&mut self) -> bool {
        if !self.repair() {
            return false;
        }
        self.last_checkpoint_at = Instant::now();
        let size = self.frontier.size();
        let cp = match SignedCheckpoint::sign(
            &self.key,
            self.signer.as_ref(),
            size,
            self.frontier.root(),
        ) {
            Ok(cp) => cp,
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint signing failed; records stay unsigned until it works");
                self.signing_ok = false;
                self.update_health(|h| h.signing = false);
                return false;
            }
        };
        self.signing_ok = true;
        let line = match segment::checkpoint_line(cp.note()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "audit checkpoint encoding failed");
                return false;
            }
        };
        if let Err(e) = self.seg.write_durable(&line) {
            self.write_failed("checkpoint", &e);
            return false;
        }
        self.seg.sealed = true;
        self.unsigned = 0;
        self.update_health(|h| {
            h.writable = true;
            h.last_error = None;
            h.signing = true;
            h.checkpointed = Some(size);
        });
        *lock_poisoned(&self.shared.latest) = Some(cp.clone());
        if let Some(sink) = &self.config.on_checkpoint {
            sink(&cp);
        }
        true
    }

    /// Starts a new segment once the current one is full, sealing the old one first.
    fn maybe_rotate(&mut self) {
        if self.broken || self.seg.durable_len < self.config.segment_max_bytes {
            return;
        }
        if !self.seg.sealed && !self.checkpoint() {
            return;
        }
        match SegmentFile::create(&self.config.dir, &self.key, &self.frontier) {
            Ok(next) => {
                #[allow(unused_mut)]
                let mut next = next;
                #[cfg(feature = "testing")]
                {
                    next.fail.clone_from(&self.seg.fail);
                }
                next.sealed = true;
                self.seg = next;
            }
            Err(e) => {
                tracing::error!(error = %e, "audit segment rotation failed; still appending to the sealed segment");
            }
        }
    }
}
