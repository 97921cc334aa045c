//! Audit of KMS decisions (R16, R14): every decision, allowed or denied, is a durable
//! record before the answer leaves; the log verifies; it holds no key bytes or tokens; and
//! when the log cannot be written the KMS refuses, then recovers by itself.

use std::time::Duration;

use serde_json::json;
use strongroom_audit::{Filter, Outcome, VerifyOptions};
use strongroom_kms::clock::Clock as _;
use strongroom_kms::jose::b64d;
use uuid::Uuid;

use crate::fixture::{call, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_recorded_and_the_log_holds_no_secrets() {
    let e = env("audit-rec").await;
    let (alice, bob, eve) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let ca = e.client(alice).await;
    let cb = e.client(bob).await;
    let ce = e.client(eve).await;
    let keys = call(&e.kms, &ca, "create", "/keys", json!({"count": 1})).await;
    let key_uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let k = keys["keys"][0]["jwk"]["k"].as_str().unwrap().to_owned();
    let res = call(
        &e.kms,
        &ca,
        "create",
        "/resources",
        json!({"userIds": [bob.to_string()], "keyUris": [key_uri]}),
    )
    .await;
    assert_eq!(res["status"], 201);
    assert_eq!(
        call(&e.kms, &cb, "retrieve", &key_uri, json!({})).await["status"],
        200
    );
    assert_eq!(
        call(&e.kms, &ce, "retrieve", &key_uri, json!({})).await["status"],
        403
    );

    let dir = e.dir.path().join("audit");
    let key = e.kms.audit().key().clone();
    // The KEK's creation (admin init, first start), 3 handshakes, create keys, create
    // resource (and its grant to bob), 2 retrieves.
    let v = strongroom_audit::verify_dir(&dir, &key, &VerifyOptions::default()).unwrap();
    assert_eq!(v.records, 9, "one record per decision, and one per grant");
    // Who was given access is in the log: the grant's record names bob as its subject.
    let mut grants = Vec::new();
    strongroom_audit::query(
        &dir,
        &key,
        &VerifyOptions::default(),
        &Filter::default(),
        &mut |r, _| {
            if r.subject.is_some() {
                grants.push((r.subject, r.user, r.resource.is_some(), r.outcome));
            }
        },
    )
    .unwrap();
    assert_eq!(grants, [(Some(bob), Some(alice), true, Outcome::Allowed)]);

    let mut denied = Vec::new();
    let mut filter = Filter::default();
    filter.outcome = Some(Outcome::Denied);
    strongroom_audit::query(
        &dir,
        &key,
        &VerifyOptions::default(),
        &filter,
        &mut |r, line| {
            // The record's time is the KMS's (injected) clock, not the machine's.
            assert_eq!(r.time, e.clock.now_ms(), "audit time from the KMS clock");
            denied.push((format!("{r:?}"), String::from_utf8_lossy(line).into_owned()));
        },
    )
    .unwrap();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(
        denied[0].1.contains(&eve.to_string()),
        "the denied record names the requester"
    );
    assert!(denied[0].1.contains(&key_uri), "and the key");

    // No key bytes (raw, base64url, hex) and no token anywhere in the log.
    let raw = b64d("k", &k).unwrap();
    let hex: String = raw.iter().fold(String::new(), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    });
    let token = e.token(alice);
    let token_sig = token.rsplit('.').next().unwrap().to_owned();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !bytes.windows(32).any(|w| w == raw.as_slice()),
            "raw key in the audit log"
        );
        assert!(
            !text.contains(&k) && !text.contains(&hex),
            "encoded key in the audit log"
        );
        assert!(!text.contains(&token_sig), "token in the audit log");
        // The start of any JWT, searched in records only: a checkpoint's base64 root hash
        // and signature hold any three characters now and then by chance.
        assert!(
            !text
                .lines()
                .filter(|l| l.starts_with("{\"v\":"))
                .any(|l| l.contains("eyJ")),
            "token in an audit record"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_log_makes_the_kms_refuse_then_it_recovers() {
    let e = env("audit-fail").await;
    let alice = Uuid::new_v4();
    let ca = e.client(alice).await;
    let keys = call(&e.kms, &ca, "create", "/keys", json!({"count": 1})).await;
    let key_uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let before = e.kms.store().key_count().unwrap();

    e.fail.set(true);
    let r = call(&e.kms, &ca, "retrieve", &key_uri, json!({})).await;
    assert_eq!(r["status"], 503, "no record, no answer: {r}");
    assert!(r.get("key").is_none(), "no key material in the refusal");
    let r = call(&e.kms, &ca, "create", "/keys", json!({"count": 2})).await;
    assert_eq!(r["status"], 503);
    assert_eq!(
        e.kms.store().key_count().unwrap(),
        before,
        "nothing was created"
    );
    assert!(!e.kms.audit().health().writable);

    e.fail.set(false);
    let mut recovered = false;
    for _ in 0..50 {
        if e.kms.audit().health().writable {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the log recovers by itself once writing works");
    let r = call(&e.kms, &ca, "retrieve", &key_uri, json!({})).await;
    assert_eq!(r["status"], 200);
}

/// Found in review: a record names at most 1024 keys, and a request listing more (the
/// client chooses) made the record invalid, so the KMS answered an unrecorded 503. Now the
/// decision is recorded, split over records that share its request ID, and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_naming_more_keys_than_a_record_holds_is_recorded_in_parts() {
    let e = env("audit-many").await;
    let alice = Uuid::new_v4();
    let ca = e.client(alice).await;
    let keys = call(&e.kms, &ca, "create", "/keys", json!({"count": 1})).await;
    let key_uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let prefix = key_uri.rsplit_once('/').unwrap().0.to_owned();
    let many: Vec<String> = (0..1500)
        .map(|_| format!("{prefix}/{}", Uuid::new_v4()))
        .collect();
    let res = call(
        &e.kms,
        &ca,
        "create",
        "/resources",
        json!({ "keyUris": many }),
    )
    .await;
    assert_eq!(
        res["status"], 400,
        "refused for its size, and recorded: {res}"
    );

    let dir = e.dir.path().join("audit");
    let key = e.kms.audit().key().clone();
    let mut filter = Filter::default();
    filter.outcome = Some(Outcome::Denied);
    let mut parts = Vec::new();
    strongroom_audit::query(
        &dir,
        &key,
        &VerifyOptions::default(),
        &filter,
        &mut |r, _| parts.push((r.request, r.keys.len())),
    )
    .unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].0, parts[1].0, "one decision: the same request ID");
    assert_eq!((parts[0].1, parts[1].1), (1024, 476));
}
