//! The packaged path: `strongroom init`, `config check` and `serve` over HTTPS (rustls) on a
//! real SoftHSM2 token, driven with the project's client and a token from a test issuer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use strongroom_e2e::strongroom_bin;
use strongroom_kms::client::KmsClient;
use strongroom_kms::jose::b64e;
use strongroom_kms::jose::jwk::RsaPublicJwk;
use uuid::Uuid;

const DOMAIN: &str = "kms.acme.test";
const ISS: &str = "https://idp.acme.test";

fn strongroom(args: &[&str]) -> std::process::Output {
    Command::new(strongroom_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_check_and_serve_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    let sk =
        <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(&mut rand::rng());
    let point = sk.public_key().to_sec1_bytes();
    let jwks = json!({"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x": b64e(&point[1..33]),"y": b64e(&point[33..65])}]});
    std::fs::write(d.join("jwks.json"), jwks.to_string()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        r#"version = 1
[kms]
domain = "{DOMAIN}"
listen = "127.0.0.1:{port}"
state_dir = "{state}"
[tls]
certificate = "{dir}/tls/cert.pem"
private_key = "{dir}/tls/key.pem"
[hsm]
token_label = "acme-kms"
pin_file = "{dir}/pin"
so_pin_file = "{dir}/so-pin"
softhsm2_conf = "{dir}/softhsm2.conf"
[[auth.issuers]]
issuer = "{ISS}"
jwks_file = "{dir}/jwks.json"
"#,
        state = d.join("state").display(),
        dir = d.display()
    );
    let cfg_path = d.join("strongroom.toml");
    std::fs::write(&cfg_path, &config).unwrap();
    let cfg = cfg_path.to_str().unwrap();

    let out = strongroom(&["init", "--config", cfg]);
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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

    let mut child = Command::new(strongroom_bin().unwrap())
        .args(["serve", "--config", cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ca = CertificateDer::from_pem_file(d.join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(DOMAIN, format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let base = format!("https://{DOMAIN}:{port}");
    let mut discovery = None;
    for _ in 0..100 {
        if let Ok(r) = http
            .get(format!("{base}/kms/{}", Uuid::new_v4()))
            .send()
            .await
        {
            discovery = Some(r.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let discovery = discovery.expect("serve came up over HTTPS");
    assert_eq!(discovery["kmsCluster"], format!("kms://{DOMAIN}"));
    let jwk: RsaPublicJwk =
        serde_json::from_str(discovery["rsaPublicKey"].as_str().unwrap()).unwrap();
    assert_eq!(jwk.x5c.len(), 1, "x5c carries the static certificate");

    // A user with a token from the configured issuer: handshake and a key.
    let user = Uuid::new_v4();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let claims = json!({"iss": ISS, "aud": format!("kms://{DOMAIN}"), "sub": user.to_string(),
        "org": Uuid::new_v4().to_string(), "iat": now, "exp": now + 600});
    let der = sk.to_pkcs8_der().unwrap();
    let token =
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap();
    let mut c = KmsClient::new(
        jwk,
        &format!("kms://{DOMAIN}"),
        user,
        "dev-1",
        SecretString::from(token),
    )
    .unwrap();
    let post = |msg: String| {
        let http = http.clone();
        let url = format!("{base}/kms/messages");
        async move {
            let r: Value = http
                .post(url)
                .json(&json!({"destination": format!("kms://{DOMAIN}"), "kmsMessages": [msg]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["kmsMessages"][0].as_str().unwrap().to_owned()
        }
    };
    let (hs, pending) = c.begin_handshake().unwrap();
    let answer = post(hs).await;
    c.finish_handshake(&answer, pending).unwrap();
    let (req, _) = c.request("create", "/keys", json!({"count": 1})).unwrap();
    let body = c.open(&post(req).await).unwrap();
    assert_eq!(body["status"], 201);
    assert!(
        body["keys"][0]["uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("kms://{DOMAIN}/keys/"))
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
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
