//! `storage-crash check`: open the store after a crash and hold it to every
//! ACK the writers printed.
//!
//! Failures, each counted and shown with the record it concerns:
//! - *missing*: an acknowledged id is not in the store (a lost durable write);
//! - *mismatched*: an acknowledged id is present with other bytes than were
//!   acknowledged;
//! - *inconsistent*: a present record is not one the writer could have
//!   written (torn, shifted or garbage value, wrong key length);
//! - *scan-skipped*: an acknowledged id a point read finds but a full scan did not;
//! - redb's `check_integrity()` reporting damage, repaired or not.
//!
//! Records present without an ACK are expected (the writer was killed between
//! the commit and the ACK) and are only counted.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::record::{Id, ValueHash, hex, parse_ack_line, self_consistent, value_hash};
use crate::store::{self, Integrity, OpenOptions, Recovery, Store};

/// Most detail lines printed per kind of failure.
const DETAIL_LIMIT: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    LossOrCorruption,
    CannotOpen,
}

struct Ack {
    hash: ValueHash,
    seen: bool,
}

struct Acks {
    map: HashMap<Id, Ack>,
    lines: u64,
    partial_tail: bool,
    conflicting_duplicates: u64,
}

fn read_acks(path: &Path) -> Result<Acks> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut acks = Acks {
        map: HashMap::new(),
        lines: 0,
        partial_tail: false,
        conflicting_duplicates: 0,
    };
    let mut rest = bytes.as_slice();
    let mut lineno = 0u64;
    while !rest.is_empty() {
        lineno += 1;
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            // kill -9 can land between the bytes of one write(2) only in theory,
            // but a line without its newline was never fully acknowledged.
            acks.partial_tail = true;
            break;
        };
        let (line, tail) = rest.split_at(nl);
        rest = tail.get(1..).unwrap_or_default();
        let parsed = std::str::from_utf8(line).ok().and_then(parse_ack_line);
        let Some((id, hash)) = parsed else {
            bail!(
                "{}:{lineno}: not an ACK line: {:?}",
                path.display(),
                String::from_utf8_lossy(line)
            );
        };
        acks.lines += 1;
        if let Some(prev) = acks.map.insert(id, Ack { hash, seen: false })
            && prev.hash != hash
        {
            acks.conflicting_duplicates += 1;
        }
    }
    Ok(acks)
}

#[derive(Default)]
struct Tally {
    present: u64,
    inconsistent: u64,
    acked_ok: u64,
    mismatched: u64,
    unacked_present: u64,
    missing: u64,
    scan_skipped: u64,
    details: Vec<String>,
    detail_counts: HashMap<&'static str, usize>,
}

impl Tally {
    fn detail(&mut self, kind: &'static str, line: &str) {
        let n = self.detail_counts.entry(kind).or_default();
        *n += 1;
        if *n <= DETAIL_LIMIT {
            self.details.push(format!("{kind} {line}"));
        }
    }
}

/// Per-writer-process view of the losses: ids are an 8-byte process prefix and
/// a counter, so this shows whether a loss is a tail (the last acknowledged
/// batches of one process) or a hole.
#[derive(Default)]
struct PrefixLoss {
    acked: u64,
    missing: u64,
    min_missing: u64,
    max_missing: u64,
    max_acked: u64,
}

fn split_id(id: &Id) -> ([u8; 8], u64) {
    let (p, c) = id.split_at(8);
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(p);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(c);
    (prefix, u64::from_be_bytes(counter))
}

