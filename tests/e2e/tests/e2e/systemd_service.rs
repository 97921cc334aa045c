//! `strongroom serve` as the packaged systemd service runs it (issue 5): the `Type=notify`
//! protocol (READY=1 once listening, WATCHDOG=1 at half of `WATCHDOG_USEC`, STOPPING=1 on
//! SIGTERM, then a clean exit with the audit log's final checkpoint), the unit's hardening
//! score, and the binary under `MemoryDenyWriteExecute` (the kernel's PR_SET_MDWE, which is
//! what systemd's setting amounts to).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use strongroom_e2e::fixtures::{ApplianceConfig, TestIssuer, sigterm, strongroom_init};
use strongroom_e2e::strongroom_bin;

const DOMAIN: &str = "kms.systemd.test";

/// A configured and initialised appliance in a temporary directory.
struct Appliance {
    dir: tempfile::TempDir,
    config: ApplianceConfig,
}

impl Appliance {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        strongroom_e2e::appliance_hsm_files(d).unwrap();
        let issuer = TestIssuer::generate("https://idp.systemd.test");
        issuer.write_jwks(&d.join("jwks.json")).unwrap();
        let config = ApplianceConfig::new(d, DOMAIN, "systemd-test", issuer.iss()).unwrap();
        config.write(&d.join("strongroom.toml")).unwrap();
        let a = Self { dir, config };
        strongroom_init(&a.config()).unwrap();
        a
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("strongroom.toml")
    }

    /// `strongroom serve` with systemd's notify environment; `wrapper` runs first (argv
    /// prefix) when given. Stderr goes to `serve.log`.
    fn serve(&self, notify: &Path, wrapper: &[&str]) -> Child {
        let bin = strongroom_bin().unwrap();
        let mut argv: Vec<String> = wrapper.iter().map(|s| (*s).to_owned()).collect();
        argv.push(bin.to_str().unwrap().to_owned());
        argv.extend([
            "serve".into(),
            "--config".into(),
            self.config().to_str().unwrap().to_owned(),
        ]);
        let log = std::fs::File::create(self.path().join("serve.log")).unwrap();
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", notify)
            // 400 ms: pings are expected every 200 ms.
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .env_remove("INVOCATION_ID")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("serve.log")).unwrap_or_default()
    }

    /// `GET /healthz` over HTTPS, trusting the trial certificate `init` wrote.
    async fn healthz(&self) -> Value {
        let http = self.config.https_client().unwrap();
        http.get(format!("{}/healthz", self.config.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Reads notify datagrams until one contains `want` (or `deadline` passes); returns all
/// lines seen, in order.
fn read_until(sock: &UnixDatagram, want: &str, deadline: Duration, seen: &mut Vec<String>) {
    let end = Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = text.lines().any(|l| l == want);
            seen.extend(text.lines().map(str::to_owned));
            if hit {
                return;
            }
        }
    }
    panic!("no {want} within {deadline:?}; got {seen:?}");
}

/// The whole notify conversation of one service run; returns the lines received.
async fn notify_conversation(a: &Appliance, wrapper: &[&str]) -> Vec<String> {
    let sock_path = a.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = a.serve(&sock_path, wrapper);
    let mut seen = Vec::new();
    read_until(&sock, "READY=1", Duration::from_mins(1), &mut seen);
    // READY=1 means listening: the first request right after it must succeed.
    let health = a.healthz().await;
    assert_eq!(health["status"], "ok", "{health}");
    read_until(&sock, "WATCHDOG=1", Duration::from_secs(5), &mut seen);
    read_until(&sock, "WATCHDOG=1", Duration::from_secs(5), &mut seen);
    sigterm(child.id()).unwrap();
    read_until(&sock, "STOPPING=1", Duration::from_secs(10), &mut seen);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "serve exits cleanly on SIGTERM: {status}\n{}",
        a.log()
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_notify_ready_watchdog_stopping_and_final_checkpoint() {
    let a = Appliance::new();
    let seen = notify_conversation(&a, &[]).await;
    let pos = |l: &str| seen.iter().position(|s| s == l).unwrap();
    assert!(pos("READY=1") < pos("WATCHDOG=1"), "{seen:?}");
    assert!(pos("WATCHDOG=1") < pos("STOPPING=1"), "{seen:?}");
    assert!(
        !seen[pos("STOPPING=1")..].iter().any(|l| l == "READY=1"),
        "{seen:?}"
    );
    // Graceful shutdown closed the audit log, which signs a final checkpoint.
    let log = a.log();
    assert!(
        log.contains("audit log closed with a final checkpoint"),
        "{log}"
    );
    let out = Command::new(strongroom_bin().unwrap())
        .args(["audit", "verify", "--state"])
        .arg(a.path().join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the audit log verifies after shutdown: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without `WATCHDOG_USEC` no watchdog pings are sent (systemd would not expect them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_unless_asked() {
    let a = Appliance::new();
    let sock_path = a.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let log = std::fs::File::create(a.path().join("serve.log")).unwrap();
    let mut child = Command::new(strongroom_bin().unwrap())
        .args(["serve", "--config", a.config().to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    read_until(&sock, "READY=1", Duration::from_mins(1), &mut seen);
    std::thread::sleep(Duration::from_millis(600));
    sigterm(child.id()).unwrap();
    read_until(&sock, "STOPPING=1", Duration::from_secs(10), &mut seen);
    assert!(child.wait().unwrap().success(), "{}", a.log());
    assert!(!seen.iter().any(|l| l == "WATCHDOG=1"), "{seen:?}");
}

/// Python sets PR_SET_MDWE (65) on itself, checks it with PR_GET_MDWE (66) and execs the
/// service: from then on no memory may be writable and executable, as under systemd's
/// `MemoryDenyWriteExecute=yes`. Exit 77 when the kernel has no MDWE.
const MDWE_WRAPPER: &str = r"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0 or libc.prctl(66, 0, 0, 0, 0) != 1:
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_under_memory_deny_write_execute() {
    let probe = Command::new("python3")
        .args(["-c", MDWE_WRAPPER, "/bin/true"])
        .status();
    match probe.as_ref().map(std::process::ExitStatus::code) {
        Ok(Some(0)) => {}
        Ok(Some(77)) => {
            eprintln!("SKIP: this kernel has no PR_SET_MDWE");
            return;
        }
        other => panic!("python3 is needed for the MDWE wrapper: {other:?}"),
    }
    let a = Appliance::new();
    // HSM module loaded with dlopen, TLS, the KMS and a request: all under MDWE.
    let seen = notify_conversation(&a, &["python3", "-c", MDWE_WRAPPER]).await;
    assert!(seen.iter().any(|l| l == "READY=1"));
}

/// The packaged unit's hardening: `systemd-analyze security --offline=true` must score it
/// at most 2.0 (lower is better). Fails if the command is missing: the score is the point.
#[test]
fn unit_exposure_is_at_most_2() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/systemd/strongroom.service")
        .canonicalize()
        .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) is needed to score the unit");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for strongroom.service"))
        .unwrap_or_else(|| {
            panic!(
                "no overall score: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable score line {line:?}"));
    eprintln!("{line}");
    assert!(score <= 2.0, "unit exposure {score} > 2.0:\n{text}");
    // The settings the issue names explicitly, so a relaxed unit cannot pass on other points.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for must in [
        "Type=notify",
        "User=strongroom",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=",
        "WatchdogSec=",
    ] {
        assert!(unit_text.contains(must), "unit lacks {must:?}");
    }
}
