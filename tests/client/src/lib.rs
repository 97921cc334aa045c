//! The reference client (issue 3, part 4): what a real device does against the hosted core
//! and the user's own KMS, with nothing the core could read.
//!
//! * **Login** at the core's identity service: a core token (for the core) and a KMS token
//!   (for the user's organization's KMS), never each other's.
//! * **Channel**: discovery (`GET /kms/{user}`) gives the KMS cluster and its static key; the
//!   ECDHE handshake and every later KMS request travel through the core's relay
//!   (`POST /kms/messages`, R3) as JWEs the core cannot open. The sans-I/O
//!   [`strongroom_kms::client::KmsClient`] builds and opens them.
//! * **Rooms**: the KMS resource first, then the core room with an encrypted title. Titles,
//!   messages and files are `dir`/`A256GCM` JWEs with `kid` = the key URI (what the core
//!   accepts). Each device creates and binds its own key per room (R8); after a leave or a
//!   removal it binds a fresh one before sending again (R9), also when the core answers
//!   `409 rotation_required`.
//! * **Membership** (R10): a core part plus a KMS part encrypted on the channel
//!   (docs/protocol.md "Two-part membership change"); the client checks the KMS's receipt too.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use strongroom_kms::client::KmsClient;
use strongroom_kms::crypto::SecretKey32;
use strongroom_kms::jose::jwe::{self, Jwe};
use strongroom_kms::jose::jwk::RsaPublicJwk;
use uuid::Uuid;

/// An error answer from the core: `{"error","message"}` with its HTTP status.
#[derive(Debug, thiserror::Error)]
#[error("core answered {status} {code}: {message}")]
pub struct CoreError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The whole body (e.g. `kms_response` of a `kms_refused`).
    pub body: Value,
}

/// A refusal from the KMS, opened on the channel.
#[derive(Debug, thiserror::Error)]
#[error("KMS answered {status}: {reason}")]
pub struct KmsRefusal {
    pub status: u16,
    pub reason: String,
}

/// An HTTPS client that trusts exactly the given root (the dev CA) — PEM file.
pub fn https_client(ca_pem: &Path) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls_trusting(ca_pem)?)
        .pool_max_idle_per_host(1024)
        .build()?)
}

