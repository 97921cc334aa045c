//! The two-part membership change (R10) end to end: a real `strongroom serve` dialling out
//! over pinned TLS to a real `core-sim`; clients reach the KMS only through the core's
//! relay. Add and remove through the core (both sides agree), a replayed KMS part, a core
//! token at the KMS and a KMS token at the core, plain `/authorizations` on a room's
//! resource, the core killed after the KMS applied and before it did (reconciliation makes
//! both agree), and directory-sync deactivation dropping the KMS authorizations (R24).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use secrecy::SecretString;
use serde_json::{Value, json};
use strongroom_e2e::{core_sim_bin, membership_part, strongroom_bin};
use strongroom_kms::client::KmsClient;
use strongroom_kms::jose::jwk::RsaPublicJwk;
use strongroom_kms::jose::jws::Jws;
use uuid::Uuid;

const DOMAIN: &str = "kms.members.test";
const ADMIN: &str = "admin-secret-0123456789abcdef";

fn pki(dir: &Path) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "core root");
    let root = p.self_signed(&key).unwrap();
    let issuer = Issuer::new(p, key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("root.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf.pem()).unwrap();
    strongroom_e2e::secret_file(&dir.join("leaf.key"), &leaf_key.serialize_pem()).unwrap();
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_core(dir: &Path, port: u16, abort_after_receipt: bool) -> (Proc, Value) {
    start_core_with(dir, port, abort_after_receipt, "realm-token")
}

/// `token_file`: the realm token this core expects (another one locks the realm out).
fn start_core_with(
    dir: &Path,
    port: u16,
    abort_after_receipt: bool,
    token_file: &str,
) -> (Proc, Value) {
    let mut cmd = Command::new(core_sim_bin().unwrap());
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--state"])
        .arg(dir.join("core-state"))
        .arg("--tls-cert")
        .arg(dir.join("leaf.pem"))
        .arg("--tls-key")
        .arg(dir.join("leaf.key"))
        .arg("--realm")
        .arg(format!("kms://{DOMAIN}={}", dir.join(token_file).display()))
        .arg("--admin-token-file")
        .arg(dir.join("admin-token"))
        .args(["--reconcile-interval-s", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if abort_after_receipt {
        cmd.env("CORE_SIM_ABORT_AFTER_RECEIPT", "true");
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (Proc(child), info)
}

fn https(dir: &Path) -> reqwest::Client {
    strongroom_client::https_client(&dir.join("root.pem")).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `strongroom serve` with the core as identity issuer and dial-out target.
fn start_realm(d: &Path, core_port: u16, issuer: &str) -> Proc {
    strongroom_e2e::appliance_hsm_files(d).unwrap();
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
token_label = "members-e2e"
pin_file = "{dir}/pin"
so_pin_file = "{dir}/so-pin"
softhsm2_conf = "{dir}/softhsm2.conf"
rsa_bits = 2048
[[auth.issuers]]
issuer = "{issuer}"
jwks_file = "{dir}/jwks.json"
[core]
url = "wss://localhost:{core_port}/realm/v1/connect"
realm_token_file = "{dir}/realm-token"
pinned_roots = "{dir}/root.pem"
"#,
        dir = d.display(),
        kms_port = free_port(),
    );
    let cfg_path = d.join("strongroom.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
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
    Proc(
        Command::new(strongroom_bin().unwrap())
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

struct World {
    http: reqwest::Client,
    core: String,
    jwk: RsaPublicJwk,
}

struct User {
    id: Uuid,
    core_token: String,
    kms_token: String,
    kms: KmsClient,
}

impl World {
    async fn json(&self, r: reqwest::RequestBuilder) -> (u16, Value) {
        let r = r.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let (s, v) = self
            .json(
                self.http
                    .post(format!("{}{path}", self.core))
                    .bearer_auth(ADMIN)
                    .json(&body),
            )
            .await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    /// Logs in and opens a KMS channel through the core's relay.
    async fn login(&self, email: &str) -> User {
        let (s, v) = self
            .json(
                self.http
                    .post(format!("{}/identity/login", self.core))
                    .json(&json!({"email": email, "client_id": email})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let id: Uuid = v["user_id"].as_str().unwrap().parse().unwrap();
        let core_token = v["core_token"].as_str().unwrap().to_owned();
        let kms_token = v["kms_token"].as_str().unwrap().to_owned();
        let mut kms = KmsClient::new(
            self.jwk.clone(),
            &format!("kms://{DOMAIN}"),
            id,
            email,
            SecretString::from(kms_token.clone()),
        )
        .unwrap();
        let (hs, pending) = kms.begin_handshake().unwrap();
        let answer = self.relay(&core_token, hs).await.unwrap();
        kms.finish_handshake(&answer, pending).unwrap();
        User {
            id,
            core_token,
            kms_token,
            kms,
        }
    }

    async fn relay(&self, core_token: &str, msg: String) -> Option<String> {
        let (s, v) = self
            .json(
                self.http
                    .post(format!("{}/kms/messages", self.core))
                    .bearer_auth(core_token)
                    .json(&json!({"destination": format!("kms://{DOMAIN}"), "kmsMessages": [msg]})),
            )
            .await;
        (s == 200).then(|| v["kmsMessages"][0].as_str().unwrap().to_owned())
    }

    async fn call(&self, u: &User, method: &str, uri: &str, extra: Value) -> Value {
        let (req, _) = u.kms.request(method, uri, extra).unwrap();
        let answer = self.relay(&u.core_token, req).await.expect("relayed");
        u.kms.open(&answer).unwrap()
    }

    async fn can_read(&self, u: &User, key_uri: &str) -> bool {
        self.call(u, "retrieve", key_uri, json!({})).await["status"] == 200
    }

    async fn members(&self, u: &User, room: Uuid) -> Vec<Uuid> {
        let (s, v) = self
            .json(
                self.http
                    .get(format!("{}/rooms/{room}", self.core))
                    .bearer_auth(&u.core_token),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v["members"].clone()).unwrap()
    }

    async fn add(&self, actor: &User, room: Uuid, subject: Uuid, part: &str) -> (u16, Value) {
        self.json(
            self.http
                .post(format!("{}/rooms/{room}/members", self.core))
                .bearer_auth(&actor.core_token)
                .json(&json!({"user_id": subject, "kms_part": part})),
        )
        .await
    }

    async fn remove(&self, actor: &User, room: Uuid, subject: Uuid, part: &str) -> (u16, Value) {
        self.json(
            self.http
                .delete(format!("{}/rooms/{room}/members/{subject}", self.core))
                .bearer_auth(&actor.core_token)
                .json(&json!({"kms_part": part})),
        )
        .await
    }

    fn receipt(&self, jws: &str) -> Value {
        let payload = Jws::parse(jws)
            .unwrap()
            .verify_rsa(&self.jwk.to_public_key().unwrap())
            .unwrap();
        serde_json::from_slice(&payload).unwrap()
    }

    async fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_mins(1);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.core)).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["connected_realms"].to_string().contains(DOMAIN)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the realm did not (re)connect to the core");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_part_membership_through_the_real_core_and_realm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    pki(d);
    strongroom_e2e::secret_file(&d.join("realm-token"), "realm-secret-0123456789abcdef\n").unwrap();
    strongroom_e2e::secret_file(&d.join("admin-token"), &format!("{ADMIN}\n")).unwrap();
    let core_port = free_port();
    let (core, info) = start_core(d, core_port, false);
    let core_url = info["core_url"]
        .as_str()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    let http = https(d);
    let jwks: Value = http
        .get(format!("{core_url}/identity/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    std::fs::write(d.join("jwks.json"), jwks.to_string()).unwrap();
    let _realm = start_realm(d, core_port, info["issuer"].as_str().unwrap());

    let mut w = World {
        http,
        core: core_url.clone(),
        jwk: RsaPublicJwk::new(String::new(), &[1], &[1], vec![]),
    };
    let org = w
        .admin("/admin/orgs", json!({"name": "Acme", "kms_domain": DOMAIN}))
        .await;
    for (name, email) in [
        ("Alice", "alice"),
        ("Bob", "bob"),
        ("Carol", "carol"),
        ("Dave", "dave"),
        ("Eve", "eve"),
    ] {
        w.admin(
            "/admin/users",
            json!({"org": org["id"], "name": name, "email": format!("{email}@acme.test")}),
        )
        .await;
    }
    w.wait_connected().await;
    // The realm's static key, as the core learnt it from hello.
    let (_, login) = w
        .json(
            w.http
                .post(format!("{core_url}/identity/login"))
                .json(&json!({"email": "alice@acme.test"})),
        )
        .await;
    let (_, disc) = w
        .json(
            w.http
                .get(format!(
                    "{core_url}/kms/{}",
                    login["user_id"].as_str().unwrap()
                ))
                .bearer_auth(login["core_token"].as_str().unwrap()),
        )
        .await;
    w.jwk = serde_json::from_value(disc["static_jwk"].clone()).unwrap();

    let alice = w.login("alice@acme.test").await;
    let bob = w.login("bob@acme.test").await;
    let carol = w.login("carol@acme.test").await;
    let dave = w.login("dave@acme.test").await;
    let eve = w.login("eve@acme.test").await;

    // Alice: a key, a resource, a room bound to it (resource first, then the room).
    let keys = w.call(&alice, "create", "/keys", json!({"count": 1})).await;
    let key_uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let k = strongroom_kms::jose::b64d("k", keys["keys"][0]["jwk"]["k"].as_str().unwrap()).unwrap();
    let key = strongroom_kms::crypto::SecretKey32::from_slice(&k).unwrap();
    let res = w
        .call(
            &alice,
            "create",
            "/resources",
            json!({"keyUris": [key_uri]}),
        )
        .await;
    let resource = res["resource"]["uri"].as_str().unwrap().to_owned();
    let title = strongroom_kms::jose::jwe::encrypt_dir(&key, &key_uri, b"Room title");
    let (s, v) = w
        .json(
            w.http
                .post(format!("{core_url}/rooms"))
                .bearer_auth(&alice.core_token)
                .json(&json!({"resource_uri": resource, "title": title})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let room: Uuid = v["id"].as_str().unwrap().parse().unwrap();

    // A change without the KMS part is refused by the core.
    let (s, v) = w
        .json(
            w.http
                .post(format!("{core_url}/rooms/{room}/members"))
                .bearer_auth(&alice.core_token)
                .json(&json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("kms_part_required")));

    // Add bob through the core: both sides agree, the receipt is the realm's.
    let (part, nonce) = membership_part(&alice.kms, "add", &resource, bob.id, room).unwrap();
    let (s, v) = w.add(&alice, room, bob.id, &part).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["kind"], "join");
    let answer = alice.kms.open(v["kms_response"].as_str().unwrap()).unwrap();
    assert_eq!(answer["status"], 201, "{answer}");
    let r = w.receipt(v["receipt"].as_str().unwrap());
    assert_eq!(
        (
            r["op"].as_str(),
            r["subject"].as_str(),
            r["actor"].as_str(),
            r["nonce"].as_str()
        ),
        (
            Some("add"),
            Some(bob.id.to_string().as_str()),
            Some(alice.id.to_string().as_str()),
            Some(nonce.as_str())
        )
    );
    assert!(w.members(&alice, room).await.contains(&bob.id));
    assert!(w.can_read(&bob, &key_uri).await, "bob reads after the add");

    // Remove bob through the core.
    let (rpart, _) = membership_part(&alice.kms, "remove", &resource, bob.id, room).unwrap();
    let (s, v) = w.remove(&alice, room, bob.id, &rpart).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["kind"], "removed");
    assert!(!w.members(&alice, room).await.contains(&bob.id));
    assert!(!w.can_read(&bob, &key_uri).await, "bob no longer reads");

    // Replaying the first add's KMS part: the core's checks pass (bob is out), the KMS
    // refuses the nonce, nothing changes on either side.
    let (s, v) = w.add(&alice, room, bob.id, &part).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("kms_refused")), "{v}");
    let why = alice.kms.open(v["kms_response"].as_str().unwrap()).unwrap();
    assert_eq!(why["errorCode"], 409_002, "{why}");
    assert!(!w.members(&alice, room).await.contains(&bob.id));
    assert!(!w.can_read(&bob, &key_uri).await);

    // A core token inside the KMS part is refused by the KMS (401) ...
    let mut wrong = w.login("alice@acme.test").await;
    wrong
        .kms
        .set_bearer(SecretString::from(alice.core_token.clone()));
    let (p, _) = membership_part(&wrong.kms, "add", &resource, bob.id, room).unwrap();
    let (s, v) = w.add(&alice, room, bob.id, &p).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        wrong.kms.open(v["kms_response"].as_str().unwrap()).unwrap()["status"],
        401
    );
    // ... and a KMS token at the core is refused by the core (401).
    let (p, _) = membership_part(&alice.kms, "add", &resource, bob.id, room).unwrap();
    let (s, _) = w
        .json(
            w.http
                .post(format!("{core_url}/rooms/{room}/members"))
                .bearer_auth(&alice.kms_token)
                .json(&json!({"user_id": bob.id, "kms_part": p})),
        )
        .await;
    assert_eq!(s, 401);
    // A non-member actor is refused (by the core first; the KMS would too: kms/tests/it).
    let (p, _) = membership_part(&eve.kms, "add", &resource, eve.id, room).unwrap();
    let (s, v) = w.add(&eve, room, eve.id, &p).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_member")));
    assert!(!w.can_read(&eve, &key_uri).await);
    // Plain /authorizations on the room's resource: refused (403004).
    let plain = w
        .call(
            &alice,
            "create",
            "/authorizations",
            json!({"resourceUri": resource, "userIds": [eve.id]}),
        )
        .await;
    assert_eq!(plain["errorCode"], 403_004, "{plain}");
    assert!(!w.can_read(&eve, &key_uri).await);

    // Crash: the core aborts after the KMS applied carol's add, before applying it.
    drop(core);
    let (core, _) = start_core(d, core_port, true);
    w.wait_connected().await;
    let (cpart, cnonce) = membership_part(&alice.kms, "add", &resource, carol.id, room).unwrap();
    let crashed = w
        .http
        .post(format!("{core_url}/rooms/{room}/members"))
        .bearer_auth(&alice.core_token)
        .json(&json!({"user_id": carol.id, "kms_part": cpart}))
        .send()
        .await;
    assert!(crashed.is_err(), "the core aborted mid-change");
    drop(core);
    // Restart normally: the realm reconnects, reconciliation settles carol's add.
    let (core, _) = start_core(d, core_port, false);
    w.wait_connected().await;
    let deadline = Instant::now() + Duration::from_mins(1);
    while !w.members(&alice, room).await.contains(&carol.id) {
        assert!(
            Instant::now() < deadline,
            "reconciliation did not apply carol's add at the core"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        w.can_read(&carol, &key_uri).await,
        "both sides agree: carol reads"
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(d.join("core-state/state.json")).unwrap()).unwrap();
    assert!(
        state["applied_nonces"].to_string().contains(&cnonce),
        "the core recorded the nonce"
    );

    // Directory sync: carol deactivated → out of the room at the core and the KMS.
    let v = w
        .admin(&format!("/admin/users/{}/deactivate", carol.id), json!({}))
        .await;
    assert_eq!(
        v["kms_deprovisioned"],
        json!([format!("kms://{DOMAIN}")]),
        "{v}"
    );
    assert!(!w.members(&alice, room).await.contains(&carol.id));
    let auths = w
        .call(
            &alice,
            "retrieve",
            &format!("{resource}/authorizations"),
            json!({}),
        )
        .await;
    assert_eq!(auths["status"], 200);
    assert!(
        !auths.to_string().contains(&carol.id.to_string()),
        "{auths}"
    );
    assert!(auths.to_string().contains(&alice.id.to_string()));

    // Crash again, and while the realm is away the actor is deactivated: the core's
    // checks no longer hold, so reconciliation undoes the add the KMS applied.
    drop(core);
    let (core, _) = start_core(d, core_port, true);
    w.wait_connected().await;
    let (dpart, _) = membership_part(&alice.kms, "add", &resource, dave.id, room).unwrap();
    let crashed = w
        .http
        .post(format!("{core_url}/rooms/{room}/members"))
        .bearer_auth(&alice.core_token)
        .json(&json!({"user_id": dave.id, "kms_part": dpart}))
        .send()
        .await;
    assert!(crashed.is_err(), "the core aborted mid-change");
    drop(core);
    strongroom_e2e::secret_file(&d.join("other-token"), "not-the-realm-token-0123456789\n")
        .unwrap();
    let (locked_out, _) = start_core_with(d, core_port, false, "other-token");
    w.admin(&format!("/admin/users/{}/deactivate", alice.id), json!({}))
        .await;
    drop(locked_out);
    let (_core, _) = start_core(d, core_port, false);
    w.wait_connected().await;
    let deadline = Instant::now() + Duration::from_mins(1);
    while w.can_read(&dave, &key_uri).await {
        assert!(
            Instant::now() < deadline,
            "reconciliation did not undo dave's add"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state: Value =
        serde_json::from_slice(&std::fs::read(d.join("core-state/state.json")).unwrap()).unwrap();
    let members = state["rooms"][room.to_string()]["members"].to_string();
    assert!(
        !members.contains(&dave.id.to_string()),
        "the core did not apply it either"
    );
}
