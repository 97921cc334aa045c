//! Group commit: writer threads hand single records to one committer thread,
//! which commits whatever has queued up (up to a cap) in one durable
//! transaction and then releases every writer in that batch. A writer only
//! acknowledges its record after the committer says the batch is durable.
//! This is the pattern the KMS uses: request handlers are the writers.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use crate::record::{IdSource, Record, ack_line};
use crate::store::Store;

struct Submission {
    record: Record,
    done: SyncSender<bool>,
}

/// Counts shared by the committer and the writers.
#[derive(Default)]
pub struct GroupStats {
    pub commits: AtomicU64,
    pub records: AtomicU64,
}

pub struct GroupOptions {
    pub threads: usize,
    /// Most records the committer puts in one transaction.
    pub max_batch: usize,
    /// Stop at this instant (bench); `None` runs until killed or an error (crash test).
    pub deadline: Option<Instant>,
    /// Print an ACK line per record once its batch is durable (crash test).
    pub print_acks: bool,
}

/// Runs `opts.threads` writers and one committer until the deadline or the first error.
pub fn run(
    store: &dyn Store,
    ids: &IdSource,
    opts: &GroupOptions,
    stats: &GroupStats,
) -> Result<()> {
    let stop = AtomicBool::new(false);
    let (queue, rx) = sync_channel::<Submission>(opts.threads.max(1) * 2);
    std::thread::scope(|s| {
        let stop_ref = &stop;
        let committer = s.spawn(move || {
            let r = commit_loop(store, &rx, opts.max_batch, stats);
            stop_ref.store(true, Ordering::Relaxed);
            r
        });
        let writers: Vec<_> = (0..opts.threads)
            .map(|_| {
                let queue = queue.clone();
                let stop = &stop;
                s.spawn(move || {
                    let r = writer_loop(&queue, ids, opts, stop);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        // The committer ends when every writer has dropped its sender.
        drop(queue);
        let mut first_err = None;
        for w in writers {
            let r = w
                .join()
                .map_err(|_| anyhow!("writer thread panicked"))
                .and_then(|r| r);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        let r = committer
            .join()
            .map_err(|_| anyhow!("committer thread panicked"))
            .and_then(|r| r);
        // A committer error is the cause; writers then only saw it go away.
        r.and(first_err.map_or(Ok(()), Err))
    })
}

fn writer_loop(
    queue: &SyncSender<Submission>,
    ids: &IdSource,
    opts: &GroupOptions,
    stop: &AtomicBool,
) -> Result<()> {
    let mut rng = rand::rng();
    while !stop.load(Ordering::Relaxed) && opts.deadline.is_none_or(|d| Instant::now() < d) {
        let record = Record::new(ids.next_id(), &mut rng);
        let line = ack_line(&record.id, &record.hash());
        let (done, committed) = sync_channel(1);
        if queue.send(Submission { record, done }).is_err() {
            return Err(anyhow!("committer stopped"));
        }
        match committed.recv() {
            Ok(true) => {}
            Ok(false) => return Err(anyhow!("batch commit failed")),
            Err(_) => return Err(anyhow!("committer stopped")),
        }
        if opts.print_acks {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes()).context("writing ACK")?;
            out.flush().context("flushing ACK")?;
        }
    }
    Ok(())
}

fn commit_loop(
    store: &dyn Store,
    rx: &Receiver<Submission>,
    max_batch: usize,
    stats: &GroupStats,
) -> Result<()> {
    let mut records = Vec::with_capacity(max_batch);
    let mut waiters = Vec::with_capacity(max_batch);
    // recv() fails once every writer is gone: the normal end.
    while let Ok(first) = rx.recv() {
        records.push(first.record);
        waiters.push(first.done);
        while records.len() < max_batch {
            match rx.try_recv() {
                Ok(s) => {
                    records.push(s.record);
                    waiters.push(s.done);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let result = store.commit(&records);
        let ok = result.is_ok();
        for w in waiters.drain(..) {
            // A writer that gave up no longer listens; nothing to tell it.
            let _ = w.send(ok);
        }
        result?;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        records.clear();
    }
    Ok(())
}
