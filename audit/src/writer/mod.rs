//! The durable, fail-closed writer.
//!
//! [`AuditLog::append`] hands events to one committer thread and blocks until they are
//! on stable storage. The committer drains everything queued (group commit), stamps
//! sequence numbers and time, writes the lines with one `write` and one `fdatasync`,
//! and only then answers every caller. If the write or the sync fails, every caller in
//! the group gets [`Error::Io`], no sequence number is used, the log reports unhealthy
//! ([`AuditLog::health`]), and before the next write the segment is cut back to its last
//! durable length; the first write that succeeds makes it healthy again. The committer
//! also retries by itself once a second, so health recovers without traffic.
//!
//! Checkpoints are signed every `checkpoint_every` records or `checkpoint_interval`,
//! at rotation (sealing the old segment), at open (covering records recovered after a
//! crash) and at close; each is written to the log, kept as [`AuditLog::latest_checkpoint`]
//! and passed to [`LogConfig::on_checkpoint`] for export (journal). A signing failure
//! leaves records durable but unsigned; it is reported in [`Health`] and retried.

mod committer;
pub(crate) mod files;
mod queue;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use queue::Queue;

use crate::checkpoint::{CheckpointSigner, LogKey, SignedCheckpoint};
use crate::error::{Error, Result};
use crate::record::Event;

#[cfg(feature = "testing")]
pub use files::FailSwitch;

/// Wall-clock time in milliseconds since the Unix epoch; injectable for tests.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Called with every checkpoint written (export it off the box: journal, SIEM, witness).
pub type CheckpointSink = Arc<dyn Fn(&SignedCheckpoint) + Send + Sync>;

/// Receives each record's exact line once it is durable (the journal mirror, R16: a copy
/// off the box for SIEM pickup). Called on the committer thread: keep it quick.
pub type RecordSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Default [`LogConfig::committer_nice`]: measured on a 2-vCPU VM at 32 and 512
/// concurrent clients (docs/benchmarks.md, "The cost of auditing"; ADR 0014).
pub const DEFAULT_COMMITTER_NICE: u8 = 10;

/// Default [`LogConfig::checkpoint_every`] (ADR 0017).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 10_000;

/// Default [`LogConfig::checkpoint_interval`]: no record stays unsigned longer than this
/// (ADR 0017).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Writer configuration. [`LogConfig::new`] gives the defaults.
#[non_exhaustive]
pub struct LogConfig {
    /// The log directory (created if missing); one writer at a time (lock file).
    pub dir: PathBuf,
    /// Checkpoint origin and note key name, e.g. `kms.example.com/audit`.
    pub origin: String,
    /// Sign a checkpoint after this many records (default [`DEFAULT_CHECKPOINT_EVERY`]).
    pub checkpoint_every: u64,
    /// ... or once this long has passed since the previous checkpoint, so that no record
    /// stays unsigned longer (default [`DEFAULT_CHECKPOINT_INTERVAL`]).
    pub checkpoint_interval: Duration,
    /// Start a new segment once the current one is this large (default 64 MiB).
    pub segment_max_bytes: u64,
    /// Most append calls grouped into one write (default 4096).
    pub max_group: usize,
    /// Group-commit window (default 0: off). Under load the committer waits up to this
    /// long before a write for more calls to join the group, so that one flush serves
    /// more records: it waits only when the recent arrival rate promises at least a
    /// quarter of `group_target` more calls within the window, and no longer than it
    /// takes to reach `group_target`. At low load nothing waits.
    pub group_window: Duration,
    /// Group size the window aims for (default 32).
    pub group_target: usize,
    /// How many nice steps below its creator the committer thread runs (default
    /// [`DEFAULT_COMMITTER_NICE`]; 0: the same priority; the result is capped at 19).
    /// When the CPUs are busy with requests, a committer of lower priority runs after
    /// them, so each flush serves the records they produced meanwhile; on an idle
    /// machine it runs at once (ADR 0014). Durability is unchanged: every answer still
    /// waits for the flush that holds its record.
    pub committer_nice: u8,
    /// Zero-filled space kept written ahead of the records (default 1 MiB; 0: plain
    /// appends), so that a flush overwrites allocated blocks and need not write the
    /// file's inode (ADR 0013). Also a reserve: on a full disk the log keeps taking
    /// records until it is used up.
    pub preallocate: u64,
    pub clock: Arc<dyn Clock>,
    pub on_checkpoint: Option<CheckpointSink>,
    /// Mirror of every durable record (see [`RecordSink`]).
    pub on_record: Option<RecordSink>,
    /// Test seam: make writes fail on demand.
    #[cfg(feature = "testing")]
    pub fail: Option<Arc<FailSwitch>>,
}

