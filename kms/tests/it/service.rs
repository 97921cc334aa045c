//! Security properties of the KMS service, in process (R1, R2, R4, R7, R9 groundwork).
//! Each test fails if the property it names breaks.

use serde_json::{Value, json};
use strongroom_kms::clock::Clock as _;
use strongroom_kms::jose::{b64d, b64e, dot_count};
use uuid::Uuid;

use crate::fixture::{self, AUD, ISS, call, env};

async fn room(
    e: &fixture::Env,
    creator: &strongroom_kms::client::KmsClient,
    members: &[Uuid],
) -> (String, String, String) {
    let keys = call(&e.kms, creator, "create", "/keys", json!({"count": 1})).await;
    assert_eq!(keys["status"], 201);
    let key_uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let k = keys["keys"][0]["jwk"]["k"].as_str().unwrap().to_owned();
    let ids: Vec<String> = members.iter().map(Uuid::to_string).collect();
    let res = call(
        &e.kms,
        creator,
        "create",
        "/resources",
        json!({"userIds": ids, "keyUris": [key_uri]}),
    )
    .await;
    assert_eq!(res["status"], 201, "{res}");
    (
        res["resource"]["uri"].as_str().unwrap().to_owned(),
        key_uri,
        k,
    )
}

#[tokio::test]
async fn members_read_outsiders_and_removed_members_get_403() {
    let e = env("members").await;
    let (alice, bob, eve) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let ca = e.client(alice).await;
    let cb = e.client(bob).await;
    let ce = e.client(eve).await;
    let (res, key_uri, k) = room(&e, &ca, &[bob]).await;

    let got = call(&e.kms, &cb, "retrieve", &key_uri, json!({})).await;
    assert_eq!(got["status"], 200);
    assert_eq!(
        got["key"]["jwk"]["k"],
        k.as_str(),
        "member gets the same key bytes"
    );

    let denied = call(&e.kms, &ce, "retrieve", &key_uri, json!({})).await;
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["key"], Value::Null, "no key in a refusal");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("doesn't have authorization")
    );

    let q = format!("{res}/authorizations?authId={bob}");
    let removed = call(&e.kms, &ca, "delete", &q, json!({})).await;
    assert_eq!(removed["status"], 200);
    assert_eq!(removed["authorizations"][0]["authId"], bob.to_string());
    let after = call(&e.kms, &cb, "retrieve", &key_uri, json!({})).await;
    assert_eq!(
        after["status"], 403,
        "removed member refused on the next retrieve"
    );
}

#[tokio::test]
async fn unbound_key_is_for_its_creator_only() {
    let e = env("unbound").await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let ca = e.client(alice).await;
    let cb = e.client(bob).await;
    let keys = call(&e.kms, &ca, "create", "/keys", json!({"count": 2})).await;
    let uri = keys["keys"][1]["uri"].as_str().unwrap();
    assert_eq!(
        call(&e.kms, &ca, "retrieve", uri, json!({})).await["status"],
        200
    );
    assert_eq!(
        call(&e.kms, &cb, "retrieve", uri, json!({})).await["status"],
        403
    );
    // Nor may anyone else bind it.
    let (res, _, _) = room(&e, &cb, &[]).await;
    let bind = call(&e.kms, &cb, "update", uri, json!({"resourceUri": res})).await;
    assert_eq!(bind["status"], 403);
}

#[tokio::test]
async fn expired_channel_is_refused_with_reset() {
    let e = env("expired").await;
    let alice = Uuid::new_v4();
    let ca = e.client(alice).await;
    assert_eq!(
        call(&e.kms, &ca, "update", "/ping", json!({})).await["status"],
        200
    );
    e.clock.advance_ms(KMS_CHANNEL_TTL_MS + 1);
    let (jwe, _) = ca.request("update", "/ping", json!({})).unwrap();
    let answer = e.kms.handle(&jwe).await;
    assert_eq!(
        dot_count(&answer),
        2,
        "reset is a JWS signed with the static key"
    );
    let body = ca.open(&answer).unwrap();
    assert_eq!(body["status"], 499);
}

const KMS_CHANNEL_TTL_MS: i64 = 60 * 60 * 1000;