pub fn run(dir: &Path, opts: &OpenOptions, acks_path: &Path) -> Result<Verdict> {
    let mut acks = read_acks(acks_path)?;
    println!(
        "acks: lines={} unique={} partial_tail_ignored={} conflicting_duplicates={}",
        acks.lines,
        acks.map.len(),
        u8::from(acks.partial_tail),
        acks.conflicting_duplicates
    );

    let opened = match catch_unwind(AssertUnwindSafe(|| store::open(dir, opts))) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) if acks.map.is_empty() => {
            println!("open: opened=no nothing-acknowledged-yet error={e:#}");
            return Ok(verdict(Verdict::Clean));
        }
        Ok(Err(e)) => {
            println!("open: opened=no error={e:#}");
            return Ok(verdict(Verdict::CannotOpen));
        }
        Err(panic) => {
            println!("open: opened=no panicked={}", panic_message(&*panic));
            return Ok(verdict(Verdict::CannotOpen));
        }
    };
    let integrity_problem = report_recovery(&opened.recovery);

    let mut t = Tally::default();
    let scan_failed = scan(opened.store.as_ref(), &mut acks, &mut t);
    if let Some(why) = &scan_failed {
        println!("scan: FAILED {why}");
    }
    let losses = find_missing(opened.store.as_ref(), &acks, &mut t);

    println!(
        "records: present={} inconsistent={} acked_present_ok={} unacked_present={}",
        t.present, t.inconsistent, t.acked_ok, t.unacked_present
    );
    for line in &t.details {
        println!("{line}");
    }
    for (prefix, l) in losses
        .iter()
        .filter(|(_, l)| l.missing > 0)
        .take(DETAIL_LIMIT)
    {
        println!(
            "LOSS-BY-WRITER prefix={} acked={} missing={} missing_counters={}..={} max_acked_counter={}",
            hex(prefix),
            l.acked,
            l.missing,
            l.min_missing,
            l.max_missing,
            l.max_acked
        );
    }
    let failures = t.missing
        + t.mismatched
        + t.inconsistent
        + t.scan_skipped
        + u64::from(integrity_problem)
        + u64::from(scan_failed.is_some());
    println!(
        "result: acked={} ok={} missing={} mismatched={} inconsistent={} scan_skipped={} \
         integrity_problem={} scan_failed={}",
        acks.map.len(),
        t.acked_ok,
        t.missing,
        t.mismatched,
        t.inconsistent,
        t.scan_skipped,
        u8::from(integrity_problem),
        u8::from(scan_failed.is_some())
    );
    Ok(verdict(if failures == 0 {
        Verdict::Clean
    } else {
        Verdict::LossOrCorruption
    }))
}

fn verdict(v: Verdict) -> Verdict {
    println!(
        "VERDICT: {}",
        match v {
            Verdict::Clean => "CLEAN",
            Verdict::LossOrCorruption => "LOSS-OR-CORRUPTION",
            Verdict::CannotOpen => "CANNOT-OPEN",
        }
    );
    v
}

/// Prints what the engine found on open; true if redb's integrity check found damage.
fn report_recovery(recovery: &Recovery) -> bool {
    let integrity = match &recovery.integrity {
        None => "n/a".to_owned(),
        Some(Integrity::Passed) => "passed".to_owned(),
        Some(Integrity::Repaired) => "damaged-and-repaired".to_owned(),
        Some(Integrity::Failed(e)) => format!("failed({e})"),
    };
    println!(
        "open: opened=yes repaired_on_open={} integrity={integrity}",
        recovery
            .repaired_on_open
            .map_or("n/a", |r| if r { "yes" } else { "no" }),
    );
    matches!(
        recovery.integrity,
        Some(Integrity::Repaired | Integrity::Failed(_))
    )
}

