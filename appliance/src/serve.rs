//! The production commands: `init` (first run), `serve` (HTTPS) and `config check`.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use strongroom_hsm::{Hsm, HsmConfig};
use strongroom_kms::auth::{Issuer, TokenVerifier};
use strongroom_kms::clock::{Clock, SystemClock};
use strongroom_kms::storage::RedbStore;
use strongroom_kms::{Kms, KmsConfig};

use crate::config::Config;
use crate::{certs, files, server};

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// SoftHSM2 reads `SOFTHSM2_CONF` at `C_Initialize` only; with `unsafe` forbidden we cannot
/// set it in-process, so re-execute with it set when the configuration names one.
pub fn ensure_softhsm_env(conf: Option<&Path>) -> anyhow::Result<()> {
    let Some(conf) = conf else { return Ok(()) };
    if std::env::var_os("SOFTHSM2_CONF").as_deref() == Some(conf.as_os_str()) {
        return Ok(());
    }
    let err = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("SOFTHSM2_CONF", conf)
        .exec();
    bail!("re-executing with SOFTHSM2_CONF set failed: {err}")
}

pub fn hsm_config(cfg: &Config) -> anyhow::Result<HsmConfig> {
    let pin = cfg.hsm_pin()?;
    let mut h = HsmConfig::new(cfg.token_label.clone(), pin);
    h.module.clone_from(&cfg.hsm_module);
    h.wrap_mechanism = cfg.wrap_mechanism;
    h.rsa_bits = cfg.rsa_bits;
    Ok(h)
}

/// Everything a KMS needs, wired; shared by `serve` and `dev`.
pub struct KmsParts<'a> {
    pub domain: &'a str,
    pub hsm: Hsm,
    pub state_dir: PathBuf,
    pub store_path: PathBuf,
    pub cache_bytes: usize,
    pub issuers: Vec<Issuer>,
    pub x5c: Vec<String>,
    pub channel_ttl_seconds: u32,
    pub audit: crate::config::AuditTuning,
}

/// Opens the audit log in `<state>/audit`, checkpoints signed by the HSM's P-256 key. Each
/// checkpoint note is also written to the log stream (the journal under systemd), so a
/// rewritten history shows against copies kept off the box.
pub fn open_audit(
    state_dir: &Path,
    domain: &str,
    hsm: &Hsm,
    tuning: crate::config::AuditTuning,
) -> anyhow::Result<Arc<strongroom_audit::AuditLog>> {
    let origin = audit_origin(domain);
    let mut cfg = strongroom_audit::LogConfig::new(state_dir.join("audit"), &origin);
    cfg.on_checkpoint = Some(Arc::new(|cp: &strongroom_audit::SignedCheckpoint| {
        tracing::info!(target: "strongroom::audit::checkpoint", size = cp.size(), note = %cp.note(), "audit checkpoint");
    }));
    cfg.on_record = crate::journal::audit_mirror();
    tuning.apply(&mut cfg);
    let signer = Arc::new(
        strongroom_audit::HsmSigner::new(hsm.clone()).context("audit signing key in the HSM")?,
    );
    let log = strongroom_audit::AuditLog::open(cfg, signer).context("opening the audit log")?;
    // A convenience copy of the public key for `strongroom audit` on this box; security
    // teams should keep their own copy (`strongroom audit verify --key`).
    let vkey = format!("{}\n", log.key().vkey());
    files::write_file(
        &crate::audit_cli::vkey_path(state_dir),
        vkey.as_bytes(),
        0o644,
    )?;
    Ok(Arc::new(log))
}

/// Records an administrator action (issue 4: admin actions are audited like KMS
/// decisions, R16) and waits until the record is durable. `Err` means it is not
/// recorded: the caller must not go ahead as if it were.
pub fn record_admin(
    log: &strongroom_audit::AuditLog,
    action: strongroom_audit::Action,
    outcome: strongroom_audit::Outcome,
) -> anyhow::Result<()> {
    use strongroom_audit::{Event, Kind, Outcome, Reason};
    let reason = match outcome {
        Outcome::Allowed => Reason::Ok,
        _ => Reason::Internal,
    };
    log.append(&Event::new(Kind::Admin, action, outcome, reason))
        .map(|_| ())
        .context("writing the audit record of an administrator action")
}

