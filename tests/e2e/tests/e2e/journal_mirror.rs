//! Under systemd every audit record is mirrored to the journal with structured fields
//! (issue 4, item 4). We stand in for journald: bind its socket
//! (/run/systemd/journal/socket, root only, and only when no real journald owns it) and
//! read what a real `strongroom dev` sends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use strongroom_e2e::{DevServer, GrantAndDenial};

const SOCKET: &str = "/run/systemd/journal/socket";

/// Parses journald's native protocol: `KEY=value\n`, or `KEY\n<u64 LE len><bytes>\n`.
fn fields(dgram: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = dgram;
    while !rest.is_empty() {
        let nl = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let line = &rest[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into(),
                String::from_utf8_lossy(&line[eq + 1..]).into(),
            ));
            rest = rest.get(nl + 1..).unwrap_or_default();
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let len = usize::try_from(u64::from_le_bytes(rest[nl + 1..nl + 9].try_into().unwrap()))
                .unwrap();
            let val = &rest[nl + 9..nl + 9 + len];
            out.push((key, String::from_utf8_lossy(val).into()));
            rest = rest.get(nl + 9 + len + 1..).unwrap_or_default();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_reach_the_journal_with_structured_fields() {
    if Path::new(SOCKET).exists() {
        eprintln!(
            "SKIP: a journald socket already exists at {SOCKET}; not intercepting a real journal"
        );
        return;
    }
    if std::fs::create_dir_all("/run/systemd/journal").is_err() {
        eprintln!("SKIP: cannot create /run/systemd/journal (not root)");
        return;
    }
    let sock = UnixDatagram::bind(SOCKET).unwrap();
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(SOCKET);
        }
    }
    let _cleanup = Cleanup;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let server = DevServer::start_with_env(
        None,
        &["--rsa-bits", "2048"],
        &[("STRONGROOM_AUDIT_JOURNAL", "1")],
    )
    .unwrap();
    let http = strongroom_e2e::http_client();
    // alice's key, and eve refused it (403).
    let GrantAndDenial {
        eve,
        key_uri: uri,
        key_k: k,
        ..
    } = GrantAndDenial::run(&http, &server.info).await.unwrap();

    let mut found = None;
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && found.is_none() {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let f = fields(&buf[..n]);
        all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        let get = |k: &str| f.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        if get("AUDIT_OUTCOME").as_deref() == Some("denied")
            && get("AUDIT_USER") == Some(eve.to_string())
        {
            found = Some(f.clone());
        }
    }
    let f =
        found.unwrap_or_else(|| panic!("no denied record for eve in the journal; got {all:#?}"));
    let get = |k: &str| {
        f.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("AUDIT_ACTION"), "retrieve");
    assert!(get("AUDIT_KEYS").contains(&uri));
    assert_eq!(get("SYSLOG_IDENTIFIER"), "strongroom-audit");
    assert!(
        get("MESSAGE").contains("\"seq\""),
        "the message is the exact record line"
    );
    for d in &all {
        assert!(!d.contains(&k), "key material in the journal");
        assert!(!d.contains("eyJ"), "a token in the journal");
    }
    server.stop().unwrap();
}
