//! The HTTP layer (the only module that knows axum): routes, bearer extractors, and the
//! recording middleware. `app(state)` builds the router; tests drive it with `oneshot`.

mod identity;
pub mod membership;
mod realm;
mod rooms;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq as _;

use crate::clock::{Clock, SystemClock};
use crate::error::{AuthError, Error, Result};
use crate::identity::{CorePrincipal, Identity};
use crate::model::Db;
use crate::record::Recorder;
use crate::relay::Hub;

/// Largest request body read (and recorded).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What a core-sim needs to start.
pub struct Config {
    pub state_dir: PathBuf,
    /// `kms://<domain>` → the realm token that realm must present.
    pub realm_tokens: HashMap<String, String>,
    /// The admin bearer token; `None`: read `DIR/admin-token`, created on first start.
    pub admin_token: Option<String>,
    /// How long `POST /kms/messages` waits for the realm (504 after).
    pub relay_timeout: Duration,
    /// WebSocket ping interval; 3 missed pongs close the connection.
    pub ping_interval: Duration,
    /// R10: how often two-part membership changes are reconciled with each connected
    /// realm (also on every realm connection).
    pub reconcile_interval: Duration,
    /// Fault injection for crash tests: abort the process (no cleanup) right after a valid
    /// KMS receipt arrives, before the core applies its part.
    pub abort_after_receipt: bool,
    pub clock: Arc<dyn Clock>,
}

impl Config {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            realm_tokens: HashMap::new(),
            admin_token: None,
            relay_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            reconcile_interval: Duration::from_mins(1),
            abort_after_receipt: false,
            clock: Arc::new(SystemClock),
        }
    }
}

pub struct Shared {
    pub db: Db,
    pub identity: Identity,
    pub hub: Hub,
    pub recorder: Recorder,
    admin_token: String,
    realm_tokens: HashMap<String, String>,
    ping_interval: Duration,
    reconcile_interval: Duration,
    abort_after_receipt: bool,
}

/// Cheap to clone; handed to every handler.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn open(cfg: Config) -> Result<Self> {
        let dir = &cfg.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| Error::Storage {
            context: "creating the state directory",
            source,
        })?;
        let admin_token = match cfg.admin_token {
            Some(t) => t,
            None => {
                let path = dir.join("admin-token");
                if path.exists() {
                    String::from_utf8(crate::files::read_secret(&path)?)
                        .map_err(|_| Error::Internal("admin-token is not UTF-8"))?
                        .trim()
                        .to_owned()
                } else {
                    let bytes: [u8; 32] = rand::random();
                    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                    crate::files::write_atomic(&path, t.as_bytes(), 0o600)?;
                    t
                }
            }
        };
        if admin_token.len() < 16 {
            return Err(Error::InvalidRequest(
                "admin token is shorter than 16 bytes",
            ));
        }
        let recorder = Recorder::open(dir, cfg.clock.clone()).map_err(|source| Error::Storage {
            context: "opening recording.log",
            source,
        })?;
        Ok(Self(Arc::new(Shared {
            db: Db::open(dir, cfg.clock.clone())?,
            identity: Identity::load_or_create(dir, cfg.clock.clone())?,
            hub: Hub::new(cfg.relay_timeout),
            recorder,
            admin_token,
            realm_tokens: cfg.realm_tokens,
            ping_interval: cfg.ping_interval,
            reconcile_interval: cfg.reconcile_interval,
            abort_after_receipt: cfg.abort_after_receipt,
        })))
    }

    pub fn admin_token(&self) -> &str {
        &self.0.admin_token
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/identity/jwks", get(identity::jwks))
        .route("/identity/login", post(identity::login))
        .route("/identity/users/{id}", get(identity::user))
        .route("/admin/orgs", post(identity::create_org))
        .route("/admin/users", post(identity::create_user))
        .route("/admin/users/{id}/deactivate", post(identity::deactivate))
        .route("/rooms", get(rooms::list).post(rooms::create))
        .route("/rooms/{id}", get(rooms::show))
        .route("/rooms/{id}/members", post(rooms::add_member))
        .route("/rooms/{id}/members/{user}", delete(rooms::remove_member))
        .route(
            "/rooms/{id}/messages",
            post(rooms::post_message).get(rooms::messages),
        )
        .route("/rooms/{id}/files", post(rooms::post_file))
        .route("/realm/v1/connect", get(realm::connect))
        .route("/kms/messages", post(realm::kms_messages))
        .route("/kms/{user}", get(realm::discovery))
        .route("/healthz", get(realm::healthz))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_body,
        ))
        .with_state(state)
}

/// Records every request body before any handler sees it.
async fn record_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse as _;
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return Error::InvalidRequest("request body too large or unreadable").into_response();
    };
    if !bytes.is_empty() {
        let meta = format!("{} {}", parts.method, parts.uri.path());
        state.0.recorder.record("http.request", &meta, &bytes);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let h = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let s = h.to_str().map_err(|_| AuthError::Malformed)?;
    s.strip_prefix("Bearer ").ok_or(AuthError::Malformed)
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A request carrying a valid core token of an active user.
pub struct CoreUser(pub CorePrincipal);

impl FromRequestParts<AppState> for CoreUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let p = state.0.identity.verify_core(bearer(parts)?)?;
        let active = state.0.db.read(|m| {
            Ok(m.users
                .get(&p.user)
                .is_some_and(|u| u.active && u.org == p.org))
        })?;
        if !active {
            return Err(AuthError::UserInactive.into());
        }
        Ok(Self(p))
    }
}

/// A request carrying the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        if ct_eq(bearer(parts)?, &state.0.admin_token) {
            Ok(Self)
        } else {
            Err(AuthError::NotAdmin.into())
        }
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T> {
    serde_json::from_slice(body).map_err(Error::InvalidBody)
}
