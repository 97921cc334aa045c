//! `strongroom dev`: a complete KMS on its own SoftHSM2 token and state, like
//! `vault server -dev`. Never what the packaged service runs: plain HTTP on loopback, a
//! development identity provider, PINs in files of the state directory.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, at `C_Initialize`; since we forbid `unsafe` (and so
//! `std::env::set_var`), dev mode re-executes itself with that variable pointing into the
//! state directory. A restart on the same directory (even after `kill -9`) finds the
//! token, the KEK and every key again.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use secrecy::SecretString;
use serde::Deserialize;
use strongroom_hsm::{Hsm, HsmConfig};
use strongroom_kms::auth::Issuer;
use strongroom_kms::clock::{Clock, SystemClock};
use uuid::Uuid;

use crate::identity::DevIssuer;
use crate::{certs, devcore, files, server};

pub const DEV_TOKEN_LABEL: &str = "strongroom-dev";

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address to listen on (plain HTTP; loopback only). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,
    /// State directory to use and keep. Default: a fresh temporary directory, deleted on exit.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The KMS domain (`kms://<domain>`).
    #[arg(long, default_value = "kms.strongroom.test")]
    pub domain: String,
    /// PKCS#11 module (default: the distribution's SoftHSM2).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Size of the static RSA key generated on first start (2048, 3072 or 4096 bits).
    #[arg(long, default_value_t = strongroom_hsm::HsmConfig::DEFAULT_RSA_BITS)]
    pub rsa_bits: u32,
    /// Lifetime of ECDHE channel keys, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub channel_ttl_seconds: u32,
    /// Audit group-commit window in microseconds (as `[audit] group_commit_window_us`).
    #[arg(long, default_value_t = crate::config::DEFAULT_GROUP_COMMIT_WINDOW_US,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub audit_group_commit_window_us: u32,
    /// Nice steps the audit writer runs below the request workers, 0-19 (as `[audit]
    /// committer_nice`).
    #[arg(long, default_value_t = strongroom_audit::DEFAULT_COMMITTER_NICE,
          value_parser = clap::value_parser!(u8).range(0..=19))]
    pub audit_committer_nice: u8,
    /// Sign an audit checkpoint after this many records (as `[audit] checkpoint_every`).
    #[arg(long, default_value_t = crate::config::DEFAULT_CHECKPOINT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_CHECKPOINT_EVERY))]
    pub audit_checkpoint_every: u64,
    /// ... or this many seconds after the previous one, so that no record stays unsigned
    /// longer (as `[audit] checkpoint_interval_seconds`).
    #[arg(long, default_value_t = crate::config::DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_CHECKPOINT_INTERVAL_SECONDS))]
    pub audit_checkpoint_interval_seconds: u64,
    /// The core-sim binary to start (default: `core-sim` next to this executable).
    #[arg(long, conflicts_with = "no_core")]
    pub core_sim: Option<PathBuf>,
    /// Do not start core-sim: a KMS alone, reachable only directly (the old dev mode).
    #[arg(long)]
    pub no_core: bool,
    /// Internal: the state directory is temporary and is removed on exit.
    #[arg(long, hide = true)]
    pub ephemeral: bool,
}

fn random_pin() -> String {
    let bytes: [u8; 16] = strongroom_kms::crypto::random_bytes();
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn pin_file(path: &Path) -> anyhow::Result<SecretString> {
    if !path.exists() {
        files::write_secret_file(path, random_pin().as_bytes())?;
    }
    files::read_secret_string(path)
}

/// Writes the state directory's SoftHSM2 configuration and returns its path.
fn softhsm_conf(state: &Path) -> anyhow::Result<PathBuf> {
    let tokens = state.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = state.join("softhsm2.conf");
    let text = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    if std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
        files::write_file(&conf, text.as_bytes(), 0o600)?;
    }
    Ok(conf)
}

