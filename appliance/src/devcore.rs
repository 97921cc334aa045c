//! `strongroom dev` with the simulated core (issue 3): starts `core-sim` on loopback with a
//! development CA (pathLen 0, so the dial-out's pinning holds, R21), registers the dev realm
//! with a fresh realm token, and hands back what the KMS needs to trust the core's identity
//! service and dial out to it. Dev only: the CA key is thrown away after issuing the leaf.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt as _;

use crate::files;

/// The files under `<state>/core/` and the running core-sim.
pub struct DevCore {
    pub child: tokio::process::Child,
    pub core_url: String,
    pub issuer: String,
    pub jwks: String,
    pub ca_pem: PathBuf,
    pub ca_der: CertificateDer<'static>,
    pub realm_token_file: PathBuf,
    pub admin_token_file: PathBuf,
    pub state_dir: PathBuf,
    /// The exact command line that started core-sim (tests restart it with it).
    pub command: Vec<String>,
}

#[derive(Deserialize)]
struct CoreLine {
    core_url: String,
    issuer: String,
}

fn random_token() -> String {
    let bytes: [u8; 24] = strongroom_kms::crypto::random_bytes();
    bytes.iter().fold(String::with_capacity(48), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn token_file(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        files::write_secret_file(path, random_token().as_bytes())?;
    }
    Ok(())
}

/// A dev CA (pathLen 0) and a leaf for 127.0.0.1 and localhost, reused across restarts.
fn dev_pki(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let (ca, leaf, key) = (
        dir.join("dev-ca.pem"),
        dir.join("core-leaf.pem"),
        dir.join("core-leaf.key"),
    );
    if ca.exists() && leaf.exists() && key.exists() {
        return Ok((ca, leaf, key));
    }
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(DnType::CommonName, "strongroom dev core CA");
    let ca_cert = p.self_signed(&ca_key)?;
    let issuer = Issuer::new(p, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&leaf_key, &issuer)?;
    files::write_secret_file(&key, leaf_key.serialize_pem().as_bytes())?;
    files::write_file(&leaf, leaf_cert.pem().as_bytes(), 0o644)?;
    files::write_file(&ca, ca_cert.pem().as_bytes(), 0o644)?;
    Ok((ca, leaf, key))
}

/// The core-sim binary: `--core-sim PATH`, else next to this executable.
pub fn find_core_sim(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--core-sim {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let candidate = exe.with_file_name("core-sim");
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "core-sim not found next to {} (build it with `cargo build -p strongroom-core-sim`), \
         pass --core-sim PATH, or run with --no-core",
        exe.display()
    )
}

/// Starts core-sim over `<state>/core`, waits for its JSON line and fetches its JWKS.
pub async fn start(bin: &Path, state: &Path, realm: &str) -> anyhow::Result<DevCore> {
    let dir = state.join("core");
    std::fs::create_dir_all(&dir)?;
    let (ca_pem, leaf, key) = dev_pki(&dir)?;
    let realm_token_file = dir.join("realm-token");
    let admin_token_file = dir.join("admin-token");
    token_file(&realm_token_file)?;
    token_file(&admin_token_file)?;
    let state_dir = dir.join("state");
    let command: Vec<String> = vec![
        bin.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--state".into(),
        state_dir.display().to_string(),
        "--tls-cert".into(),
        leaf.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--realm".into(),
        format!("{realm}={}", realm_token_file.display()),
        "--admin-token-file".into(),
        admin_token_file.display().to_string(),
        // A `kill -9` of dev must not leave the core running.
        "--exit-with".into(),
        std::process::id().to_string(),
    ];
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("core-sim has no stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .context("reading core-sim's JSON line")?;
    if line.trim().is_empty() {
        let status = child.wait().await?;
        bail!("core-sim exited ({status}) before printing its JSON line");
    }
    let info: CoreLine = serde_json::from_str(line.trim()).context("parsing core-sim's line")?;
    let ca_der = CertificateDer::from_pem_file(&ca_pem)
        .with_context(|| format!("reading {}", ca_pem.display()))?;
    let mut command = command;
    // Restarting on the same port: replace the :0 with the port core-sim took.
    if let Some(port) = info.core_url.rsplit(':').next() {
        command[2] = format!("127.0.0.1:{port}");
    }
    let jwks = fetch_jwks(&info.core_url, &ca_der).await?;
    Ok(DevCore {
        child,
        core_url: info.core_url,
        issuer: info.issuer,
        jwks,
        ca_pem,
        ca_der,
        realm_token_file,
        admin_token_file,
        state_dir,
        command,
    })
}

/// `GET <core>/identity/jwks` over TLS pinned to the dev CA.
async fn fetch_jwks(core_url: &str, ca: &CertificateDer<'static>) -> anyhow::Result<String> {
    let tls = crate::pinning::client_config(vec![ca.clone()])?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .context("building the dev HTTPS client")?;
    let resp = http
        .get(format!("{core_url}/identity/jwks"))
        .send()
        .await
        .context("fetching core-sim's JWKS")?;
    if !resp.status().is_success() {
        bail!("core-sim's JWKS answered {}", resp.status());
    }
    Ok(resp.text().await?)
}