pub async fn start_kms(parts: KmsParts<'_>) -> anyhow::Result<Arc<Kms>> {
    let audit = open_audit(&parts.state_dir, parts.domain, &parts.hsm, parts.audit)?;
    let store = Arc::new(
        RedbStore::open(&parts.store_path, parts.cache_bytes)
            .with_context(|| format!("opening {}", parts.store_path.display()))?,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut cfg = KmsConfig::new(parts.domain);
    cfg.channel_ttl_ms = i64::from(parts.channel_ttl_seconds) * 1000;
    let verifier = TokenVerifier::new(
        format!("kms://{}", parts.domain),
        parts.issuers,
        Arc::clone(&clock),
    );
    let kms = Kms::new(
        cfg,
        store,
        parts.hsm,
        verifier,
        clock,
        parts.x5c,
        Arc::clone(&audit),
    )
    .await
    .context("starting the KMS")?;
    // No record of the start, no service.
    tokio::task::spawn_blocking(move || {
        record_admin(
            &audit,
            strongroom_audit::Action::Start,
            strongroom_audit::Outcome::Allowed,
        )
    })
    .await??;
    Ok(Arc::new(kms))
}

/// `strongroom config check`.
pub fn config_check(args: &ConfigArg) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    cfg.check_files()?;
    println!(
        "{}: OK (KMS kms://{}, listening on {})",
        args.config.display(),
        cfg.domain,
        cfg.listen
    );
    Ok(())
}

/// `strongroom init`: creates the token (SoftHSM2, when missing and an SO PIN is
/// configured) and the keys, writes a CSR for the static key and, for a trial, a
/// self-signed certificate for it and a TLS key and certificate. Idempotent.
pub fn init(args: &ConfigArg) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    ensure_softhsm_env(cfg.softhsm2_conf.as_deref())?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let hcfg = hsm_config(&cfg)?;
    if let Some(so) = &cfg.so_pin_file {
        let so_pin = files::read_secret_string(so).context("hsm.so_pin_file")?;
        Hsm::init_token(&cfg.hsm_module, &cfg.token_label, &so_pin, &hcfg.pin)
            .context("initialising the token")?;
    }
    let hsm = Hsm::open(&hcfg).context("opening the HSM token")?;
    hsm.ensure_keys()
        .context("creating or finding the keys in the HSM")?;
    let mut next = Vec::new();

    let csr_path = cfg.state_dir.join("static.csr.pem");
    files::write_file(
        &csr_path,
        certs::csr_static(&hsm, &cfg.domain)?.as_bytes(),
        0o644,
    )?;
    next.push(format!(
        "have your CA sign {} (SAN {}; the CA must issue no subordinate CAs) and put the chain in {}",
        csr_path.display(),
        cfg.domain,
        cfg.static_certificate.display()
    ));
    if cfg.static_certificate.exists() {
        println!(
            "static certificate: {} (kept)",
            cfg.static_certificate.display()
        );
    } else {
        let der = certs::self_signed_static(&hsm, &cfg.domain)?;
        let pem = pem_encode("CERTIFICATE", &der);
        files::write_file(&cfg.static_certificate, pem.as_bytes(), 0o644)?;
        println!(
            "static certificate: {} (self-signed, for a trial)",
            cfg.static_certificate.display()
        );
    }
    if cfg.tls_certificate.exists() && cfg.tls_private_key.exists() {
        println!("TLS certificate: {} (kept)", cfg.tls_certificate.display());
    } else {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = rcgen::CertificateParams::new(vec![cfg.domain.clone()])?.self_signed(&key)?;
        for p in [&cfg.tls_certificate, &cfg.tls_private_key] {
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
        }
        files::write_secret_file(&cfg.tls_private_key, key.serialize_pem().as_bytes())?;
        files::write_file(&cfg.tls_certificate, cert.pem().as_bytes(), 0o644)?;
        println!(
            "TLS certificate: {} (self-signed, for a trial)",
            cfg.tls_certificate.display()
        );
        next.push(format!(
            "replace the trial TLS certificate {} and key {} with ones your CA issued for {}",
            cfg.tls_certificate.display(),
            cfg.tls_private_key.display(),
            cfg.domain
        ));
    }
    next.push("check the configuration: strongroom config check".into());
    next.push("start the service: systemctl enable --now strongroom".into());
    println!("\nstrongroom is initialised. Next:");
    for (i, n) in next.iter().enumerate() {
        println!("  {}. {n}", i + 1);
    }
    Ok(())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// `/healthz`: 200 when the state is readable and (if a core is configured) the dial-out
