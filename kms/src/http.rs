//! HTTP routes (the only module that knows axum): `POST /kms/messages` (synchronous
//! variant, protocol.md "Layers"), `GET /kms/{userId}` (discovery), `GET /healthz`.
//! Bad input gets a clear 4xx JSON error and changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::Kms;

/// Largest request body accepted on `/kms/messages`.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most JOSE messages in one request.
pub const MAX_MESSAGES: usize = 64;

/// A transport-level refusal (before any KMS message is looked at).
#[derive(Debug)]
pub struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, msg.into())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MessagesIn {
    destination: String,
    kms_messages: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesOut {
    pub kms_messages: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Discovery {
    kms_cluster: String,
    rsa_public_key: String,
}

/// The KMS routes with `/healthz`. The appliance merges its own (dev token minting) around them.
pub fn router(kms: Arc<Kms>) -> Router {
    routes(Router::new().route("/healthz", get(healthz)), kms)
}

/// The KMS routes added to `base` (whose `/healthz`, if any, the caller provides).
pub fn routes(base: Router<Arc<Kms>>, kms: Arc<Kms>) -> Router {
    base.route("/kms/messages", post(messages))
        .route("/kms/{user_id}", get(discovery))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(kms)
}

async fn messages(State(kms): State<Arc<Kms>>, body: Bytes) -> Result<Response, HttpError> {
    let text = std::str::from_utf8(&body).map_err(|_| bad("body is not UTF-8"))?;
    let req: MessagesIn = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "body must be {{\"destination\": \"kms://...\", \"kmsMessages\": [...]}}: {e}"
        ))
    })?;
    if req.destination != kms.uris().cluster() {
        return Err(HttpError(
            StatusCode::NOT_FOUND,
            format!("unknown destination {:?}", req.destination),
        ));
    }
    if req.kms_messages.is_empty() || req.kms_messages.len() > MAX_MESSAGES {
        return Err(bad(format!(
            "kmsMessages must hold 1 to {MAX_MESSAGES} messages"
        )));
    }
    // The request body is freed before any message waits for its audit record.
    drop(body);
    let mut out = Vec::with_capacity(req.kms_messages.len());
    for m in req.kms_messages {
        out.push(kms.handle(&m).await);
    }
    Ok(axum::Json(MessagesOut { kms_messages: out }).into_response())
}

async fn discovery(
    State(kms): State<Arc<Kms>>,
    Path(user_id): Path<String>,
) -> Result<Response, HttpError> {
    uuid::Uuid::parse_str(&user_id).map_err(|_| bad("userId must be a UUID"))?;
    let jwk = serde_json::to_string(kms.static_jwk())
        .map_err(|_| HttpError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()))?;
    Ok(axum::Json(Discovery {
        kms_cluster: kms.uris().cluster().to_owned(),
        rsa_public_key: jwk,
    })
    .into_response())
}

/// Whether the KMS's state is readable (part of every health answer).
pub fn storage_healthy(kms: &Kms) -> bool {
    match kms.store().key_count() {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "health check: storage unreadable");
            false
        }
    }
}

/// The KMS's part of every health answer: whether the state is readable and the audit
/// log writable (R16: without it every decision is refused), and the fields saying so.
/// Never carries secrets.
pub fn health(kms: &Kms) -> (bool, serde_json::Map<String, serde_json::Value>) {
    let storage = storage_healthy(kms);
    let audit = kms.audit().health();
    let mut body = serde_json::Map::new();
    body.insert(
        "storage".into(),
        if storage { "ok" } else { "unreadable" }.into(),
    );
    body.insert(
        "audit".into(),
        if audit.writable { "ok" } else { "unwritable" }.into(),
    );
    body.insert("audit_signing".into(), audit.signing.into());
    // Still ok: the log writes into its preallocated reserve, but the disk is full.
    body.insert(
        "audit_reserve".into(),
        if audit.reserve_short { "short" } else { "ok" }.into(),
    );
    // Counters: records over flushes is the mean group size (how well group commit works).
    body.insert("audit_records".into(), audit.size.into());
    body.insert("audit_flushes".into(), audit.flushes.into());
    (storage && audit.writable, body)
}

async fn healthz(State(kms): State<Arc<Kms>>) -> Response {
    let (ok, mut body) = health(&kms);
    body.insert("status".into(), if ok { "ok" } else { "unhealthy" }.into());
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn not_found() -> HttpError {
    HttpError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

async fn method_not_allowed() -> HttpError {
    HttpError(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint".into(),
    )
}