impl fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfig")
            .field("dir", &self.dir)
            .field("origin", &self.origin)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("segment_max_bytes", &self.segment_max_bytes)
            .field("max_group", &self.max_group)
            .field("group_window", &self.group_window)
            .field("group_target", &self.group_target)
            .field("committer_nice", &self.committer_nice)
            .field("preallocate", &self.preallocate)
            .finish_non_exhaustive()
    }
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>, origin: &str) -> Self {
        LogConfig {
            dir: dir.into(),
            origin: origin.to_owned(),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            segment_max_bytes: 64 << 20,
            max_group: 4096,
            group_window: Duration::ZERO,
            group_target: 32,
            committer_nice: DEFAULT_COMMITTER_NICE,
            preallocate: 1 << 20,
            clock: Arc::new(SystemClock),
            on_checkpoint: None,
            on_record: None,
            #[cfg(feature = "testing")]
            fail: None,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |field, reason| Err(Error::Config { field, reason });
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every", "must be at least 1");
        }
        if self.checkpoint_interval.is_zero() {
            return bad("checkpoint_interval", "must be positive");
        }
        if self.segment_max_bytes < 4096 {
            return bad("segment_max_bytes", "must be at least 4096");
        }
        if self.max_group == 0 {
            return bad("max_group", "must be at least 1");
        }
        if self.group_window > Duration::from_millis(100) {
            return bad("group_window", "must be at most 100 ms");
        }
        if self.group_target == 0 || self.group_target > self.max_group {
            return bad("group_target", "must be between 1 and max_group");
        }
        if self.preallocate > 256 << 20 {
            return bad("preallocate", "must be at most 256 MiB");
        }
        Ok(())
    }
}

/// Where a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Its sequence number (= Merkle leaf index).
    pub seq: u64,
    /// Its commit time (ms since the epoch).
    pub time: i64,
}

/// Where the records of one call went: `count` consecutive sequence numbers from
/// `first`, all with the same commit time. `Copy`, so answering a call allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipts {
    /// The first record's sequence number.
    pub first: u64,
    /// How many records the call appended.
    pub count: u64,
    /// Their commit time (ms since the epoch).
    pub time: i64,
}

impl Receipts {
    /// One [`Receipt`] per record, in order.
    pub fn iter(&self) -> impl Iterator<Item = Receipt> + use<> {
        let time = self.time;
        (self.first..self.first + self.count).map(move |seq| Receipt { seq, time })
    }
}

/// What a health endpoint reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// False after a failed write, until a write succeeds again. While false the KMS
    /// must refuse what needs a record (appends fail anyway).
    pub writable: bool,
    /// The failed operation and error kind of the last write failure, while unwritable.
    pub last_error: Option<(&'static str, std::io::ErrorKind)>,
    /// False while the last checkpoint attempt failed (HSM unavailable).
    pub signing: bool,
    /// Records durable so far.
    pub size: u64,
    /// Size of the last checkpoint written.
    pub checkpointed: Option<u64>,
    /// Record groups written and flushed since open (`size` growth over this is the
    /// mean group size: how well group commit amortises the flushes).
    pub flushes: u64,
    /// Zero-filled space preallocated ahead of the records (see [`LogConfig::preallocate`]).
    pub reserve_bytes: u64,
    /// The reserve could not be extended (disk full): the log still takes records until
    /// it is used up, then refuses. Free space now.
    pub reserve_short: bool,
}

