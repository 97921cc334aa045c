//! Every kind of tampering is detected, and located.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strongroom_audit::{
    AuditLog, CheckpointSigner, FaultKind, LogConfig, SignedCheckpoint, SoftwareSigner,
    VerifyOptions, verify_dir,
};

use crate::common::{ORIGIN, event, key, segments, write_log};

/// A closed log of 60 records over several segments, checkpoints every 10 records.
fn log60() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 60, |c| c.segment_max_bytes = 8192);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    verify_dir(dir.path(), &key(), &VerifyOptions::default().strict()).unwrap();
    (dir, segs)
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.join("\n") + "\n").unwrap();
}

/// Index of the line holding record `seq` in segment `p`.
fn line_of(p: &Path, seq: u64) -> usize {
    let needle = format!("{{\"v\":1,\"seq\":{seq},");
    lines(p)
        .iter()
        .position(|l| l.starts_with(&needle))
        .unwrap()
}

fn segment_with(segs: &[PathBuf], seq: u64) -> PathBuf {
    let needle = format!("{{\"v\":1,\"seq\":{seq},");
    segs.iter()
        .find(|s| lines(s).iter().any(|l| l.starts_with(&needle)))
        .unwrap()
        .clone()
}

fn fault(dir: &Path, opts: &VerifyOptions) -> strongroom_audit::Fault {
    let err = verify_dir(dir, &key(), opts).expect_err("tampering must be detected");
    err.fault().expect("a located fault").clone()
}

