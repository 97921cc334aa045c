//! `strongroom audit` on the log a real `strongroom dev` wrote (R16): verify says intact and
//! exits 0; a flipped byte makes it exit 3 naming where; `show` filters; an export bundle
//! verifies with the public key only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use strongroom_e2e::fixtures::tamper_first_audit_record;
use strongroom_e2e::{DevServer, GrantAndDenial, strongroom_bin};

fn audit(args: &[&str]) -> (i32, String) {
    let out = Command::new(strongroom_bin().unwrap())
        .arg("audit")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_show_export_and_tamper_detection() {
    let state = tempfile::tempdir().unwrap();
    // A checkpoint after every record (ADR 0017), so the cadence setting is seen to reach
    // the writer: the default signs these four records, written within a second, once.
    let server = DevServer::start(
        Some(state.path()),
        &[
            "--rsa-bits",
            "2048",
            "--no-core",
            "--audit-checkpoint-every",
            "1",
        ],
    )
    .unwrap();
    let http = strongroom_e2e::http_client();
    // alice's key, and eve refused it (403).
    let GrantAndDenial {
        alice,
        eve,
        key_uri: uri,
        ..
    } = GrantAndDenial::run(&http, &server.info).await.unwrap();
    assert!(server.stop().unwrap().success());

    let s = state.path().to_str().unwrap();
    let key = state.path().join("audit.vkey");
    std::fs::copy(&key, state.path().join("kept-elsewhere.vkey")).unwrap();
    let k = state.path().join("kept-elsewhere.vkey");
    let k = k.to_str().unwrap();
    let (code, out) = audit(&["verify", "--state", s, "--key", k]);
    assert_eq!(code, 0, "{out}");
    // The KEK's creation (init), the start, the 4 decisions, the stop: admin actions are
    // recorded too.
    assert!(out.contains("intact: 7 records"), "{out}");
    let (code, out) = audit(&["verify", "--state", s, "--key", k, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // One at open (size 0), then one per record.
    assert!(v["checkpoints"].as_u64().unwrap() >= 5, "{out}");

    let (code, out) = audit(&["show", "--state", s, "--key", k, "--outcome", "denied"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&eve.to_string()) && out.contains(&uri),
        "{out}"
    );
    assert!(
        !out.contains(&alice.to_string()),
        "only the denied record: {out}"
    );

    // The first records are the first start's init and the start, the last the stop.
    let (code, out) = audit(&["show", "--state", s, "--key", k]);
    assert_eq!(code, 0, "{out}");
    let kinds: Vec<(String, String)> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                r["kind"].as_str().unwrap().into(),
                r["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 7, "{out}");
    assert_eq!(kinds[0], ("admin".into(), "init".into()), "{out}");
    assert_eq!(kinds[1], ("admin".into(), "start".into()), "{out}");
    assert_eq!(kinds[6], ("admin".into(), "stop".into()), "{out}");
    assert!(
        kinds[2..6].iter().all(|(k, _)| k == "kms.decision"),
        "{out}"
    );

    // `query` is `show`; proofs come out with the roots they lead to.
    let prove = |kind: &str, flag: &str, n: &str| {
        audit(&["prove", kind, "--state", s, "--key", k, flag, n])
    };
    let (code, out) = audit(&["query", "--state", s, "--key", k, "--outcome", "denied"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&eve.to_string()), "{out}");
    let (code, out) = prove("inclusion", "--index", "1");
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["proof"]["tree_size"], 7, "{out}");
    assert_eq!(v["proof"]["hashes"].as_array().unwrap().len(), 3, "{out}");
    let (code, out) = prove("consistency", "--old", "3");
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(v["old_root"], v["new_root"], "{out}");
    let (code, out) = prove("inclusion", "--index", "7");
    assert_ne!(code, 0, "an index beyond the log is refused: {out}");

    let bundle = state.path().join("bundle.json");
    let (code, out) = audit(&[
        "export",
        "--state",
        s,
        "--key",
        k,
        "--user",
        &eve.to_string(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = audit(&[
        "verify-bundle",
        "--bundle",
        bundle.to_str().unwrap(),
        "--key",
        k,
    ]);
    assert_eq!(code, 0, "{out}");

    // A cleanly stopped log is signed to its end: --strict passes. Without its last
    // checkpoint line the last record is vouched for by nothing: plain verify still
    // exits 0 but says so, --strict refuses.
    let (code, out) = audit(&["verify", "--state", s, "--key", k, "--strict"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("not signed yet"), "{out}");
    let mut segs: Vec<_> = std::fs::read_dir(state.path().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let last = segs.pop().unwrap();
    let original = std::fs::read_to_string(&last).unwrap();
    let cut = original.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    assert!(
        original[cut..].starts_with("{\"checkpoint\":"),
        "{original}"
    );
    std::fs::write(&last, &original[..cut]).unwrap();
    let (code, out) = audit(&["verify", "--state", s, "--key", k]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 records after the last checkpoint are not signed yet"),
        "{out}"
    );
    let (code, out) = audit(&["verify", "--state", s, "--key", k, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["unsigned_tail"].as_u64(), v["torn_tail_bytes"].as_u64()),
        (Some(1), Some(0)),
        "{out}"
    );
    let (code, out) = audit(&["verify", "--state", s, "--key", k, "--strict"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("1 records after the last checkpoint"), "{out}");
    std::fs::write(&last, &original).unwrap();

    // Flip one byte inside the first record of the first segment.
    let seg = tamper_first_audit_record(state.path()).unwrap();
    let (code, out) = audit(&["verify", "--state", s, "--key", k]);
    assert_eq!(code, 3, "tampering detected: {out}");
    assert!(out.contains("NOT INTACT"), "{out}");
    assert!(
        out.contains(seg.file_name().unwrap().to_str().unwrap()),
        "the segment is named: {out}"
    );
}
