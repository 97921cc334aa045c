//! `strongroom status`: what IT wants at a glance (docs/operations.md). Each check is ok,
//! warn or fail; the command exits 1 naming every failed check. It never prints key
//! material, PINs or tokens: keys are named by their labels.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Serialize;
use strongroom_hsm::{Hsm, KeyLabels};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::Config;
use crate::serve::{ensure_softhsm_env, hsm_config};

/// A certificate expiring sooner than this is a warning.
const EXPIRY_WARNING: Duration = Duration::from_hours(30 * 24);

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Configuration file.
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    #[serde(rename = "check")]
    name: &'static str,
    status: Level,
    detail: String,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, check: &'static str, status: Level, detail: impl Into<String>) {
        self.0.push(Check {
            name: check,
            status,
            detail: detail.into(),
        });
    }
    fn result(&mut self, check: &'static str, r: anyhow::Result<(Level, String)>) {
        match r {
            Ok((l, d)) => self.add(check, l, d),
            Err(e) => self.add(check, Level::Fail, format!("{e:#}")),
        }
    }
}

fn dir_size(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    let (b, f) = dir_size(&e.path());
                    bytes += b;
                    files += f;
                }
                Ok(t) if t.is_file() => {
                    bytes += e.metadata().map_or(0, |m| m.len());
                    files += 1;
                }
                _ => {}
            }
        }
    }
    (bytes, files)
}

fn check_hsm(cfg: &Config) -> anyhow::Result<(Hsm, String)> {
    let hsm = Hsm::open(&hsm_config(cfg)?).context("opening the HSM token")?;
    let labels = KeyLabels::default();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    match hsm.root_key_flags() {
        Ok(f) if f.sensitive && !f.extractable => {
            found.push(format!("{} (AES, non-extractable)", labels.root));
        }
        Ok(_) => anyhow::bail!(
            "the root key {} is extractable or not sensitive",
            labels.root
        ),
        Err(_) => missing.push(labels.root.clone()),
    }
    match hsm.rsa_public_key() {
        Ok(k) => found.push(format!("{} (RSA-{})", labels.rsa, k.modulus.len() * 8)),
        Err(_) => missing.push(labels.rsa.clone()),
    }
    match hsm.ec_public_key() {
        Ok(_) => found.push(format!("{} (P-256)", labels.ec)),
        Err(_) => missing.push(labels.ec.clone()),
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "token {:?} lacks {} (run strongroom init)",
            cfg.token_label,
            missing.join(", ")
        );
    }
    Ok((
        hsm,
        format!("token {:?}: {}", cfg.token_label, found.join(", ")),
    ))
}

fn check_audit(cfg: &Config, hsm: Option<&Hsm>) -> anyhow::Result<(Level, String)> {
    let dir = cfg.state_dir.join("audit");
    if !dir.exists() {
        return Ok((
            Level::Warn,
            "no audit log yet (the service creates it)".into(),
        ));
    }
    let origin = format!("{}/audit", cfg.domain);
    // The key from the HSM, not the copy on disk that whoever controls the box could swap.
    let key = match hsm {
        Some(h) => strongroom_audit::LogKey::new(&origin, h.ec_public_key()?)?,
        None => {
            let text = std::fs::read_to_string(crate::audit_cli::vkey_path(&cfg.state_dir))
                .context("the audit key (HSM unavailable and no vkey copy)")?;
            strongroom_audit::LogKey::from_vkey(text.trim())?
        }
    };
    let (bytes, files) = dir_size(&dir);
    let v = strongroom_audit::verify_dir(&dir, &key, &strongroom_audit::VerifyOptions::default())
        .map_err(|e| anyhow::anyhow!("the audit log does not verify: {e}"))?;
    let last = v
        .latest
        .as_ref()
        .map_or_else(|| "none".to_owned(), |c| format!("size {}", c.size()));
    Ok((
        Level::Ok,
        format!(
            "{} records, {bytes} bytes in {files} files; verifies; last checkpoint {last}, {} unsigned",
            v.records, v.unsigned_tail
        ),
    ))
}

fn check_cert(path: &Path, now: std::time::SystemTime) -> anyhow::Result<(Level, String)> {
    let der = CertificateDer::from_pem_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let not_after = cert.validity().not_after.timestamp();
    let now = i64::try_from(now.duration_since(std::time::UNIX_EPOCH)?.as_secs())?;
    let left = not_after - now;
    let date = cert.validity().not_after.to_string();
    if left <= 0 {
        Ok((Level::Fail, format!("{} expired on {date}", path.display())))
    } else if left < i64::try_from(EXPIRY_WARNING.as_secs())? {
        Ok((
            Level::Warn,
            format!(
                "{} expires on {date} ({} days left)",
                path.display(),
                left / 86_400
            ),
        ))
    } else {
        Ok((Level::Ok, format!("{} valid until {date}", path.display())))
    }
}

