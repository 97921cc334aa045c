//! `strongroom audit` on the log a real `strongroom dev` wrote (R16): verify says intact and
//! exits 0; a flipped byte makes it exit 3 naming where; `show` filters; an export bundle
//! verifies with the public key only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::json;
use strongroom_e2e::{DevServer, Session, strongroom_bin};
use uuid::Uuid;

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
    let server =
        DevServer::start(Some(state.path()), &["--rsa-bits", "2048", "--no-core"]).unwrap();
    let http = strongroom_e2e::http_client();
    let (alice, eve) = (Uuid::new_v4(), Uuid::new_v4());
    let a = Session::connect(&http, &server.info, alice, "a")
        .await
        .unwrap();
    let e = Session::connect(&http, &server.info, eve, "e")
        .await
        .unwrap();
    let keys = a
        .call("create", "/keys", json!({"count": 1}))
        .await
        .unwrap();
    let uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    assert_eq!(
        e.call("retrieve", &uri, json!({})).await.unwrap()["status"],
        403
    );
    assert!(server.stop().unwrap().success());

    let s = state.path().to_str().unwrap();
    let key = state.path().join("audit.vkey");
    std::fs::copy(&key, state.path().join("kept-elsewhere.vkey")).unwrap();
    let k = state.path().join("kept-elsewhere.vkey");
    let k = k.to_str().unwrap();
    let (code, out) = audit(&["verify", "--state", s, "--key", k]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 4 records"), "{out}");

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

    // `query` is `show`; proofs come out with the roots they lead to.
    let (code, out) = audit(&["query", "--state", s, "--key", k, "--outcome", "denied"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&eve.to_string()), "{out}");
    let (code, out) = audit(&[
        "prove",
        "inclusion",
        "--state",
        s,
        "--key",
        k,
        "--index",
        "1",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["proof"]["tree_size"], 4, "{out}");
    assert_eq!(v["proof"]["hashes"].as_array().unwrap().len(), 2, "{out}");
    let (code, out) = audit(&[
        "prove",
        "consistency",
        "--state",
        s,
        "--key",
        k,
        "--old",
        "3",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(v["old_root"], v["new_root"], "{out}");
    let (code, out) = audit(&[
        "prove",
        "inclusion",
        "--state",
        s,
        "--key",
        k,
        "--index",
        "4",
    ]);
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

    // Flip one byte inside the first record of the first segment.
    let seg = std::fs::read_dir(state.path().join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(6).position(|w| w == b"\"seq\":").unwrap() + 6;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&seg, bytes).unwrap();
    let (code, out) = audit(&["verify", "--state", s, "--key", k]);
    assert_eq!(code, 3, "tampering detected: {out}");
    assert!(out.contains("NOT INTACT"), "{out}");
    assert!(
        out.contains(seg.file_name().unwrap().to_str().unwrap()),
        "the segment is named: {out}"
    );
}
