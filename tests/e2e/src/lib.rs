//! Harness for end-to-end runs: starts real `strongroom` processes on 127.0.0.1, mints
//! tokens, and drives the KMS over HTTP with the project's own sans-I/O client
//! (`strongroom_kms::client`). Used by the end-to-end tests, the demo and the benchmark.
//! The set-up the tests share (PKI, core-sim, appliance configurations, a test issuer...)
//! lives in [`fixtures`], one copy of each.

pub mod fixtures;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use strongroom_kms::client::KmsClient;
use strongroom_kms::jose::jwk::RsaPublicJwk;
use uuid::Uuid;

/// Installs rustls' `ring` provider as the process default (reqwest is built without a
/// provider of its own, see docs/adr/0004-tls-and-pem.md). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for loopback tests and tools.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap_or_default()
}

/// The JSON line `strongroom dev` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct DevInfo {
    pub kms_url: String,
    pub kms_cluster: String,
    pub static_jwk: RsaPublicJwk,
    pub token_url: String,
    pub state_dir: PathBuf,
    /// The simulated core `strongroom dev` started (absent with `--no-core`).
    #[serde(default)]
    pub core_url: Option<String>,
    #[serde(default)]
    pub core_ca_pem: Option<PathBuf>,
    #[serde(default)]
    pub core_admin_token_file: Option<PathBuf>,
    #[serde(default)]
    pub core_state_dir: Option<PathBuf>,
    #[serde(default)]
    pub core_pid: Option<u32>,
    /// The command line that started core-sim (to restart it on the same port and state).
    #[serde(default)]
    pub core_command: Vec<String>,
}

/// Finds the `strongroom` binary: `$STRONGROOM_BIN`, else next to (or above) this executable.
pub fn strongroom_bin() -> anyhow::Result<PathBuf> {
    sibling_bin("strongroom", "STRONGROOM_BIN")
}

/// Finds the `core-sim` binary: `$CORE_SIM_BIN`, else next to (or above) this executable.
pub fn core_sim_bin() -> anyhow::Result<PathBuf> {
    sibling_bin("core-sim", "CORE_SIM_BIN")
}

fn sibling_bin(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} binary not found next to {}; build the workspace (cargo build --workspace) or set {env}",
        exe.display()
    )
}

/// A running `strongroom dev`.
pub struct DevServer {
    child: Child,
    pub info: DevInfo,
}

impl DevServer {
    /// Starts `strongroom dev --listen 127.0.0.1:0 [--state DIR] [extra...]` and waits for its line.
    pub fn start(state: Option<&Path>, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(state, extra, &[])
    }

    /// Like [`DevServer::start`], with extra environment variables for the server process.
    pub fn start_with_env(
        state: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(strongroom_bin()?);
        cmd.envs(env.iter().copied());
        cmd.args(["dev", "--listen", "127.0.0.1:0"]);
        if let Some(s) = state {
            cmd.arg("--state").arg(s);
        }
        cmd.args(extra).stdout(Stdio::piped()).stderr(
            if std::env::var_os("STRONGROOM_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            },
        );
        let mut child = cmd.spawn().context("starting strongroom dev")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the dev JSON line")?;
        if line.trim().is_empty() {
            let status = child.wait()?;
            bail!("strongroom dev exited ({status}) before printing its JSON line");
        }
        let info: DevInfo =
            serde_json::from_str(line.trim()).context("parsing the dev JSON line")?;
        Ok(Self { child, info })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no chance to flush anything. The core-sim it started goes too.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.kill_core();
        Ok(())
    }

    fn kill_core(&self) {
        if let Some(pid) = self.info.core_pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        fixtures::sigterm(self.child.id())?;
        Ok(self.child.wait()?)
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kill_core();
    }
}

/// One user's device talking to the KMS over HTTP.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    kms_url: String,
    kms_cluster: String,
    pub user: Uuid,
    pub kms: KmsClient,
}

/// Sends `request`; the JSON body of a 2xx answer, an error for any other status.
pub async fn json_ok(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    Ok(request.send().await?.error_for_status()?.json().await?)
}

pub async fn mint_token(
    http: &reqwest::Client,
    info: &DevInfo,
    user: Uuid,
    client_id: &str,
) -> anyhow::Result<String> {
    let r = json_ok(
        http.post(&info.token_url)
            .json(&json!({"user_id": user, "client_id": client_id})),
    )
    .await?;
    r["bearer"]
        .as_str()
        .map(str::to_owned)
        .context("no bearer in the token answer")
}

