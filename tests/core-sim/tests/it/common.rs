use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use core_sim::http::{AppState, Config, app};
use core_sim::model::jwe::fake_jwe;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

pub const REALM_A: &str = "kms://a.test";
pub const REALM_TOKEN_A: &str = "realm-token-a-0123456789abcdef";

pub struct Sim {
    pub dir: tempfile::TempDir,
    pub state: AppState,
    pub router: Router,
}

pub struct Login {
    pub user: Uuid,
    pub org: Uuid,
    pub core: String,
    pub kms: String,
}

impl Sim {
    pub fn new() -> Self {
        Self::with_timeout(Duration::from_secs(10))
    }

    pub fn with_timeout(relay_timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().to_owned());
        cfg.realm_tokens
            .insert(REALM_A.to_owned(), REALM_TOKEN_A.to_owned());
        cfg.relay_timeout = relay_timeout;
        let state = AppState::open(cfg).unwrap();
        let router = app(state.clone());
        Self { dir, state, router }
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn admin(&self, uri: &str, body: Value) -> Value {
        let (s, v) = self
            .call("POST", uri, Some(self.state.admin_token()), Some(body))
            .await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        v
    }

    pub async fn org(&self, name: &str, domain: &str) -> Uuid {
        let v = self
            .admin("/admin/orgs", json!({"name": name, "kms_domain": domain}))
            .await;
        v["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn user(&self, org: Uuid, name: &str, email: &str) -> Login {
        self.admin(
            "/admin/users",
            json!({"org": org, "name": name, "email": email}),
        )
        .await;
        self.login(email).await
    }

    pub async fn login(&self, email: &str) -> Login {
        let (s, v) = self
            .call(
                "POST",
                "/identity/login",
                None,
                Some(json!({"email": email})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        Login {
            user: v["user_id"].as_str().unwrap().parse().unwrap(),
            org: v["org_id"].as_str().unwrap().parse().unwrap(),
            core: v["core_token"].as_str().unwrap().to_owned(),
            kms: v["kms_token"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn room(&self, creator: &Login, domain: &str) -> Uuid {
        let title = fake_jwe(&kid(domain), b"title-ciphertext");
        let (s, v) = self
            .call(
                "POST",
                "/rooms",
                Some(&creator.core),
                Some(json!({"resource_uri": format!("kms://{domain}/resources/{}", Uuid::new_v4()), "title": title})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["id"].as_str().unwrap().parse().unwrap()
    }

    /// Adds `user` as if both parts of the two-part change (R10) succeeded: the core's
    /// checks and apply, no realm. The flow itself runs against a real realm in
    /// tests/e2e/tests/e2e/membership.rs and against a fake one in `membership.rs` here.
    pub fn add(&self, actor: &Login, room: Uuid, user: Uuid) -> StatusCode {
        let r = self.state.0.db.write(|m, now| {
            let c = m.plan_add(room, actor.user, user)?;
            m.apply(c, now)
        });
        match r {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status_and_code().0,
        }
    }

    /// Removes `user` like [`Sim::add`] adds; returns the status and `{"event"}`.
    pub fn remove(&self, actor: &Login, room: Uuid, user: Uuid) -> (StatusCode, Value) {
        let r = self.state.0.db.write(|m, now| {
            let c = m.plan_remove(room, actor.user, user)?;
            m.apply(c, now)
        });
        match r {
            Ok(e) => (StatusCode::OK, json!({"event": e})),
            Err(e) => (
                e.status_and_code().0,
                json!({"error": e.status_and_code().1}),
            ),
        }
    }

    pub async fn send(&self, who: &Login, room: Uuid, kid: &str) -> (StatusCode, Value) {
        self.call(
            "POST",
            &format!("/rooms/{room}/messages"),
            Some(&who.core),
            Some(json!({"content": fake_jwe(kid, b"opaque")})),
        )
        .await
    }
}

pub fn kid(domain: &str) -> String {
    format!("kms://{domain}/keys/{}", Uuid::new_v4())
}
