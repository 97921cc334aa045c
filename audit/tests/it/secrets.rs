//! Records cannot carry key bytes, tokens or plaintext: the typed constructors refuse
//! them, and a scan of a written log finds none, and finds only schema fields whose
//! values are enums, numbers, UUIDs, kms:// URIs, DNS names or times.

use base64::Engine as _;
use strongroom_audit::record::request_id;
use strongroom_audit::{Domain, KeyUri, ResourceUri};

use crate::common::{config, event, open};

const KEY: [u8; 32] = *b"\x8f\x11SECRET-KEY-BYTES-0123456789\xa0\xb1\xc2";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZUBleGFtcGxlLmNvbSJ9.c2lnbmF0dXJl";
const PLAINTEXT: &str = "the quarterly numbers are bad";

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        use std::fmt::Write as _;
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[test]
fn typed_fields_refuse_secrets() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
    for s in [
        hex(&KEY),
        b64.clone(),
        TOKEN.to_owned(),
        PLAINTEXT.to_owned(),
    ] {
        // (A domain is DNS text: a key split into <= 63-character labels would parse.
        // Domains come from configuration, never from requests; see `Domain`.)
        assert!(s.parse::<Domain>().is_err(), "{s}");
        assert!(
            format!("kms://kms.example.com/keys/{s}")
                .parse::<KeyUri>()
                .is_err()
        );
        assert!(
            format!("kms://{s}/keys/00000000-0000-0000-0000-000000000000")
                .parse::<KeyUri>()
                .is_err()
        );
        assert!(
            format!("kms://kms.example.com/resources/{s}")
                .parse::<ResourceUri>()
                .is_err()
        );
        // A client's request ID that is not a UUID is hashed, not recorded.
        assert!(!request_id(&s).to_string().contains(&s));
    }
}

const FIELDS: &[&str] = &[
    "v", "seq", "time", "kind", "action", "outcome", "reason", "status", "user", "org", "client",
    "machine", "subject", "peer", "request", "resource", "keys",
];

fn value_is_safe(field: &str, v: &serde_json::Value) -> bool {
    let is_uuid = |s: &str| uuid::Uuid::parse_str(s).is_ok() && s.len() == 36;
    match (field, v) {
        ("v" | "seq" | "status", serde_json::Value::Number(_)) => true,
        ("time", serde_json::Value::String(s)) => s.len() == 24 && s.ends_with('Z'),
        ("kind" | "action" | "outcome" | "reason", serde_json::Value::String(s)) => {
            s.len() <= 20
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
        }
        (
            "user" | "org" | "client" | "machine" | "subject" | "request",
            serde_json::Value::String(s),
        ) => is_uuid(s),
        ("peer", serde_json::Value::String(s)) => s.parse::<Domain>().is_ok(),
        ("resource", serde_json::Value::String(s)) => s.parse::<ResourceUri>().is_ok(),
        ("keys", serde_json::Value::Array(a)) => a
            .iter()
            .all(|k| k.as_str().is_some_and(|k| k.parse::<KeyUri>().is_ok())),
        _ => false,
    }
}

#[test]
fn a_written_log_holds_no_secret_and_only_schema_fields() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(config(dir.path()));
    for i in 0..200 {
        // Whatever a caller has at hand goes through the typed API only.
        let mut e = event(i).request(request_id(TOKEN));
        e = e.request(request_id(PLAINTEXT));
        log.append(&e).unwrap();
    }
    log.close().unwrap();

    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&all);
    let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
    let needles = [hex(&KEY), b64, TOKEN.to_owned(), PLAINTEXT.to_owned()];
    for n in &needles {
        assert!(!text.contains(n.as_str()), "found {n}");
    }
    assert!(!all.windows(KEY.len()).any(|w| w == KEY));

    let mut records = 0;
    for line in text.lines().filter(|l| l.starts_with("{\"v\":")) {
        // The start of any JWT. Searched in records only: checkpoint lines carry base64
        // root hashes and signatures, where any three characters turn up by chance
        // (once in 2^18 positions; the 20 checkpoints here made a whole-file search fail
        // now and then).
        assert!(!line.contains("eyJ"), "found eyJ in {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (field, value) in v.as_object().unwrap() {
            assert!(FIELDS.contains(&field.as_str()), "unexpected field {field}");
            assert!(value_is_safe(field, value), "{field} = {value}");
        }
        records += 1;
    }
    assert_eq!(records, 200);
}