/// Bytes reserved per record body up front: a KMS decision with a resource and one key
/// URI is about 330, so most calls encode without growing the buffer.
const BODY_GUESS: usize = 384;

/// How a call is answered once its records are durable (or failed).
pub(crate) enum Reply {
    /// [`AuditLog::submit`]: a callback run on the committer thread.
    Call(Box<dyn FnOnce(Result<Receipts>) + Send>),
    /// [`AuditLog::append_async`]: the result and the call's body buffer go back to the
    /// caller, so the buffer is freed on the thread that allocated it (glibc frees across
    /// threads under the owning arena's lock; they showed in the profile).
    Async(tokio::sync::oneshot::Sender<(Result<Receipts>, Vec<u8>)>),
}

impl Reply {
    pub(crate) fn send(self, result: Result<Receipts>, bodies: Vec<u8>) {
        match self {
            Reply::Call(f) => f(result),
            Reply::Async(tx) => {
                // The caller gave up waiting (its request was dropped): nothing to do.
                let _ = tx.send((result, bodies));
            }
        }
    }
}

/// One call's records, encoded by the caller: record bodies (see
/// [`Event::encode_body_into`]), each followed by `\n` (compact JSON holds no raw
/// newline), so the committer only adds each line's position and time.
pub(crate) struct Job {
    bodies: Vec<u8>,
    count: u64,
    reply: Reply,
}

pub(crate) struct Shared {
    health: Mutex<Health>,
    latest: Mutex<Option<SignedCheckpoint>>,
}