/// connection is up; 503 otherwise. Never carries secrets.
fn health_answer(kms: &Kms, core: Option<crate::dialout::CoreState>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let (kms_ok, mut body) = strongroom_kms::http::health(kms);
    let ok = kms_ok && core.is_none_or(|c| c == crate::dialout::CoreState::Connected);
    body.insert("status".into(), if ok { "ok" } else { "unhealthy" }.into());
    body.insert("core".into(), serde_json::json!(core));
    let code = if ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// The audit log's public key, read from the HSM (not from the state directory, which
/// whoever controls the box could replace): `strongroom audit key`.
pub fn audit_key(args: &ConfigArg) -> anyhow::Result<strongroom_audit::LogKey> {
    let cfg = Config::load(&args.config)?;
    ensure_softhsm_env(cfg.softhsm2_conf.as_deref())?;
    cfg.check_files()?;
    let hsm = Hsm::open(&hsm_config(&cfg)?).context("opening the HSM token")?;
    let point = hsm
        .ec_public_key()
        .context("reading the audit key from the HSM (run strongroom init first)")?;
    strongroom_audit::LogKey::new(&audit_origin(&cfg.domain), point).context("the HSM's audit key")
}

fn audit_origin(domain: &str) -> String {
    format!("{domain}/audit")
}

/// `strongroom serve`.
pub fn serve(args: &ConfigArg) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    ensure_softhsm_env(cfg.softhsm2_conf.as_deref())?;
    cfg.check_files()?;
    let hsm = Hsm::open(&hsm_config(&cfg)?).context("opening the HSM token")?;
    hsm.ensure_keys()
        .context("finding the keys in the HSM (run strongroom init first)")?;
    let chain = CertificateDer::pem_file_iter(&cfg.static_certificate)
        .with_context(|| {
            format!(
                "reading {} (run strongroom init)",
                cfg.static_certificate.display()
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cfg.static_certificate.display()))?;
    let leaf = chain
        .first()
        .context("the static certificate file holds no certificate")?;
    certs::check_static_cert(leaf, &hsm, &cfg.domain)
        .with_context(|| format!("{}", cfg.static_certificate.display()))?;
    let x5c = chain
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect();
    let mut issuers = Vec::new();
    for (iss, path) in &cfg.issuers {
        let text = std::fs::read_to_string(path)?;
        issuers.push(Issuer::from_jwks(iss, &text).map_err(|e| anyhow::anyhow!("{iss}: {e}"))?);
    }
    let tls = server::tls_config(&cfg.tls_certificate, &cfg.tls_private_key)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut audit = None;
    let served = rt.block_on(async {
        let kms = start_kms(KmsParts {
            domain: &cfg.domain,
            hsm,
            state_dir: cfg.state_dir.clone(),
            store_path: cfg.state_dir.join("kms.redb"),
            cache_bytes: cfg.storage_cache_bytes,
            issuers,
            x5c,
            channel_ttl_seconds: cfg.channel_ttl_seconds,
            audit: cfg.audit,
        })
        .await?;
        audit = Some(Arc::clone(kms.audit()));
        let health = crate::dialout::Health::default();
        if let Some(core) = &cfg.core {
            let dial = crate::dialout::DialOut {
                url: core.url.clone(),
                realm_token: files::read_secret_string(&core.realm_token_file)?,
                tls: Some(crate::pinning::client_config(crate::pinning::load_roots(&core.pinned_roots)?)?),
                kms: Arc::clone(&kms),
                health: health.clone(),
            };
            tokio::spawn(dial.run());
        }
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        tracing::info!(listen = %listener.local_addr()?, domain = %cfg.domain, "strongroom is serving (HTTPS)");
        crate::systemd::ready();
        crate::systemd::spawn_watchdog();
        let with_core = cfg.core.is_some();
        let route_health = health.clone();
        let health_route = axum::routing::get(move |axum::extract::State(kms): axum::extract::State<Arc<Kms>>| {
            let health = route_health.clone();
            async move { health_answer(&kms, with_core.then(|| health.get())) }
        });
        let mut app = strongroom_kms::http::routes(axum::Router::new().route("/healthz", health_route), Arc::clone(&kms));
        if let Some(addr) = cfg.metrics_listen {
            let metrics = crate::metrics::Metrics::new(with_core);
            app = app.layer(axum::middleware::from_fn_with_state(Arc::clone(&metrics), crate::metrics::Metrics::track));
            let core = with_core.then(|| health.clone());
            let m = tokio::spawn(crate::metrics::serve(addr, metrics, kms, core));
            // A metrics listener that cannot bind is a configuration error: fail now.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if m.is_finished() {
                return m.await?;
            }
        }
        server::serve_tls(listener, app, tls).await
    });
    // Ends the tasks that still hold the KMS (dial-out, unfinished connections) so ours is
    // the last reference to the audit log, then closes it: the final checkpoint is signed.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(audit) = audit {
        stop_audit(audit);
    }
    served
}

/// Records the stop; best effort: the service is going down either way.
pub fn record_stop(audit: &strongroom_audit::AuditLog) {
    if let Err(e) = record_admin(
        audit,
        strongroom_audit::Action::Stop,
        strongroom_audit::Outcome::Allowed,
    ) {
        tracing::error!(error = %format!("{e:#}"), "the stop is not in the audit log");
    }
}

/// Records the stop and closes the log with its final checkpoint.
fn stop_audit(audit: Arc<strongroom_audit::AuditLog>) {
    record_stop(&audit);
    close_audit(audit);
}

fn close_audit(audit: Arc<strongroom_audit::AuditLog>) {
    match Arc::try_unwrap(audit) {
        Ok(log) => match log.close() {
            Ok(Some(cp)) => {
                tracing::info!(size = cp.size(), "audit log closed with a final checkpoint");
            }
            Ok(None) => tracing::warn!("audit log closed without a final checkpoint"),
            Err(e) => tracing::error!(error = %e, "closing the audit log failed"),
        },
        // Still shared: it closes (and checkpoints) when the last holder drops it.
        Err(_) => tracing::warn!("audit log still in use at exit; it closes when released"),
    }
}
