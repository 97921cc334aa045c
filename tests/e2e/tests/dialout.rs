//! The realm dials out to the simulated core over pinned TLS (R3, R21): a client's KMS
//! messages travel through the core's relay; the realm reconnects by itself after the core
//! is killed and restarted; a core whose certificate chains to an unpinned root is never
//! connected to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use secrecy::SecretString;
use serde_json::{Value, json};
use strongroom_e2e::{core_sim_bin, strongroom_bin};
use strongroom_kms::client::KmsClient;
use strongroom_kms::jose::jwk::RsaPublicJwk;
use uuid::Uuid;

const DOMAIN: &str = "kms.acme.test";

fn secret(path: &Path, text: &str) {
    strongroom_e2e::secret_file(path, text).unwrap();
}

/// A root with pathLenConstraint 0 and a leaf for localhost, written as PEM files.
fn pki(dir: &Path, name: &str) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} root"));
    let root = p.self_signed(&key).unwrap();
    let issuer = Issuer::new(p, key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join(format!("{name}-root.pem")), root.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-leaf.pem")), leaf.pem()).unwrap();
    secret(
        &dir.join(format!("{name}-leaf.key")),
        &leaf_key.serialize_pem(),
    );
}

struct Core {
    child: Child,
    info: Value,
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_core(dir: &Path, pki_name: &str, port: u16) -> Core {
    let mut child = Command::new(core_sim_bin().unwrap())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--state"])
        .arg(dir.join("core-state"))
        .arg("--tls-cert")
        .arg(dir.join(format!("{pki_name}-leaf.pem")))
        .arg("--tls-key")
        .arg(dir.join(format!("{pki_name}-leaf.key")))
        .arg("--realm")
        .arg(format!(
            "kms://{DOMAIN}={}",
            dir.join("realm-token").display()
        ))
        .arg("--admin-token-file")
        .arg(dir.join("admin-token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("core-sim line {line:?}: {e}"));
    Core { child, info }
}

fn https(dir: &Path) -> reqwest::Client {
    strongroom_client::https_client(&dir.join("good-root.pem")).unwrap()
}

async fn relay(
    http: &reqwest::Client,
    core: &str,
    core_token: &str,
    msg: String,
) -> reqwest::Response {
    http.post(format!("{core}/kms/messages"))
        .bearer_auth(core_token)
        .json(&json!({"destination": format!("kms://{DOMAIN}"), "kmsMessages": [msg]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_traffic_flows_through_the_core_and_survives_a_core_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d, "good");
    pki(d, "rogue");
    secret(&d.join("realm-token"), "realm-secret-0123456789abcdef\n");
    secret(&d.join("admin-token"), "admin-secret-0123456789abcdef\n");
    let core_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let core = start_core(d, "good", core_port);
    let core_url = core.info["core_url"]
        .as_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    let http = https(d);

    // The realm trusts the core's identity service for KMS tokens.
    let jwks: Value = http
        .get(format!("{core_url}/identity/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    std::fs::write(d.join("jwks.json"), jwks.to_string()).unwrap();
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    let kms_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        r#"version = 1
[kms]
domain = "{DOMAIN}"
listen = "127.0.0.1:{kms_port}"
state_dir = "{dir}/state"
[tls]
certificate = "{dir}/tls/cert.pem"
private_key = "{dir}/tls/key.pem"
[hsm]
token_label = "acme-dialout"
pin_file = "{dir}/pin"
so_pin_file = "{dir}/so-pin"
softhsm2_conf = "{dir}/softhsm2.conf"
rsa_bits = 2048
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[auth.issuers]]
issuer = "{iss}"
jwks_file = "{dir}/jwks.json"
[core]
url = "wss://localhost:{core_port}/realm/v1/connect"
realm_token_file = "{dir}/realm-token"
pinned_roots = "{dir}/good-root.pem"
"#,
        dir = d.display(),
        iss = core.info["issuer"].as_str().unwrap(),
    );
    std::fs::write(d.join("strongroom.toml"), cfg).unwrap();
    let cfg_path = d.join("strongroom.toml");
    let out = Command::new(strongroom_bin().unwrap())
        .arg("init")
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut realm = Command::new(strongroom_bin().unwrap())
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // An organisation whose KMS is this realm, a user, a login (two tokens).
    let admin = "admin-secret-0123456789abcdef";
    let org: Value = http
        .post(format!("{core_url}/admin/orgs"))
        .bearer_auth(admin)
        .json(&json!({"name": "Acme", "kms_domain": DOMAIN}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _user: Value = http
        .post(format!("{core_url}/admin/users"))
        .bearer_auth(admin)
        .json(&json!({"org": org["id"], "name": "Alice Example", "email": "alice@acme.test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login: Value = http
        .post(format!("{core_url}/identity/login"))
        .json(&json!({"email": "alice@acme.test", "client_id": "alice-laptop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = Uuid::parse_str(login["user_id"].as_str().unwrap()).unwrap();
    let core_token = login["core_token"].as_str().unwrap().to_owned();
    let kms_token = login["kms_token"].as_str().unwrap().to_owned();

    // Wait for the realm's hello to publish the static key through discovery.
    let mut jwk = None;
    for _ in 0..150 {
        let r: Value = http
            .get(format!("{core_url}/kms/{user}"))
            .bearer_auth(&core_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        if let Some(s) = r["static_jwk"].as_object() {
            jwk = Some(serde_json::from_value::<RsaPublicJwk>(Value::Object(s.clone())).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jwk = jwk.expect("the realm dialled out and said hello");
    let mut c = KmsClient::new(
        jwk,
        &format!("kms://{DOMAIN}"),
        user,
        "alice-laptop",
        SecretString::from(kms_token),
    )
    .unwrap();
    let (hs, pending) = c.begin_handshake().unwrap();
    let r: Value = relay(&http, &core_url, &core_token, hs)
        .await
        .json()
        .await
        .unwrap();
    c.finish_handshake(r["kmsMessages"][0].as_str().unwrap(), pending)
        .unwrap();
    let (req, _) = c.request("create", "/keys", json!({"count": 1})).unwrap();
    let r: Value = relay(&http, &core_url, &core_token, req)
        .await
        .json()
        .await
        .unwrap();
    let body = c.open(r["kmsMessages"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        body["status"], 201,
        "a key created through the core's relay"
    );
    let key_uri = body["keys"][0]["uri"].as_str().unwrap().to_owned();

    // A KMS token is not a core token: the core refuses it.
    let (req, _) = c.request("update", "/ping", json!({})).unwrap();
    let kms_token_at_core =
        relay(&http, &core_url, login["kms_token"].as_str().unwrap(), req).await;
    assert_eq!(kms_token_at_core.status().as_u16(), 401);

    // Kill the core; bring it back on the same port and state: the realm reconnects.
    drop(core);
    let core = start_core(d, "good", core_port);
    let mut ok = false;
    for _ in 0..300 {
        let (req, _) = c.request("retrieve", &key_uri, json!({})).unwrap();
        let r = relay(&http, &core_url, &core_token, req).await;
        if r.status().is_success() {
            let v: Value = r.json().await.unwrap();
            let body = c.open(v["kmsMessages"][0].as_str().unwrap()).unwrap();
            assert_eq!(body["status"], 200);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "traffic resumed after the core restarted, without anyone touching the realm"
    );
    // `/metrics` shows the connection up again and the reconnect counted.
    let metrics = strongroom_e2e::http_client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(gauge("strongroom_dialout_configured"), 1);
    assert_eq!(gauge("strongroom_dialout_connected"), 1);
    assert!(gauge("strongroom_dialout_reconnects") >= 1, "{metrics}");

    // A core presenting a certificate from an unpinned root is never connected to.
    drop(core);
    let rogue = start_core(d, "rogue", core_port);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let health: Value = reqwest::Client::builder()
        .use_preconfigured_tls({
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(d.join("rogue-root.pem")).unwrap())
                .unwrap();
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        })
        .build()
        .unwrap()
        .get(format!("https://localhost:{core_port}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !health.to_string().contains(DOMAIN),
        "the realm must not connect to an unpinned core: {health}"
    );
    drop(rogue);
    let _ = Command::new("kill")
        .args(["-TERM", &realm.id().to_string()])
        .status();
    let _ = realm.wait();
}
