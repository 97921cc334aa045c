//! The two-part membership change (R10) end to end: a real `strongroom serve` dialling out
//! over pinned TLS to a real `core-sim`; clients reach the KMS only through the core's
//! relay. Add and remove through the core (both sides agree), a replayed KMS part, a core
//! token at the KMS and a KMS token at the core, plain `/authorizations` on a room's
//! resource, the core killed after the KMS applied and before it did (reconciliation makes
//! both agree), and directory-sync deactivation dropping the KMS authorizations (R24).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use strongroom_e2e::fixtures::{
    ApplianceConfig, CoreLogin, CoreSimSpec, Pki, RelaySession, free_port,
};
use strongroom_e2e::{membership_part, secret_file};
use strongroom_kms::jose::jwk::RsaPublicJwk;
use strongroom_kms::jose::jws::Jws;
use uuid::Uuid;

const DOMAIN: &str = "kms.members.test";
const ADMIN: &str = "admin-secret-0123456789abcdef";

struct World {
    http: reqwest::Client,
    core: String,
    jwk: RsaPublicJwk,
}

type User = RelaySession;

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
        let login = CoreLogin::login(&self.http, &self.core, email, email)
            .await
            .unwrap();
        RelaySession::connect(
            &self.http,
            &self.core,
            &format!("kms://{DOMAIN}"),
            login,
            self.jwk.clone(),
            email,
        )
        .await
        .unwrap()
    }

    async fn call(&self, u: &User, method: &str, uri: &str, extra: Value) -> Value {
        u.call(method, uri, extra).await.expect("relayed")
    }

    async fn can_read(&self, u: &User, key_uri: &str) -> bool {
        self.call(u, "retrieve", key_uri, json!({})).await["status"] == 200
    }

    async fn members(&self, u: &User, room: Uuid) -> Vec<Uuid> {
        let (s, v) = self
            .json(
                self.http
                    .get(format!("{}/rooms/{room}", self.core))
                    .bearer_auth(u.login.core_token.expose_secret()),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v["members"].clone()).unwrap()
    }

    async fn add(&self, actor: &User, room: Uuid, subject: Uuid, part: &str) -> (u16, Value) {
        self.json(
            self.http
                .post(format!("{}/rooms/{room}/members", self.core))
                .bearer_auth(actor.login.core_token.expose_secret())
                .json(&json!({"user_id": subject, "kms_part": part})),
        )
        .await
    }

    async fn remove(&self, actor: &User, room: Uuid, subject: Uuid, part: &str) -> (u16, Value) {
        self.json(
            self.http
                .delete(format!("{}/rooms/{room}/members/{subject}", self.core))
                .bearer_auth(actor.login.core_token.expose_secret())
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

/// Starts the core from `crashing` (it aborts once the KMS applied a membership change,
/// before it applies its own part) and has `actor` add `subject` to `room` through it;
/// returns the nonce of the KMS part. The core is gone afterwards.
async fn add_and_crash(
    w: &World,
    crashing: &CoreSimSpec,
    actor: &User,
    resource: &str,
    room: Uuid,
    subject: Uuid,
) -> String {
    let _core = crashing.start().unwrap();
    w.wait_connected().await;
    let (part, nonce) = membership_part(&actor.kms, "add", resource, subject, room).unwrap();
    let crashed = w
        .http
        .post(format!("{}/rooms/{room}/members", w.core))
        .bearer_auth(actor.login.core_token.expose_secret())
        .json(&json!({"user_id": subject, "kms_part": part}))
        .send()
        .await;
    assert!(crashed.is_err(), "the core aborted mid-change");
    nonce
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_part_membership_through_the_real_core_and_realm() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let pki = Pki::generate(d, "core").unwrap();
    secret_file(&d.join("realm-token"), "realm-secret-0123456789abcdef\n").unwrap();
    secret_file(&d.join("admin-token"), &format!("{ADMIN}\n")).unwrap();
    let core_port = free_port().unwrap();
    let spec = CoreSimSpec {
        reconcile_interval_s: Some(2),
        ..CoreSimSpec::new(d, &pki, core_port, DOMAIN)
    };
    // The same core, aborting mid-change (after the KMS applied, before the core did).
    let crashing = CoreSimSpec {
        abort_after_receipt: true,
        ..spec.clone()
    };
    let core = spec.start().unwrap();
    let core_url = core.url().unwrap();
    let http = pki.https_client().unwrap();
    core.write_jwks(&http, &d.join("jwks.json")).await.unwrap();
    // `strongroom serve` with the core as identity issuer and dial-out target.
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    let _realm = ApplianceConfig {
        core: Some(spec.link(&pki.root)),
        ..ApplianceConfig::new(d, DOMAIN, "members-e2e", core.issuer().unwrap()).unwrap()
    }
    .init_and_serve(&d.join("strongroom.toml"))
    .unwrap();

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
    let login = CoreLogin::login(&w.http, &core_url, "alice@acme.test", "alice@acme.test")
        .await
        .unwrap();
    w.jwk = login
        .discovered_jwk(&w.http, &core_url)
        .await
        .unwrap()
        .expect("the realm said hello");

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
                .bearer_auth(alice.login.core_token.expose_secret())
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
                .bearer_auth(alice.login.core_token.expose_secret())
                .json(&json!({"user_id": bob.login.user})),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("kms_part_required")));

    // Add bob through the core: both sides agree, the receipt is the realm's.
    let (part, nonce) =
        membership_part(&alice.kms, "add", &resource, bob.login.user, room).unwrap();
    let (s, v) = w.add(&alice, room, bob.login.user, &part).await;
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
            Some(bob.login.user.to_string().as_str()),
            Some(alice.login.user.to_string().as_str()),
            Some(nonce.as_str())
        )
    );
    assert!(w.members(&alice, room).await.contains(&bob.login.user));
    assert!(w.can_read(&bob, &key_uri).await, "bob reads after the add");

    // Remove bob through the core.
    let (rpart, _) =
        membership_part(&alice.kms, "remove", &resource, bob.login.user, room).unwrap();
    let (s, v) = w.remove(&alice, room, bob.login.user, &rpart).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event"]["kind"], "removed");
    assert!(!w.members(&alice, room).await.contains(&bob.login.user));
    assert!(!w.can_read(&bob, &key_uri).await, "bob no longer reads");

    // Replaying the first add's KMS part: the core's checks pass (bob is out), the KMS
    // refuses the nonce, nothing changes on either side.
    let (s, v) = w.add(&alice, room, bob.login.user, &part).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("kms_refused")), "{v}");
    let why = alice.kms.open(v["kms_response"].as_str().unwrap()).unwrap();
    assert_eq!(why["errorCode"], 409_002, "{why}");
    assert!(!w.members(&alice, room).await.contains(&bob.login.user));
    assert!(!w.can_read(&bob, &key_uri).await);

    // A core token inside the KMS part is refused by the KMS (401) ...
    let mut wrong = w.login("alice@acme.test").await;
    wrong.kms.set_bearer(alice.login.core_token.clone());
    let (p, _) = membership_part(&wrong.kms, "add", &resource, bob.login.user, room).unwrap();
    let (s, v) = w.add(&alice, room, bob.login.user, &p).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(
        wrong.kms.open(v["kms_response"].as_str().unwrap()).unwrap()["status"],
        401
    );
    // ... and a KMS token at the core is refused by the core (401).
    let (p, _) = membership_part(&alice.kms, "add", &resource, bob.login.user, room).unwrap();
    let (s, _) = w
        .json(
            w.http
                .post(format!("{core_url}/rooms/{room}/members"))
                .bearer_auth(alice.login.kms_token.expose_secret())
                .json(&json!({"user_id": bob.login.user, "kms_part": p})),
        )
        .await;
    assert_eq!(s, 401);
    // A non-member actor is refused (by the core first; the KMS would too: kms/tests/it).
    let (p, _) = membership_part(&eve.kms, "add", &resource, eve.login.user, room).unwrap();
    let (s, v) = w.add(&eve, room, eve.login.user, &p).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_member")));
    assert!(!w.can_read(&eve, &key_uri).await);
    // Plain /authorizations on the room's resource: refused (403004).
    let plain = w
        .call(
            &alice,
            "create",
            "/authorizations",
            json!({"resourceUri": resource, "userIds": [eve.login.user]}),
        )
        .await;
    assert_eq!(plain["errorCode"], 403_004, "{plain}");
    assert!(!w.can_read(&eve, &key_uri).await);

    // Crash: the core aborts after the KMS applied carol's add, before applying it.
    drop(core);
    let cnonce = add_and_crash(&w, &crashing, &alice, &resource, room, carol.login.user).await;
    // Restart normally: the realm reconnects, reconciliation settles carol's add.
    let core = spec.start().unwrap();
    w.wait_connected().await;
    let deadline = Instant::now() + Duration::from_mins(1);
    while !w.members(&alice, room).await.contains(&carol.login.user) {
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
        .admin(
            &format!("/admin/users/{}/deactivate", carol.login.user),
            json!({}),
        )
        .await;
    assert_eq!(
        v["kms_deprovisioned"],
        json!([format!("kms://{DOMAIN}")]),
        "{v}"
    );
    assert!(!w.members(&alice, room).await.contains(&carol.login.user));
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
        !auths.to_string().contains(&carol.login.user.to_string()),
        "{auths}"
    );
    assert!(auths.to_string().contains(&alice.login.user.to_string()));

    // Crash again, and while the realm is away the actor is deactivated: the core's
    // checks no longer hold, so reconciliation undoes the add the KMS applied.
    drop(core);
    add_and_crash(&w, &crashing, &alice, &resource, room, dave.login.user).await;
    secret_file(&d.join("other-token"), "not-the-realm-token-0123456789\n").unwrap();
    let locked_out = CoreSimSpec {
        realm_token_file: d.join("other-token"),
        ..spec.clone()
    }
    .start()
    .unwrap();
    w.admin(
        &format!("/admin/users/{}/deactivate", alice.login.user),
        json!({}),
    )
    .await;
    drop(locked_out);
    let _core = spec.start().unwrap();
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
        !members.contains(&dave.login.user.to_string()),
        "the core did not apply it either"
    );
}
