//! Writer: durability, group commit, checkpoints, rotation, recovery, HSM signing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strongroom_audit::{
    AuditLog, Error, Filter, HsmSigner, LogKey, SignedCheckpoint, VerifyOptions, query, verify_dir,
};

use crate::common::{
    ORIGIN, assert_torn_tail_recovers, config, event, key, open, segments, signer, write_log,
};

#[test]
fn appends_survive_reopen_and_verify_signed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 25, |_| {});
    let v = verify_dir(dir.path(), &key(), &VerifyOptions::default().strict()).unwrap();
    assert_eq!(v.records, 25);
    assert_eq!(v.unsigned_tail, 0);
    assert_eq!(v.latest.as_ref().unwrap().size(), 25);
    assert!(v.checkpoints >= 3, "every 10 records and at close: {v:?}");

    let log = open(config(dir.path()));
    assert_eq!(log.health().size, 25);
    let r = log.append_batch(&[event(25), event(26)]).unwrap();
    assert_eq!((r[0].seq, r[1].seq), (25, 26));
    log.close().unwrap();
    let v = verify_dir(dir.path(), &key(), &VerifyOptions::default().strict()).unwrap();
    assert_eq!(v.records, 27);
}

#[test]
fn concurrent_appends_get_unique_consecutive_durable_seqs() {
    concurrent_appends(Duration::ZERO);
}

/// The same with the group-commit window on (it waits under load): grouping more
/// records per flush must not change what is acknowledged or its order.
#[test]
fn concurrent_appends_with_a_group_window_get_unique_consecutive_durable_seqs() {
    concurrent_appends(Duration::from_millis(2));
}

fn concurrent_appends(window: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.group_window = window;
    c.group_target = 8;
    let log = Arc::new(open(c));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..300u64)
                    .map(|i| {
                        let e = event(t * 1000 + i);
                        let req = e.request;
                        (log.append(&e).unwrap().seq, req)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acks: Vec<_> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Arc::try_unwrap(log).unwrap().close().unwrap();
    let seqs: HashSet<u64> = acks.iter().map(|a| a.0).collect();
    assert_eq!(seqs.len(), 2400);
    assert_eq!(seqs.iter().max(), Some(&2399));
    let mut on_disk = std::collections::HashMap::new();
    query(
        dir.path(),
        &key(),
        &VerifyOptions::default().strict(),
        &Filter::default(),
        &mut |r, _| {
            on_disk.insert(r.seq, r.request);
        },
    )
    .unwrap();
    for (seq, req) in acks {
        assert_eq!(
            on_disk.get(&seq),
            Some(&req),
            "acknowledged record {seq} on disk"
        );
    }
}

#[test]
fn rotation_seals_segments_and_keeps_the_tree_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 300, |c| {
        c.segment_max_bytes = 8192;
        c.checkpoint_every = 1000;
    });
    let segs = segments(dir.path());
    assert!(segs.len() >= 5, "{} segments", segs.len());
    for s in &segs[..segs.len() - 1] {
        let text = std::fs::read_to_string(s).unwrap();
        assert!(
            text.lines().last().unwrap().starts_with("{\"checkpoint\":"),
            "{s:?} sealed"
        );
    }
    let v = verify_dir(dir.path(), &key(), &VerifyOptions::default().strict()).unwrap();
    assert_eq!((v.records, v.segments), (300, segs.len()));
    // Reopen continues in the last segment and keeps rotating.
    let mut c = config(dir.path());
    c.segment_max_bytes = 8192;
    let log = open(c);
    assert_eq!(log.append(&event(300)).unwrap().seq, 300);
    log.close().unwrap();
    assert_eq!(
        verify_dir(dir.path(), &key(), &VerifyOptions::default().strict())
            .unwrap()
            .records,
        301
    );
}

#[test]
fn a_torn_tail_is_reported_then_cut_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 12, |_| {});
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.extend_from_slice(b"{\"v\":1,\"seq\":12,\"time\":\"2026-0");
    std::fs::write(&last, &bytes).unwrap();

    assert_torn_tail_recovers(dir.path(), 12, 30);
}

#[test]
fn checkpoints_are_emitted_by_count_time_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<Vec<SignedCheckpoint>>> = Arc::default();
    let mut c = config(dir.path());
    c.checkpoint_every = 5;
    c.checkpoint_interval = Duration::from_millis(200);
    let sink = Arc::clone(&seen);
    c.on_checkpoint = Some(Arc::new(move |cp| sink.lock().unwrap().push(cp.clone())));
    let log = open(c);
    for i in 0..5 {
        log.append(&event(i)).unwrap();
    }
    wait_for(
        || log.latest_checkpoint().unwrap().size() == 5,
        "checkpoint by count",
    );
    log.append(&event(5)).unwrap();
    wait_for(
        || log.latest_checkpoint().unwrap().size() == 6,
        "checkpoint by time",
    );
    log.append(&event(6)).unwrap();
    let last = log.close().unwrap().unwrap();
    assert_eq!(last.size(), 7, "at close");
    let seen = seen.lock().unwrap();
    let sizes: Vec<u64> = seen.iter().map(SignedCheckpoint::size).collect();
    assert_eq!(sizes.first(), Some(&0), "a new log signs its empty tree");
    assert!(sizes.contains(&5) && sizes.ends_with(&[6, 7]), "{sizes:?}");
    assert!(sizes.is_sorted());
    for cp in seen.iter() {
        SignedCheckpoint::verify(cp.note().as_bytes(), &key()).unwrap();
    }
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(config(dir.path()));
    let err = AuditLog::open(config(dir.path()), signer()).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
}

