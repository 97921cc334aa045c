//! The committer thread: group commit, checkpoints, rotation, self-repair.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::{Recovered, SegmentFile};
use super::queue::{Queue, Taken};
use super::{Health, Job, LogConfig, Receipts, Reply, Shared, lock_poisoned};
use crate::checkpoint::{CheckpointSigner, LogKey, SignedCheckpoint};
use crate::error::Error;
use crate::record;
use crate::segment;
use crate::tree::{Digest, Frontier, leaf_hash};

/// How often an unhealthy log retries by itself.
const RETRY: Duration = Duration::from_secs(1);
/// Upper bound on bytes written by one group (bounds memory and latency).
const MAX_GROUP_BYTES: usize = 8 << 20;
/// Group buffers up to this size are kept for the next group.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

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
    /// Append calls per second, smoothed over recent groups (drives the group window).
    rate: f64,
    /// When the previous group was taken.
    last_group_at: Instant,
    /// The group's lines and their leaf hashes, kept between groups.
    buf: Vec<u8>,
    leaves: Vec<Digest>,
    /// The replies of the group being written, kept between groups.
    replies: Vec<(Reply, Receipts, Vec<u8>)>,
}

/// Bytes a record's line adds to its body (`{"v":1,"seq":N,"time":"T",`), for the
/// group's byte bound.
const PREFIX_BYTES: usize = 64;

/// Weight of the newest group in the smoothed arrival rate.
const RATE_ALPHA: f64 = 0.25;

/// Lowers the calling thread's CPU priority by `steps` nice levels, capped at 19 (see
/// [`super::LogConfig::committer_nice`]). On Linux a nice value is per thread, and raising
/// it needs no privilege; should it fail anyway, the log works on at its creator's
/// priority and says so.
pub(super) fn lower_priority(steps: u8) {
    use rustix::process::{getpriority_process, setpriority_process};
    if steps == 0 {
        return;
    }
    let me = Some(rustix::thread::gettid());
    let result = getpriority_process(me)
        .and_then(|now| setpriority_process(me, (now + i32::from(steps)).min(19)));
    if let Err(e) = result {
        tracing::warn!(error = %e, "audit committer: could not lower its CPU priority; under load each flush serves fewer records");
    }
}

/// How many of `jobs` (from the front) one write takes: at most `max_group` calls and
/// about [`MAX_GROUP_BYTES`], and at least one.
fn group_len(jobs: &[Job], max_group: usize) -> usize {
    let mut bytes = 0usize;
    let mut n = 0;
    for job in jobs.iter().take(max_group.max(1)) {
        n += 1;
        let records = usize::try_from(job.count).unwrap_or(usize::MAX);
        bytes = bytes
            .saturating_add(job.bodies.len())
            .saturating_add(records.saturating_mul(PREFIX_BYTES));
        if bytes >= MAX_GROUP_BYTES {
            break;
        }
    }
    n
}

/// What a caller whose records could not be written is told.
fn append_error(path: &std::path::Path, kind: std::io::ErrorKind) -> Error {
    Error::io(
        "append",
        path,
        std::io::Error::new(kind, "audit log write failed"),
    )
}

/// The group-commit wait (see [`LogConfig::group_window`]) for a group of `n` calls
/// taken `since_last` after the previous group, when calls arrived at a smoothed `rate`
/// per second: none unless the window would bring at least a quarter of `target` more
/// calls, and never longer than reaching `target` takes. The rate used is at most what
/// this group shows (`n / since_last`), so the first call after an idle spell never waits
/// on the strength of an earlier burst.
fn group_wait(
    window: Duration,
    target: usize,
    rate: f64,
    n: usize,
    since_last: Duration,
) -> Option<Duration> {
    if window.is_zero() || n >= target {
        return None;
    }
    #[allow(clippy::cast_precision_loss, reason = "group sizes are small")]
    let (missing, quarter, now_rate) = (
        (target - n) as f64,
        target as f64 / 4.0,
        n as f64 / since_last.as_secs_f64(),
    );
    let rate = rate.min(now_rate);
    if rate <= 0.0 || rate.is_nan() {
        return None;
    }
    if rate * window.as_secs_f64() < quarter {
        return None;
    }
    Some(Duration::from_secs_f64(missing / rate).min(window))
}

impl Committer {
    pub(super) fn new(
        config: LogConfig,
        key: LogKey,
        signer: Arc<dyn CheckpointSigner>,
        recovered: Recovered,
        shared: Arc<Shared>,
    ) -> Self {
        let unsigned = recovered.frontier.size() - recovered.signed;
        let mut seg = recovered.segment;
        seg.preallocate = config.preallocate;
        Committer {
            config,
            key,
            signer,
            seg,
            frontier: recovered.frontier,
            last_time: recovered.last_time,
            shared,
            unsigned,
            last_checkpoint_at: Instant::now(),
            broken: false,
            signing_ok: true,
            rate: 0.0,
            last_group_at: Instant::now(),
            buf: Vec::new(),
            leaves: Vec::new(),
            replies: Vec::new(),
        }
    }

