//! `core-sim`: thin glue. Parses arguments, opens the state, binds, prints one JSON line
//! (`core_url`, `jwks_url`, `issuer`, `core_audience`, `admin_token`) and serves.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use core_sim::http::{AppState, Config, app};
use core_sim::identity::{CORE_AUDIENCE, ISSUER};

/// The simulated hosted core.
#[derive(Parser)]
#[command(name = "core-sim")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:0.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// State directory (created if missing).
    #[arg(long)]
    state: PathBuf,
    /// Serve HTTPS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM, mode 0600).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A realm and the file holding its token: `kms://<domain>=<file>` (repeatable).
    #[arg(long = "realm")]
    realms: Vec<String>,
    /// File (mode 0600) holding the admin bearer token; default DIR/admin-token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Milliseconds `POST /kms/messages` waits for the realm before 504.
    #[arg(long, default_value_t = 10_000)]
    relay_timeout_ms: u64,
    /// Seconds between WebSocket pings to each realm.
    #[arg(long, default_value_t = 20)]
    ping_interval_s: u64,
    /// Seconds between reconciliations of two-part membership changes with each realm.
    #[arg(long, default_value_t = 60)]
    reconcile_interval_s: u64,
    /// Fault injection (crash tests): abort right after a valid KMS receipt arrives,
    /// before the core applies its part. Also set by CORE_SIM_ABORT_AFTER_RECEIPT=1.
    #[arg(long, env = "CORE_SIM_ABORT_AFTER_RECEIPT")]
    abort_after_receipt: bool,
    /// Exit when the process with this PID is gone (or a zombie): `strongroom dev` passes
    /// its own, so a `kill -9` of dev does not leave the core running.
    #[arg(long, value_name = "PID")]
    exit_with: Option<u32>,
}

/// Whether `pid` is a live process (not gone, not a zombie awaiting its reaper).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')' (comm may hold anything).
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X' | 'x'))
    })
}

fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = core_sim::files::read_secret(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let t = String::from_utf8(bytes).context("token file is not UTF-8")?;
    Ok(t.trim().to_owned())
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let mut realm_tokens = HashMap::new();
    for spec in &args.realms {
        let Some((realm, file)) = spec.split_once('=') else {
            bail!("--realm expects kms://<domain>=<token file>, got {spec}");
        };
        if !realm.starts_with("kms://") {
            bail!("--realm {realm}: the realm must be a kms:// URI");
        }
        let token = read_token(std::path::Path::new(file))?;
        if token.len() < 16 {
            bail!("the realm token in {file} is shorter than 16 bytes");
        }
        realm_tokens.insert(realm.to_owned(), token);
    }
    let mut cfg = Config::new(args.state.clone());
    cfg.realm_tokens = realm_tokens;
    cfg.admin_token = args
        .admin_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    cfg.relay_timeout = Duration::from_millis(args.relay_timeout_ms);
    cfg.ping_interval = Duration::from_secs(args.ping_interval_s.max(1));
    cfg.reconcile_interval = Duration::from_secs(args.reconcile_interval_s.max(1));
    cfg.abort_after_receipt = args.abort_after_receipt;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let state = AppState::open(config(&args)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(core_sim::serve::tls_config(c, k)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let core_url = format!("{scheme}://{addr}");
    let line = serde_json::json!({
        "core_url": core_url,
        "jwks_url": format!("{core_url}/identity/jwks"),
        "issuer": ISSUER,
        "core_audience": CORE_AUDIENCE,
        "admin_token": state.admin_token(),
        "state_dir": args.state,
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    if let Some(pid) = args.exit_with {
        tokio::spawn(async move {
            while alive(pid) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // State is durable after every acknowledged change: exiting here is no
            // worse than the crash the simulator is built to survive.
            tracing::warn!(pid, "the process core-sim runs for is gone; exiting");
            std::process::exit(0);
        });
    }
    let router = app(state);
    match tls {
        Some(tls) => core_sim::serve::serve_tls(listener, router, tls).await,
        None => core_sim::serve::serve_plain(listener, router).await,
    }
}
