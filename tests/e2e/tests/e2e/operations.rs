//! Operations (issue 5 part 2): `backup`/`restore`, `status`, `/metrics` and `config
//! check` refusals, on real `strongroom` processes with real SoftHSM2 tokens and HTTPS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use secrecy::SecretString;
use serde_json::{Value, json};
use strongroom_e2e::fixtures::{
    ApplianceConfig, ChildGuard, TestIssuer, discover, free_port, strongroom_init,
    strongroom_serve, tamper_first_audit_record,
};
use strongroom_e2e::{KmsEndpoint, Session};
use uuid::Uuid;

const DOMAIN: &str = "kms.ops.test";
const ISS: &str = "https://idp.ops.test";

fn strongroom(args: &[&str]) -> Output {
    strongroom_e2e::fixtures::strongroom(args).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One appliance configuration: HSM files in `hsm_dir` (shared by appliances that use the
/// same token), its own state directory, TLS files, port and metrics port.
struct Appliance {
    cfg: ApplianceConfig,
    config: PathBuf,
    child: Option<ChildGuard>,
}

impl Appliance {
    /// `hsm_dir` holds softhsm2.conf, pin, so-pin (strongroom_e2e::appliance_hsm_files) and
    /// `jwks.json`; `name` separates this appliance's state and TLS files.
    fn new(hsm_dir: &Path, name: &str) -> Self {
        let root = hsm_dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let cfg = ApplianceConfig {
            hsm_dir: hsm_dir.to_path_buf(),
            jwks_file: hsm_dir.join("jwks.json"),
            metrics_port: Some(free_port().unwrap()),
            ..ApplianceConfig::new(&root, DOMAIN, "ops-kms", ISS).unwrap()
        };
        let config = root.join("strongroom.toml");
        cfg.write(&config).unwrap();
        Self {
            cfg,
            config,
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

    /// `strongroom audit verify` on this appliance's state.
    fn verify_audit(&self) -> Output {
        strongroom(&[
            "audit",
            "verify",
            "--state",
            self.cfg.state_dir.to_str().unwrap(),
        ])
    }

    fn init(&self) {
        strongroom_init(&self.config).unwrap();
    }

    /// The administrator actions in this appliance's audit log, in order.
    fn admin_actions(&self) -> Vec<String> {
        let out = strongroom(&[
            "audit",
            "show",
            "--state",
            self.cfg.state_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "admin")
            .map(|r| r["action"].as_str().unwrap().to_owned())
            .collect()
    }

    fn http(&self) -> reqwest::Client {
        self.cfg.https_client().unwrap()
    }

    fn base(&self) -> String {
        self.cfg.base_url()
    }

    async fn start(&mut self) {
        self.child = Some(strongroom_serve(&self.config).unwrap());
        self.cfg
            .wait_serving(&self.http())
            .await
            .expect("serve did not come up");
    }

    fn stop(&mut self) {
        let child = self.child.take().expect("running");
        assert!(child.stop().unwrap().success(), "serve stops cleanly");
    }

    /// A handshaken client session for `user`.
    async fn session(&self, issuer: &TestIssuer, user: Uuid) -> Session {
        let http = self.http();
        let (_, jwk) = discover(&http, &self.base(), user).await.unwrap();
        let token = issuer.token(user, &self.cfg.kms_cluster()).unwrap();
        let endpoint = KmsEndpoint {
            kms_url: &self.base(),
            kms_cluster: &self.cfg.kms_cluster(),
            static_jwk: jwk,
        };
        Session::handshake(&http, endpoint, user, "dev-1", SecretString::from(token))
            .await
            .unwrap()
    }
}

fn restore(app: &Appliance, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["restore", "--in", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    app.run(&args)
}

/// The HSM files and the test issuer's JWKS in `d`; returns the issuer.
fn hsm_dir(d: &Path) -> TestIssuer {
    strongroom_e2e::appliance_hsm_files(d).unwrap();
    let issuer = TestIssuer::generate(ISS);
    issuer.write_jwks(&d.join("jwks.json")).unwrap();
    issuer
}

/// An initialised appliance `a` on a fresh token in `d`, serving; and the issuer it trusts.
async fn serving(d: &Path) -> (TestIssuer, Appliance) {
    let issuer = hsm_dir(d);
    let mut a = Appliance::new(d, "a");
    a.init();
    a.start().await;
    (issuer, a)
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
    let (issuer, mut a) = serving(d).await;
    let user = Uuid::new_v4();
    let s = a.session(&issuer, user).await;
    let created = s
        .call("create", "/keys", json!({"count": 2}))
        .await
        .unwrap();
    assert_eq!(created["status"], 201, "{created}");
    let uri = created["keys"][0]["uri"].as_str().unwrap().to_owned();
    let k = created["keys"][0]["jwk"]["k"].as_str().unwrap().to_owned();
    let got = s.call("retrieve", &uri, json!({})).await.unwrap();
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
    // The refused backup left no record; the one taken did (issue 4: admin actions).
    assert_eq!(a.admin_actions(), ["init", "start", "stop", "backup"]);
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup is readable by its owner only");
    let backup = std::fs::read(&out_path).unwrap();
    // Encrypted: neither the key nor the TLS private key appear in it.
    let tls_key = std::fs::read_to_string(a.cfg.tls_dir.join("key.pem")).unwrap();
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
        assert!(
            !b.cfg.state_dir.exists(),
            "flipped byte at {pos}: state written"
        );
        assert!(
            !b.cfg.tls_dir.exists(),
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
        assert!(!b.cfg.state_dir.exists() && !b.cfg.tls_dir.exists());
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
    assert!(!b.cfg.state_dir.exists() && !b.cfg.tls_dir.exists());

    // Another token (same label, other root key) cannot open it.
    let other_dir = d.join("other-hsm");
    std::fs::create_dir_all(&other_dir).unwrap();
    let _other_issuer = hsm_dir(&other_dir);
    let c = Appliance::new(&other_dir, "c");
    c.init();
    let c_before = tree(&c.cfg.state_dir);
    let out = c.run(&["restore", "--in", out_path.to_str().unwrap(), "--force"]);
    assert!(!out.status.success(), "another token's backup was accepted");
    assert!(stderr(&out).contains("another token"), "{}", stderr(&out));
    assert_eq!(
        tree(&c.cfg.state_dir),
        c_before,
        "nothing changed on the other appliance"
    );

    // The real restore. The restored log is the backed-up one (taken before its backup
    // record) plus its restore.
    let out = restore(&b, &out_path, &[]);
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_eq!(b.admin_actions(), ["init", "start", "stop", "restore"]);
    let out = b.verify_audit();
    assert!(
        out.status.success(),
        "restored audit log verifies: {}",
        stderr(&out)
    );
    // The TLS key comes back byte-identical and owner-only.
    assert_eq!(
        std::fs::read_to_string(b.cfg.tls_dir.join("key.pem")).unwrap(),
        tls_key
    );
    let mode = std::fs::metadata(b.cfg.tls_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    b.start().await;
    let s = b.session(&issuer, user).await;
    let again = s.call("retrieve", &uri, json!({})).await.unwrap();
    assert_eq!(again["status"], 200, "{again}");
    assert_eq!(
        again["key"]["jwk"]["k"],
        k.as_str(),
        "byte-identical key after restore"
    );
    b.stop();
    let out = b.verify_audit();
    assert!(
        out.status.success(),
        "audit log verifies after serving: {}",
        stderr(&out)
    );

    // Existing state: refused without --force, and left as it was.
    let before = tree(&b.cfg.state_dir);
    let out = restore(&b, &out_path, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(tree(&b.cfg.state_dir), before, "existing state unchanged");
    let out = restore(&b, &out_path, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let aside: Vec<_> = std::fs::read_dir(b.cfg.state_dir.parent().unwrap())
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

fn status_json(app: &Appliance) -> (bool, Value, String) {
    let out = app.run(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stderr(&out)));
    (out.status.success(), v, stderr(&out))
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {v}"))
}

/// `strongroom status`: healthy while serving (service and keys named, no secrets); a wrong
/// HSM PIN and a tampered audit log each make it exit non-zero naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_healthy_and_broken_setups() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (issuer, mut a) = serving(d).await;
    let s = a.session(&issuer, Uuid::new_v4()).await;
    assert_eq!(
        s.call("create", "/keys", json!({"count": 1}))
            .await
            .unwrap()["status"],
        201
    );

    let (ok, v, err) = status_json(&a);
    assert!(ok, "healthy: {v} {err}");
    assert_eq!(v["ok"], true);
    for name in [
        "config",
        "hsm",
        "state",
        "storage",
        "audit",
        "service",
        "tls_certificate",
        "static_certificate",
    ] {
        assert_eq!(check(&v, name)["status"], "ok", "{name}: {v}");
    }
    let hsm = check(&v, "hsm")["detail"].as_str().unwrap();
    assert!(
        hsm.contains("strongroom-root") && hsm.contains("strongroom-static-rsa"),
        "{hsm}"
    );
    assert!(
        check(&v, "service")["detail"]
            .as_str()
            .unwrap()
            .contains("200")
    );
    let text = v.to_string();
    assert!(
        !text.contains("user-pin-1234") && !text.contains("so-pin-5678"),
        "no PINs: {text}"
    );
    // The text form exits 0 too.
    assert!(a.run(&["status"]).status.success());
    a.stop();
    let (ok, v, _) = status_json(&a);
    assert!(ok, "a stopped service is a warning, not a failure: {v}");
    assert_eq!(check(&v, "service")["status"], "warn");
    assert!(
        check(&v, "storage")["detail"]
            .as_str()
            .unwrap()
            .contains("1 keys"),
        "{v}"
    );

    // Wrong PIN: the HSM check fails and is named.
    std::fs::copy(d.join("pin"), d.join("pin.good")).unwrap();
    strongroom_e2e::secret_file(&d.join("pin"), "wrong-pin-0000\n").unwrap();
    let (ok, v, err) = status_json(&a);
    assert!(!ok, "a wrong PIN must fail: {v}");
    assert_eq!(check(&v, "hsm")["status"], "fail", "{v}");
    assert!(err.contains("hsm"), "the failed check is named: {err}");
    assert!(
        !v.to_string().contains("wrong-pin-0000"),
        "the PIN is not echoed"
    );
    std::fs::rename(d.join("pin.good"), d.join("pin")).unwrap();
    assert!(status_json(&a).0, "healthy again with the right PIN");

    // A tampered audit log: one byte of a record changed.
    tamper_first_audit_record(&a.cfg.state_dir).unwrap();
    let (ok, v, err) = status_json(&a);
    assert!(!ok, "a tampered audit log must fail: {v}");
    assert_eq!(check(&v, "audit")["status"], "fail", "{v}");
    assert!(err.contains("audit"), "{err}");
}

/// `/metrics` (R14): scraped during real traffic, the counters move; nothing in it is a
/// bearer token, key material, a user ID or a key URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::float_cmp)] // the gauges compared are small integers, exact in f64
async fn metrics_move_with_traffic_and_carry_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (issuer, mut a) = serving(d).await;
    let plain = strongroom_e2e::http_client();
    let url = format!("http://127.0.0.1:{}/metrics", a.cfg.metrics_port.unwrap());
    let scrape = || async {
        let r = plain.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    let before = scrape().await;
    let posts = r#"strongroom_http_requests_total{route="messages",method="POST",status="2xx"}"#;
    let before_posts = value(&before, posts);

    let user = Uuid::new_v4();
    let token = issuer.token(user, &format!("kms://{DOMAIN}")).unwrap();
    let s = a.session(&issuer, user).await;
    let created = s
        .call("create", "/keys", json!({"count": 3}))
        .await
        .unwrap();
    assert_eq!(created["status"], 201);
    let mut secrets = vec![token.clone(), user.to_string()];
    for k in created["keys"].as_array().unwrap() {
        let uri = k["uri"].as_str().unwrap().to_owned();
        let got = s.call("retrieve", &uri, json!({})).await.unwrap();
        assert_eq!(got["status"], 200);
        secrets.push(k["jwk"]["k"].as_str().unwrap().to_owned());
        secrets.push(uri.rsplit('/').next().unwrap().to_owned());
        secrets.push(uri);
    }
    // A 4xx: a bad body.
    let r = a
        .http()
        .post(format!("{}/kms/messages", a.base()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let after = scrape().await;
    // handshake + create + 3 retrieves
    assert!(value(&after, posts) >= before_posts + 5.0, "{after}");
    assert!(
        value(
            &after,
            r#"strongroom_http_requests_total{route="messages",method="POST",status="4xx"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            r#"strongroom_http_request_duration_seconds_count{route="messages"}"#
        ) >= 6.0
    );
    assert_eq!(value(&after, "strongroom_keys_stored"), 3.0);
    assert!(value(&after, "strongroom_channels_live") >= 1.0);
    assert!(value(&after, "strongroom_audit_records") > value(&before, "strongroom_audit_records"));
    assert!(value(&after, "strongroom_audit_flushes") > value(&before, "strongroom_audit_flushes"));
    assert_eq!(value(&after, "strongroom_storage_healthy"), 1.0);
    assert_eq!(value(&after, "strongroom_hsm_connected"), 1.0);
    assert!(after.contains("strongroom_build_info{version="), "{after}");
    for secret in &secrets {
        assert!(!after.contains(secret.as_str()), "/metrics leaks {secret}");
    }
    assert!(!after.contains("kms://"), "no URIs at all in /metrics");
    // Not on the KMS listener: clients of the KMS do not see traffic figures.
    let r = a
        .http()
        .get(format!("{}/metrics", a.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    a.stop();
}

/// `config check` refuses an unknown key, a wrong version and group- or world-readable
/// secret files (PIN, SO PIN, TLS key), each with a message naming the problem.
#[test]
fn config_check_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _issuer = hsm_dir(d);
    let a = Appliance::new(d, "a");
    a.init();
    let good = std::fs::read_to_string(&a.config).unwrap();
    let ok = a.run(&["config", "check"]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    let refused = |text: &str, needle: &str| {
        std::fs::write(&a.config, text).unwrap();
        let out = a.run(&["config", "check"]);
        assert!(!out.status.success(), "accepted: {text}");
        assert!(
            stderr(&out).contains(needle),
            "{needle:?} not in: {}",
            stderr(&out)
        );
        std::fs::write(&a.config, &good).unwrap();
    };
    refused(
        &good.replace("rsa_bits = 2048", "rsa_bits = 2048\npin = \"1234\""),
        "pin",
    );
    refused(&format!("{good}\n[extra]\nx = 1\n"), "extra");
    refused(&good.replace("[metrics]", "[metrics]\nport = 1"), "port");
    refused(
        &good.replace("version = 1", "version = 2"),
        "unsupported config version 2",
    );
    refused(&good.replace("version = 1\n", ""), "version");

    for (file, field) in [
        ("pin", "hsm.pin_file"),
        ("so-pin", "hsm.so_pin_file"),
        ("a/tls/key.pem", "tls.private_key"),
    ] {
        let p = d.join(file);
        for mode in [0o640, 0o604] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let out = a.run(&["config", "check"]);
            assert!(!out.status.success(), "{file} mode {mode:o} accepted");
            let e = stderr(&out);
            assert!(
                e.contains(field) && e.contains("readable by group or others"),
                "{e}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(a.run(&["config", "check"]).status.success());
}
