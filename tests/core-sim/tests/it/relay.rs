use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{REALM_A, REALM_TOKEN_A, Sim};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn serve(sim: &Sim) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = sim.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

pub async fn dial(
    base: &str,
    realm: &str,
    token: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{base}/realm/v1/connect")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut()
        .insert("x-strongroom-realm", realm.parse().unwrap());
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// Connects, says hello, waits for the welcome and answers the first reconciliation
/// (R10: `membership.pending` on every connection) with no pending change.
pub async fn realm_connect(base: &str, hello_extra: Value) -> Ws {
    let mut ws = dial(base, REALM_A, REALM_TOKEN_A).await.unwrap();
    let mut hello = json!({"type": "hello", "version": 1, "realm": REALM_A});
    if let (Some(h), Some(extra)) = (hello.as_object_mut(), hello_extra.as_object()) {
        h.extend(extra.clone());
    }
    ws.send(Message::text(hello.to_string())).await.unwrap();
    let welcome = next_json(&mut ws).await.unwrap();
    assert_eq!(welcome, json!({"type": "welcome", "version": 1}));
    let pending = next_json(&mut ws).await.unwrap();
    assert_eq!(pending["type"], "membership.pending", "{pending}");
    let none = json!({"type": "membership.result", "id": pending["id"], "receipts": []});
    ws.send(Message::text(none.to_string())).await.unwrap();
    ws
}

pub async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            _ => return None,
        }
    }
}

/// A fake realm answering every kms.request with `<tag>:<message>`, in order.
pub fn answer_all(mut ws: Ws, tag: &'static str) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(req) = next_json(&mut ws).await {
            assert_eq!(req["type"], "kms.request");
            let answers: Vec<String> = req["kmsMessages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| format!("{tag}:{}", m.as_str().unwrap()))
                .collect();
            let resp = json!({"type": "kms.response", "id": req["id"], "kmsMessages": answers});
            ws.send(Message::text(resp.to_string())).await.unwrap();
            n += 1;
        }
        n
    })
}

async fn relay(sim: &Sim, token: &str, msgs: &[&str]) -> (StatusCode, Value) {
    sim.call(
        "POST",
        "/kms/messages",
        Some(token),
        Some(json!({"destination": REALM_A, "kmsMessages": msgs})),
    )
    .await
}

#[tokio::test]
async fn relayed_requests_come_back_in_order_and_are_recorded() {
    let sim = Sim::new();
    let org = sim.org("A", "a.test").await;
    let alice = sim.user(org, "Alice", "alice@a.test").await;
    let base = format!("ws://{}", serve(&sim).await);
    let ws = realm_connect(&base, json!({})).await;
    let realm = answer_all(ws, "r1");

    let (s, v) = relay(&sim, &alice.core, &["m-one", "m-two", "m-three"]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"kmsMessages": ["r1:m-one", "r1:m-two", "r1:m-three"]})
    );

    // Concurrent requests each get their own answers.
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let sim_router = sim.router.clone();
            let token = alice.core.clone();
            tokio::spawn(async move {
                use tower::ServiceExt as _;
                let body = json!({"destination": REALM_A, "kmsMessages": [format!("c{i}")]});
                let req = axum::http::Request::post("/kms/messages")
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
                let resp = sim_router.oneshot(req).await.unwrap();
                let b = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                (i, serde_json::from_slice::<Value>(&b).unwrap())
            })
        })
        .collect();
    for c in calls {
        let (i, v) = c.await.unwrap();
        assert_eq!(v["kmsMessages"], json!([format!("r1:c{i}")]));
    }

    // A KMS token cannot use the relay.
    let (s, _) = relay(&sim, &alice.kms, &["m"]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let recs = core_sim::record::read_all(&sim.dir.path().join("recording.log")).unwrap();
    let has = |kind: &str, needle: &str| {
        recs.iter()
            .any(|r| r.header.kind == kind && String::from_utf8_lossy(&r.payload).contains(needle))
    };
    assert!(has("http.request", "m-two"));
    assert!(has("relay.request", "m-two"));
    assert!(has("ws.out", "m-two"));
    assert!(has("ws.in", "r1:m-two"));
    assert!(has("relay.response", "r1:m-three"));
    realm.abort();
}