/// A TLS client configuration (rustls, ring provider) that trusts exactly the
/// certificates in the PEM file `ca_pem`.
pub fn tls_trusting(ca_pem: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("reading {}", ca_pem.display()))?
    {
        roots.add(c.with_context(|| format!("parsing {}", ca_pem.display()))?)?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The core's HTTP API, with one bearer.
#[derive(Clone)]
pub struct Core {
    http: reqwest::Client,
    url: String,
    token: SecretString,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    Err(CoreError {
        status: status.as_u16(),
        code: body["error"].as_str().unwrap_or("").to_owned(),
        message: body["message"].as_str().unwrap_or("").to_owned(),
        body,
    }
    .into())
}

impl Core {
    pub fn new(http: reqwest::Client, url: &str, token: SecretString) -> Self {
        Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        answer(
            self.http
                .get(format!("{}{path}", self.url))
                .bearer_auth(self.token.expose_secret())
                .send()
                .await?,
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        answer(
            self.http
                .post(format!("{}{path}", self.url))
                .bearer_auth(self.token.expose_secret())
                .json(body)
                .send()
                .await?,
        )
        .await
    }

    pub async fn delete(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .delete(format!("{}{path}", self.url))
            .bearer_auth(self.token.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        answer(req.send().await?).await
    }
}

/// Admin calls of the simulated core (organizations, users, directory sync).
#[derive(Debug, Clone)]
pub struct Admin(pub Core);

impl Admin {
    pub fn from_file(
        http: reqwest::Client,
        core_url: &str,
        token_file: &Path,
    ) -> anyhow::Result<Self> {
        let t = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        Ok(Self(Core::new(
            http,
            core_url,
            SecretString::from(t.trim().to_owned()),
        )))
    }

    /// Creates an organization whose KMS is `kms_domain` (`kms://…` or bare); returns its id.
    pub async fn org(&self, name: &str, kms_domain: &str) -> anyhow::Result<Uuid> {
        let v = self
            .0
            .post(
                "/admin/orgs",
                &json!({"name": name, "kms_domain": kms_domain}),
            )
            .await?;
        uuid_of(&v["id"])
    }

    pub async fn user(&self, org: Uuid, name: &str, email: &str) -> anyhow::Result<Uuid> {
        let v = self
            .0
            .post(
                "/admin/users",
                &json!({"org": org, "name": name, "email": email}),
            )
            .await?;
        uuid_of(&v["id"])
    }

    /// Directory sync (R24): the user leaves every room at once.
    pub async fn deactivate(&self, user: Uuid) -> anyhow::Result<Vec<Uuid>> {
        let v = self
            .0
            .post(&format!("/admin/users/{user}/deactivate"), &json!({}))
            .await?;
        v["removed_from"]
            .as_array()
            .context("no removed_from")?
            .iter()
            .map(uuid_of)
            .collect()
    }
}

fn uuid_of(v: &Value) -> anyhow::Result<Uuid> {
    v.as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .with_context(|| format!("not a UUID: {v}"))
}

fn key_of(v: &Value) -> anyhow::Result<SecretKey32> {
    let k = v["jwk"]["k"].as_str().context("no jwk.k in the key")?;
    SecretKey32::from_slice(&strongroom_kms::jose::b64d("k", k)?).context("key is not 256 bits")
}

/// What a client read from a room, in the room's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Message {
        seq: u64,
        sender: Uuid,
        kid: String,
        text: String,
    },
    File {
        seq: u64,
        sender: Uuid,
        kid: String,
        name: String,
        data: Vec<u8>,
    },
    /// Membership: `kind` is join, leave or removed.
    Event {
        seq: u64,
        kind: String,
        user: Uuid,
        actor: Option<Uuid>,
        directory_sync: bool,
    },
    /// Content whose key the KMS refused (e.g. after this user's removal).
    Unreadable {
        seq: u64,
        sender: Uuid,
        kid: String,
        reason: String,
    },
}

impl Item {
    pub fn seq(&self) -> u64 {
        match self {
            Item::Message { seq, .. }
            | Item::File { seq, .. }
            | Item::Event { seq, .. }
            | Item::Unreadable { seq, .. } => *seq,
        }
    }
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Message {
                seq, sender, text, ..
            } => write!(f, "#{seq} {sender}: {text}"),
            Item::File {
                seq,
                sender,
                name,
                data,
                ..
            } => {
                write!(f, "#{seq} {sender}: file {name} ({} bytes)", data.len())
            }
            Item::Event {
                seq,
                kind,
                user,
                actor,
                directory_sync,
            } => {
                write!(f, "#{seq} * {user} {kind}")?;
                if *directory_sync {
                    write!(f, " (directory sync)")?;
                } else if let Some(a) = actor.filter(|a| a != user) {
                    write!(f, " by {a}")?;
                }
                Ok(())
            }
            Item::Unreadable {
                seq,
                sender,
                kid,
                reason,
            } => {
                write!(f, "#{seq} {sender}: <cannot decrypt: {kid}: {reason}>")
            }
        }
    }
}

/// A room as this client sees it.
#[derive(Debug, Clone)]
pub struct RoomView {
    pub id: Uuid,
    pub resource_uri: String,
    pub title: String,
    pub members: Vec<Uuid>,
    /// Members of more than one organization (R25): shown to the user.
    pub external: bool,
    pub last_seq: u64,
}

/// This device's state for one room.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomState {
    pub resource_uri: String,
    /// This device's current key for the room (R8), if any.
    pub my_key: Option<String>,
    /// A leave or removal happened since `my_key` was bound: rotate before sending (R9).
    pub stale: bool,
    /// The room sequence when `my_key` was bound.
    pub key_seq: u64,
    /// The last sequence read.
    pub read_seq: u64,
}

/// What the CLI keeps between runs (a 0600 file): tokens, the channel, this device's keys.
#[derive(Serialize, Deserialize)]
pub struct Saved {
    pub core_url: String,
    pub ca_pem: std::path::PathBuf,
    pub email: String,
    pub client_id: String,
    pub login: Value,
    pub rooms: HashMap<Uuid, RoomState>,
    /// The ECDHE channel (URI, base64url key) and the KMS static key it was made with.
    #[serde(default)]
    pub channel: Option<(String, String, RsaPublicJwk)>,
    /// This device's keys: URI → base64url key bytes.
    #[serde(default)]
    pub keys: HashMap<String, String>,
}

