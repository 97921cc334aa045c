//! `vm-probe`: the client side of `image/smoke-test` (issue 5, VM image). Talks to a booted
//! appliance image through a host port forward, trusting only the TLS certificate its first
//! boot printed on the serial console.
//!
//! ```text
//! vm-probe issuer DIR
//!     a test IdP: DIR/issuer-key.der (P-256, PKCS#8, 0600) and DIR/idp-jwks.json
//! vm-probe check --domain D --connect 127.0.0.1:PORT --ca CERT.pem --issuer ISS
//!                --key DIR/issuer-key.der --state FILE [--timeout SECS]
//!     waits (deadline) for GET /healthz = 200 "ok" over HTTPS, then one KMS round trip
//!     with the ECDHE channel: without FILE, creates a key and records it in FILE; with
//!     FILE, retrieves that key and checks it is the same (state survived a reboot).
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use strongroom_kms::client::KmsClient;
use strongroom_kms::jose::b64e;
use strongroom_kms::jose::jwk::RsaPublicJwk;
use uuid::Uuid;

const KID: &str = "vm-probe";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("issuer") => issuer(&args[1..]),
        Some("check") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(check(&args[1..]))),
        _ => Err(anyhow::anyhow!(
            "usage: vm-probe issuer DIR | vm-probe check --domain D --connect ADDR --ca FILE --issuer ISS --key FILE --state FILE [--timeout SECS]"
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm-probe: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn issuer(args: &[String]) -> anyhow::Result<()> {
    let [dir] = args else {
        bail!("usage: vm-probe issuer DIR")
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let sk =
        <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(&mut rand::rng());
    let point = sk.public_key().to_sec1_bytes();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": KID, "alg": "ES256",
        "x": b64e(&point[1..33]), "y": b64e(&point[33..65])}]});
    std::fs::write(dir.join("idp-jwks.json"), jwks.to_string())?;
    let der = sk.to_pkcs8_der().context("encoding the issuer key")?;
    strongroom_e2e::secret_file(&dir.join("issuer-key.der"), "")?;
    std::fs::write(dir.join("issuer-key.der"), der.as_bytes())?;
    Ok(())
}

struct CheckArgs {
    domain: String,
    connect: SocketAddr,
    ca: PathBuf,
    issuer: String,
    key: PathBuf,
    state: PathBuf,
    timeout: Duration,
}

fn parse_check(args: &[String]) -> anyhow::Result<CheckArgs> {
    let get = |name: &str| -> anyhow::Result<Option<String>> {
        args.iter()
            .position(|a| a == name)
            .map(|i| {
                args.get(i + 1)
                    .cloned()
                    .context(format!("{name} wants a value"))
            })
            .transpose()
    };
    let need = |v: Option<String>, name: &str| v.with_context(|| format!("{name} is required"));
    Ok(CheckArgs {
        domain: need(get("--domain")?, "--domain")?,
        connect: need(get("--connect")?, "--connect")?
            .parse()
            .context("--connect")?,
        ca: need(get("--ca")?, "--ca")?.into(),
        issuer: need(get("--issuer")?, "--issuer")?,
        key: need(get("--key")?, "--key")?.into(),
        state: need(get("--state")?, "--state")?.into(),
        timeout: Duration::from_secs(
            get("--timeout")?
                .unwrap_or_else(|| "600".into())
                .parse()
                .context("--timeout")?,
        ),
    })
}

