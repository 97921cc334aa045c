//! `storage-crash bench`: durable records per second, one record per
//! transaction and with group commit. A measurement, not a test.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::group::{self, GroupOptions, GroupStats};
use crate::record::{IdSource, Record};
use crate::store::Store;

pub struct BenchOptions {
    pub label: String,
    pub seconds: u64,
    pub threads: usize,
    pub max_batch: usize,
}

pub fn run(store: &dyn Store, opts: &BenchOptions) -> Result<()> {
    let mut rng = rand::rng();
    let ids = IdSource::new(&mut rng);
    let span = Duration::from_secs(opts.seconds);

    let start = Instant::now();
    let mut commits = 0u64;
    while start.elapsed() < span {
        store.commit(&[Record::new(ids.next_id(), &mut rng)])?;
        commits += 1;
    }
    report(
        &opts.label,
        "single-tx",
        1,
        start.elapsed(),
        commits,
        commits,
    );

    let stats = GroupStats::default();
    let start = Instant::now();
    let gopts = GroupOptions {
        threads: opts.threads,
        max_batch: opts.max_batch,
        deadline: Some(start + span),
        print_acks: false,
    };
    group::run(store, &ids, &gopts, &stats)?;
    report(
        &opts.label,
        "group-commit",
        opts.threads,
        start.elapsed(),
        stats.commits.load(Ordering::Relaxed),
        stats.records.load(Ordering::Relaxed),
    );
    Ok(())
}

#[allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52; printed to two decimals"
)]
fn report(label: &str, mode: &str, threads: usize, elapsed: Duration, commits: u64, records: u64) {
    let secs = elapsed.as_secs_f64();
    let per_commit = if commits == 0 {
        0.0
    } else {
        records as f64 / commits as f64
    };
    println!(
        "bench {label} mode={mode} threads={threads} seconds={secs:.2} commits={commits} \
         records={records} records_per_s={:.1} commits_per_s={:.1} avg_batch={per_commit:.2}",
        records as f64 / secs,
        commits as f64 / secs,
    );
}
