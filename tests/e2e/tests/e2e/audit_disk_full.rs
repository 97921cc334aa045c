//! A full disk under the audit log makes the KMS refuse (503: no record, no answer), and
//! once space is back it recovers by itself (issue 4). The audit directory of a real
//! `strongroom dev` is a small tmpfs mount that we fill up. The log first uses up its
//! preallocated reserve (up to 1 MiB, ADR 0013), then refuses; state changes stop first,
//! while the reserve still holds the records of those under way. Needs root (mount);
//! skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use strongroom_e2e::{DevServer, Session};
use uuid::Uuid;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_makes_the_kms_refuse_then_recover() {
    let state = tempfile::tempdir().unwrap();
    let audit = state.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&audit)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP: cannot mount a tmpfs (needs root)");
        return;
    }
    let _mount = Mount(audit.clone());
    let server = DevServer::start(Some(state.path()), &["--rsa-bits", "2048"]).unwrap();
    let http = strongroom_e2e::http_client();
    let user = Uuid::new_v4();
    let s = Session::connect(&http, &server.info, user, "dev")
        .await
        .unwrap();
    let (uri, _) = s.create_key().await.unwrap();

    let filler = fill(&audit);
    let mut refused = None;
    let health = || async {
        let r = http
            .get(format!("{}/healthz", server.info.kms_url))
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()
    };
    let mut warned = false;
    let (mut creates_before_refusal, mut create_refused_at) = (0, None);
    let counters = |h: &serde_json::Value| {
        (
            h["audit_records"].as_u64().unwrap(),
            h["audit_flushes"].as_u64().unwrap(),
        )
    };
    let start = counters(&health().await);
    // Up to 1 MiB of reserve at a few hundred bytes per record: a few thousand answers.
    for i in 0..20_000 {
        if i == 10 {
            // Every answer was recorded and flushed before it left.
            let (records, flushes) = counters(&health().await);
            assert!(records >= start.0 + 10, "{start:?} -> {records}");
            assert!(flushes > start.1 && flushes - start.1 <= records - start.0);
        }
        if i % 25 == 0 {
            let c = s
                .call("create", "/keys", json!({"count": 1}))
                .await
                .unwrap();
            match c["status"].as_u64() {
                Some(201) => creates_before_refusal += 1,
                Some(503) => {
                    create_refused_at.get_or_insert(i);
                }
                other => panic!("create answered {other:?}"),
            }
        }
        let r = s.call("retrieve", &uri, json!({})).await.unwrap();
        if r["status"] == 503 {
            refused = Some((i, r));
            break;
        }
        assert_eq!(r["status"], 200);
        if !warned && i % 100 == 0 {
            // While the reserve lasts the KMS answers, and says the disk is full.
            let h = health().await;
            warned = h["audit_reserve"] == "short" && h["audit"] == "ok";
        }
    }
    let (refused_at, refused) =
        refused.expect("a full disk under the audit log must make the KMS refuse");
    // A change is stored before its record is written: on a full disk, changes stop while
    // the reserve still holds their records, well before the retrieves do.
    let create_refused_at = create_refused_at.expect("creates are refused on a full disk");
    assert!(
        creates_before_refusal > 0 && create_refused_at + 100 < refused_at,
        "creates stopped at {create_refused_at} after {creates_before_refusal}, retrieves at {refused_at}"
    );
    assert!(
        refused.get("key").is_none(),
        "no key material in the refusal"
    );
    assert!(
        warned,
        "/healthz warned of the short reserve before the refusals"
    );
    assert_eq!(health().await["audit"], "unwritable");

    std::fs::remove_file(filler).unwrap();
    let mut recovered = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = s.call("retrieve", &uri, json!({})).await.unwrap();
        if r["status"] == 200 {
            recovered = true;
            break;
        }
    }
    assert!(
        recovered,
        "the KMS recovers by itself once the disk has room again"
    );
    server.stop().unwrap();
}