/// `GET /healthz` on the service's own listener, trusting its configured TLS certificate.
async fn healthz(cfg: &Config) -> anyhow::Result<Option<(u16, serde_json::Value)>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cfg.tls_certificate)? {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let ip = match cfg.listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, cfg.listen.port());
    let tcp =
        match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
            Ok(Err(e)) => return Err(e).with_context(|| format!("connecting to {addr}")),
            Err(_) => anyhow::bail!("connecting to {addr} timed out"),
        };
    let name = rustls_pki_types::ServerName::try_from(cfg.domain.clone())?;
    let exchange = async {
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .context("TLS handshake with the service")?;
        s.write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                cfg.domain
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        // A peer that closes without close_notify still sent a complete answer.
        if let Err(e) = s.read_to_end(&mut buf).await
            && buf.is_empty()
        {
            return Err(e.into());
        }
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .context("the service did not answer /healthz within 5 s")??;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .context("the service's /healthz answer is not HTTP")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    Ok(Some((code, json)))
}

fn gather(args: &StatusArgs, report: &mut Report) {
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            report.add("config", Level::Fail, format!("{e:#}"));
            return;
        }
    };
    match cfg.check_files() {
        Ok(()) => report.add("config", Level::Ok, format!("{} OK", args.config.display())),
        Err(e) => report.add("config", Level::Fail, format!("{e:#}")),
    }
    let hsm = match check_hsm(&cfg) {
        Ok((h, d)) => {
            report.add("hsm", Level::Ok, d);
            Some(h)
        }
        Err(e) => {
            report.add("hsm", Level::Fail, format!("{e:#}"));
            None
        }
    };
    if cfg.state_dir.is_dir() {
        let (b, f) = dir_size(&cfg.state_dir);
        report.add(
            "state",
            Level::Ok,
            format!("{}: {b} bytes in {f} files", cfg.state_dir.display()),
        );
    } else {
        report.add(
            "state",
            Level::Fail,
            format!(
                "{} does not exist (run strongroom init)",
                cfg.state_dir.display()
            ),
        );
    }
    let store = cfg.state_dir.join("kms.redb");
    report.result(
        "storage",
        if store.exists() {
            let size = std::fs::metadata(&store).map_or(0, |m| m.len());
            match strongroom_kms::storage::RedbStore::count_keys(&store) {
                Ok(n) => Ok((Level::Ok, format!("{size} bytes, {n} keys"))),
                Err(strongroom_kms::storage::StorageError::InUse) => Ok((
                    Level::Ok,
                    format!("{size} bytes, open by the running service"),
                )),
                Err(e) => Err(anyhow::anyhow!("{}: {e}", store.display())),
            }
        } else {
            Ok((Level::Warn, "no store yet (the service creates it)".into()))
        },
    );
    report.result("audit", check_audit(&cfg, hsm.as_ref()));
    let now = std::time::SystemTime::now();
    report.result(
        "static_certificate",
        check_cert(&cfg.static_certificate, now),
    );
    report.result("tls_certificate", check_cert(&cfg.tls_certificate, now));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let answer = match rt {
        Ok(rt) => rt.block_on(healthz(&cfg)),
        Err(e) => Err(e.into()),
    };
    let core = match answer {
        Ok(None) => {
            report.add(
                "service",
                Level::Warn,
                format!("not running (nothing listens on {})", cfg.listen),
            );
            None
        }
        Ok(Some((code, body))) => {
            let level = if code == 200 { Level::Ok } else { Level::Fail };
            report.add("service", level, format!("/healthz {code} {body}"));
            Some(body.get("core").cloned().unwrap_or_default())
        }
        Err(e) => {
            report.add("service", Level::Fail, format!("{e:#}"));
            None
        }
    };
    match (&cfg.core, core) {
        (None, _) => report.add("dialout", Level::Ok, "not configured"),
        (Some(c), None) => report.add(
            "dialout",
            Level::Warn,
            format!("{} (state unknown: the service is not answering)", c.url),
        ),
        (Some(c), Some(state)) => {
            let up = state.as_str() == Some("connected");
            report.add(
                "dialout",
                if up { Level::Ok } else { Level::Fail },
                format!("{}: {}", c.url, state.as_str().unwrap_or("unknown")),
            );
        }
    }
}

/// `strongroom status`: exit 0 when nothing failed, 1 naming the failed checks.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    if let Ok(cfg) = Config::load(&args.config) {
        ensure_softhsm_env(cfg.softhsm2_conf.as_deref())?;
    }
    let mut report = Report::default();
    gather(args, &mut report);
    let failed: Vec<&str> = report
        .0
        .iter()
        .filter(|c| c.status == Level::Fail)
        .map(|c| c.name)
        .collect();
    if args.json {
        let out = serde_json::json!({"ok": failed.is_empty(), "checks": report.0});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for c in &report.0 {
            let tag = match c.status {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            println!("{tag} {:<18} {}", c.name, c.detail);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("status: failed checks: {}", failed.join(", "))
    }
}