/// Posts JOSE messages to `/kms/messages` and returns the answers.
pub async fn post_messages(
    http: &reqwest::Client,
    info: &DevInfo,
    msgs: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    post_messages_to(http, &info.kms_url, &info.kms_cluster, msgs).await
}

/// Posts JOSE messages for `kms_cluster` to `{kms_url}/kms/messages` (any KMS listener:
/// `strongroom dev`'s plain HTTP or `strongroom serve`'s HTTPS) and returns the answers.
pub async fn post_messages_to(
    http: &reqwest::Client,
    kms_url: &str,
    kms_cluster: &str,
    msgs: Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let r = json_ok(
        http.post(format!("{kms_url}/kms/messages"))
            .json(&json!({"destination": kms_cluster, "kmsMessages": msgs})),
    )
    .await?;
    let out = r["kmsMessages"]
        .as_array()
        .context("no kmsMessages in the answer")?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .context("answer is not a string")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(out)
}

impl Session {
    /// Mints a token for `user` and runs the ECDHE handshake.
    pub async fn connect(
        http: &reqwest::Client,
        info: &DevInfo,
        user: Uuid,
        client_id: &str,
    ) -> anyhow::Result<Self> {
        let bearer = mint_token(http, info, user, client_id).await?;
        let endpoint = KmsEndpoint {
            kms_url: &info.kms_url,
            kms_cluster: &info.kms_cluster,
            static_jwk: info.static_jwk.clone(),
        };
        Self::handshake(http, endpoint, user, client_id, SecretString::from(bearer)).await
    }

    /// Runs the ECDHE handshake with `endpoint` for `user`, with a bearer token the caller
    /// obtained (e.g. from [`fixtures::TestIssuer::token`]).
    pub async fn handshake(
        http: &reqwest::Client,
        endpoint: KmsEndpoint<'_>,
        user: Uuid,
        client_id: &str,
        bearer: SecretString,
    ) -> anyhow::Result<Self> {
        let mut kms = KmsClient::new(
            endpoint.static_jwk,
            endpoint.kms_cluster,
            user,
            client_id,
            bearer,
        )?;
        let (hs, pending) = kms.begin_handshake()?;
        let answer =
            post_messages_to(http, endpoint.kms_url, endpoint.kms_cluster, vec![hs]).await?;
        let first = answer.into_iter().next().context("no answer")?;
        kms.finish_handshake(&first, pending)?;
        Ok(Self {
            http: http.clone(),
            kms_url: endpoint.kms_url.to_owned(),
            kms_cluster: endpoint.kms_cluster.to_owned(),
            user,
            kms,
        })
    }

    /// One request on the channel; returns the opened answer body.
    pub async fn call(&self, method: &str, uri: &str, extra: Value) -> anyhow::Result<Value> {
        let (jwe, _) = self.kms.request(method, uri, extra)?;
        let answer =
            post_messages_to(&self.http, &self.kms_url, &self.kms_cluster, vec![jwe]).await?;
        let first = answer.into_iter().next().context("no answer")?;
        Ok(self.kms.open(&first)?)
    }

    /// Creates one key (`create /keys`, which must answer 201); returns its URI and its
    /// `k` (base64url key bytes).
    pub async fn create_key(&self) -> anyhow::Result<(String, String)> {
        let r = self.call("create", "/keys", json!({"count": 1})).await?;
        if r["status"] != 201 {
            bail!("create /keys answered {}", r["status"]);
        }
        let key = &r["keys"][0];
        let uri = key["uri"].as_str().context("no key uri")?.to_owned();
        let k = key["jwk"]["k"].as_str().context("no key bytes")?.to_owned();
        Ok((uri, k))
    }
}

/// Where a KMS channel goes: the listener's base URL (`http://…` or `https://…`), the
/// cluster (`kms://DOMAIN`, the messages' destination) and the static key from discovery.
pub struct KmsEndpoint<'a> {
    pub kms_url: &'a str,
    pub kms_cluster: &'a str,
    pub static_jwk: RsaPublicJwk,
}

/// Two users on one KMS, for audit tests: alice creates a key and eve's retrieve of it is
/// refused (403), so the log holds granted records for alice and one denied for eve.
pub struct GrantAndDenial {
    pub alice: Uuid,
    pub eve: Uuid,
    pub key_uri: String,
    /// The key's bytes (base64url), to prove they appear nowhere they must not.
    pub key_k: String,
}