    pub(super) fn run(mut self, queue: &Queue) -> Option<SignedCheckpoint> {
        // Swapped with the queue's vector on every take: both keep their capacity.
        let mut group = Vec::new();
        loop {
            match queue.take(&mut group, self.timeout()) {
                Taken::Jobs => {
                    if let Some(wait) = self.group_wait(group.len()) {
                        // Sleep rather than wait on the queue: callers wake only a
                        // waiting committer, so the whole group costs one wake-up.
                        std::thread::sleep(wait);
                        queue.take_more(&mut group);
                    }
                    self.note_group(group.len());
                    while !group.is_empty() {
                        self.commit(&mut group);
                    }
                    self.top_up();
                }
                Taken::Timeout => self.tick(),
                Taken::Closed => break,
            }
            self.maybe_checkpoint();
            self.maybe_rotate();
        }
        self.checkpoint_if_unsigned();
        if let Err(e) = self.seg.trim() {
            tracing::warn!(error = %e, "audit log: preallocated space left at close (harmless: readers skip it)");
        }
        lock_poisoned(&self.shared.latest).clone()
    }

    /// Extends the segment's zero-filled reserve when it runs low (after each group and
    /// at open) and reports it in [`Health`] when it changed.
    pub(super) fn top_up(&mut self) {
        self.seg.top_up();
        let (bytes, short) = (self.seg.reserve(), self.seg.reserve_short());
        let h = lock_poisoned(&self.shared.health);
        if h.reserve_bytes != bytes || h.reserve_short != short {
            drop(h);
            self.update_health(|h| {
                h.reserve_bytes = bytes;
                h.reserve_short = short;
            });
        }
    }

    /// How long to wait for more calls before writing a group of `n`; `None` at low load.
    fn group_wait(&self, n: usize) -> Option<Duration> {
        group_wait(
            self.config.group_window,
            self.config.group_target,
            self.rate,
            n,
            self.last_group_at.elapsed(),
        )
    }

