//! The real `core-sim` binary: its JSON line, HTTPS, and state across `kill -9`.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::{REALM_A, REALM_TOKEN_A, kid};

struct Proc {
    child: Child,
    line: Value,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&std::ffi::OsStr]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_core-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let line = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    Proc { child, line }
}

fn secret(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn the_binary_serves_https_and_keeps_everything_across_kill_9() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    secret(&key_pem, cert.signing_key.serialize_pem().as_bytes());
    let realm_file = tmp.path().join("realm-a.token");
    secret(&realm_file, REALM_TOKEN_A.as_bytes());
    let realm_arg = format!("{REALM_A}={}", realm_file.display());
    let args: Vec<&std::ffi::OsStr> = vec![
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--tls-cert".as_ref(),
        cert_pem.as_os_str(),
        "--tls-key".as_ref(),
        key_pem.as_os_str(),
        "--realm".as_ref(),
        realm_arg.as_ref(),
    ];
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();

    let first = start(&args);
    let base = first.line["core_url"].as_str().unwrap().to_owned();
    assert!(base.starts_with("https://127.0.0.1:"), "{}", first.line);
    assert_eq!(first.line["jwks_url"], format!("{base}/identity/jwks"));
    assert_eq!(first.line["issuer"], core_sim::identity::ISSUER);
    let admin = first.line["admin_token"].as_str().unwrap().to_owned();
    let api = Api {
        http: http.clone(),
        base,
    };

    let (s, org) = api
        .call(
            "POST",
            "/admin/orgs",
            &admin,
            Some(json!({"name": "A", "kms_domain": "a.test"})),
        )
        .await;
    assert_eq!(s, 200, "{org}");
    for (name, email) in [("Alice", "alice@a.test"), ("Carl", "carl@a.test")] {
        let (s, _) = api
            .call(
                "POST",
                "/admin/users",
                &admin,
                Some(json!({"org": org["id"], "name": name, "email": email})),
            )
            .await;
        assert_eq!(s, 200);
    }
    let login = |email: &'static str| {
        let http = api.http.clone();
        let url = format!("{}/identity/login", api.base);
        async move {
            let v: Value = http
                .post(url)
                .json(&json!({"email": email}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    let alice = login("alice@a.test").await;
    let carl = login("carl@a.test").await;
    let token = alice["core_token"].as_str().unwrap().to_owned();
    let title = core_sim::model::jwe::fake_jwe(&kid("a.test"), b"t");
    let (s, room) = api
        .call(
            "POST",
            "/rooms",
            &token,
            Some(json!({"resource_uri": "kms://a.test/resources/1", "title": title})),
        )
        .await;
    assert_eq!(s, 200, "{room}");
    let room = room["id"].as_str().unwrap().to_owned();
    // R10: a membership change needs the KMS part, and the realm that checks it.
    let (s, v) = api
        .call(
            "POST",
            &format!("/rooms/{room}/members"),
            &token,
            Some(json!({"user_id": carl["user_id"]})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("kms_part_required")));
    let (s, v) = api
        .call(
            "POST",
            &format!("/rooms/{room}/members"),
            &token,
            Some(json!({"user_id": carl["user_id"], "kms_part": "a.b.c.d.e"})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (502, Some("realm_not_connected")));
    let old = kid("a.test");
    let msg = core_sim::model::jwe::fake_jwe(&old, b"ciphertext-before-kill");
    let (s, _) = api
        .call(
            "POST",
            &format!("/rooms/{room}/messages"),
            &token,
            Some(json!({"content": msg})),
        )
        .await;
    assert_eq!(s, 200);
    drop(first); // SIGKILL

    let second = start(&args);
    assert_eq!(second.line["admin_token"], admin.as_str());
    let api = Api {
        http,
        base: second.line["core_url"].as_str().unwrap().to_owned(),
    };
    // The old token still verifies (same identity key), the room, its events and its
    // message are back, and the rotation point survived.
    let (s, v) = api
        .call("GET", &format!("/rooms/{room}"), &token, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["title"]["content"], title);
    assert_eq!(
        v["events"].as_array().unwrap().len(),
        1,
        "no change without the KMS"
    );
    assert_eq!(v["members"].as_array().unwrap().len(), 1);
    let (_, v) = api
        .call("GET", &format!("/rooms/{room}/messages"), &token, None)
        .await;
    assert_eq!(v["messages"][0]["content"], msg);
    let (s, v) = api
        .call(
            "POST",
            &format!("/rooms/{room}/messages"),
            &token,
            Some(json!({"content": core_sim::model::jwe::fake_jwe(&kid("a.test"), b"x")})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["seq"].as_u64().unwrap() > 2,
        "sequence numbers continue after restart: {v}"
    );
    let (s, _) = api.call("GET", "/identity/jwks", "", None).await;
    assert_eq!(s, 200);

    // What the core stored is in the recording, as received.
    let recs = core_sim::record::read_all(&state.join("recording.log")).unwrap();
    assert!(
        recs.iter()
            .any(|r| r.header.kind == "store" && r.payload == msg.as_bytes())
    );
    assert!(
        recs.iter()
            .any(|r| r.header.kind == "http.request" && r.header.meta == "POST /admin/users")
    );
}

#[test]
fn a_group_readable_realm_token_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("t");
    std::fs::write(&file, REALM_TOKEN_A).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_core-sim"))
        .arg("--state")
        .arg(tmp.path().join("s"))
        .arg("--realm")
        .arg(format!("{REALM_A}={}", file.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