/// The append-only audit log of one node. `Send + Sync`; share it with an `Arc`.
pub struct AuditLog {
    queue: Arc<Queue>,
    committer: Mutex<Option<std::thread::JoinHandle<Option<SignedCheckpoint>>>>,
    shared: Arc<Shared>,
    key: LogKey,
    _lock: std::fs::File,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn lock_poisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short locks cannot leave them inconsistent (plain
    // value replacement), so a poisoned lock is used as is.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AuditLog {
    /// Opens (or creates) the log in `config.dir`, recovers the tree from the last
    /// segment (cutting a torn last line), writes a checkpoint covering any records a
    /// crash left unsigned, and starts the committer.
    pub fn open(config: LogConfig, signer: Arc<dyn CheckpointSigner>) -> Result<AuditLog> {
        config.check()?;
        let key = LogKey::new(&config.origin, signer.public_key())?;
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io("create log directory", &config.dir, e))?;
        let lock_path = config.dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(config.dir)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("lock log directory", &lock_path, e));
            }
        }
        #[allow(unused_mut)]
        let mut recovered = files::recover(&config.dir, &key)?;
        #[cfg(feature = "testing")]
        {
            recovered.segment.fail.clone_from(&config.fail);
        }
        let shared = Arc::new(Shared {
            health: Mutex::new(Health {
                writable: true,
                signing: true,
                size: recovered.frontier.size(),
                checkpointed: recovered.latest.as_ref().map(SignedCheckpoint::size),
                last_error: None,
                flushes: 0,
                reserve_bytes: 0,
                reserve_short: false,
            }),
            latest: Mutex::new(recovered.latest.clone()),
        });
        let (signed, size) = (recovered.signed, recovered.frontier.size());
        if size > signed {
            // The checkpoint about to be signed vouches for records no earlier checkpoint
            // covered: say so (to the journal under systemd, off the box), so that a
            // history edited while the service was down shows next to the records' own
            // journal copies.
            tracing::warn!(
                first_seq = signed,
                last_seq = size - 1,
                records = size - signed,
                "audit log reopened with records no checkpoint covers (the service stopped without its final checkpoint: a crash, or the files were edited); signing them now"
            );
        }
        let nice = config.committer_nice;
        let mut committer =
            committer::Committer::new(config, key.clone(), signer, recovered, Arc::clone(&shared));
        // Sign what a crash left unsigned (or the empty tree of a new log) before
        // accepting appends: a failure here is reported, not fatal.
        committer.checkpoint_if_unsigned();
        committer.top_up();
        let queue = Arc::new(Queue::new());
        let jobs = Arc::clone(&queue);
        let handle = std::thread::Builder::new()
            .name("audit-committer".into())
            .spawn(move || {
                committer::lower_priority(nice);
                committer.run(&jobs)
            })
            .map_err(|e| Error::io("spawn committer", "audit-committer", e))?;
        Ok(AuditLog {
            queue,
            committer: Mutex::new(Some(handle)),
            shared,
            key,
            _lock: lock,
        })
    }

    /// Appends one record; returns once it is durable. An error means it is not
    /// recorded: refuse the request (fail closed).
    pub fn append(&self, event: &Event) -> Result<Receipt> {
        let r = self.append_all(std::slice::from_ref(event))?;
        r.iter().next().ok_or(Error::Closed)
    }

    /// Appends several records atomically with respect to other callers (consecutive
    /// sequence numbers, one durable write); returns once they are durable.
    pub fn append_batch(&self, events: &[Event]) -> Result<Vec<Receipt>> {
        Ok(self.append_all(events)?.iter().collect())
    }

    fn append_all(&self, events: &[Event]) -> Result<Receipts> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            events,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Appends records for an async caller: they are encoded and queued now, and the
    /// future resolves once they are durable (or failed). No thread blocks, and nothing
    /// the caller allocated is freed on another thread. `Err` means: not recorded.
    pub fn append_async(
        &self,
        events: &[Event],
    ) -> impl Future<Output = Result<Receipts>> + Send + use<> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_job(events, Reply::Async(tx));
        async move {
            match rx.await {
                Ok((result, _bodies)) => result,
                Err(_) => Err(Error::Closed),
            }
        }
    }

    /// Callback form: `reply` runs on the committer thread once the records are durable
    /// (or failed). Keep it short (e.g. send on a channel).
    pub fn submit(&self, events: &[Event], reply: Box<dyn FnOnce(Result<Receipts>) + Send>) {
        self.send_job(events, Reply::Call(reply));
    }

    /// Encodes the records here, on the caller's thread, and queues them as one job: the
    /// committer only adds each line's position and time (cross-thread frees and encoding
    /// on the committer were a measurable part of the cost of auditing,
    /// docs/benchmarks.md).
    fn send_job(&self, events: &[Event], reply: Reply) {
        let mut bodies = Vec::with_capacity(BODY_GUESS * events.len());
        let encoded = events.iter().try_for_each(|e| {
            e.check()?;
            e.encode_body_into(&mut bodies)?;
            bodies.push(b'\n');
            Ok(())
        });
        if let Err(e) = encoded {
            reply.send(Err(e), bodies);
            return;
        }
        let count = events.len() as u64;
        if let Err(job) = self.queue.push(Job {
            bodies,
            count,
            reply,
        }) {
            job.reply.send(Err(Error::Closed), job.bodies);
        }
    }

    /// Current health (for the KMS health endpoint and the refusal decision).
    pub fn health(&self) -> Health {
        lock_poisoned(&self.shared.health).clone()
    }

    /// The last checkpoint written.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        lock_poisoned(&self.shared.latest).clone()
    }

    /// This log's public key and origin (give it to auditors).
    pub fn key(&self) -> &LogKey {
        &self.key
    }

    /// Stops accepting appends, waits for queued ones, writes a final checkpoint and
    /// returns it (`None` if it could not be signed or written).
    pub fn close(self) -> Result<Option<SignedCheckpoint>> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<Option<SignedCheckpoint>> {
        self.queue.close();
        let handle = lock_poisoned(&self.committer).take();
        match handle {
            Some(h) => h.join().map_err(|_| Error::Closed),
            None => Ok(None),
        }
    }
}

impl Drop for AuditLog {
    /// Same as [`AuditLog::close`], so the files are closed and signed when it returns.
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