pub fn run(args: &DevArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "dev mode serves plain HTTP and only listens on loopback (got {})",
            args.listen
        );
    }
    let (state, ephemeral) = match &args.state {
        Some(s) => {
            std::fs::create_dir_all(s).with_context(|| format!("creating {}", s.display()))?;
            (std::fs::canonicalize(s)?, args.ephemeral)
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("strongroom-dev-")
                .tempdir()?
                .keep();
            (dir, true)
        }
    };
    let conf = softhsm_conf(&state)?;
    if std::env::var_os("SOFTHSM2_CONF").as_deref() != Some(conf.as_os_str()) {
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("dev")
            .arg("--listen")
            .arg(args.listen.to_string())
            .arg("--state")
            .arg(&state)
            .arg("--domain")
            .arg(&args.domain)
            .arg("--rsa-bits")
            .arg(args.rsa_bits.to_string())
            .arg("--channel-ttl-seconds")
            .arg(args.channel_ttl_seconds.to_string())
            .arg("--audit-group-commit-window-us")
            .arg(args.audit_group_commit_window_us.to_string())
            .arg("--audit-committer-nice")
            .arg(args.audit_committer_nice.to_string())
            .arg("--audit-checkpoint-every")
            .arg(args.audit_checkpoint_every.to_string())
            .arg("--audit-checkpoint-interval-seconds")
            .arg(args.audit_checkpoint_interval_seconds.to_string())
            .env("SOFTHSM2_CONF", &conf);
        if let Some(m) = &args.module {
            cmd.arg("--module").arg(m);
        }
        if ephemeral {
            cmd.arg("--ephemeral");
        }
        if args.no_core {
            cmd.arg("--no-core");
        }
        if let Some(c) = &args.core_sim {
            cmd.arg("--core-sim").arg(std::path::absolute(c)?);
        }
        let err = cmd.exec();
        bail!("re-executing with SOFTHSM2_CONF set failed: {err}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(serve(args, &state));
    if ephemeral {
        let _ = std::fs::remove_dir_all(&state);
    }
    result
}

#[derive(Clone)]
struct DevState {
    issuer: Arc<DevIssuer>,
    audience: String,
    clock: Arc<dyn Clock>,
}

async fn serve(args: &DevArgs, state: &Path) -> anyhow::Result<()> {
    let module = args
        .module
        .clone()
        .unwrap_or_else(HsmConfig::softhsm_default_module);
    let so_pin = pin_file(&state.join("dev-so-pin"))?;
    let pin = pin_file(&state.join("dev-pin"))?;
    Hsm::init_token(&module, DEV_TOKEN_LABEL, &so_pin, &pin)
        .context("initialising the dev SoftHSM2 token")?;
    let mut hcfg = HsmConfig::new(DEV_TOKEN_LABEL, pin);
    hcfg.module = module;
    hcfg.rsa_bits = args.rsa_bits;
    let hsm = Hsm::open(&hcfg).context("opening the dev token")?;
    hsm.ensure_keys()
        .context("creating the dev keys in the HSM")?;

    let cert_path = state.join("static-cert.der");
    let cert = match std::fs::read(&cert_path) {
        Ok(der) if certs::check_static_cert(&der, &hsm, &args.domain).is_ok() => der,
        _ => {
            let der = certs::self_signed_static(&hsm, &args.domain)?;
            files::write_file(&cert_path, &der, 0o644)?;
            der
        }
    };
    let x5c = vec![base64::engine::general_purpose::STANDARD.encode(&cert)];

    let issuer = Arc::new(DevIssuer::load_or_create(state)?);
    let audience = format!("kms://{}", args.domain);
    let mut issuers = vec![issuer.issuer()?];
    let core = if args.no_core {
        None
    } else {
        let bin = devcore::find_core_sim(args.core_sim.as_deref())?;
        let core = devcore::start(&bin, state, &audience).await?;
        issuers.push(
            Issuer::from_jwks(&core.issuer, &core.jwks)
                .map_err(|e| anyhow::anyhow!("core-sim's JWKS: {e}"))?,
        );
        Some(core)
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kms = crate::serve::start_kms(crate::serve::KmsParts {
        domain: &args.domain,
        hsm,
        state_dir: state.to_path_buf(),
        store_path: state.join("kms.redb"),
        cache_bytes: 64 * 1024 * 1024,
        issuers,
        x5c,
        channel_ttl_seconds: args.channel_ttl_seconds,
        audit: crate::config::AuditTuning::new(crate::config::AuditSettings {
            group_commit_window_us: args.audit_group_commit_window_us,
            committer_nice: args.audit_committer_nice,
            checkpoint_every: args.audit_checkpoint_every,
            checkpoint_interval_seconds: args.audit_checkpoint_interval_seconds,
        })?,
    })
    .await?;

    let health = crate::dialout::Health::default();
    let mut core_fields = serde_json::Map::new();
    let mut core_child = None;
    if let Some(core) = core {
        let ws = core.core_url.replacen("https://", "wss://", 1);
        let dial = crate::dialout::DialOut {
            url: format!("{ws}/realm/v1/connect").parse()?,
            realm_token: files::read_secret_string(&core.realm_token_file)?,
            tls: Some(crate::pinning::client_config(vec![core.ca_der.clone()])?),
            kms: Arc::clone(&kms),
            health: health.clone(),
        };
        tokio::spawn(dial.run());
        // The line promises a working relay: wait for the first welcome.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while health.get() != crate::dialout::CoreState::Connected {
            if tokio::time::Instant::now() > deadline {
                bail!("the dial-out to core-sim did not connect within 20 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        core_fields.insert("core_url".into(), core.core_url.clone().into());
        core_fields.insert(
            "core_ca_pem".into(),
            core.ca_pem.display().to_string().into(),
        );
        core_fields.insert(
            "core_admin_token_file".into(),
            core.admin_token_file.display().to_string().into(),
        );
        core_fields.insert(
            "core_state_dir".into(),
            core.state_dir.display().to_string().into(),
        );
        core_fields.insert("core_pid".into(), core.child.id().into());
        core_fields.insert("core_command".into(), core.command.clone().into());
        core_child = Some(core.child);
    }
    let dev = DevState {
        issuer,
        audience: audience.clone(),
        clock,
    };
    let app = Router::new()
        .route("/dev/token", post(mint_token))
        .with_state(dev)
        .merge(strongroom_kms::http::router(Arc::clone(&kms)));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut line = serde_json::json!({
        "kms_url": format!("http://{addr}"),
        "kms_cluster": audience,
        "static_jwk": kms.static_jwk(),
        "token_url": format!("http://{addr}/dev/token"),
        "state_dir": state,
    });
    if let Some(obj) = line.as_object_mut() {
        obj.extend(core_fields);
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    tracing::info!(%addr, state = %state.display(), "strongroom dev is serving");
    let result = server::serve_plain(listener, app).await;
    let log = Arc::clone(kms.audit());
    let _ = tokio::task::spawn_blocking(move || crate::serve::record_stop(&log)).await;
    if let Some(mut child) = core_child {
        let _ = child.kill().await;
    }
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user_id: Uuid,
    client_id: String,
    #[serde(default)]
    org_id: Option<Uuid>,
    /// Dev/test only: mint for another audience (to prove it is refused).
    #[serde(default)]
    audience: Option<String>,
    /// Dev/test only: lifetime in seconds; negative mints an expired token.
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

async fn mint_token(
    State(dev): State<DevState>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> axum::response::Response {
    let Ok(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "body must be {\"user_id\": \"<uuid>\", \"client_id\": \"...\"}"})),
        )
            .into_response();
    };
    let now_s = dev.clock.now_ms() / 1000;
    match dev.issuer.mint(
        req.user_id,
        req.org_id.unwrap_or(dev.issuer.org),
        &req.client_id,
        req.audience.as_deref().unwrap_or(&dev.audience),
        now_s,
        req.ttl_seconds.unwrap_or(3600),
    ) {
        Ok(bearer) => Json(serde_json::json!({ "bearer": bearer })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "minting a dev token failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": "internal error"})),
            )
                .into_response()
        }
    }
}