#[tokio::test]
async fn wrong_realm_tokens_are_refused() {
    let sim = Sim::new();
    let base = format!("ws://{}", serve(&sim).await);
    for (realm, token) in [
        (REALM_A, "not-the-realm-token-at-all"),
        ("kms://b.test", REALM_TOKEN_A),
        (REALM_A, ""),
    ] {
        match dial(&base, realm, token).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            }
            other => panic!(
                "{realm} with {token:?} was not refused: {:?}",
                other.is_ok()
            ),
        }
    }
    // The right token but a hello naming another realm: closed, never registered.
    let mut ws = dial(&base, REALM_A, REALM_TOKEN_A).await.unwrap();
    ws.send(Message::text(
        json!({"type": "hello", "version": 1, "realm": "kms://b.test"}).to_string(),
    ))
    .await
    .unwrap();
    assert!(next_json(&mut ws).await.is_none());
    let (_, v) = sim.call("GET", "/healthz", None, None).await;
    assert_eq!(v["connected_realms"], json!([]));
}

#[tokio::test]
async fn not_connected_is_502_and_no_answer_is_504() {
    let sim = Sim::with_timeout(Duration::from_millis(300));
    let org = sim.org("A", "a.test").await;
    let alice = sim.user(org, "Alice", "alice@a.test").await;
    let (s, v) = relay(&sim, &alice.core, &["m"]).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    let base = format!("ws://{}", serve(&sim).await);
    let mut silent = realm_connect(&base, json!({})).await;
    let (s, v) = relay(&sim, &alice.core, &["m"]).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    // The request did reach the realm.
    assert_eq!(
        next_json(&mut silent).await.unwrap()["kmsMessages"],
        json!(["m"])
    );
}

#[tokio::test]
async fn the_newer_connection_replaces_the_older() {
    let sim = Sim::new();
    let org = sim.org("A", "a.test").await;
    let alice = sim.user(org, "Alice", "alice@a.test").await;
    let base = format!("ws://{}", serve(&sim).await);
    let old = realm_connect(&base, json!({})).await;
    let old_task = answer_all(old, "old");
    let (_, v) = relay(&sim, &alice.core, &["x"]).await;
    assert_eq!(v["kmsMessages"], json!(["old:x"]));

    let new = realm_connect(&base, json!({})).await;
    let _new_task = answer_all(new, "new");
    // The older connection is closed by the core.
    let served_by_old = tokio::time::timeout(Duration::from_secs(5), old_task)
        .await
        .expect("the older connection was not closed")
        .unwrap();
    assert_eq!(served_by_old, 1);
    let (_, v) = relay(&sim, &alice.core, &["y"]).await;
    assert_eq!(v["kmsMessages"], json!(["new:y"]));
    let (_, v) = sim.call("GET", "/healthz", None, None).await;
    assert_eq!(v["connected_realms"], json!([REALM_A]));
}

#[tokio::test]
async fn discovery_returns_the_cluster_and_the_static_jwk_from_hello() {
    let sim = Sim::new();
    let org = sim.org("A", "a.test").await;
    let alice = sim.user(org, "Alice", "alice@a.test").await;
    let base = format!("ws://{}", serve(&sim).await);
    let uri = format!("/kms/{}", alice.user);
    let (s, v) = sim.call("GET", &uri, Some(&alice.core), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["kms_cluster"], REALM_A);
    assert!(v.get("static_jwk").is_none());
    let jwk = json!({"kty": "RSA", "n": "AQAB-n", "e": "AQAB", "kid": "static-1"});
    let _ws = realm_connect(&base, json!({"static_jwk": jwk})).await;
    let (_, v) = sim.call("GET", &uri, Some(&alice.core), None).await;
    assert_eq!(v["static_jwk"], jwk);
}
