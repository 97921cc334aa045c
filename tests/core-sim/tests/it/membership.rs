//! The core's side of the two-part membership change (R10) against a fake realm over a real
//! WebSocket: a KMS refusal and an invalid receipt change nothing at the core; what the
//! core forwards is the room and the authenticated actor.

use axum::http::StatusCode;
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::common::{Login, Sim};
use crate::relay::{Ws, next_json, realm_connect, serve};

/// `actor` asks the core to add `subject` to `room`, with an opaque KMS part.
async fn add_member(sim: &Sim, actor: &Login, room: Uuid, subject: &Login) -> (StatusCode, Value) {
    let body = json!({"user_id": subject.user, "kms_part": "h.k.iv.ct.tag"});
    let uri = format!("/rooms/{room}/members");
    sim.call("POST", &uri, Some(&actor.core), Some(body)).await
}

/// The fake realm's `membership.response` to `req`: the KMS answer and the receipt.
async fn respond(realm: &mut Ws, req: &Value, kms_message: &str, receipt: Value) {
    let answer = json!({"type": "membership.response", "id": req["id"],
                        "kmsMessage": kms_message, "receipt": receipt});
    realm.send(Message::text(answer.to_string())).await.unwrap();
}

/// The room as `member` sees it (`GET /rooms/{id}`).
async fn room_view(sim: &Sim, member: &Login, room: Uuid) -> Value {
    let (_, view) = sim
        .call("GET", &format!("/rooms/{room}"), Some(&member.core), None)
        .await;
    view
}

#[tokio::test]
async fn a_kms_refusal_or_a_bad_receipt_changes_nothing_at_the_core() {
    let sim = Sim::new();
    let a = sim.org("A", "a.test").await;
    let alice = sim.user(a, "Alice", "alice@a.test").await;
    let bob = sim.user(a, "Bob", "bob@a.test").await;
    let room = sim.room(&alice, "a.test").await;
    let base = format!("ws://{}", serve(&sim).await);
    let jwk = json!({"kty": "RSA", "kid": "kms://a.test/static/rsa",
                     "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
                     "e": "AQAB"});
    let mut realm = realm_connect(&base, json!({"static_jwk": jwk})).await;

    // 1. The KMS refuses: 403 kms_refused with its (opaque) answer, bob stays out.
    let call = add_member(&sim, &alice, room, &bob);
    let realm_side = async {
        let req = next_json(&mut realm).await.unwrap();
        assert_eq!(req["type"], "membership.request");
        assert_eq!(req["room"], room.to_string());
        assert_eq!(
            req["actor"],
            alice.user.to_string(),
            "the authenticated actor"
        );
        assert_eq!(req["kmsMessage"], "h.k.iv.ct.tag");
        respond(&mut realm, &req, "opaque-refusal", Value::Null).await;
    };
    let ((s, v), ()) = tokio::join!(call, realm_side);
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"], "kms_refused");
    assert_eq!(v["kms_response"], "opaque-refusal");
    let view = room_view(&sim, &alice, room).await;
    assert_eq!(view["members"], json!([alice.user]));

    // 2. A receipt that does not verify with the realm's static key: refused, no change.
    let call = add_member(&sim, &alice, room, &bob);
    let realm_side = async {
        let req = next_json(&mut realm).await.unwrap();
        let payload = json!({"typ": "strongroom-membership-receipt", "v": 1, "realm": "kms://a.test",
            "room": room, "resourceUri": view["resource_uri"], "op": "add", "subject": bob.user,
            "actor": alice.user, "nonce": "AAAAAAAAAAAAAAAAAAAAAA", "state": "applied",
            "at": "2026-01-01T00:00:00Z"});
        let forged = format!(
            "{}.{}.{}",
            strongroom_kms::jose::b64e(br#"{"alg":"PS256","kid":"kms://a.test/static/rsa"}"#),
            strongroom_kms::jose::b64e(payload.to_string().as_bytes()),
            strongroom_kms::jose::b64e(&[7u8; 256])
        );
        respond(&mut realm, &req, "ok", json!(forged)).await;
    };
    let ((s, v), ()) = tokio::join!(call, realm_side);
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"], "bad_receipt");
    let view = room_view(&sim, &alice, room).await;
    assert_eq!(
        view["members"],
        json!([alice.user]),
        "a forged receipt adds nobody"
    );
    let state = sim.state.0.db.read(|m| Ok(m.applied_nonces.len())).unwrap();
    assert_eq!(state, 0);
}