#[tokio::test]
async fn tampered_messages_are_refused() {
    let e = env("tamper").await;
    let alice = Uuid::new_v4();
    let ca = e.client(alice).await;
    let (jwe, _) = ca.request("create", "/keys", json!({"count": 1})).unwrap();
    let parts: Vec<&str> = jwe.split('.').collect();
    for (i, name) in [(0, "header"), (2, "iv"), (3, "ciphertext"), (4, "tag")] {
        let mut bytes = b64d("p", parts[i]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let enc = b64e(&bytes);
        let mut t = parts.clone();
        t[i] = &enc;
        let answer = e.kms.handle(&t.join(".")).await;
        let body = ca.open(&answer).unwrap();
        let status = body["status"].as_u64().unwrap();
        assert!(
            (400..500).contains(&status),
            "tampered {name} accepted: {body}"
        );
        assert!(body.get("keys").is_none());
    }
    assert_eq!(e.kms.store().key_count().unwrap(), 0, "nothing was created");
}

#[tokio::test]
async fn unknown_kids_are_refused() {
    let e = env("kid").await;
    let alice = Uuid::new_v4();
    let ca = e.client(alice).await;
    // A channel message naming a channel that does not exist.
    let (jwe, _) = ca.request("update", "/ping", json!({})).unwrap();
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let fake = format!(
        r#"{{"alg":"dir","enc":"A256GCM","kid":"{AUD}/ecdhe/{}"}}"#,
        Uuid::new_v4()
    );
    parts[0] = b64e(fake.as_bytes());
    let body = ca.open(&e.kms.handle(&parts.join(".")).await).unwrap();
    assert_eq!(body["status"], 499);
    // A handshake to a key that is not our static key.
    let c = e.raw_client(alice, &e.token(alice));
    let (hs, _) = c.begin_handshake().unwrap();
    let mut parts: Vec<String> = hs.split('.').map(str::to_owned).collect();
    parts[0] = b64e(br#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"kms://elsewhere/static"}"#);
    let body = c.open(&e.kms.handle(&parts.join(".")).await).unwrap();
    assert_eq!(body["status"], 400);
    assert!(body["reason"].as_str().unwrap().contains("kid"));
}

async fn handshake_status(e: &fixture::Env, user: Uuid, token: &str) -> Value {
    let mut c = e.raw_client(user, token);
    let (hs, pending) = c.begin_handshake().unwrap();
    let answer = e.kms.handle(&hs).await;
    assert_eq!(dot_count(&answer), 2, "handshake answers are JWS");
    let body = c.open(&answer).unwrap();
    if body["status"] == 201 {
        c.finish_handshake(&answer, pending).unwrap();
    }
    body
}

#[tokio::test]
async fn bad_tokens_get_a_signed_error() {
    let e = env("tokens").await;
    let user = Uuid::new_v4();
    let now = e.now_s();
    let ok = e.token(user);
    assert_eq!(handshake_status(&e, user, &ok).await["status"], 201);

    let core_aud = e
        .issuer
        .token_full(user, ISS, "https://core.test.example", now, 3600);
    let b = handshake_status(&e, user, &core_aud).await;
    assert_eq!(b["status"], 401, "{b}");
    assert!(b["reason"].as_str().unwrap().contains("audience"));

    let expired = e.issuer.token_full(user, ISS, AUD, now - 7200, 3600);
    let b = handshake_status(&e, user, &expired).await;
    assert_eq!(b["status"], 401);
    assert!(b["reason"].as_str().unwrap().contains("expired"));

    let mut forged = ok.clone().into_bytes();
    let n = forged.len();
    forged[n - 5] = if forged[n - 5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(handshake_status(&e, user, &forged).await["status"], 401);

    let other = fixture::TestIssuer::new().token_full(user, ISS, AUD, now, 3600);
    assert_eq!(
        handshake_status(&e, user, &other).await["status"],
        401,
        "other key, same iss"
    );
    let unknown_iss = e
        .issuer
        .token_full(user, "https://evil.example", AUD, now, 3600);
    assert_eq!(
        handshake_status(&e, user, &unknown_iss).await["status"],
        401
    );
    assert_eq!(handshake_status(&e, user, "").await["status"], 401);
}

#[tokio::test]
async fn user_id_mismatch_is_refused() {
    let e = env("mismatch").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // A client claiming to be `b` while holding `a`'s token.
    let body = handshake_status(&e, b, &e.token(a)).await;
    assert_eq!(body["status"], 401);
    assert!(body["reason"].as_str().unwrap().contains("userId"));
}

#[tokio::test]
async fn verified_tokens_are_cached() {
    let e = env("cache").await;
    let a = Uuid::new_v4();
    let ca = e.client(a).await;
    let before = e.kms.verifier().slow_verifications();
    for _ in 0..20 {
        assert_eq!(
            call(&e.kms, &ca, "update", "/ping", json!({})).await["status"],
            200
        );
    }
    assert_eq!(
        e.kms.verifier().slow_verifications(),
        before,
        "no signature re-check per request"
    );
}

#[tokio::test]
async fn a_private_d_in_the_client_jwk_is_never_used() {
    // node-kms (and the Webex SDK) send the private `d` of the ephemeral key. The server
    // must derive from the public point only: a `d` of another key changes nothing.
    let e = env("dparam").await;
    let a = Uuid::new_v4();
    let static_key = e.kms.static_jwk().to_public_key().unwrap();
    let secret = <p256::ecdh::EphemeralSecret as p256::elliptic_curve::Generate>::generate_from_rng(
        &mut rand::rng(),
    );
    let pub_jwk = strongroom_kms::jose::jwk::EcPublicJwk::from_public_key(&secret.public_key());
    let other_d = b64e(&[0x42u8; 32]);
    let body = json!({
        "uri": format!("{AUD}/ecdhe"), "method": "create", "requestId": "r1",
        "client": {"clientId": "d-test", "credential": {"userId": a.to_string(), "bearer": e.token(a)}},
        "jwk": {"kty": "EC", "crv": "P-256", "x": pub_jwk.x, "y": pub_jwk.y, "d": other_d},
    });
    let jwe = strongroom_kms::jose::jwe::encrypt_rsa_oaep(
        &static_key,
        &e.kms.static_jwk().kid,
        body.to_string().as_bytes(),
    )
    .unwrap();
    let answer = e.kms.handle(&jwe).await;
    let reply = strongroom_kms::jose::jws::Jws::parse(&answer)
        .unwrap()
        .verify_rsa(&static_key)
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["status"], 201);
    // Derive with our real secret; a request on that key must work.
    let server: strongroom_kms::jose::jwk::EcPublicJwk =
        serde_json::from_value(reply["key"]["jwk"].clone()).unwrap();
    let shared = secret.diffie_hellman(&server.to_public_key().unwrap());
    let key = strongroom_kms::crypto::hkdf_sha256_zero_salt(shared.raw_secret_bytes());
    let chan = reply["key"]["uri"].as_str().unwrap();
    let req = json!({"uri": "/ping", "method": "update", "requestId": "r2",
        "client": {"clientId": "d-test", "credential": {"userId": a.to_string(), "bearer": e.token(a)}}});
    let msg = strongroom_kms::jose::jwe::encrypt_dir(&key, chan, req.to_string().as_bytes());
    let answer = e.kms.handle(&msg).await;
    let opened = strongroom_kms::jose::jwe::Jwe::parse(&answer)
        .unwrap()
        .decrypt_dir(&key)
        .unwrap();
    let opened: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(
        opened["status"], 200,
        "the channel key came from the public point, not d"
    );
}

#[tokio::test]
async fn closing_hsm_sessions_under_the_running_kms_is_recovered() {
    let e = env("recover").await;
    let a = Uuid::new_v4();
    let _ = e.client(a).await;
    e.hsm.close_all_sessions().unwrap();
    // The next handshake needs RSA decrypt and sign in the HSM.
    let c = e.client(a).await;
    assert_eq!(
        call(&e.kms, &c, "update", "/ping", json!({})).await["status"],
        200
    );
}

#[tokio::test]
async fn state_survives_a_restart_and_keys_are_sealed_at_rest() {
    let e = env("restart").await;
    let a = Uuid::new_v4();
    let ca = e.client(a).await;
    let keys = call(&e.kms, &ca, "create", "/keys", json!({"count": 3})).await;
    let uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let k = keys["keys"][0]["jwk"]["k"].as_str().unwrap().to_owned();
    let raw_key = b64d("k", &k).unwrap();
    drop(e.kms);
    // The store never holds a key in the clear.
    let file = std::fs::read(e.dir.path().join("kms.redb")).unwrap();
    assert!(
        !file.windows(32).any(|w| w == raw_key.as_slice()),
        "plaintext key found on disk"
    );
    let kms = fixture::start(&e.hsm, &e.dir, &e.issuer, &e.clock, &e.fail).await;
    // Same channel (persisted), same key bytes.
    let got = call(&kms, &ca, "retrieve", &uri, json!({})).await;
    assert_eq!(got["status"], 200);
    assert_eq!(got["key"]["jwk"]["k"], k.as_str());
    let _ = e.clock.now_ms();
}
