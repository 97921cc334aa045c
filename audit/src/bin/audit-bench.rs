//! Benchmark (not a test): durable appends/s with group commit, verification speed,
//! proof sizes. `cargo run --release -p strongroom-audit --bin audit-bench -- [records]
//! [threads] [dir] [window_us] [committer_nice]` (defaults: 1000000 records, 64 writer
//! threads, a directory under the system temp dir, removed afterwards, no group window,
//! the committer at `DEFAULT_COMMITTER_NICE`). Signs with a software P-256 key.

// Figures for humans: f64 precision is plenty for counts below 2^52.
#![allow(clippy::cast_precision_loss)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use strongroom_audit::{
    Action, AuditLog, CheckpointSigner, Domain, Event, Filter, KeyUri, Kind, LogConfig, LogKey,
    LogSnapshot, Outcome, Reason, ResourceUri, SoftwareSigner, VerifyOptions, export, verify_dir,
};
use uuid::Uuid;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn event(i: u64, d: &Domain) -> Event {
    Event::new(
        Kind::KmsDecision,
        Action::Retrieve,
        Outcome::Allowed,
        Reason::Ok,
    )
    .status(200)
    .user(Uuid::from_u128(u128::from(i % 1000)))
    .org(Uuid::from_u128(7))
    .client(Uuid::from_u128(8))
    .request(Uuid::from_u128(u128::from(i)))
    .resource(ResourceUri::new(d, Uuid::from_u128(u128::from(i % 5000))))
    .key(KeyUri::new(d, Uuid::from_u128(u128::from(i) + (1 << 64))))
}

/// Busy and total clock ticks of the whole machine so far (/proc/stat, first line).
fn machine_ticks() -> BoxResult<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = v.iter().sum();
    // idle and iowait are not work.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Appends from one thread to a log of its own (next to `dir`): flushes/s, and the
