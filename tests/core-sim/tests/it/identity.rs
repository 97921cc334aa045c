use axum::http::StatusCode;
use serde_json::json;

use crate::common::Sim;

#[tokio::test]
async fn login_issues_distinct_audiences_and_a_kms_token_is_refused_at_every_core_endpoint() {
    let sim = Sim::new();
    let org = sim.org("Acme", "a.test").await;
    let alice = sim.user(org, "Alice", "alice@a.test").await;
    let room = sim.room(&alice, "a.test").await;

    let aud = |t: &str| {
        let payload = t.split('.').nth(1).unwrap();
        let raw =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap();
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()
    };
    assert_eq!(aud(&alice.kms)["aud"], "kms://a.test");
    assert_eq!(aud(&alice.core)["aud"], core_sim::identity::CORE_AUDIENCE);
    assert_eq!(aud(&alice.kms)["sub"], alice.user.to_string());
    assert_eq!(aud(&alice.kms)["org"], org.to_string());
    assert_eq!(alice.org, org);

    let endpoints = [
        ("GET", "/rooms".to_owned(), None),
        (
            "POST",
            "/rooms".to_owned(),
            Some(json!({"resource_uri": "kms://a.test/r", "title": "x"})),
        ),
        ("GET", format!("/rooms/{room}"), None),
        (
            "POST",
            format!("/rooms/{room}/members"),
            Some(json!({"user_id": alice.user})),
        ),
        (
            "DELETE",
            format!("/rooms/{room}/members/{}", alice.user),
            None,
        ),
        (
            "POST",
            format!("/rooms/{room}/messages"),
            Some(json!({"content": "x"})),
        ),
        (
            "POST",
            format!("/rooms/{room}/files"),
            Some(json!({"content": "x"})),
        ),
        ("GET", format!("/rooms/{room}/messages?after=0"), None),
        ("GET", format!("/identity/users/{}", alice.user), None),
        (
            "POST",
            "/kms/messages".to_owned(),
            Some(json!({"destination": "kms://a.test", "kmsMessages": []})),
        ),
        ("GET", format!("/kms/{}", alice.user), None),
    ];
    for (method, uri, body) in endpoints {
        for token in [Some(alice.kms.as_str()), None, Some("garbage")] {
            let (s, v) = sim.call(method, &uri, token, body.clone()).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}: {v}"
            );
        }
    }
    // The admin endpoints refuse user tokens.
    let (s, _) = sim
        .call(
            "POST",
            "/admin/orgs",
            Some(&alice.core),
            Some(json!({"name": "x", "kms_domain": "x.test"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // And the room survived: nobody removed alice with a KMS token.
    let (s, v) = sim
        .call("GET", &format!("/rooms/{room}"), Some(&alice.core), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["members"], json!([alice.user]));
}

#[tokio::test]
async fn jwks_verifies_the_kms_token() {
    let sim = Sim::new();
    let org = sim.org("Acme", "kms://a.test").await;
    let alice = sim.user(org, "Alice", "alice@a.test").await;
    let (s, jwks) = sim.call("GET", "/identity/jwks", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&set.keys[0]).unwrap();
    let header = jsonwebtoken::decode_header(&alice.kms).unwrap();
    assert_eq!(header.kid, set.keys[0].common.key_id);
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["kms://a.test"]);
    v.set_issuer(&[core_sim::identity::ISSUER]);
    jsonwebtoken::decode::<serde_json::Value>(&alice.kms, &key, &v).unwrap();
    v.set_audience(&["kms://b.test"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&alice.kms, &key, &v).is_err());
}

#[tokio::test]
async fn identity_details_only_for_same_org_or_shared_room() {
    let sim = Sim::new();
    let a = sim.org("A", "a.test").await;
    let b = sim.org("B", "b.test").await;
    let alice = sim.user(a, "Alice Real", "alice@a.test").await;
    let anne = sim.user(a, "Anne Real", "anne@a.test").await;
    let bob = sim.user(b, "Bob Real", "bob@b.test").await;
    let uri = |u: uuid::Uuid| format!("/identity/users/{u}");

    let (s, v) = sim
        .call("GET", &uri(anne.user), Some(&alice.core), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "Anne Real");
    assert_eq!(v["email"], "anne@a.test");

    let (s, v) = sim
        .call("GET", &uri(alice.user), Some(&bob.core), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(!v.to_string().contains("Alice Real"));
    // Unknown users look the same as hidden ones.
    let (s, _) = sim
        .call("GET", &uri(uuid::Uuid::new_v4()), Some(&bob.core), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let room = sim.room(&alice, "a.test").await;
    assert_eq!(sim.add(&alice, room, bob.user), StatusCode::OK);
    let (s, v) = sim
        .call("GET", &uri(alice.user), Some(&bob.core), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["email"], "alice@a.test");
    // Bob shares no room with Anne.
    let (s, _) = sim
        .call("GET", &uri(anne.user), Some(&bob.core), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The room itself names members by UUID only.
    let (_, v) = sim
        .call("GET", &format!("/rooms/{room}"), Some(&bob.core), None)
        .await;
    assert!(
        !v.to_string().contains("Real") && !v.to_string().contains('@'),
        "{v}"
    );
}

#[tokio::test]
async fn directory_sync_removes_the_user_from_every_room_with_events() {
    let sim = Sim::new();
    let a = sim.org("A", "a.test").await;
    let alice = sim.user(a, "Alice", "alice@a.test").await;
    let carol = sim.user(a, "Carol", "carol@a.test").await;
    let r1 = sim.room(&alice, "a.test").await;
    let r2 = sim.room(&alice, "a.test").await;
    let r3 = sim.room(&alice, "a.test").await;
    assert_eq!(sim.add(&alice, r1, carol.user), StatusCode::OK);
    assert_eq!(sim.add(&alice, r2, carol.user), StatusCode::OK);

    let v = sim
        .admin(
            &format!("/admin/users/{}/deactivate", carol.user),
            json!({}),
        )
        .await;
    let mut removed: Vec<String> = v["removed_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    removed.sort();
    let mut expected = vec![r1.to_string(), r2.to_string()];
    expected.sort();
    assert_eq!(removed, expected);
    for room in [r1, r2] {
        let (_, v) = sim
            .call("GET", &format!("/rooms/{room}"), Some(&alice.core), None)
            .await;
        assert_eq!(v["members"], json!([alice.user]));
        let last = v["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["kind"], "removed");
        assert_eq!(last["user"], carol.user.to_string());
        assert_eq!(last["directory_sync"], true);
    }
    let (_, v) = sim
        .call("GET", &format!("/rooms/{r3}"), Some(&alice.core), None)
        .await;
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    // Carol's token no longer works, nor can she log in again.
    let (s, _) = sim.call("GET", "/rooms", Some(&carol.core), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = sim
        .call(
            "POST",
            "/identity/login",
            None,
            Some(json!({"email": "carol@a.test"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(sim.add(&alice, r3, carol.user), StatusCode::FORBIDDEN);
}