/// Full scan: self-consistency of every record, and every acknowledged one
/// against its ACK. Returns why the scan itself failed, if it did.
fn scan(store: &dyn Store, acks: &mut Acks, t: &mut Tally) -> Option<String> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        store.for_each(&mut |key, value| {
            t.present += 1;
            if let Err(why) = self_consistent(key, value) {
                t.inconsistent += 1;
                t.detail("INCONSISTENT", &format!("key={} problem={why}", hex(key)));
            }
            let Ok(id) = <Id>::try_from(key) else { return };
            let Some(ack) = acks.map.get_mut(&id) else {
                t.unacked_present += 1;
                return;
            };
            ack.seen = true;
            let stored = value_hash(value);
            if stored == ack.hash {
                t.acked_ok += 1;
            } else {
                t.mismatched += 1;
                t.detail(
                    "MISMATCH",
                    &format!(
                        "id={} acked_sha256={} stored_sha256={} stored_len={} self_consistent={}",
                        hex(&id),
                        hex(&ack.hash),
                        hex(&stored),
                        value.len(),
                        self_consistent(key, value).is_ok()
                    ),
                );
            }
        })
    }));
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("error: {e:#}")),
        Err(panic) => Some(format!("panicked: {}", panic_message(&*panic))),
    }
}

/// Every acknowledged id the scan did not meet: a point read tells a lost
/// record from one the scan skipped.
fn find_missing(store: &dyn Store, acks: &Acks, t: &mut Tally) -> BTreeMap<[u8; 8], PrefixLoss> {
    let mut losses: BTreeMap<[u8; 8], PrefixLoss> = BTreeMap::new();
    for (id, ack) in &acks.map {
        let (prefix, counter) = split_id(id);
        let loss = losses.entry(prefix).or_default();
        loss.acked += 1;
        loss.max_acked = loss.max_acked.max(counter);
        if ack.seen {
            continue;
        }
        let read = catch_unwind(AssertUnwindSafe(|| store.get(id)));
        if let Ok(Ok(Some(v))) = read {
            t.scan_skipped += 1;
            let same = value_hash(&v) == ack.hash;
            t.detail(
                "SCAN-SKIPPED",
                &format!("id={} point_read_matches_ack={same}", hex(id)),
            );
            continue;
        }
        let how = match read {
            Ok(Ok(_)) => "absent".to_owned(),
            Ok(Err(e)) => format!("read-error({e:#})"),
            Err(panic) => format!("read-panicked({})", panic_message(&*panic)),
        };
        t.missing += 1;
        if loss.missing == 0 || counter < loss.min_missing {
            loss.min_missing = counter;
        }
        loss.max_missing = loss.max_missing.max(counter);
        loss.missing += 1;
        t.detail(
            "MISSING",
            &format!(
                "id={} acked_sha256={} point_read={how}",
                hex(id),
                hex(&ack.hash)
            ),
        );
    }
    losses
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string panic payload>".to_owned())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a failed setup step should fail the test"
)]
mod tests {
    //! The checker must be able to fail: each test plants one kind of damage
    //! in an otherwise clean store and expects it caught, on both engines.

    use std::io::Write as _;

    use super::*;
    use crate::record::{IdSource, Record, ack_line};
    use crate::store::{Engine, SledApi};

    fn options(engine: Engine, create: bool) -> OpenOptions {
        OpenOptions {
            engine,
            sled_api: SledApi::Batch,
            create,
            check_integrity: true,
        }
    }

    /// A store holding 20 acknowledged records, plus the ACK file for them;
    /// `plant` may add to the store or the ACK file before the store is closed.
    fn store_with(
        engine: Engine,
        plant: impl FnOnce(&dyn Store, &mut String),
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let mut rng = rand::rng();
        let ids = IdSource::new(&mut rng);
        let records: Vec<Record> = (0..20)
            .map(|_| Record::new(ids.next_id(), &mut rng))
            .collect();
        let mut acks = String::new();
        {
            let opened = store::open(&dir, &options(engine, true)).unwrap();
            opened.store.commit(&records).unwrap();
            for r in &records {
                acks.push_str(&ack_line(&r.id, &r.hash()));
            }
            plant(opened.store.as_ref(), &mut acks);
        }
        if engine == Engine::Sled {
            wait_for_sled_to_let_go(&dir);
        }
        let acks_path = tmp.path().join("acks");
        std::fs::File::create(&acks_path)
            .unwrap()
            .write_all(acks.as_bytes())
            .unwrap();
        (tmp, acks_path)
    }