/// machine's CPU time per flush.
fn flush_cost(
    dir: &std::path::Path,
    origin: &str,
    signer: &Arc<SoftwareSigner>,
    domain: &Domain,
) -> BoxResult<()> {
    const N: u64 = 5000;
    let flush_dir = PathBuf::from(format!("{}-flush", dir.display()));
    let log = AuditLog::open(LogConfig::new(&flush_dir, origin), signer.clone())?;
    let flushes0 = log.health().flushes;
    let (busy0, _) = machine_ticks()?;
    let t0 = Instant::now();
    for i in 0..N {
        log.append(&event(i, domain))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (busy1, _) = machine_ticks()?;
    let flushes = log.health().flushes - flushes0;
    drop(log);
    // The same writes and flushes without the log: one thread overwriting a zero-filled
    // file (as the preallocated segment is), so no thread hand-offs.
    let bare = flush_dir.join("bare");
    std::fs::write(&bare, vec![0u8; 8 << 20])?;
    let file = std::fs::OpenOptions::new().write(true).open(&bare)?;
    file.sync_all()?;
    let line = [b'x'; 488];
    let (bare0, _) = machine_ticks()?;
    let t1 = Instant::now();
    for i in 0..N {
        std::os::unix::fs::FileExt::write_all_at(&file, &line, i * 489)?;
        file.sync_data()?;
    }
    let bare_secs = t1.elapsed().as_secs_f64();
    let (bare1, _) = machine_ticks()?;
    drop(file);
    std::fs::remove_dir_all(&flush_dir)?;
    println!(
        "bare write + fdatasync (one thread, no log): {:.0} µs each, machine CPU {:.0} µs each",
        bare_secs * 1e6 / N as f64,
        (bare1 - bare0) as f64 * 10_000.0 / N as f64
    );
    // Clock ticks are 10 ms (USER_HZ 100).
    let cpu_us = (busy1 - busy0) as f64 * 10_000.0 / flushes.max(1) as f64;
    println!(
        "one caller: {N} appends in {secs:.2} s = {:.0}/s, {flushes} flushes, {:.0} µs per flush, machine CPU {cpu_us:.0} µs per flush",
        N as f64 / secs,
        secs * 1e6 / flushes.max(1) as f64
    );
    Ok(())
}

fn main() -> BoxResult<()> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let threads: u64 = args.next().map_or(Ok(64), |a| a.parse())?;
    let dir = args.next().map_or_else(
        || std::env::temp_dir().join(format!("audit-bench-{}", std::process::id())),
        PathBuf::from,
    );
    let window_us: u64 = args.next().map_or(Ok(0), |a| a.parse())?;
    let nice: u8 = args
        .next()
        .map_or(Ok(strongroom_audit::DEFAULT_COMMITTER_NICE), |a| a.parse())?;
    let domain: Domain = "kms.example.com".parse()?;
    let signer = Arc::new(SoftwareSigner::from_bytes(&[42; 32])?);
    let origin = "kms.example.com/audit";
    let key = LogKey::new(origin, signer.public_key())?;
    println!(
        "audit-bench: {records} records, {threads} writer threads, group window {window_us} µs, committer nice +{nice}, {}",
        dir.display()
    );

    // 1. Durable single-record appends from many threads (group commit).
    let concurrent = (records / 5).clamp(1, 200_000);
    let mut config = LogConfig::new(&dir, origin);
    config.group_window = std::time::Duration::from_micros(window_us);
    config.committer_nice = nice;
    let log = Arc::new(AuditLog::open(config, signer.clone())?);
    let groups = |log: &AuditLog, since: (u64, u64)| {
        let h = log.health();
        let (records, flushes) = (h.size - since.0, h.flushes - since.1);
        (
            (h.size, h.flushes),
            format!(
                "{flushes} flushes, {:.1} records per flush",
                records as f64 / flushes.max(1) as f64
            ),
        )
    };
    let mark = (0, 0);
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (log, next, d) = (Arc::clone(&log), Arc::clone(&next), domain.clone());
            std::thread::spawn(move || -> Result<(), strongroom_audit::Error> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= concurrent {
                        return Ok(());
                    }
                    log.append(&event(i, &d))?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "writer thread panicked")??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (mark, stats) = groups(&log, mark);
    println!(
        "durable appends (1 record per call, {threads} threads): {concurrent} in {secs:.2} s = {:.0}/s; {stats}",
        concurrent as f64 / secs
    );

    // 2. Async-style callers (`submit`): 4 threads, each keeping 1024 appends in flight,
    //    as a tokio KMS with many concurrent requests would.
    let in_flight = (records / 5).clamp(1, 200_000);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..4u64)
        .map(|c| {
            let (log, d) = (Arc::clone(&log), domain.clone());
            std::thread::spawn(move || -> Result<(), strongroom_audit::Error> {
                let (tx, rx) = std::sync::mpsc::channel();
                let mine = in_flight / 4 + u64::from(c < in_flight % 4);
                let (mut sent, mut done) = (0u64, 0u64);
                while done < mine {
                    while sent < mine && sent - done < 1024 {
                        let tx = tx.clone();
                        let i = concurrent + c + 4 * sent;
                        log.submit(
                            &[event(i, &d)],
                            Box::new(move |r| {
                                let _ = tx.send(r.map(|_| ()));
                            }),
                        );
                        sent += 1;
                    }
                    rx.recv().map_err(|_| strongroom_audit::Error::Closed)??;
                    done += 1;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "submitter thread panicked")??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (_, stats) = groups(&log, mark);
    println!(
        "durable appends (submit, 4 x 1024 in flight): {in_flight} in {secs:.2} s = {:.0}/s; {stats}",
        in_flight as f64 / secs
    );

    // 2b. What one flush costs: one caller, so every record is its own write and flush.
    //     The machine's CPU time per flush (all cores, kernel included, from /proc/stat)
    //     is the fixed part of every group's cost (docs/benchmarks.md).
    flush_cost(&dir, origin, &signer, &domain)?;

    // 3. Fill to `records` with batched appends (as a busy KMS would group them).
    let t0 = Instant::now();
    let mut i = concurrent + in_flight;
    while i < records {
        let n = (records - i).min(1000);
        log.append_batch(&(i..i + n).map(|j| event(j, &domain)).collect::<Vec<_>>())?;
        i += n;
    }
    let filled = records.saturating_sub(concurrent + in_flight);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "durable appends (batches of 1000, 1 thread): {filled} in {secs:.2} s = {:.0}/s",
        filled as f64 / secs.max(1e-9)
    );
    let log = Arc::try_unwrap(log).map_err(|_| "log still shared")?;
    log.close()?;
    let bytes: u64 = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "log size: {:.1} MiB ({:.0} bytes/record)",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / records as f64
    );

    // 4. Verification.
    let t0 = Instant::now();
    let v = verify_dir(&dir, &key, &VerifyOptions::default().strict())?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "verify: {} records, {} segments, {} checkpoints in {secs:.2} s = {:.0} records/s",
        v.records,
        v.segments,
        v.checkpoints,
        v.records as f64 / secs
    );

    // 5. Proofs.
    let t0 = Instant::now();
    let snap = LogSnapshot::load(&dir, &key, &VerifyOptions::default())?;
    println!("load for proofs: {:.2} s", t0.elapsed().as_secs_f64());
    let n = snap.size();
    let inc = snap.prove_inclusion(n / 3, n)?;
    let con = snap.prove_consistency(n / 3, n)?;
    println!(
        "inclusion proof at {n}: {} hashes = {} bytes; consistency {}..{n}: {} hashes = {} bytes",
        inc.hashes.len(),
        inc.hashes.len() * 32,
        n / 3,
        con.hashes.len(),
        con.hashes.len() * 32
    );
    let mut f = Filter::default();
    f.user = Some(Uuid::from_u128(123));
    let t0 = Instant::now();
    let bundle = export(&dir, &key, &VerifyOptions::default(), &f)?;
    let json = bundle.to_json()?;
    println!(
        "export of one user ({} records): {} bytes JSON ({:.0} bytes/record) in {:.2} s",
        bundle.entries.len(),
        json.len(),
        json.len() as f64 / bundle.entries.len().max(1) as f64,
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    bundle.verify(&key)?;
    println!("bundle verify: {:.3} s", t0.elapsed().as_secs_f64());

    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