async fn check(args: &[String]) -> anyhow::Result<()> {
    let a = parse_check(args)?;
    let started = Instant::now();
    let ca = CertificateDer::from_pem_file(&a.ca).context("reading the trial certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).context("trusting the trial certificate")?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(&a.domain, a.connect)
        .timeout(Duration::from_mins(1))
        .build()?;
    let base = format!("https://{}:{}", a.domain, a.connect.port());

    // 1. /healthz, with a deadline: the service starts after the first boot's init.
    loop {
        let last;
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await?;
                if body["status"] == "ok" {
                    println!(
                        "healthz: ok after {:.1} s ({body})",
                        started.elapsed().as_secs_f64()
                    );
                    break;
                }
                last = format!("healthz answered {body}");
            }
            Ok(r) => last = format!("healthz answered HTTP {}", r.status()),
            Err(e) => last = format!("{e:#}"),
        }
        if started.elapsed() > a.timeout {
            bail!(
                "no healthy answer from {base} within {} s; last: {last}",
                a.timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // 2. Discovery and the ECDHE channel with a token from the seeded issuer.
    let cluster = format!("kms://{}", a.domain);
    let discovery: Value = http
        .get(format!("{base}/kms/{}", Uuid::new_v4()))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if discovery["kmsCluster"] != cluster.as_str() {
        bail!(
            "discovery names {} instead of {cluster}",
            discovery["kmsCluster"]
        );
    }
    let jwk: RsaPublicJwk = serde_json::from_str(
        discovery["rsaPublicKey"]
            .as_str()
            .context("no rsaPublicKey in discovery")?,
    )?;
    let previous: Option<Value> = match std::fs::read(&a.state) {
        Ok(b) => Some(serde_json::from_slice(&b).context("reading the state file")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let (user, org) = match &previous {
        Some(p) => (
            p["user"].as_str().context("user")?.parse::<Uuid>()?,
            p["org"].as_str().context("org")?.parse::<Uuid>()?,
        ),
        None => (Uuid::new_v4(), Uuid::new_v4()),
    };
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(KID.into());
    let claims = json!({"iss": a.issuer, "aud": cluster, "sub": user.to_string(),
        "org": org.to_string(), "iat": now, "exp": now + 600});
    let key_der = std::fs::read(&a.key).context("reading the issuer key")?;
    let token = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(&key_der))?;
    let mut client = KmsClient::new(jwk, &cluster, user, "vm-probe", SecretString::from(token))?;
    let post = |msg: String| {
        let http = http.clone();
        let url = format!("{base}/kms/messages");
        let cluster = cluster.clone();
        async move {
            let r: Value = http
                .post(url)
                .json(&json!({"destination": cluster, "kmsMessages": [msg]}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            r["kmsMessages"][0]
                .as_str()
                .map(str::to_owned)
                .context("no kmsMessages in the answer")
        }
    };
    let (hs, pending) = client.begin_handshake()?;
    let answer = post(hs).await?;
    client.finish_handshake(&answer, pending)?;

    // 3. One key: created now, or the one created on the previous boot.
    if let Some(p) = previous {
        let uri = p["key"]["uri"].as_str().context("key uri in state")?;
        let (req, _) = client.request("retrieve", uri, json!({}))?;
        let body = client.open(&post(req).await?)?;
        if body["status"] != 200 {
            bail!("retrieving {uri} answered {}", body["status"]);
        }
        if body["key"]["jwk"] != p["key"]["jwk"] {
            bail!("the key {uri} came back with different key material");
        }
        println!("kms: key {uri} from the previous boot retrieved, same key material");
    } else {
        let (req, _) = client.request("create", "/keys", json!({"count": 1}))?;
        let body = client.open(&post(req).await?)?;
        if body["status"] != 201 {
            bail!("creating a key answered {}", body["status"]);
        }
        let key = body["keys"][0].clone();
        let uri = key["uri"].as_str().context("no key uri")?.to_owned();
        if !uri.starts_with(&format!("{cluster}/keys/")) {
            bail!("key uri {uri} is not under {cluster}");
        }
        let (req, _) = client.request("retrieve", &uri, json!({}))?;
        let got = client.open(&post(req).await?)?;
        if got["status"] != 200 || got["key"]["jwk"] != key["jwk"] {
            bail!("retrieving the new key {uri} did not give it back");
        }
        strongroom_e2e::secret_file(
            &a.state,
            &json!({"user": user, "org": org, "key": key}).to_string(),
        )?;
        println!("kms: handshake, created and retrieved {uri}");
    }
    println!("probe: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