    /// sled releases its directory lock from background threads some time
    /// after the last `Db` handle is dropped. In the real test the writer is a
    /// killed process, so this only matters when writer and checker share a
    /// process: wait (bounded) until the lock on `db` can be taken, the same
    /// `flock` sled itself uses.
    fn wait_for_sled_to_let_go(dir: &std::path::Path) {
        let file = std::fs::File::open(dir.join("db")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match file.try_lock() {
                Ok(()) => {
                    file.unlock().unwrap();
                    return;
                }
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("sled still holds {}: {e}", dir.display()),
            }
        }
    }

    fn verdict_for(engine: Engine, plant: impl FnOnce(&dyn Store, &mut String)) -> Verdict {
        let (tmp, acks) = store_with(engine, plant);
        run(&tmp.path().join("store"), &options(engine, false), &acks).unwrap()
    }

    const ENGINES: [Engine; 2] = [Engine::Redb, Engine::Sled];

    #[test]
    fn a_clean_store_passes_and_unacknowledged_records_are_allowed() {
        for engine in ENGINES {
            let v = verdict_for(engine, |store, _| {
                let mut rng = rand::rng();
                let extra = Record::new(IdSource::new(&mut rng).next_id(), &mut rng);
                store.commit(&[extra]).unwrap();
            });
            assert_eq!(v, Verdict::Clean, "{engine:?}");
        }
    }

    #[test]
    fn an_acknowledged_record_that_is_absent_is_a_loss() {
        for engine in ENGINES {
            let v = verdict_for(engine, |_, acks| {
                let mut rng = rand::rng();
                let never_written = Record::new(IdSource::new(&mut rng).next_id(), &mut rng);
                acks.push_str(&ack_line(&never_written.id, &never_written.hash()));
            });
            assert_eq!(v, Verdict::LossOrCorruption, "{engine:?}");
        }
    }

    #[test]
    fn an_acknowledged_record_with_other_bytes_is_corruption() {
        for engine in ENGINES {
            let v = verdict_for(engine, |store, acks| {
                let mut rng = rand::rng();
                let ids = IdSource::new(&mut rng);
                let id = ids.next_id();
                let acked = Record::new(id, &mut rng);
                // Same id, same derived half, other random half: self-consistent
                // but not what was acknowledged.
                let stored = Record::new(id, &mut rng);
                store.commit(&[stored]).unwrap();
                acks.push_str(&ack_line(&acked.id, &acked.hash()));
            });
            assert_eq!(v, Verdict::LossOrCorruption, "{engine:?}");
        }
    }

    #[test]
    fn a_torn_record_is_corruption_even_without_an_ack() {
        for engine in ENGINES {
            let v = verdict_for(engine, |store, _| {
                let mut rng = rand::rng();
                let mut torn = Record::new(IdSource::new(&mut rng).next_id(), &mut rng);
                if let Some(b) = torn.value.last_mut() {
                    *b ^= 0x80;
                }
                store.commit(&[torn]).unwrap();
            });
            assert_eq!(v, Verdict::LossOrCorruption, "{engine:?}");
        }
    }

    #[test]
    fn a_missing_store_with_acknowledgements_cannot_be_opened() {
        for engine in ENGINES {
            let (tmp, acks) = store_with(engine, |_, _| {});
            let gone = tmp.path().join("elsewhere");
            let v = run(&gone, &options(engine, false), &acks).unwrap();
            assert_eq!(v, Verdict::CannotOpen, "{engine:?}");
        }
    }

    #[test]
    fn a_partial_last_ack_line_is_ignored_but_a_malformed_one_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("acks");
        std::fs::write(&path, "ACK 0011").unwrap();
        let acks = read_acks(&path).unwrap();
        assert!(acks.partial_tail);
        assert_eq!(acks.lines, 0);
        std::fs::write(&path, "ACK 0011\n").unwrap();
        assert!(read_acks(&path).is_err());
    }
}
