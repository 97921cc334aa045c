//! The realm dials out to the simulated core over pinned TLS (R3, R21): a client's KMS
//! messages travel through the core's relay; the realm reconnects by itself after the core
//! is killed and restarted; a core whose certificate chains to an unpinned root is never
//! connected to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde_json::json;
use strongroom_e2e::fixtures::{
    ApplianceConfig, CoreLogin, CoreSimSpec, Pki, RelaySession, free_port, relay,
};
use strongroom_e2e::{json_ok, secret_file};

const DOMAIN: &str = "kms.acme.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_traffic_flows_through_the_core_and_survives_a_core_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = Pki::generate(d, "good").unwrap();
    let rogue = Pki::generate(d, "rogue").unwrap();
    secret_file(&d.join("realm-token"), "realm-secret-0123456789abcdef\n").unwrap();
    secret_file(&d.join("admin-token"), "admin-secret-0123456789abcdef\n").unwrap();
    let core_port = free_port().unwrap();
    let core_spec = CoreSimSpec::new(d, &good, core_port, DOMAIN);
    let core = core_spec.start().unwrap();
    let core_url = core.url().unwrap();
    let http = good.https_client().unwrap();

    // The realm trusts the core's identity service for KMS tokens.
    core.write_jwks(&http, &d.join("jwks.json")).await.unwrap();
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    let metrics_port = free_port().unwrap();
    let cfg = ApplianceConfig {
        metrics_port: Some(metrics_port),
        core: Some(core_spec.link(&good.root)),
        ..ApplianceConfig::new(d, DOMAIN, "acme-dialout", core.issuer().unwrap()).unwrap()
    };
    let realm = cfg.init_and_serve(&d.join("strongroom.toml")).unwrap();

    // An organisation whose KMS is this realm, a user, a login (two tokens).
    let admin =
        strongroom_client::Admin::from_file(http.clone(), &core_url, &d.join("admin-token"))
            .unwrap();
    let org = admin.org("Acme", DOMAIN).await.unwrap();
    admin
        .user(org, "Alice Example", "alice@acme.test")
        .await
        .unwrap();
    let login = CoreLogin::login(&http, &core_url, "alice@acme.test", "alice-laptop")
        .await
        .unwrap();

    // Wait for the realm's hello to publish the static key through discovery.
    let mut jwk = None;
    for _ in 0..150 {
        jwk = login.discovered_jwk(&http, &core_url).await.unwrap();
        if jwk.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jwk = jwk.expect("the realm dialled out and said hello");
    let destination = cfg.kms_cluster();
    let c = RelaySession::connect(&http, &core_url, &destination, login, jwk, "alice-laptop")
        .await
        .unwrap();
    let body = c
        .call("create", "/keys", json!({"count": 1}))
        .await
        .unwrap();
    assert_eq!(
        body["status"], 201,
        "a key created through the core's relay"
    );
    let key_uri = body["keys"][0]["uri"].as_str().unwrap().to_owned();

    // A KMS token is not a core token: the core refuses it.
    let (req, _) = c.kms.request("update", "/ping", json!({})).unwrap();
    let kms_token_at_core = relay(
        &http,
        &core_url,
        c.login.kms_token.expose_secret(),
        &destination,
        req,
    )
    .await
    .unwrap();
    assert_eq!(kms_token_at_core.status().as_u16(), 401);

    // Kill the core; bring it back on the same port and state: the realm reconnects.
    drop(core);
    let core = core_spec.start().unwrap();
    let mut ok = false;
    for _ in 0..300 {
        let (req, _) = c.kms.request("retrieve", &key_uri, json!({})).unwrap();
        let r = c.relay(req).await.unwrap();
        if r.status().is_success() {
            let answer = RelaySession::answer(r).await.unwrap();
            let body = c.kms.open(&answer).unwrap();
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
    let rogue_core = CoreSimSpec::new(d, &rogue, core_port, DOMAIN)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rogue_http = rogue.https_client().unwrap();
    let health = json_ok(rogue_http.get(format!("https://localhost:{core_port}/healthz")))
        .await
        .unwrap();
    assert!(
        !health.to_string().contains(DOMAIN),
        "the realm must not connect to an unpinned core: {health}"
    );
    drop(rogue_core);
    let _ = realm.stop();
}