#[test]
fn a_changed_field_that_still_parses_fails_the_next_checkpoint() {
    let (dir, segs) = log60();
    let seg = segment_with(&segs, 15);
    let mut l = lines(&seg);
    let i = line_of(&seg, 15);
    l[i] = l[i].replacen("\"outcome\":\"allowed\"", "\"outcome\":\"denied\"", 1);
    write_lines(&seg, &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    match f.kind {
        FaultKind::RootMismatch { from_seq, to_seq } => {
            assert!(
                from_seq <= 15 && 15 <= to_seq && to_seq - from_seq < 10,
                "{f}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.segment.as_deref(), Some(seg.as_path()));
}

#[test]
fn a_flipped_bit_anywhere_is_detected() {
    let (dir, segs) = log60();
    let opts = VerifyOptions::default().strict();
    let mut tried = 0;
    for seg in &segs {
        let orig = std::fs::read(seg).unwrap();
        for pos in (0..orig.len()).step_by(29) {
            let mut b = orig.clone();
            b[pos] ^= 0x01;
            std::fs::write(seg, &b).unwrap();
            assert!(
                verify_dir(dir.path(), &key(), &opts).is_err(),
                "flip at {pos} of {seg:?} ({:?}) not detected",
                char::from(orig[pos])
            );
            tried += 1;
        }
        std::fs::write(seg, &orig).unwrap();
    }
    assert!(tried > 300);
    verify_dir(dir.path(), &key(), &opts).unwrap();
}

#[test]
fn a_deleted_record_is_located() {
    let (dir, segs) = log60();
    let seg = segment_with(&segs, 33);
    let mut l = lines(&seg);
    let i = line_of(&seg, 33);
    l.remove(i);
    write_lines(&seg, &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(
        f.kind,
        FaultKind::SeqMismatch {
            expected: 33,
            found: 34
        }
    );
    assert_eq!(
        (f.segment.as_deref(), f.line),
        (Some(seg.as_path()), Some(i as u64 + 1))
    );
}

#[test]
fn an_inserted_record_is_located() {
    let (dir, segs) = log60();
    let seg = segment_with(&segs, 20);
    let mut l = lines(&seg);
    let i = line_of(&seg, 20);
    let copy = l[i].clone();
    l.insert(i + 1, copy);
    write_lines(&seg, &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(
        f.kind,
        FaultKind::SeqMismatch {
            expected: 21,
            found: 20
        }
    );
    assert_eq!(f.line, Some(i as u64 + 2));
}

#[test]
fn reordered_records_are_located() {
    let (dir, segs) = log60();
    let seg = segment_with(&segs, 41);
    let mut l = lines(&seg);
    let (a, b) = (line_of(&seg, 41), line_of(&seg, 42));
    l.swap(a, b);
    write_lines(&seg, &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(
        f.kind,
        FaultKind::SeqMismatch {
            expected: 41,
            found: 42
        }
    );
}

#[test]
fn a_truncated_archived_segment_is_named() {
    let (dir, segs) = log60();
    let mut l = lines(&segs[1]);
    l.truncate(l.len() - 3);
    write_lines(&segs[1], &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(
        (f.kind, f.segment),
        (FaultKind::NotSealed, Some(segs[1].clone()))
    );
}

#[test]
fn swapped_or_deleted_segments_are_named() {
    let (dir, segs) = log60();
    let (a, b) = (
        std::fs::read(&segs[0]).unwrap(),
        std::fs::read(&segs[1]).unwrap(),
    );
    std::fs::write(&segs[0], &b).unwrap();
    std::fs::write(&segs[1], &a).unwrap();
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(
        (f.kind, f.segment),
        (FaultKind::BadHeader, Some(segs[0].clone()))
    );

    let (dir, segs) = log60();
    std::fs::remove_file(&segs[1]).unwrap();
    let f = fault(dir.path(), &VerifyOptions::default());
    assert!(matches!(f.kind, FaultKind::SegmentOutOfOrder { .. }), "{f}");
    assert_eq!(f.segment, Some(segs[2].clone()));
}

#[test]
fn a_cut_tail_is_a_rollback_against_an_exported_checkpoint() {
    let (dir, segs) = log60();
    let exported = verify_dir(dir.path(), &key(), &VerifyOptions::default())
        .unwrap()
        .latest
        .unwrap();
    let last = segs.last().unwrap();
    let mut l = lines(last);
    let keep = line_of(last, 55);
    l.truncate(keep);
    write_lines(last, &l);
    // Alone, the shorter log is self-consistent (its records up to 54 are signed)...
    let v = verify_dir(dir.path(), &key(), &VerifyOptions::default()).unwrap();
    assert_eq!(v.records, 55);
    // ...but not against the checkpoint exported before the cut.
    let f = fault(dir.path(), &VerifyOptions::default().trusted([exported]));
    assert_eq!(
        f.kind,
        FaultKind::Rollback {
            trusted_size: 60,
            log_size: 55
        }
    );
}

#[test]
fn an_older_prefix_presented_against_a_newer_checkpoint_is_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 30, |_| {});
    let old = tempfile::tempdir().unwrap();
    for s in segments(dir.path()) {
        std::fs::copy(&s, old.path().join(s.file_name().unwrap())).unwrap();
    }
    let log = crate::common::open(crate::common::config(dir.path()));
    for i in 30..50 {
        log.append(&event(i)).unwrap();
    }
    let newer = log.close().unwrap().unwrap();
    verify_dir(
        dir.path(),
        &key(),
        &VerifyOptions::default().trusted([newer.clone()]),
    )
    .unwrap();
    let f = fault(old.path(), &VerifyOptions::default().trusted([newer]));
    assert_eq!(
        f.kind,
        FaultKind::Rollback {
            trusted_size: 50,
            log_size: 30
        }
    );
}

#[test]
fn a_rewritten_history_signed_with_the_log_key_differs_from_the_exported_checkpoint() {
    let (dir, _) = log60();
    let exported = verify_dir(dir.path(), &key(), &VerifyOptions::default())
        .unwrap()
        .latest
        .unwrap();
    // Root and the HSM key: a whole new history, self-consistent and signed.
    let forged = tempfile::tempdir().unwrap();
    let log = crate::common::open(crate::common::config(forged.path()));
    for i in 0..60 {
        log.append(&event(i + 1)).unwrap();
    }
    log.close().unwrap();
    verify_dir(forged.path(), &key(), &VerifyOptions::default()).unwrap();
    let f = fault(forged.path(), &VerifyOptions::default().trusted([exported]));
    assert_eq!(f.kind, FaultKind::TrustedRootMismatch { size: 60 });
}

#[test]
fn a_checkpoint_signed_by_another_key_is_rejected() {
    let (dir, segs) = log60();
    let seg = &segs[0];
    let mut l = lines(seg);
    let i = l
        .iter()
        .rposition(|x| x.starts_with("{\"checkpoint\":"))
        .unwrap();
    let note: serde_json::Value = serde_json::from_str(&l[i]).unwrap();
    let genuine =
        SignedCheckpoint::verify(note["checkpoint"].as_str().unwrap().as_bytes(), &key()).unwrap();
    let other = SoftwareSigner::from_bytes(&[9; 32]).unwrap();
    let other_key = strongroom_audit::LogKey::new(ORIGIN, other.public_key()).unwrap();
    let forged =
        SignedCheckpoint::sign(&other_key, &other, genuine.size(), genuine.root()).unwrap();
    l[i] = serde_json::json!({ "checkpoint": forged.note() }).to_string();
    write_lines(seg, &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(
        f.kind,
        FaultKind::BadCheckpoint {
            reason: "no signature by the log key"
        }
    );
    assert_eq!(
        (f.segment.as_deref(), f.line),
        (Some(seg.as_path()), Some(i as u64 + 1))
    );

    // Same key name and key ID, garbage signature: a known key failing is a hard error.
    let mut l = lines(seg);
    let good = genuine.note();
    let (text, sig_line) = good.rsplit_once("\n\n").unwrap();
    let (prefix, b64) = sig_line.trim_end().rsplit_once(' ').unwrap();
    use base64::Engine as _;
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x55;
    let bad = format!(
        "{text}\n\n{prefix} {}\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    );
    l[i] = serde_json::json!({ "checkpoint": bad }).to_string();
    write_lines(seg, &l);
    let f = fault(dir.path(), &VerifyOptions::default());
    assert!(matches!(f.kind, FaultKind::BadCheckpoint { .. }), "{f}");
}

#[test]
fn a_log_of_another_origin_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        LogConfig::new(dir.path(), "other.example/audit"),
        Arc::new(SoftwareSigner::from_bytes(&[7; 32]).unwrap()),
    )
    .unwrap();
    log.append(&event(0)).unwrap();
    log.close().unwrap();
    let f = fault(dir.path(), &VerifyOptions::default());
    assert_eq!(f.kind, FaultKind::WrongOrigin);
}

/// Found in review: reopening the log signs the records after its last checkpoint, and
/// it used to check only the checkpoints' signatures, so an edited record before a
/// checkpoint would have been vouched for by the next one. Now it refuses, as `verify`
/// does, and changes nothing (R16).
#[test]
fn reopening_refuses_records_that_contradict_a_signed_checkpoint() {
    let (dir, segs) = log60();
    let last = segs.last().unwrap();
    let original = std::fs::read(last).unwrap();
    let mut l = lines(last);
    let i = line_of(last, 58);
    l[i] = l[i].replacen("\"outcome\":\"allowed\"", "\"outcome\":\"denied\"", 1);
    assert_ne!(l[i], lines(last)[i], "record 58 is an allowed one");
    write_lines(last, &l);
    let edited = std::fs::read(last).unwrap();
    let f = fault(dir.path(), &VerifyOptions::default());
    assert!(matches!(f.kind, FaultKind::RootMismatch { .. }), "{f}");
    let opened = AuditLog::open(crate::common::config(dir.path()), crate::common::signer());
    let Err(strongroom_audit::Error::Tampered(f)) = opened else {
        panic!("reopened over a record that contradicts its checkpoint");
    };
    assert!(matches!(f.kind, FaultKind::RootMismatch { .. }), "{f}");
    assert_eq!(std::fs::read(last).unwrap(), edited, "nothing was changed");

    // A checkpoint the log key did not sign is refused too (it used to be skipped).
    std::fs::write(last, &original).unwrap();
    let mut l = lines(last);
    let c = l
        .iter()
        .rposition(|x| x.starts_with("{\"checkpoint\":"))
        .unwrap();
    let other = SoftwareSigner::from_bytes(&[9; 32]).unwrap();
    let other_key = strongroom_audit::LogKey::new(ORIGIN, other.public_key()).unwrap();
    let genuine = {
        let v: serde_json::Value = serde_json::from_str(&l[c]).unwrap();
        SignedCheckpoint::verify(v["checkpoint"].as_str().unwrap().as_bytes(), &key()).unwrap()
    };
    let forged =
        SignedCheckpoint::sign(&other_key, &other, genuine.size(), genuine.root()).unwrap();
    l[c] = serde_json::json!({ "checkpoint": forged.note() }).to_string();
    write_lines(last, &l);
    let opened = AuditLog::open(crate::common::config(dir.path()), crate::common::signer());
    let Err(strongroom_audit::Error::Tampered(f)) = opened else {
        panic!("reopened over a checkpoint the log key did not sign");
    };
    assert!(matches!(f.kind, FaultKind::BadCheckpoint { .. }), "{f}");

    // The genuine log still opens.
    std::fs::write(last, &original).unwrap();
    AuditLog::open(crate::common::config(dir.path()), crate::common::signer())
        .unwrap()
        .close()
        .unwrap();
}