/// One user's device.
pub struct Client {
    core: Core,
    pub user: Uuid,
    pub org: Uuid,
    pub client_id: String,
    email: String,
    ca_pem: std::path::PathBuf,
    login: Value,
    /// Set by discovery and the handshake ([`Client::handshake`]).
    kms: Option<KmsClient>,
    destination: String,
    keys: HashMap<String, SecretKey32>,
    rooms: HashMap<Uuid, RoomState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.user)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Logs in at the core's identity service, discovers the user's KMS through the core,
    /// and runs the ECDHE handshake through the relay.
    pub async fn login(
        http: &reqwest::Client,
        core_url: &str,
        ca_pem: &Path,
        email: &str,
        client_id: &str,
    ) -> anyhow::Result<Self> {
        let anon = Core::new(http.clone(), core_url, SecretString::from(String::new()));
        let login = anon
            .post(
                "/identity/login",
                &json!({"email": email, "client_id": client_id}),
            )
            .await
            .context("logging in")?;
        let mut c = Self::from_login(http, core_url, ca_pem, email, client_id, login)?;
        c.handshake().await?;
        Ok(c)
    }

    fn from_login(
        http: &reqwest::Client,
        core_url: &str,
        ca_pem: &Path,
        email: &str,
        client_id: &str,
        login: Value,
    ) -> anyhow::Result<Self> {
        let user = uuid_of(&login["user_id"])?;
        let org = uuid_of(&login["org_id"])?;
        let core_token = login["core_token"].as_str().context("no core_token")?;
        let kms_token = login["kms_token"].as_str().context("no kms_token")?;
        let destination = login["kms_cluster"]
            .as_str()
            .context("no kms_cluster")?
            .to_owned();
        let core = Core::new(
            http.clone(),
            core_url,
            SecretString::from(core_token.to_owned()),
        );
        if kms_token.is_empty() {
            bail!("empty kms_token");
        }
        Ok(Self {
            core,
            user,
            org,
            client_id: client_id.to_owned(),
            email: email.to_owned(),
            ca_pem: ca_pem.to_path_buf(),
            login,
            kms: None,
            destination,
            keys: HashMap::new(),
            rooms: HashMap::new(),
        })
    }

    /// Discovery through the core (`GET /kms/{user}`) and the ECDHE handshake via the relay.
    pub async fn handshake(&mut self) -> anyhow::Result<()> {
        let d = self.core.get(&format!("/kms/{}", self.user)).await?;
        let cluster = d["kms_cluster"].as_str().context("no kms_cluster")?;
        if cluster != self.destination {
            bail!("discovery names {cluster}, the login {}", self.destination);
        }
        let jwk: RsaPublicJwk = serde_json::from_value(d["static_jwk"].clone())
            .context("the realm has not announced its static key (is it connected?)")?;
        let kms_token = self.login["kms_token"].as_str().context("no kms_token")?;
        let mut kms = KmsClient::new(
            jwk,
            &self.destination,
            self.user,
            &self.client_id,
            SecretString::from(kms_token.to_owned()),
        )?;
        let (hs, pending) = kms.begin_handshake()?;
        let answer = self.relay(vec![hs]).await?;
        let first = answer.into_iter().next().context("no handshake answer")?;
        kms.finish_handshake(&first, pending)?;
        self.kms = Some(kms);
        Ok(())
    }

    fn kms(&self) -> anyhow::Result<&KmsClient> {
        self.kms.as_ref().context("no KMS channel: handshake first")
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn channel_uri(&self) -> Option<&str> {
        self.kms.as_ref().and_then(KmsClient::channel_uri)
    }

    pub fn kms_cluster(&self) -> &str {
        &self.destination
    }

    /// `POST <core>/kms/messages` (core token): the core relays to the realm.
    pub async fn relay(&self, msgs: Vec<String>) -> anyhow::Result<Vec<String>> {
        let v = self
            .core
            .post(
                "/kms/messages",
                &json!({"destination": self.destination, "kmsMessages": msgs}),
            )
            .await?;
        v["kmsMessages"]
            .as_array()
            .context("no kmsMessages")?
            .iter()
            .map(|m| {
                m.as_str()
                    .map(str::to_owned)
                    .context("answer is not a string")
            })
            .collect()
    }

    /// Builds one KMS request on the channel without sending it (benchmarks: the same JWE
    /// can go through the relay or straight to the KMS). Returns the JWE and its requestId.
    pub fn kms_request(
        &self,
        method: &str,
        uri: &str,
        extra: Value,
    ) -> anyhow::Result<(String, String)> {
        Ok(self.kms()?.request(method, uri, extra)?)
    }

    /// Opens a KMS answer on the channel.
    pub fn kms_open(&self, answer: &str) -> anyhow::Result<Value> {
        Ok(self.kms()?.open(answer)?)
    }

    /// One KMS request on the channel through the relay; a 499 reset re-handshakes once.
    pub async fn kms_call(
        &mut self,
        method: &str,
        uri: &str,
        extra: Value,
    ) -> anyhow::Result<Value> {
        for _ in 0..2 {
            let (jwe, rid) = self.kms()?.request(method, uri, extra.clone())?;
            let answer = self.relay(vec![jwe]).await?;
            let body = self.kms()?.open(answer.first().context("no answer")?)?;
            if body["status"] == 499 {
                self.kms = None;
                self.handshake().await?;
                continue;
            }
            if body["requestId"] != rid.as_str() {
                bail!("the KMS answer does not echo our requestId");
            }
            return Ok(body);
        }
        bail!("the KMS reset the channel twice")
    }

    async fn kms_ok(&mut self, method: &str, uri: &str, extra: Value) -> anyhow::Result<Value> {
        let body = self.kms_call(method, uri, extra).await?;
        let status = body["status"].as_u64().unwrap_or(0);
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(KmsRefusal {
                status: u16::try_from(status).unwrap_or(0),
                reason: body["reason"].as_str().unwrap_or("").to_owned(),
            }
            .into())
        }
    }

    /// A fresh key from the KMS (unbound, this device's).
    async fn new_key(&mut self) -> anyhow::Result<String> {
        let v = self.kms_ok("create", "/keys", json!({"count": 1})).await?;
        let k = &v["keys"][0];
        let uri = k["uri"].as_str().context("no key uri")?.to_owned();
        self.keys.insert(uri.clone(), key_of(k)?);
        Ok(uri)
    }

    /// The key for `uri`: cached, else retrieved from the KMS (which checks authorization).
    pub async fn key(&mut self, uri: &str) -> anyhow::Result<&SecretKey32> {
        if !self.keys.contains_key(uri) {
            let v = self.kms_ok("retrieve", uri, json!({})).await?;
            self.keys.insert(uri.to_owned(), key_of(&v["key"])?);
        }
        self.keys.get(uri).context("key cache")
    }

    /// The keys this device holds (URI, raw bytes): for tests that must prove no key ever
    /// reached the core.
    pub fn cached_keys(&self) -> Vec<(String, [u8; 32])> {
        self.keys
            .iter()
            .map(|(u, k)| (u.clone(), *k.expose()))
            .collect()
    }

    /// This device's current key URI for a room, if any (no rotation).
    pub fn my_key(&self, room: Uuid) -> Option<&str> {
        self.rooms.get(&room).and_then(|r| r.my_key.as_deref())
    }

    /// Encrypts under a given key URI this device holds (tests: content under an old key).
    pub async fn encrypt_with(&mut self, key_uri: &str, plain: &[u8]) -> anyhow::Result<String> {
        self.key(key_uri).await?;
        self.encrypt(key_uri, plain)
    }

    /// Forgets cached keys (a fresh device, or to prove a retrieve is refused).
    pub fn forget_keys(&mut self) {
        self.keys.clear();
    }

    /// Decrypts a content JWE, fetching its key from the KMS if needed.
    pub async fn decrypt(&mut self, content: &str) -> anyhow::Result<Vec<u8>> {
        let kid = Jwe::parse(content)?
            .kid()
            .context("content without kid")?
            .to_owned();
        let key = self.key(&kid).await?;
        Ok(Jwe::parse(content)?.decrypt_dir(key)?.to_vec())
    }

    /// Creates a room: the KMS resource first (with this device's key), then the core room
    /// with the encrypted title.
    pub async fn create_room(&mut self, title: &str) -> anyhow::Result<Uuid> {
        let key = self.new_key().await?;
        let res = self
            .kms_ok(
                "create",
                "/resources",
                json!({"userIds": [], "keyUris": [key]}),
            )
            .await?;
        let resource_uri = res["resource"]["uri"]
            .as_str()
            .context("no resource uri")?
            .to_owned();
        let title_jwe = self.encrypt(&key, title.as_bytes())?;
        let room = self
            .core
            .post(
                "/rooms",
                &json!({"resource_uri": resource_uri, "title": title_jwe}),
            )
            .await?;
        let id = uuid_of(&room["id"])?;
        self.rooms.insert(
            id,
            RoomState {
                resource_uri,
                my_key: Some(key),
                stale: false,
                key_seq: room["last_seq"].as_u64().unwrap_or(0),
                read_seq: 0,
            },
        );
        Ok(id)
    }

    fn encrypt(&self, key_uri: &str, plain: &[u8]) -> anyhow::Result<String> {
        let key = self.keys.get(key_uri).context("own key not cached")?;
        Ok(jwe::encrypt_dir(key, key_uri, plain))
    }

    /// The room as the core shows it, with the title decrypted.
    pub async fn room(&mut self, id: Uuid) -> anyhow::Result<RoomView> {
        let v = self.core.get(&format!("/rooms/{id}")).await?;
        let resource_uri = v["resource_uri"]
            .as_str()
            .context("no resource_uri")?
            .to_owned();
        self.rooms.entry(id).or_insert_with(|| RoomState {
            resource_uri: resource_uri.clone(),
            ..RoomState::default()
        });
        let title_jwe = v["title"]["content"].as_str().context("no title")?;
        let title = match self.decrypt(title_jwe).await {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) => format!("<cannot decrypt the title: {e}>"),
        };
        Ok(RoomView {
            id,
            resource_uri,
            title,
            members: v["members"]
                .as_array()
                .context("no members")?
                .iter()
                .map(uuid_of)
                .collect::<anyhow::Result<_>>()?,
            external: v["external"].as_bool().unwrap_or(false),
            last_seq: v["last_seq"].as_u64().unwrap_or(0),
        })
    }

    async fn state(&mut self, room: Uuid) -> anyhow::Result<&mut RoomState> {
        if !self.rooms.contains_key(&room) {
            self.room(room).await?;
        }
        self.rooms.get_mut(&room).context("room state")
    }

    /// Creates and binds a fresh key of this device to the room (R8, R9).
    pub async fn rotate(&mut self, room: Uuid) -> anyhow::Result<String> {
        let resource = self.state(room).await?.resource_uri.clone();
        let key = self.new_key().await?;
        self.kms_ok("update", &key, json!({"resourceUri": resource}))
            .await?;
        let seq = self.core.get(&format!("/rooms/{room}")).await?["last_seq"]
            .as_u64()
            .unwrap_or(0);
        let st = self.state(room).await?;
        st.my_key = Some(key.clone());
        st.stale = false;
        st.key_seq = seq;
        Ok(key)
    }

    /// This device's current key for the room (none yet, or stale: a fresh one).
    pub async fn current_key(&mut self, room: Uuid) -> anyhow::Result<String> {
        let st = self.state(room).await?;
        match (&st.my_key, st.stale) {
            (Some(k), false) => {
                let k = k.clone();
                if self.keys.contains_key(&k) {
                    Ok(k)
                } else {
                    self.key(&k).await?;
                    Ok(k)
                }
            }
            _ => self.rotate(room).await,
        }
    }

    async fn post_content(&mut self, room: Uuid, kind: &str, plain: &[u8]) -> anyhow::Result<u64> {
        for attempt in 0..2 {
            let key = self.current_key(room).await?;
            let content = self.encrypt(&key, plain)?;
            match self
                .core
                .post(
                    &format!("/rooms/{room}/{kind}"),
                    &json!({"content": content}),
                )
                .await
            {
                Ok(v) => return v["seq"].as_u64().context("no seq"),
                Err(e) => match e.downcast_ref::<CoreError>() {
                    Some(c) if c.code == "rotation_required" && attempt == 0 => {
                        self.state(room).await?.stale = true;
                    }
                    _ => return Err(e),
                },
            }
        }
        bail!("the core still asks for rotation after a fresh key")
    }

    /// Sends an encrypted message (rotating first if a member left since the key was bound).
    pub async fn send(&mut self, room: Uuid, text: &str) -> anyhow::Result<u64> {
        self.post_content(room, "messages", text.as_bytes()).await
    }

    /// Sends an encrypted file: `{"name","data"}` (data base64url) inside the JWE.
    pub async fn send_file(&mut self, room: Uuid, name: &str, data: &[u8]) -> anyhow::Result<u64> {
        let plain = json!({"name": name, "data": URL_SAFE_NO_PAD.encode(data)}).to_string();
        self.post_content(room, "files", plain.as_bytes()).await
    }

    /// Reads the room after `after` (or after what was read last); marks this device's key
    /// stale when a leave or removal is seen after it was bound (R9).
    pub async fn read(&mut self, room: Uuid, after: Option<u64>) -> anyhow::Result<Vec<Item>> {
        let after = match after {
            Some(a) => a,
            None => self.state(room).await?.read_seq,
        };
        let v = self
            .core
            .get(&format!("/rooms/{room}/messages?after={after}"))
            .await?;
        let mut items = Vec::new();
        for e in v["events"].as_array().context("no events")? {
            items.push(Item::Event {
                seq: e["seq"].as_u64().unwrap_or(0),
                kind: e["kind"].as_str().unwrap_or("").to_owned(),
                user: uuid_of(&e["user"])?,
                actor: e["actor"].as_str().and_then(|a| Uuid::parse_str(a).ok()),
                directory_sync: e["directory_sync"].as_bool().unwrap_or(false),
            });
        }
        for m in v["messages"].as_array().context("no messages")? {
            let seq = m["seq"].as_u64().unwrap_or(0);
            let sender = uuid_of(&m["sender"])?;
            let kid = m["kid"].as_str().unwrap_or("").to_owned();
            let content = m["content"].as_str().context("no content")?;
            let item = match self.decrypt(content).await {
                Ok(plain) if m["kind"] == "file" => {
                    let f: Value = serde_json::from_slice(&plain).context("file is not JSON")?;
                    Item::File {
                        seq,
                        sender,
                        kid,
                        name: f["name"].as_str().unwrap_or("").to_owned(),
                        data: URL_SAFE_NO_PAD
                            .decode(f["data"].as_str().unwrap_or(""))
                            .context("file data")?,
                    }
                }
                Ok(plain) => Item::Message {
                    seq,
                    sender,
                    kid,
                    text: String::from_utf8_lossy(&plain).into_owned(),
                },
                Err(e) => Item::Unreadable {
                    seq,
                    sender,
                    kid,
                    reason: e.to_string(),
                },
            };
            items.push(item);
        }
        items.sort_by_key(Item::seq);
        let last = v["last_seq"].as_u64().unwrap_or(after);
        let st = self.state(room).await?;
        for i in &items {
            if let Item::Event { seq, kind, .. } = i
                && (kind == "leave" || kind == "removed")
                && *seq > st.key_seq
            {
                st.stale = true;
            }
        }
        st.read_seq = st.read_seq.max(last);
        Ok(items)
    }

    /// Adds `subject` to the room (R10: core part + KMS part).
    pub async fn add_member(&mut self, room: Uuid, subject: Uuid) -> anyhow::Result<Value> {
        self.change_membership(room, subject, true).await
    }

    /// Removes `subject` (or leaves, when `subject` is this user).
    pub async fn remove_member(&mut self, room: Uuid, subject: Uuid) -> anyhow::Result<Value> {
        self.change_membership(room, subject, false).await
    }

    /// The one place membership changes go through: two-part (R10, docs/protocol.md). The
    /// KMS part travels encrypted on our channel with a fresh nonce; the core answers only
    /// after the KMS applied it, with the KMS's answer (for us) and its signed receipt,
    /// which we check too: signed by our KMS's static key, naming this room, change,
    /// subject, actor and nonce.
    async fn change_membership(
        &mut self,
        room: Uuid,
        subject: Uuid,
        add: bool,
    ) -> anyhow::Result<Value> {
        let resource = self.state(room).await?.resource_uri.clone();
        let nonce = URL_SAFE_NO_PAD.encode(strongroom_kms::crypto::random_bytes::<16>());
        let op = if add { "add" } else { "remove" };
        let membership = json!({"op": op, "room": room, "nonce": nonce});
        let (part, rid) = if add {
            self.kms()?.request(
                "create",
                "/authorizations",
                json!({"resourceUri": resource, "userIds": [subject], "membership": membership}),
            )?
        } else {
            self.kms()?.request(
                "delete",
                &format!("{resource}/authorizations?authId={subject}"),
                json!({"membership": membership}),
            )?
        };
        let res = if add {
            self.core
                .post(
                    &format!("/rooms/{room}/members"),
                    &json!({"user_id": subject, "kms_part": part}),
                )
                .await
        } else {
            self.core
                .delete(
                    &format!("/rooms/{room}/members/{subject}"),
                    Some(&json!({"kms_part": part})),
                )
                .await
        };
        let v = match res {
            Ok(v) => v,
            Err(e) => match e.downcast_ref::<CoreError>() {
                Some(c) if c.code == "kms_refused" => {
                    let reason = c.body["kms_response"]
                        .as_str()
                        .and_then(|r| self.kms.as_ref()?.open(r).ok())
                        .map_or_else(|| c.message.clone(), |b| b.to_string());
                    bail!("the KMS refused the membership change: {reason}");
                }
                _ => return Err(e),
            },
        };
        let kms = self
            .kms()?
            .open(v["kms_response"].as_str().context("no kms_response")?)?;
        if kms["requestId"] != rid.as_str() {
            bail!("the KMS part's answer does not echo our requestId");
        }
        let receipt = v["receipt"]
            .as_str()
            .context("the core applied a membership change without a KMS receipt")?;
        let key = self.kms()?.static_jwk().to_public_key()?;
        let payload = strongroom_kms::jose::jws::Jws::parse(receipt)
            .and_then(|j| j.verify_rsa(&key))
            .context("the membership receipt is not signed by our KMS")?;
        let r: Value = serde_json::from_slice(&payload)?;
        let expect = [
            ("typ", json!("strongroom-membership-receipt")),
            ("room", json!(room)),
            ("op", json!(op)),
            ("subject", json!(subject)),
            ("actor", json!(self.user)),
            ("nonce", json!(nonce)),
            ("resourceUri", json!(resource)),
        ];
        for (field, want) in expect {
            if r[field] != want {
                bail!(
                    "the membership receipt's {field} is {}, not {want}",
                    r[field]
                );
            }
        }
        self.after_membership(room, subject, add).await?;
        Ok(v["event"].clone())
    }

    async fn after_membership(
        &mut self,
        room: Uuid,
        subject: Uuid,
        add: bool,
    ) -> anyhow::Result<()> {
        if !add && subject != self.user {
            // R9: the removed member may hold our current key; the next send uses a new one.
            self.state(room).await?.stale = true;
        }
        Ok(())
    }

    /// What the CLI saves (tokens and room state; keys are fetched again from the KMS).
    pub fn save(&self) -> Saved {
        Saved {
            core_url: self.core.url.clone(),
            ca_pem: self.ca_pem.clone(),
            email: self.email.clone(),
            client_id: self.client_id.clone(),
            login: self.login.clone(),
            rooms: self.rooms.clone(),
            channel: self.kms.as_ref().and_then(|k| {
                k.export_channel()
                    .map(|(u, key)| (u, URL_SAFE_NO_PAD.encode(key), k.static_jwk().clone()))
            }),
            keys: self
                .keys
                .iter()
                .map(|(u, k)| (u.clone(), URL_SAFE_NO_PAD.encode(k.expose())))
                .collect(),
        }
    }

    /// Restores a saved client and opens a fresh channel.
    pub async fn restore(saved: Saved) -> anyhow::Result<Self> {
        let http = https_client(&saved.ca_pem)?;
        let mut c = Self::from_login(
            &http,
            &saved.core_url,
            &saved.ca_pem,
            &saved.email,
            &saved.client_id,
            saved.login,
        )?;
        c.rooms = saved.rooms;
        for (u, k) in saved.keys {
            if let Some(key) = URL_SAFE_NO_PAD
                .decode(k)
                .ok()
                .and_then(|b| SecretKey32::from_slice(&b))
            {
                c.keys.insert(u, key);
            }
        }
        let restored = match saved.channel {
            Some((uri, key, jwk)) => {
                let key: Option<[u8; 32]> = URL_SAFE_NO_PAD
                    .decode(key)
                    .ok()
                    .and_then(|b| b.try_into().ok());
                match key {
                    Some(key) => {
                        let kms_token = c.login["kms_token"].as_str().context("no kms_token")?;
                        let mut kms = KmsClient::new(
                            jwk,
                            &c.destination,
                            c.user,
                            &c.client_id,
                            SecretString::from(kms_token.to_owned()),
                        )?;
                        kms.import_channel(uri, key);
                        c.kms = Some(kms);
                        true
                    }
                    None => false,
                }
            }
            None => false,
        };
        if !restored {
            c.handshake().await?;
        }
        Ok(c)
    }
}
