//! The packaged path: `strongroom init`, `config check` and `serve` over HTTPS (rustls) on a
//! real SoftHSM2 token, driven with the project's client and a token from a test issuer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::Output;

use secrecy::SecretString;
use strongroom_e2e::fixtures::{
    ApplianceConfig, TestIssuer, discover, strongroom_init, strongroom_serve,
};
use strongroom_e2e::{KmsEndpoint, Session};
use uuid::Uuid;

const DOMAIN: &str = "kms.acme.test";
const ISS: &str = "https://idp.acme.test";

fn strongroom(args: &[&str]) -> Output {
    strongroom_e2e::fixtures::strongroom(args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_check_and_serve_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    let issuer = TestIssuer::generate(ISS);
    issuer.write_jwks(&d.join("jwks.json")).unwrap();
    // The appliance's default RSA size: this is the packaged path.
    let config = ApplianceConfig {
        rsa_bits: None,
        ..ApplianceConfig::new(d, DOMAIN, "acme-kms", ISS).unwrap()
    };
    let cfg_path = d.join("strongroom.toml");
    config.write(&cfg_path).unwrap();
    let cfg = cfg_path.to_str().unwrap();

    let out = strongroom_init(&cfg_path).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Next:"),
        "init tells IT what to do next: {text}"
    );
    assert!(d.join("state/static.csr.pem").exists() && d.join("state/static-cert.pem").exists());
    // Idempotent: a second init keeps everything.
    assert!(strongroom(&["init", "--config", cfg]).status.success());
    let out = strongroom(&["config", "check", "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A group-readable PIN file is refused, with a clear message.
    std::fs::set_permissions(d.join("pin"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = strongroom(&["config", "check", "--config", cfg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
    std::fs::set_permissions(d.join("pin"), std::fs::Permissions::from_mode(0o600)).unwrap();

    let child = strongroom_serve(&cfg_path).unwrap();
    let http = config.https_client().unwrap();
    config
        .wait_serving(&http)
        .await
        .expect("serve came up over HTTPS");
    let (discovery, jwk) = discover(&http, &config.base_url(), Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(discovery["kmsCluster"], format!("kms://{DOMAIN}"));
    assert_eq!(jwk.x5c.len(), 1, "x5c carries the static certificate");

    // A user with a token from the configured issuer: handshake and a key.
    let user = Uuid::new_v4();
    let token = issuer.token(user, &config.kms_cluster()).unwrap();
    let endpoint = KmsEndpoint {
        kms_url: &config.base_url(),
        kms_cluster: &config.kms_cluster(),
        static_jwk: jwk,
    };
    let s = Session::handshake(&http, endpoint, user, "dev-1", SecretString::from(token))
        .await
        .unwrap();
    // create_key fails unless the KMS answers 201.
    let (uri, _) = s.create_key().await.unwrap();
    assert!(uri.starts_with(&format!("kms://{DOMAIN}/keys/")), "{uri}");

    let status = child.stop().unwrap();
    assert!(status.success(), "serve stops cleanly on SIGTERM: {status}");

    // `audit key` reads the log key from the HSM: the same key the service wrote out.
    let out = strongroom(&["audit", "key", "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(d.join("state/audit.vkey")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), written);
    assert!(
        written.starts_with(&format!("{DOMAIN}/audit+")),
        "{written}"
    );
}