    /// Updates the smoothed arrival rate with a group of `n` calls taken now.
    fn note_group(&mut self, n: usize) {
        let now = Instant::now();
        let gap = now.duration_since(self.last_group_at).as_secs_f64();
        self.last_group_at = now;
        if gap > 0.0 {
            #[allow(clippy::cast_precision_loss, reason = "group sizes are small")]
            let sample = n as f64 / gap;
            self.rate = RATE_ALPHA * sample + (1.0 - RATE_ALPHA) * self.rate;
        }
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

    /// Writes the jobs at the front of `jobs` (one group, see [`group_len`]) with one
    /// write and one flush, then answers them; they leave `jobs`.
    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let n = group_len(jobs, self.config.max_group);
        let group = jobs.drain(..n);
        if !self.repair() {
            for job in group {
                let e = append_error(&self.seg.path, std::io::ErrorKind::Other);
                job.reply.send(Err(e), job.bodies);
            }
            return;
        }
        let now = self.config.clock.now_ms().max(self.last_time);
        let Some(time) = record::format_time(now) else {
            tracing::error!(
                now,
                "audit log: the clock is outside years 0000-9999; records are refused"
            );
            for job in group {
                let e = Error::InvalidField {
                    field: "time",
                    reason: "the clock is outside years 0000-9999",
                };
                job.reply.send(Err(e), job.bodies);
            }
            return;
        };
        // The group's lines, leaves and replies go into buffers kept from group to group,
        // so a busy log does not allocate (and free) tens of KiB per group.
        let mut buf = std::mem::take(&mut self.buf);
        let mut leaves = std::mem::take(&mut self.leaves);
        let mut replies = std::mem::take(&mut self.replies);
        buf.clear();
        leaves.clear();
        let mut seq = self.frontier.size();
        for job in group {
            let first = seq;
            for body in job
                .bodies
                .split(|b| *b == b'\n')
                .take_while(|b| !b.is_empty())
            {
                let start = buf.len();
                record::line_prefix(&mut buf, seq, &time);
                buf.extend_from_slice(body.strip_prefix(b"{").unwrap_or(body));
                leaves.push(leaf_hash(buf.get(start..).unwrap_or_default()));
                buf.push(b'\n');
                seq += 1;
            }
            debug_assert_eq!(seq - first, job.count, "one body per record");
            let receipts = Receipts {
                first,
                count: seq - first,
                time: now,
            };
            replies.push((job.reply, receipts, job.bodies));
        }
        if buf.is_empty() {
            for (reply, receipts, bodies) in replies.drain(..) {
                reply.send(Ok(receipts), bodies);
            }
        } else {
            match self.seg.write_durable(&buf) {
                Ok(()) => {
                    self.unsigned += leaves.len() as u64;
                    for leaf in &leaves {
                        self.frontier.push(*leaf);
                    }
                    self.last_time = now;
                    self.seg.sealed = false;
                    let (size, reserve) = (self.frontier.size(), self.seg.reserve());
                    // The reserve the write used up is reported with it, before anyone is
                    // answered (`top_up` then extends it after the replies).
                    self.update_health(|h| {
                        h.writable = true;
                        h.last_error = None;
                        h.size = size;
                        h.flushes += 1;
                        h.reserve_bytes = reserve;
                    });
                    // Mirror each durable record (exact line bytes) before acknowledging.
                    if let Some(sink) = &self.config.on_record {
                        for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            sink(line);
                        }
                    }
                    for (reply, receipts, bodies) in replies.drain(..) {
                        reply.send(Ok(receipts), bodies);
                    }
                }
                Err(e) => {
                    self.write_failed("append", &e);
                    for (reply, _, bodies) in replies.drain(..) {
                        reply.send(Err(append_error(&self.seg.path, e.kind())), bodies);
                    }
                }
            }
        }
        // Keep the buffers unless one group made them huge (the byte bound caps a group,
        // so this only returns memory after a rare burst of very large records).
        if buf.capacity() <= KEEP_BUFFER_BYTES {
            self.buf = buf;
            self.leaves = leaves;
            self.replies = replies;
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
            Ok(mut next) => {
                #[cfg(feature = "testing")]
                {
                    next.fail.clone_from(&self.seg.fail);
                }
                next.sealed = true;
                next.preallocate = self.config.preallocate;
                if let Err(e) = self.seg.trim() {
                    tracing::warn!(error = %e, "audit log: preallocated space left in a sealed segment (harmless: readers skip it)");
                }
                self.seg = next;
                self.top_up();
            }
            Err(e) => {
                tracing::error!(error = %e, "audit segment rotation failed; still appending to the sealed segment");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_group_window_waits_only_under_load_and_within_its_bounds() {
        // Taken 100 µs after the previous group: this group alone shows n × 10,000/s.
        let busy = Duration::from_micros(100);
        // Off, a full group, or no rate yet: no wait.
        assert_eq!(group_wait(Duration::ZERO, 32, 1e6, 1, busy), None);
        assert_eq!(group_wait(MS, 32, 1e6, 32, busy), None);
        assert_eq!(group_wait(MS, 32, 0.0, 1, busy), None);
        // 1,000 calls/s bring one more call per ms: not worth a wait (R16 latency).
        assert_eq!(group_wait(MS, 32, 1_000.0, 1, busy), None);
        // 20,000/s (and 20 calls in this group): 12 missing calls take 600 µs.
        let w = group_wait(MS, 32, 20_000.0, 20, MS).unwrap();
        assert!((w.as_secs_f64() - 600e-6).abs() < 1e-9, "{w:?}");
        // 20,000/s with 2 calls: 30 missing take 1.5 ms, capped at the window.
        assert_eq!(group_wait(MS, 32, 20_000.0, 2, busy), Some(MS));
        // Just at the threshold (a quarter of the target in the window) it waits.
        assert!(group_wait(MS, 32, 8_000.0, 1, busy).is_some());
        assert_eq!(group_wait(MS, 32, 7_999.0, 1, busy), None);
        // After an idle second the earlier burst's rate does not count.
        assert_eq!(group_wait(MS, 32, 1e6, 1, Duration::from_secs(1)), None);
    }

    fn job(records: u64, body_bytes: usize) -> Job {
        Job {
            bodies: vec![b'x'; body_bytes],
            count: records,
            reply: Reply::Call(Box::new(|_| {})),
        }
    }

    #[test]
    fn a_group_holds_at_most_max_group_calls_and_about_its_byte_bound() {
        let small: Vec<Job> = (0..10).map(|_| job(1, 300)).collect();
        assert_eq!(
            group_len(&small, 4096),
            10,
            "everything queued fits one group"
        );
        assert_eq!(
            group_len(&small, 4),
            4,
            "max_group caps the calls per write"
        );
        assert_eq!(group_len(&small[..0], 4), 0);
        // Calls of 3 MiB each: the third reaches the byte bound and ends the group.
        let big: Vec<Job> = (0..5).map(|_| job(1, 3 << 20)).collect();
        assert_eq!(group_len(&big, 4096), 3);
        // One call larger than the bound still gets written (alone).
        assert_eq!(group_len(&[job(1, 9 << 20), job(1, 10)], 4096), 1);
        // The line prefixes count: 200,000 one-byte records are over 8 MiB with them.
        assert_eq!(group_len(&[job(200_000, 400_000), job(1, 10)], 4096), 1);
    }
}
