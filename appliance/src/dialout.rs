//! The dial-out connector (R3, R21): the appliance's only link to the hosted core. It
//! opens one outbound WebSocket over pinned TLS 1.3 (docs/protocol.md "Dial-out"), answers
//! the KMS messages the core relays down it, and reconnects by itself with exponential
//! backoff and full jitter. No inbound port is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use strongroom_kms::Kms;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};

const PING_EVERY: Duration = Duration::from_secs(20);
const MAX_MISSED_PONGS: u32 = 3;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Connection state, for `/healthz` and `strongroom status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CoreState {
    Connecting,
    Connected,
}

#[derive(Debug, Default, Clone)]
pub struct Health(Arc<AtomicU8>, Arc<AtomicU64>);

impl Health {
    /// Connection attempts after the first (for `/metrics`).
    pub fn reconnects(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    pub fn get(&self) -> CoreState {
        if self.0.load(Ordering::Relaxed) == 1 {
            CoreState::Connected
        } else {
            CoreState::Connecting
        }
    }
    fn set(&self, s: CoreState) {
        self.0
            .store(u8::from(s == CoreState::Connected), Ordering::Relaxed);
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
enum Incoming {
    #[serde(rename = "welcome")]
    Welcome {},
    #[serde(rename = "kms.request")]
    KmsRequest {
        id: String,
        #[serde(rename = "kmsMessages")]
        kms_messages: Vec<String>,
    },
    /// Two-part membership change (R10), docs/protocol.md.
    #[serde(rename = "membership.request")]
    MembershipRequest {
        id: String,
        room: String,
        actor: String,
        #[serde(rename = "kmsMessage")]
        kms_message: String,
    },
    #[serde(rename = "membership.confirm")]
    MembershipConfirm { id: String, nonce: String },
    #[serde(rename = "membership.undo")]
    MembershipUndo { id: String, nonce: String },
    #[serde(rename = "membership.pending")]
    MembershipPending { id: String },
    /// Directory sync (R24): the identity service's signed statement.
    #[serde(rename = "membership.deprovision")]
    MembershipDeprovision { id: String, statement: String },
}

/// Any frame's type and id, to answer `bad_frame` to a malformed membership frame.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
}

/// Answers one membership frame (R10, R24); `None` for other frames.
async fn membership_answer(kms: &Kms, frame: Incoming) -> Option<serde_json::Value> {
    use serde_json::json;
    let result = |id: String, r: Result<Vec<String>, strongroom_kms::service::FrameError>| match r {
        Ok(receipts) => json!({"type": "membership.result", "id": id, "receipts": receipts}),
        Err(e) => {
            json!({"type": "membership.error", "id": id, "error": e.code(), "message": e.to_string()})
        }
    };
    Some(match frame {
        Incoming::MembershipRequest {
            id,
            room,
            actor,
            kms_message,
        } => {
            let a = kms.membership_request(&room, &actor, &kms_message).await;
            json!({"type": "membership.response", "id": id, "kmsMessage": a.kms_message,
                   "receipt": a.receipt})
        }
        Incoming::MembershipConfirm { id, nonce } => {
            result(id, kms.membership_confirm(&nonce).await.map(|r| vec![r]))
        }
        Incoming::MembershipUndo { id, nonce } => {
            result(id, kms.membership_undo(&nonce).await.map(|r| vec![r]))
        }
        Incoming::MembershipPending { id } => result(id, kms.membership_pending().await),
        Incoming::MembershipDeprovision { id, statement } => {
            match kms.deprovision(&statement).await {
                Ok(uris) => {
                    json!({"type": "membership.deprovisioned", "id": id, "resourceUris": uris})
                }
                Err(e) => result(id, Err(e)),
            }
        }
        Incoming::Welcome {} | Incoming::KmsRequest { .. } => return None,
    })
}

pub struct DialOut {
    pub url: Uri,
    pub realm_token: SecretString,
    /// `None` only for `ws://` to a loopback core (dev mode); never for `serve`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub kms: Arc<Kms>,
    pub health: Health,
}

