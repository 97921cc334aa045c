//! Preallocated segments (ADR 0013): the writer keeps zero-filled space ahead of its
//! records so that a flush overwrites allocated blocks; readers treat the zeros as
//! unwritten, a crash's partial group (even one with a page missing in the middle, as a
//! power loss can leave) as a torn tail, and non-zero bytes beyond any torn write as
//! tampering (R16).

use std::path::Path;

use strongroom_audit::{Error, FaultKind, VerifyOptions, verify_dir};

use crate::common::{
    all_records, assert_torn_tail_recovers, config, event, key, open, segments, write_log,
};

/// Offset just past the `n`-th `\n` of `bytes` (1-based).
fn after_line(bytes: &[u8], n: usize) -> usize {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map(|(i, _)| i + 1)
        .unwrap()
}

fn data_len(bytes: &[u8]) -> usize {
    bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len())
}

#[test]
fn a_live_segment_keeps_zeroed_space_ahead_and_a_closed_one_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(config(dir.path()));
    for i in 0..25 {
        log.append(&event(i)).unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let end = data_len(&bytes);
    assert_eq!(bytes[end - 1], b'\n', "the data ends with a whole line");
    assert!(
        bytes.len() - end >= 512 << 10,
        "at least half the 1 MiB reserve is ahead: {} bytes",
        bytes.len() - end
    );
    assert!(bytes[end..].iter().all(|b| *b == 0), "the reserve is zeros");
    let h = log.health();
    assert_eq!(h.reserve_bytes, (bytes.len() - end) as u64);
    assert!(!h.reserve_short);
    // The live log (zeros and all) verifies.
    let v = verify_dir(dir.path(), &key(), &VerifyOptions::default()).unwrap();
    assert_eq!((v.records, v.torn_tail_bytes), (25, 0));
    log.close().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(data_len(&bytes), bytes.len(), "close cuts the reserve off");

    // Off: plain appends, never a zero byte.
    let plain = tempfile::tempdir().unwrap();
    let mut c = config(plain.path());
    c.preallocate = 0;
    let log = open(c);
    log.append(&event(0)).unwrap();
    let bytes = std::fs::read(segments(plain.path()).pop().unwrap()).unwrap();
    assert_eq!(data_len(&bytes), bytes.len());
    assert_eq!(log.health().reserve_bytes, 0);
}

/// What a power loss can leave of the last group: its first records, a partial line, a
/// page that never reached the disk (zeros), then later pages of the same group, then
/// the preallocated zeros. Never the checkpoint after the group: it is written only once
/// the group is durable.
fn power_loss_image(dir: &Path) -> (usize, usize) {
    let seg = segments(dir).pop().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    // Lines: header, checkpoint at open, records 0..40, closing checkpoint.
    let keep = after_line(&bytes, 2 + 15); // header, checkpoint, records 0..=14
    let partial = keep + 40; // 40 bytes into record 15
    let hole = partial + 4096; // one page lost; later records of the group follow it
    let residue_end = after_line(&bytes, 2 + 40); // the group's last record
    assert!(hole < residue_end);
    let mut image = bytes[..partial].to_vec();
    image.resize(hole, 0);
    image.extend_from_slice(&bytes[hole..residue_end]);
    image.resize(residue_end + (1 << 20), 0);
    std::fs::write(&seg, &image).unwrap();
    (keep, residue_end)
}

#[test]
fn a_power_loss_with_a_missing_page_inside_the_last_group_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 40, |c| c.checkpoint_every = 1000);
    let (keep, residue_end) = power_loss_image(dir.path());

    // Not tampering: a torn tail after the 15 records before the missing page, reported
    // (refused only by --strict); reopening removes it and goes on from record 15.
    assert_torn_tail_recovers(dir.path(), 15, (residue_end - keep) as u64);
    let records = all_records(dir.path());
    assert_eq!(
        records.iter().map(|(r, _)| r.seq).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
}

/// Found in review: a zero byte written into a signed record made every line after it,
/// checkpoints included, look like a crash's torn tail, which `verify` accepted and
/// reopening erased. A torn tail never holds a whole signed checkpoint (R16).
#[test]
fn records_hidden_behind_a_zero_byte_before_a_signed_checkpoint_are_tampering() {
    let dir = tempfile::tempdir().unwrap();
    // Lines: header, checkpoint at open, records with a checkpoint after every 10th.
    write_log(dir.path(), 40, |c| c.checkpoint_every = 10);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = after_line(&bytes, 2 + 25) + 30; // inside record 23 (two checkpoints before it)
    bytes[at] = 0;
    std::fs::write(&seg, &bytes).unwrap();

    for opts in [VerifyOptions::default(), VerifyOptions::default().strict()] {
        let err = verify_dir(dir.path(), &key(), &opts).unwrap_err();
        let f = err.fault().unwrap();
        assert!(
            matches!(f.kind, FaultKind::HiddenCheckpoint { offset } if offset as usize > at),
            "{err}"
        );
        assert!(
            err.to_string().contains("a crash cannot leave this"),
            "{err}"
        );
    }
    let Err(Error::Tampered(f)) =
        strongroom_audit::AuditLog::open(config(dir.path()), crate::common::signer())
    else {
        panic!("a log hiding signed records must not open (reopening would erase them)");
    };
    assert!(matches!(f.kind, FaultKind::HiddenCheckpoint { .. }));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was changed");
}

#[test]
fn bytes_beyond_any_torn_write_are_refused_as_tampering() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, |_| {});
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = bytes.len();
    // A record line hidden 17 MiB past the end, where no group of the writer reaches.
    bytes.resize(end + (17 << 20), 0);
    bytes.extend_from_slice(b"{\"v\":1,\"seq\":5}\n");
    std::fs::write(&seg, &bytes).unwrap();

    let err = verify_dir(dir.path(), &key(), &VerifyOptions::default()).unwrap_err();
    let fault = err.fault().unwrap();
    assert_eq!(
        fault.kind,
        FaultKind::StrayBytes {
            offset: (end + (17 << 20)) as u64
        },
        "{err}"
    );
    assert!(err.to_string().contains("far past the end"), "{err}");
    let Err(Error::Tampered(f)) =
        strongroom_audit::AuditLog::open(config(dir.path()), crate::common::signer())
    else {
        panic!("a log with stray bytes must not open");
    };
    assert!(matches!(f.kind, FaultKind::StrayBytes { .. }));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was changed");
}

#[test]
fn an_archived_segment_left_with_its_reserve_still_verifies() {
    // A crash between sealing a segment at rotation and cutting its reserve off.
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 120, |c| c.segment_max_bytes = 8192);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let mut first = std::fs::read(&segs[0]).unwrap();
    first.resize(first.len() + 300_000, 0);
    std::fs::write(&segs[0], &first).unwrap();
    let v = verify_dir(dir.path(), &key(), &VerifyOptions::default().strict()).unwrap();
    assert_eq!(v.records, 120);
    // ... but a partial write there is a fault: only the last segment can be torn.
    first.truncate(data_len(&first));
    first.extend_from_slice(b"{\"v\":1,");
    std::fs::write(&segs[0], &first).unwrap();
    let err = verify_dir(dir.path(), &key(), &VerifyOptions::default()).unwrap_err();
    assert_eq!(err.fault().unwrap().kind, FaultKind::TornLine);
}