#[test]
fn checkpoints_signed_by_the_hsm_verify_with_its_public_key() {
    let (hsm, _config) = strongroom_hsm::testing::hsm_with_keys("audit-ckpt");
    let point = hsm.ec_public_key().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(config(dir.path()), Arc::new(HsmSigner::new(hsm).unwrap())).unwrap();
    for i in 0..15 {
        log.append(&event(i)).unwrap();
    }
    let last = log.close().unwrap().unwrap();
    let key = LogKey::new(ORIGIN, point).unwrap();
    let v = verify_dir(dir.path(), &key, &VerifyOptions::default().strict()).unwrap();
    assert_eq!((v.records, v.latest.unwrap()), (15, last));
    // The software test key does not verify the HSM's checkpoints.
    assert!(verify_dir(dir.path(), &crate::common::key(), &VerifyOptions::default()).is_err());
}

pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

/// The committer runs `committer_nice` steps below the thread that opened the log (ADR
/// 0014: under CPU load it runs after the request workers, so each flush serves more
/// records), and at its creator's priority with 0. Read from /proc: fails if the setting
/// is ignored.
#[test]
fn the_committer_runs_at_the_configured_lower_priority() {
    fn nice_of(stat: &str) -> i32 {
        // Fields after "(comm)": state is field 3, nice is field 19 (proc_pid_stat(5)).
        let rest = stat.rsplit_once(')').unwrap().1;
        rest.split_whitespace().nth(16).unwrap().parse().unwrap()
    }
    fn committers() -> HashSet<(String, i32)> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.unwrap().path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                (comm.trim() == "audit-committer").then(|| {
                    (
                        t.file_name().unwrap().to_string_lossy().into_owned(),
                        nice_of(&stat),
                    )
                })
            })
            .collect()
    }
    let mine = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    for steps in [7u8, 0] {
        let dir = tempfile::tempdir().unwrap();
        let before = committers();
        let mut c = config(dir.path());
        c.committer_nice = steps;
        let log = open(c);
        // The committer lowers its priority first thing; this append waits for it.
        log.append(&event(0)).unwrap();
        let new: Vec<i32> = committers()
            .difference(&before)
            .map(|(_, nice)| *nice)
            .collect();
        let want = (mine + i32::from(steps)).min(19);
        assert!(
            new.contains(&want),
            "steps {steps}: committers {new:?}, want {want}"
        );
        log.close().unwrap();
    }
}

/// Every field of `e` as committed in `r`.
fn recorded_as(r: &strongroom_audit::Record, e: &strongroom_audit::Event) -> bool {
    (r.kind, r.action, r.outcome, r.reason, r.status)
        == (e.kind, e.action, e.outcome, e.reason, e.status)
        && (r.user, r.org, r.client, r.machine, r.subject, r.request)
            == (e.user, e.org, e.client, e.machine, e.subject, e.request)
        && (&r.peer, &r.resource, &r.keys) == (&e.peer, &e.resource, &e.keys)
}

/// The async form the KMS uses (R16: the answer waits for the record). Records are
/// encoded on the caller's thread and durable when the future resolves; calls queued from
/// one task keep their order; a multi-record call gets consecutive sequence numbers; what
/// is read back is exactly what was appended; an invalid event is refused and writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appends_are_durable_in_order_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(config(dir.path()));
    let pending: Vec<_> = (0..200).map(|i| log.append_async(&[event(i)])).collect();
    for (i, p) in (0u64..).zip(pending) {
        let r = p.await.unwrap();
        assert_eq!((r.first, r.count), (i, 1));
        assert!(log.health().size > i, "durable once resolved");
    }
    let batch = log
        .append_async(&[event(200), event(201), event(202)])
        .await
        .unwrap();
    assert_eq!(
        batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [200, 201, 202]
    );

    let too_many = event(203).keys((0..=strongroom_audit::record::MAX_KEYS).map(|k| {
        strongroom_audit::KeyUri::new(&crate::common::domain(), uuid::Uuid::from_u128(k as u128))
    }));
    let err = log.append_async(&[event(203), too_many]).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidField { field: "keys", .. }),
        "{err}"
    );
    assert_eq!(log.health().size, 203, "a refused call writes nothing");

    log.close().unwrap();
    let records = crate::common::all_records(dir.path());
    assert_eq!(records.len(), 203);
    for (i, (r, _)) in (0u64..).zip(&records) {
        assert_eq!(r.seq, i);
        assert!(recorded_as(r, &event(i)), "record {i}: {r:?}");
    }
}