impl GrantAndDenial {
    /// Runs the scenario against a `strongroom dev`; fails unless eve is refused with 403.
    pub async fn run(http: &reqwest::Client, info: &DevInfo) -> anyhow::Result<Self> {
        let (alice, eve) = (Uuid::new_v4(), Uuid::new_v4());
        let a = Session::connect(http, info, alice, "a").await?;
        let e = Session::connect(http, info, eve, "e").await?;
        let (key_uri, key_k) = a.create_key().await?;
        let refused = e.call("retrieve", &key_uri, json!({})).await?;
        if refused["status"] != 403 {
            bail!(
                "eve's retrieve of alice's key answered {}, not 403",
                refused["status"]
            );
        }
        Ok(Self {
            alice,
            eve,
            key_uri,
            key_k,
        })
    }
}

/// Writes a file readable by its owner only (secret files must be 0600: the appliance
/// refuses group- or world-readable ones).
pub fn secret_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// The files an appliance configuration in `dir` needs for its own SoftHSM2 token store:
/// `softhsm2.conf` (token directory `dir/tokens`), `pin` and `so-pin` (0600).
pub fn appliance_hsm_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("tokens"))?;
    std::fs::write(
        dir.join("softhsm2.conf"),
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )?;
    secret_file(&dir.join("pin"), "user-pin-1234\n")?;
    secret_file(&dir.join("so-pin"), "so-pin-5678\n")?;
    Ok(())
}

/// The KMS part of a two-part membership change (R10, docs/protocol.md): a request on
/// `c`'s channel adding (`"add"`) or removing (`"remove"`) `subject` on `resource_uri`,
/// for `room`, with a fresh 16-byte nonce. Returns the JWE and the nonce.
pub fn membership_part(
    c: &KmsClient,
    op: &str,
    resource_uri: &str,
    subject: Uuid,
    room: Uuid,
) -> anyhow::Result<(String, String)> {
    let nonce = strongroom_kms::jose::b64e(&strongroom_kms::crypto::random_bytes::<16>());
    let membership = json!({"op": op, "room": room, "nonce": nonce});
    let (jwe, _) = match op {
        "add" => c.request(
            "create",
            "/authorizations",
            json!({"resourceUri": resource_uri, "userIds": [subject], "membership": membership}),
        )?,
        "remove" => c.request(
            "delete",
            &format!("{resource_uri}/authorizations?authId={subject}"),
            json!({"membership": membership}),
        )?,
        other => bail!("unknown membership op {other}"),
    };
    Ok((jwe, nonce))
}

/// `strongroom dev` with its core-sim, an admin, and a helper to log users in with the
/// reference client (`strongroom-client`) — everything through the core, as a real device.
pub struct World {
    pub server: DevServer,
    pub http: reqwest::Client,
    pub admin: strongroom_client::Admin,
    pub core_url: String,
    pub ca_pem: PathBuf,
    /// The organization whose KMS is the dev appliance.
    pub org: Uuid,
    /// The state directory when the caller gave none (removed on drop).
    _tmp: Option<tempfile::TempDir>,
}

impl World {
    /// Starts `strongroom dev` (with core-sim) and creates an organization on its KMS.
    pub async fn start(state: Option<&Path>) -> anyhow::Result<Self> {
        install_crypto_provider();
        let tmp = match state {
            Some(_) => None,
            None => Some(tempfile::tempdir()?),
        };
        let dir = state.or_else(|| tmp.as_ref().map(tempfile::TempDir::path));
        let server = DevServer::start(dir, &[])?;
        let info = server.info.clone();
        let core_url = info
            .core_url
            .clone()
            .context("strongroom dev printed no core_url (core-sim not built?)")?;
        let ca_pem = info.core_ca_pem.clone().context("no core_ca_pem")?;
        let http = strongroom_client::https_client(&ca_pem)?;
        let admin = strongroom_client::Admin::from_file(
            http.clone(),
            &core_url,
            &info
                .core_admin_token_file
                .clone()
                .context("no admin token file")?,
        )?;
        let org = admin.org("Acme", &info.kms_cluster).await?;
        Ok(Self {
            server,
            http,
            admin,
            core_url,
            ca_pem,
            org,
            _tmp: tmp,
        })
    }

    /// Creates a user of `org` and logs one device in.
    pub async fn user(
        &self,
        org: Uuid,
        name: &str,
        device: &str,
    ) -> anyhow::Result<strongroom_client::Client> {
        let email = format!("{name}-{}@example.test", Uuid::new_v4().simple());
        self.admin.user(org, name, &email).await?;
        self.login(&email, device).await
    }

    pub async fn login(
        &self,
        email: &str,
        device: &str,
    ) -> anyhow::Result<strongroom_client::Client> {
        strongroom_client::Client::login(&self.http, &self.core_url, &self.ca_pem, email, device)
            .await
    }
}
