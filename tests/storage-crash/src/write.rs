//! `storage-crash write`: commit random-size batches forever, printing an ACK
//! line per record only once its batch is durable.

use std::io::Write as _;

use anyhow::{Context, Result};
use rand::RngExt;

use crate::group::{self, GroupOptions, GroupStats};
use crate::record::{IdSource, Record, ack_line};
use crate::store::Store;

/// One transaction per batch of 1..=`max_batch` records, one thread.
pub fn direct(store: &dyn Store, ids: &IdSource, max_batch: usize) -> Result<()> {
    let mut rng = rand::rng();
    let mut out = String::new();
    loop {
        let n = rng.random_range(1..=max_batch);
        let batch: Vec<Record> = (0..n)
            .map(|_| Record::new(ids.next_id(), &mut rng))
            .collect();
        store.commit(&batch)?;
        out.clear();
        for r in &batch {
            out.push_str(&ack_line(&r.id, &r.hash()));
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes()).context("writing ACKs")?;
        stdout.flush().context("flushing ACKs")?;
    }
}

/// `threads` writers feeding one committer; runs until killed or an error.
pub fn group_commit(
    store: &dyn Store,
    ids: &IdSource,
    threads: usize,
    max_batch: usize,
) -> Result<()> {
    let opts = GroupOptions {
        threads,
        max_batch,
        deadline: None,
        print_acks: true,
    };
    group::run(store, ids, &opts, &GroupStats::default())
}