impl DialOut {
    /// Runs forever: connect, serve, and on any failure back off and reconnect.
    pub async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            self.health.set(CoreState::Connecting);
            match self.connect_and_serve(&mut backoff).await {
                Ok(()) => tracing::info!("core closed the dial-out connection; reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "dial-out connection failed; reconnecting");
                }
            }
            self.health.set(CoreState::Connecting);
            // Full jitter: a random wait in [0, backoff).
            let jitter = rand_below(u64::try_from(backoff.as_millis()).unwrap_or(30_000));
            tokio::time::sleep(Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.health.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn connect_and_serve(&self, backoff: &mut Duration) -> anyhow::Result<()> {
        let host = self.url.host().context("core URL has no host")?.to_owned();
        let secure = match self.url.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => bail!("core URL must be wss:// (or ws:// to loopback in dev mode)"),
        };
        let port = self.url.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        tcp.set_nodelay(true)?;
        let mut req = self.url.clone().into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", self.realm_token.expose_secret()))?,
        );
        req.headers_mut().insert(
            "x-strongroom-realm",
            HeaderValue::from_str(self.kms.uris().cluster())?,
        );
        if secure {
            let tls = self
                .tls
                .clone()
                .context("wss:// needs the pinned TLS configuration")?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .context("TLS handshake with the core (pinned roots, R21)")?;
            let (ws, _) = tokio_tungstenite::client_async(req, stream).await?;
            self.serve(ws, backoff).await
        } else {
            if !self
                .url
                .host()
                .is_some_and(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]")
            {
                bail!("plain ws:// is only allowed to a loopback core");
            }
            let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
            self.serve(ws, backoff).await
        }
    }

    async fn serve<S>(
        &self,
        ws: tokio_tungstenite::WebSocketStream<S>,
        backoff: &mut Duration,
    ) -> anyhow::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let hello = serde_json::json!({
            "type": "hello", "version": 1, "realm": self.kms.uris().cluster(),
            "static_jwk": self.kms.static_jwk(),
        });
        sink.send(Message::text(hello.to_string())).await?;
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut missed = 0u32;
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let Some(frame) = frame else { return Ok(()) };
                    match frame? {
                        Message::Text(t) => match serde_json::from_str::<Incoming>(t.as_str()) {
                            Ok(Incoming::Welcome {}) => {
                                self.health.set(CoreState::Connected);
                                *backoff = BACKOFF_MIN;
                                tracing::info!(core = %self.url, "dial-out connected to the core");
                            }
                            Ok(Incoming::KmsRequest { id, kms_messages }) => {
                                let (kms, tx) = (Arc::clone(&self.kms), out_tx.clone());
                                tokio::spawn(async move {
                                    let mut answers = Vec::with_capacity(kms_messages.len());
                                    for m in &kms_messages {
                                        answers.push(kms.handle(m).await);
                                    }
                                    let frame = serde_json::json!({"type": "kms.response", "id": id, "kmsMessages": answers});
                                    let _ = tx.send(Message::text(frame.to_string())).await;
                                });
                            }
                            Ok(frame) => {
                                let (kms, tx) = (Arc::clone(&self.kms), out_tx.clone());
                                tokio::spawn(async move {
                                    if let Some(answer) = membership_answer(&kms, frame).await {
                                        let _ = tx.send(Message::text(answer.to_string())).await;
                                    }
                                });
                            }
                            Err(e) => match serde_json::from_str::<Envelope>(t.as_str()) {
                                Ok(Envelope { kind, id: Some(id) }) if kind.starts_with("membership.") => {
                                    let frame = serde_json::json!({"type": "membership.error", "id": id,
                                        "error": "bad_frame", "message": "malformed membership frame"});
                                    out_tx.send(Message::text(frame.to_string())).await?;
                                }
                                _ => tracing::warn!(error = %e, "ignoring an unknown frame from the core"),
                            },
                        },
                        Message::Pong(_) => missed = 0,
                        Message::Close(_) => return Ok(()),
                        _ => {}
                    }
                }
                Some(msg) = out_rx.recv() => sink.send(msg).await?,
                _ = ping.tick() => {
                    missed += 1;
                    if missed > MAX_MISSED_PONGS {
                        bail!("the core stopped answering pings");
                    }
                    sink.send(Message::Ping(Vec::new().into())).await?;
                }
            }
        }
    }
}

fn rand_below(n: u64) -> u64 {
    let b: [u8; 8] = strongroom_kms::crypto::random_bytes();
    u64::from_le_bytes(b) % n.max(1)
}
