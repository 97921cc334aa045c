//! The realm side (R3): the dial-out WebSocket endpoint (docs/protocol.md, "Dial-out"),
//! `POST /kms/messages` relayed over it, and `GET /kms/{user}` discovery.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{AppState, CoreUser, ct_eq, parse};
use crate::error::{AuthError, Result};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_MISSED_PONGS: u32 = 3;
/// Close code for a protocol violation (RFC 6455).
const CLOSE_POLICY: u16 = 1008;
/// Close code "going away": replaced by a newer connection.
const CLOSE_REPLACED: u16 = 1001;

/// `GET /realm/v1/connect`: `Authorization: Bearer <realm token>` and
/// `X-Strongroom-Realm: kms://<domain>`; 401 unless the token is the one registered for
/// that realm. A newer connection for a realm replaces the older one.
pub async fn connect(
    State(s): State<AppState>,
    headers: HeaderMap,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let realm = headers
        .get("x-strongroom-realm")
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::BadRealmToken)?
        .to_owned();
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing)?;
    let expected =
        s.0.realm_tokens
            .get(&realm)
            .ok_or(AuthError::BadRealmToken)?;
    if !ct_eq(token, expected) {
        return Err(AuthError::BadRealmToken.into());
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    Ok(ws.on_upgrade(move |socket| session(s, realm, socket)))
}

#[derive(Deserialize)]
struct Hello {
    #[serde(rename = "type")]
    kind: String,
    version: u32,
    realm: String,
    /// Optional: the realm's static public JWK, served by `GET /kms/{user}`.
    #[serde(default)]
    static_jwk: Option<Value>,
}

/// The type and id of an answer frame from the realm.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: String,
    id: Uuid,
}

/// Frames a realm may send after `hello`: answers to the core's requests.
const ANSWER_TYPES: [&str; 5] = [
    "kms.response",
    "membership.response",
    "membership.result",
    "membership.error",
    "membership.deprovisioned",
];

async fn send_text(s: &AppState, realm: &str, socket: &mut WebSocket, v: &Value) -> bool {
    let text = v.to_string();
    s.0.recorder.record("ws.out", realm, text.as_bytes());
    socket.send(Message::Text(text.into())).await.is_ok()
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn session(s: AppState, realm: String, mut socket: WebSocket) {
    let Ok(Some(Ok(Message::Text(hello)))) =
        tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await
    else {
        close(&mut socket, CLOSE_POLICY, "expected hello").await;
        return;
    };
    s.0.recorder.record("ws.in", &realm, hello.as_bytes());
    let hello = match serde_json::from_str::<Hello>(hello.as_str()) {
        Ok(h) if h.kind == "hello" && h.version == 1 && h.realm == realm => h,
        _ => {
            close(&mut socket, CLOSE_POLICY, "bad hello").await;
            return;
        }
    };
    if let Some(jwk) = hello.static_jwk {
        let stored = s.0.db.write(|m, _| {
            m.realm_static_jwks.insert(realm.clone(), jwk);
            Ok(())
        });
        if let Err(e) = stored {
            tracing::error!(error = %e, "storing the realm's static JWK");
        }
    }
    let Ok(mut reg) = s.0.hub.register(&realm) else {
        return;
    };
    if send_text(
        &s,
        &realm,
        &mut socket,
        &json!({"type": "welcome", "version": 1}),
    )
    .await
    {
        tracing::info!(realm, conn = reg.conn_id, "realm connected");
        // R10: reconcile two-part membership changes now and periodically while this
        // connection is the realm's current one.
        tokio::spawn(super::membership::reconcile_loop(
            s.clone(),
            realm.clone(),
            reg.conn_id,
        ));
        let period = s.0.ping_interval;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut missed = 0u32;
        loop {
            tokio::select! {
                req = reg.requests.recv() => {
                    let Some(req) = req else {
                        close(&mut socket, CLOSE_REPLACED, "replaced by a newer connection").await;
                        break;
                    };
                    if !send_text(&s, &realm, &mut socket, &req.frame).await {
                        break;
                    }
                }
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        s.0.recorder.record("ws.in", &realm, t.as_bytes());
                        let frame = serde_json::from_str::<Value>(t.as_str()).ok();
                        let answer = frame
                            .as_ref()
                            .and_then(|f| Answer::deserialize(f).ok());
                        match (answer, frame) {
                            (Some(r), Some(frame)) if ANSWER_TYPES.contains(&r.kind.as_str()) => {
                                if !reg.answer(r.id, frame) {
                                    tracing::debug!(realm, id = %r.id, "answer nobody waits for");
                                }
                            }
                            _ => {
                                close(&mut socket, CLOSE_POLICY, "unexpected frame").await;
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Pong(_))) => missed = 0,
                    Some(Ok(Message::Ping(_) | Message::Binary(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                },
                _ = ping.tick() => {
                    if missed >= MAX_MISSED_PONGS {
                        tracing::info!(realm, "realm missed {MAX_MISSED_PONGS} pongs");
                        break;
                    }
                    missed += 1;
                    if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    s.0.hub.unregister(&realm, reg.conn_id);
    tracing::info!(realm, conn = reg.conn_id, "realm disconnected");
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Relay {
    destination: String,
    #[serde(rename = "kmsMessages")]
    kms_messages: Vec<String>,
}

/// `POST /kms/messages` (core token): forwarded to the destination realm as one request.
pub async fn kms_messages(
    State(s): State<AppState>,
    CoreUser(_me): CoreUser,
    body: Bytes,
) -> Result<Json<Value>> {
    let req: Relay = parse(&body)?;
    let out = serde_json::to_vec(&req.kms_messages).unwrap_or_default();
    s.0.recorder.record("relay.request", &req.destination, &out);
    let answer = s.0.hub.request(&req.destination, req.kms_messages).await?;
    let back = serde_json::to_vec(&answer).unwrap_or_default();
    s.0.recorder
        .record("relay.response", &req.destination, &back);
    Ok(Json(json!({"kmsMessages": answer})))
}

/// `GET /kms/{user}` (core token): the user's KMS cluster and, if its realm announced
/// one, the realm's static public JWK.
pub async fn discovery(
    State(s): State<AppState>,
    CoreUser(_me): CoreUser,
    Path(user): Path<Uuid>,
) -> Result<Json<Value>> {
    s.0.db.read(|m| {
        let cluster = m.org_of(user)?.kms_cluster();
        let jwk = m.realm_static_jwks.get(&cluster).cloned();
        let mut v = json!({"user_id": user, "kms_cluster": cluster});
        if let (Some(jwk), Some(obj)) = (jwk, v.as_object_mut()) {
            obj.insert("static_jwk".into(), jwk);
        }
        Ok(Json(v))
    })
}

/// `GET /healthz`: which realms are connected.
pub async fn healthz(State(s): State<AppState>) -> Json<Value> {
    let realms: Vec<&String> =
        s.0.realm_tokens
            .keys()
            .filter(|r| s.0.hub.is_connected(r))
            .collect();
    Json(json!({"status": "ok", "connected_realms": realms}))
}
