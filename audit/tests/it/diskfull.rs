//! A full disk (or an I/O error) makes appends fail, the log report unhealthy, and
//! recover by itself once writing works, without losing or duplicating a record.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use strongroom_audit::{Error, FailSwitch, Filter, VerifyOptions, query, verify_dir};

use crate::common::{config, event, key, open};
use crate::log::wait_for;

fn seqs(dir: &Path) -> Vec<u64> {
    let mut v = Vec::new();
    query(
        dir,
        &key(),
        &VerifyOptions::default().strict(),
        &Filter::default(),
        &mut |r, _| v.push(r.seq),
    )
    .unwrap();
    v
}

#[test]
fn injected_write_failures_refuse_then_recover_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Arc::new(FailSwitch::default());
    let mut c = config(dir.path());
    c.fail = Some(Arc::clone(&switch));
    let log = open(c);
    for i in 0..5 {
        log.append(&event(i)).unwrap();
    }
    switch.set(true);
    for i in 5..8 {
        let err = log.append(&event(i)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
    let h = log.health();
    assert!(!h.writable);
    assert_eq!(
        h.last_error.map(|e| e.1),
        Some(std::io::ErrorKind::StorageFull)
    );
    switch.set(false);
    // No traffic: the committer retries once a second and proves the disk with a write.
    wait_for(|| log.health().writable, "health recovers without appends");
    assert_eq!(
        log.append(&event(5)).unwrap().seq,
        5,
        "failed appends used no seq"
    );
    log.close().unwrap();
    assert_eq!(seqs(dir.path()), (0..6).collect::<Vec<_>>());
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_tmpfs_refuses_then_recovers_when_space_returns() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIP a_full_tmpfs_refuses_then_recovers: cannot mount tmpfs (needs root); the injected-failure test covers the logic"
        );
        return;
    }
    let _guard = Mount(mnt.clone());
    let dir = mnt.join("audit");
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 128 << 10]).unwrap();

    let mut c = config(&dir);
    c.checkpoint_every = 100;
    let log = open(c);
    // The 1 MiB reserve does not fit: the log reports it, and writes into what is left.
    assert!(log.health().reserve_short, "a short reserve is reported");
    // Append until the disk refuses three times in a row (after a failure the partial
    // write is cut, so a small record may still fit once or twice).
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    for i in 0..100_000 {
        match log.append(&event(i)) {
            Ok(r) => {
                acked.push(r.seq);
                failures.clear();
            }
            Err(e) => failures.push(e),
        }
        if failures.len() == 3 {
            break;
        }
    }
    assert_eq!(failures.len(), 3, "the disk never filled");
    for f in &failures {
        let Error::Io { source, .. } = f else {
            panic!("{f}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
    }
    assert!(!log.health().writable);

    std::fs::remove_file(&ballast).unwrap();
    wait_for(|| log.health().writable, "recovery once space returns");
    let r = log.append(&event(1)).unwrap();
    assert_eq!(r.seq, acked.len() as u64, "no gap, no duplicate");
    acked.push(r.seq);
    log.close().unwrap();
    assert_eq!(seqs(&dir), acked);
    verify_dir(&dir, &key(), &VerifyOptions::default().strict()).unwrap();
}
