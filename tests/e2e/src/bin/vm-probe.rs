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
//! vm-probe refused --domain D --connect 127.0.0.1:PORT --ca CERT.pem --issuer ISS
//!                [--timeout SECS]
//!     the same handshake with a forged token (the issuer's name and kid, signed by a key
//!     the KMS does not trust): succeeds only if the KMS refuses it with a signed 401.
//! ```
//!
//! Also the client side of `packaging/test-lifecycle` (the installed .deb's KMS).

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
        Some(cmd @ ("check" | "refused")) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                if cmd == "check" {
                    rt.block_on(check(&args[1..]))
                } else {
                    rt.block_on(refused(&args[1..]))
                }
            }),
        _ => Err(anyhow::anyhow!(
            "usage: vm-probe issuer DIR | vm-probe check --domain D --connect ADDR --ca FILE --issuer ISS --key FILE --state FILE [--timeout SECS] | vm-probe refused --domain D --connect ADDR --ca FILE --issuer ISS [--timeout SECS]"
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
    key: Option<PathBuf>,
    state: Option<PathBuf>,
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
        key: get("--key")?.map(PathBuf::from),
        state: get("--state")?.map(PathBuf::from),
        timeout: Duration::from_secs(
            get("--timeout")?
                .unwrap_or_else(|| "600".into())
                .parse()
                .context("--timeout")?,
        ),
    })
}

/// A KMS reached over HTTPS that trusts only the given certificate, after `/healthz`
/// answered ok and discovery named the cluster.
struct Kms {
    http: reqwest::Client,
    base: String,
    cluster: String,
    static_jwk: RsaPublicJwk,
}

impl Kms {
    /// Waits (deadline `a.timeout`) for a healthy KMS, then discovers it.
    async fn connect(a: &CheckArgs, started: Instant) -> anyhow::Result<Self> {
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

        // /healthz, with a deadline: the service starts after the first boot's init.
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
        let static_jwk: RsaPublicJwk = serde_json::from_str(
            discovery["rsaPublicKey"]
                .as_str()
                .context("no rsaPublicKey in discovery")?,
        )?;
        Ok(Self {
            http,
            base,
            cluster,
            static_jwk,
        })
    }

    /// POSTs one KMS message and returns the KMS's one answer.
    async fn post(&self, msg: String) -> anyhow::Result<String> {
        let r: Value = self
            .http
            .post(format!("{}/kms/messages", self.base))
            .json(&json!({"destination": self.cluster, "kmsMessages": [msg]}))
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

    /// A client for `user` in `org` with a token for this cluster from `issuer`, signed
    /// with the P-256 key `key_der` (PKCS#8) under the kid the test IdP publishes.
    fn client(
        &self,
        issuer: &str,
        key_der: &[u8],
        user: Uuid,
        org: Uuid,
    ) -> anyhow::Result<KmsClient> {
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
        )?;
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(KID.into());
        let claims = json!({"iss": issuer, "aud": self.cluster, "sub": user.to_string(),
            "org": org.to_string(), "iat": now, "exp": now + 600});
        let token = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(key_der))?;
        Ok(KmsClient::new(
            self.static_jwk.clone(),
            &self.cluster,
            user,
            "vm-probe",
            SecretString::from(token),
        )?)
    }
}

async fn check(args: &[String]) -> anyhow::Result<()> {
    let a = parse_check(args)?;
    let key_path = a.key.as_ref().context("--key is required")?;
    let state_path = a.state.as_ref().context("--state is required")?;
    let started = Instant::now();
    let kms = Kms::connect(&a, started).await?;
    let cluster = &kms.cluster;

    // The ECDHE channel with a token from the seeded issuer.
    let previous: Option<Value> = match std::fs::read(state_path) {
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
    let key_der = std::fs::read(key_path).context("reading the issuer key")?;
    let mut client = kms.client(&a.issuer, &key_der, user, org)?;
    let (hs, pending) = client.begin_handshake()?;
    let answer = kms.post(hs).await?;
    client.finish_handshake(&answer, pending)?;

    // One key: created now, or the one created on the previous boot.
    if let Some(p) = previous {
        let uri = p["key"]["uri"].as_str().context("key uri in state")?;
        let (req, _) = client.request("retrieve", uri, json!({}))?;
        let body = client.open(&kms.post(req).await?)?;
        if body["status"] != 200 {
            bail!("retrieving {uri} answered {}", body["status"]);
        }
        if body["key"]["jwk"] != p["key"]["jwk"] {
            bail!("the key {uri} came back with different key material");
        }
        println!("kms: key {uri} from the previous run retrieved, same key material");
    } else {
        let (req, _) = client.request("create", "/keys", json!({"count": 1}))?;
        let body = client.open(&kms.post(req).await?)?;
        if body["status"] != 201 {
            bail!("creating a key answered {}", body["status"]);
        }
        let key = body["keys"][0].clone();
        let uri = key["uri"].as_str().context("no key uri")?.to_owned();
        if !uri.starts_with(&format!("{cluster}/keys/")) {
            bail!("key uri {uri} is not under {cluster}");
        }
        let (req, _) = client.request("retrieve", &uri, json!({}))?;
        let got = client.open(&kms.post(req).await?)?;
        if got["status"] != 200 || got["key"]["jwk"] != key["jwk"] {
            bail!("retrieving the new key {uri} did not give it back");
        }
        strongroom_e2e::secret_file(
            state_path,
            &json!({"user": user, "org": org, "key": key}).to_string(),
        )?;
        println!("kms: handshake, created and retrieved {uri}");
    }
    println!("probe: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The handshake with a forged token must be refused: same issuer name and kid as the
/// trusted test IdP, signed by a fresh key the KMS has never seen.
async fn refused(args: &[String]) -> anyhow::Result<()> {
    let a = parse_check(args)?;
    let kms = Kms::connect(&a, Instant::now()).await?;
    let forger =
        <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(&mut rand::rng());
    let der = forger.to_pkcs8_der().context("encoding the forged key")?;
    let client = kms.client(&a.issuer, der.as_bytes(), Uuid::new_v4(), Uuid::new_v4())?;
    let (hs, _pending) = client.begin_handshake()?;
    // The refusal is signed by the KMS's static key: `open` verifies that signature.
    let body = client.open(&kms.post(hs).await?)?;
    if body["status"] != 401 {
        bail!("a forged token was not refused: the KMS answered {body}");
    }
    println!("kms: handshake with a forged token refused (401)");
    Ok(())
}
