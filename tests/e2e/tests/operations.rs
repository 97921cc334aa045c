//! Operations (issue 5 part 2): `backup`/`restore`, `status`, `/metrics` and `config
//! check` refusals, on real `strongroom` processes with real SoftHSM2 tokens and HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

const DOMAIN: &str = "kms.ops.test";
const ISS: &str = "https://idp.ops.test";

fn strongroom(args: &[&str]) -> Output {
    Command::new(strongroom_bin().unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One appliance configuration: HSM files in `hsm_dir` (shared by appliances that use the
/// same token), its own state directory, TLS files and port.
struct Appliance {
    config: PathBuf,
    state: PathBuf,
    tls_dir: PathBuf,
    port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

/// The test issuer (a P-256 key) whose JWKS the appliances trust.
struct Issuer {
    sk: p256::SecretKey,
}

impl Issuer {
    fn new(dir: &Path) -> Self {
        let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let point = sk.public_key().to_sec1_bytes();
        let jwks = json!({"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x": b64e(&point[1..33]),"y": b64e(&point[33..65])}]});
        std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
        Self { sk }
    }

    fn token(&self, user: Uuid) -> String {
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
        let der = self.sk.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(der.as_bytes())).unwrap()
    }
}

impl Appliance {
    /// `hsm_dir` holds softhsm2.conf, pin, so-pin (strongroom_e2e::appliance_hsm_files) and
    /// `jwks.json`; `name` separates this appliance's state and TLS files.
    fn new(hsm_dir: &Path, name: &str) -> Self {
        let root = hsm_dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let metrics_port = free_port();
        let state = root.join("state");
        let tls_dir = root.join("tls");
        let config = root.join("strongroom.toml");
        let text = format!(
            r#"version = 1
[kms]
domain = "{DOMAIN}"
listen = "127.0.0.1:{port}"
state_dir = "{state}"
[tls]
certificate = "{tls}/cert.pem"
private_key = "{tls}/key.pem"
[hsm]
token_label = "ops-kms"
pin_file = "{dir}/pin"
so_pin_file = "{dir}/so-pin"
softhsm2_conf = "{dir}/softhsm2.conf"
rsa_bits = 2048
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[auth.issuers]]
issuer = "{ISS}"
jwks_file = "{dir}/jwks.json"
"#,
            state = state.display(),
            tls = tls_dir.display(),
            dir = hsm_dir.display()
        );
        std::fs::write(&config, text).unwrap();
        Self {
            config,
            state,
            tls_dir,
            port,
            metrics_port,
            child: None,
        }
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.cfg()]);
        strongroom(&all)
    }

    fn init(&self) {
        let out = self.run(&["init"]);
        assert!(out.status.success(), "init: {}", stderr(&out));
    }

    fn http(&self) -> reqwest::Client {
        let ca = CertificateDer::from_pem_file(self.tls_dir.join("cert.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(DOMAIN, format!("127.0.0.1:{}", self.port).parse().unwrap())
            .build()
            .unwrap()
    }

    fn base(&self) -> String {
        format!("https://{DOMAIN}:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(strongroom_bin().unwrap())
            .args(["serve", "--config", self.cfg()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = self.http();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{}/healthz", self.base())).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve did not come up");
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(child.wait().unwrap().success(), "serve stops cleanly");
    }

    /// A handshaken client session for `user`.
    async fn session(&self, issuer: &Issuer, user: Uuid) -> Kms {
        let http = self.http();
        let discovery: Value = http
            .get(format!("{}/kms/{user}", self.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let jwk: RsaPublicJwk =
            serde_json::from_str(discovery["rsaPublicKey"].as_str().unwrap()).unwrap();
        let client = KmsClient::new(
            jwk,
            &format!("kms://{DOMAIN}"),
            user,
            "dev-1",
            SecretString::from(issuer.token(user)),
        )
        .unwrap();
        let mut k = Kms {
            http,
            url: format!("{}/kms/messages", self.base()),
            client,
        };
        let (hs, pending) = k.client.begin_handshake().unwrap();
        let answer = k.post(hs).await;
        k.client.finish_handshake(&answer, pending).unwrap();
        k
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Kms {
    http: reqwest::Client,
    url: String,
    client: KmsClient,
}

impl Kms {
    async fn post(&self, msg: String) -> String {
        let r: Value = self
            .http
            .post(&self.url)
            .json(&json!({"destination": format!("kms://{DOMAIN}"), "kmsMessages": [msg]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["kmsMessages"][0].as_str().unwrap().to_owned()
    }

    async fn call(&self, method: &str, uri: &str, body: Value) -> Value {
        let (req, _) = self.client.request(method, uri, body).unwrap();
        self.client.open(&self.post(req).await).unwrap()
    }
}

fn restore(app: &Appliance, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["restore", "--in", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    app.run(&args)
}

fn hsm_dir(d: &Path) -> Issuer {
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    Issuer::new(d)
}

/// Every file under `dir` with its bytes (to prove "nothing written / nothing changed").
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// R1, R7, issue 5: a backup restores on a fresh state directory with the same HSM token
/// and serves byte-identical keys with an audit log that verifies; a changed, truncated or
/// foreign backup is refused with nothing written; existing state is never overwritten
/// without --force; a running service is never copied half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let issuer = hsm_dir(d);
    let mut a = Appliance::new(d, "a");
    a.init();
    a.start().await;
    let user = Uuid::new_v4();
    let s = a.session(&issuer, user).await;
    let created = s.call("create", "/keys", json!({"count": 2})).await;
    assert_eq!(created["status"], 201, "{created}");
    let uri = created["keys"][0]["uri"].as_str().unwrap().to_owned();
    let k = created["keys"][0]["jwk"]["k"].as_str().unwrap().to_owned();
    let got = s.call("retrieve", &uri, json!({})).await;
    assert_eq!(got["key"]["jwk"]["k"], k.as_str());

    // While the service runs, a backup is refused (it would copy a state being written).
    let out_path = d.join("a.backup");
    let out = a.run(&["backup", "--out", out_path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("stop the service"),
        "{}",
        stderr(&out)
    );
    assert!(!out_path.exists(), "nothing written");
    a.stop();

    let out = a.run(&["backup", "--out", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is readable by its owner only");
    let backup = std::fs::read(&out_path).unwrap();
    // Encrypted: neither the key nor the TLS private key appear in it.
    let tls_key = std::fs::read_to_string(a.tls_dir.join("key.pem")).unwrap();
    let tls_body: String = tls_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let text = String::from_utf8_lossy(&backup);
    assert!(!text.contains(&tls_body) && !text.contains(&k));
    assert!(
        !text.contains("kms.redb") && !text.contains(DOMAIN),
        "the manifest is encrypted too"
    );

    // B: a fresh state directory on the same token.
    let mut b = Appliance::new(d, "b");

    // Tampered copies are refused, and nothing is written.
    let bad = d.join("bad.backup");
    let header_len = 8 + 1 + 4 + 2 + 40 + 12;
    let mut positions: Vec<usize> = (0..header_len).collect();
    let n = backup.len();
    positions.extend((1..12).map(|i| header_len + (n - header_len) * i / 12));
    positions.extend([n - 17, n - 16, n - 1]);
    for &pos in &positions {
        let mut t = backup.clone();
        t[pos] ^= 0x01;
        std::fs::write(&bad, &t).unwrap();
        let out = restore(&b, &bad, &[]);
        assert!(
            !out.status.success(),
            "a flipped byte at {pos} was accepted"
        );
        assert!(!b.state.exists(), "flipped byte at {pos}: state written");
        assert!(
            !b.tls_dir.exists(),
            "flipped byte at {pos}: TLS files written"
        );
    }
    for len in [0, 7, header_len, n / 2, n - 1] {
        std::fs::write(&bad, &backup[..len]).unwrap();
        let out = restore(&b, &bad, &[]);
        assert!(
            !out.status.success(),
            "a backup cut to {len} bytes was accepted"
        );
        assert!(!b.state.exists() && !b.tls_dir.exists());
    }
    let mut extended = backup.clone();
    extended.push(0);
    std::fs::write(&bad, &extended).unwrap();
    assert!(
        !restore(&b, &bad, &[]).status.success(),
        "an appended byte was accepted"
    );
    let out = {
        let mut t = backup.clone();
        t[10] ^= 0x01; // the wrap mechanism field
        std::fs::write(&bad, &t).unwrap();
        restore(&b, &bad, &[])
    };
    assert!(stderr(&out).contains("mechanism"), "{}", stderr(&out));
    let mut t = backup.clone();
    t[n / 2] ^= 0x80;
    std::fs::write(&bad, &t).unwrap();
    let out = restore(&b, &bad, &[]);
    assert!(
        stderr(&out).contains("integrity check"),
        "the refusal says why: {}",
        stderr(&out)
    );
    assert!(!b.state.exists() && !b.tls_dir.exists());

    // Another token (same label, other root key) cannot open it.
    let other_dir = d.join("other-hsm");
    std::fs::create_dir_all(&other_dir).unwrap();
    let _other_issuer = hsm_dir(&other_dir);
    let c = Appliance::new(&other_dir, "c");
    c.init();
    let c_before = tree(&c.state);
    let out = c.run(&["restore", "--in", out_path.to_str().unwrap(), "--force"]);
    assert!(!out.status.success(), "another token's backup was accepted");
    assert!(stderr(&out).contains("another token"), "{}", stderr(&out));
    assert_eq!(
        tree(&c.state),
        c_before,
        "nothing changed on the other appliance"
    );

    // The real restore.
    let out = restore(&b, &out_path, &[]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    let out = strongroom(&["audit", "verify", "--state", b.state.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restored audit log verifies: {}",
        stderr(&out)
    );
    b.start().await;
    let s = b.session(&issuer, user).await;
    let again = s.call("retrieve", &uri, json!({})).await;
    assert_eq!(again["status"], 200, "{again}");
    assert_eq!(
        again["key"]["jwk"]["k"],
        k.as_str(),
        "byte-identical key after restore"
    );
    b.stop();
    let out = strongroom(&["audit", "verify", "--state", b.state.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "audit log verifies after serving: {}",
        stderr(&out)
    );

    // Existing state: refused without --force, and left as it was.
    let before = tree(&b.state);
    let out = restore(&b, &out_path, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(tree(&b.state), before, "existing state unchanged");
    let out = restore(&b, &out_path, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let aside: Vec<_> = std::fs::read_dir(b.state.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.pre-restore-")
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the replaced state is moved aside, not deleted"
    );
    assert_eq!(tree(&aside[0].path()).len(), before.len());
}
