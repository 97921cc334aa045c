//! The KMS side of the two-part membership change (R10) and deprovisioning (R24), in
//! process on real SoftHSM2. Each test fails if the property it names breaks.

use serde_json::{Value, json};
use strongroom_kms::client::KmsClient;
use strongroom_kms::jose::b64e;
use strongroom_kms::jose::jws::Jws;
use strongroom_kms::{Kms, service::FrameError};
use uuid::Uuid;

use crate::fixture::{self, AUD, ISS, call, env};

fn nonce() -> String {
    b64e(&rand::random::<[u8; 16]>())
}

/// A resource created by `c` (who is authorized on it) with one bound key.
async fn resource(e: &fixture::Env, c: &KmsClient) -> (String, String) {
    let keys = call(&e.kms, c, "create", "/keys", json!({"count": 1})).await;
    let key_uri = keys["keys"][0]["uri"].as_str().unwrap().to_owned();
    let res = call(
        &e.kms,
        c,
        "create",
        "/resources",
        json!({"keyUris": [key_uri]}),
    )
    .await;
    assert_eq!(res["status"], 201, "{res}");
    (res["resource"]["uri"].as_str().unwrap().to_owned(), key_uri)
}

/// What every test starts from: a KMS; alice, who created a resource bound to one key;
/// bob, who holds nothing yet; both with an open channel; and a room id. As a tuple
/// `(env, (alice, her channel), (bob, his channel), (resource, key), room)`, so that a
/// test names its parts in one line.
type Scene = (
    fixture::Env,
    (Uuid, KmsClient),
    (Uuid, KmsClient),
    (String, String),
    Uuid,
);

async fn scene(name: &str) -> Scene {
    let e = env(name).await;
    let (alice, ca) = user(&e).await;
    let bob = user(&e).await;
    let resource = resource(&e, &ca).await;
    (e, (alice, ca), bob, resource, Uuid::new_v4())
}

/// Another user, with an open channel.
async fn user(e: &fixture::Env) -> (Uuid, KmsClient) {
    let id = Uuid::new_v4();
    (id, e.client(id).await)
}

fn add_part(c: &KmsClient, resource: &str, subject: Uuid, room: Uuid, nonce: &str) -> String {
    c.request(
        "create",
        "/authorizations",
        json!({"resourceUri": resource, "userIds": [subject],
               "membership": {"op": "add", "room": room, "nonce": nonce}}),
    )
    .unwrap()
    .0
}

fn remove_part(c: &KmsClient, resource: &str, subject: Uuid, room: Uuid, nonce: &str) -> String {
    c.request(
        "delete",
        &format!("{resource}/authorizations?authId={subject}"),
        json!({"membership": {"op": "remove", "room": room, "nonce": nonce}}),
    )
    .unwrap()
    .0
}

/// A forwarded KMS part's outcome: the opened answer, and the verified receipt if any.
type Forwarded = (Value, Option<Value>);

/// Forwards a KMS part as the core would; returns the opened answer and the receipt.
async fn forward(kms: &Kms, c: &KmsClient, room: Uuid, actor: Uuid, part: &str) -> Forwarded {
    let a = kms
        .membership_request(&room.to_string(), &actor.to_string(), part)
        .await;
    let body = c.open(&a.kms_message).unwrap();
    (body, a.receipt.map(|r| verify_receipt(kms, &r)))
}

fn verify_receipt(kms: &Kms, r: &str) -> Value {
    let key = kms.static_jwk().to_public_key().unwrap();
    let payload = Jws::parse(r).unwrap().verify_rsa(&key).unwrap();
    serde_json::from_slice(&payload).unwrap()
}

async fn can_read(kms: &Kms, c: &KmsClient, key_uri: &str) -> bool {
    call(kms, c, "retrieve", key_uri, json!({})).await["status"] == 200
}

/// A user as the actor of membership changes: builds each KMS part on its own channel `c`
/// and forwards it as the core would, naming itself as the actor.
struct Actor<'a> {
    kms: &'a Kms,
    c: &'a KmsClient,
    id: Uuid,
}

impl<'a> Actor<'a> {
    fn new(kms: &'a Kms, c: &'a KmsClient, id: Uuid) -> Self {
        Self { kms, c, id }
    }

    /// A two-part add of `who` to `room` on `res` with nonce `n`.
    async fn add(&self, res: &str, who: Uuid, room: Uuid, n: &str) -> Forwarded {
        let part = add_part(self.c, res, who, room, n);
        forward(self.kms, self.c, room, self.id, &part).await
    }

    /// A two-part removal of `who` from `room` on `res` with nonce `n`.
    async fn remove(&self, res: &str, who: Uuid, room: Uuid, n: &str) -> Forwarded {
        let part = remove_part(self.c, res, who, room, n);
        forward(self.kms, self.c, room, self.id, &part).await
    }

    /// A plain (one-part, node-kms) `create /authorizations` of `user` on `res`.
    async fn authorize(&self, res: &str, user: Uuid) -> Value {
        let body = json!({"resourceUri": res, "userIds": [user]});
        call(self.kms, self.c, "create", "/authorizations", body).await
    }
}

#[tokio::test]
async fn add_then_remove_gives_signed_receipts_and_pending_until_confirmed() {
    let (e, (alice, ca), (bob, cb), (res, key), room) = scene("m-add-remove").await;
    let by_alice = Actor::new(&e.kms, &ca, alice);
    assert!(!can_read(&e.kms, &cb, &key).await);

    let n = nonce();
    let (body, receipt) = by_alice.add(&res, bob, room, &n).await;
    assert_eq!(body["status"], 201, "{body}");
    assert_eq!(body["authorizations"][0]["authId"], bob.to_string());
    let r = receipt.expect("a receipt for an applied change");
    assert_eq!(r["typ"], "strongroom-membership-receipt");
    assert_eq!(r["realm"], AUD);
    assert_eq!(r["room"], room.to_string());
    assert_eq!(r["resourceUri"], res.as_str());
    assert_eq!(r["op"], "add");
    assert_eq!(r["subject"], bob.to_string());
    assert_eq!(r["actor"], alice.to_string());
    assert_eq!(r["nonce"], n.as_str());
    assert_eq!(r["state"], "applied");
    assert!(can_read(&e.kms, &cb, &key).await, "the added member reads");

    let pending = e.kms.membership_pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(verify_receipt(&e.kms, &pending[0])["nonce"], n.as_str());
    let confirmed = verify_receipt(&e.kms, &e.kms.membership_confirm(&n).await.unwrap());
    assert_eq!(confirmed["state"], "confirmed");
    assert!(e.kms.membership_pending().await.unwrap().is_empty());

    let n2 = nonce();
    let (body, receipt) = by_alice.remove(&res, bob, room, &n2).await;
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["authorizations"][0]["authId"], bob.to_string());
    assert_eq!(receipt.unwrap()["op"], "remove");
    assert!(
        !can_read(&e.kms, &cb, &key).await,
        "the removed member no longer reads"
    );
}

#[tokio::test]
async fn a_replayed_kms_part_is_refused_also_after_a_restart() {
    let (e, (alice, ca), (bob, cb), (res, key), room) = scene("m-replay").await;
    let by_alice = Actor::new(&e.kms, &ca, alice);
    let n = nonce();
    let add = add_part(&ca, &res, bob, room, &n);
    let (body, _) = forward(&e.kms, &ca, room, alice, &add).await;
    assert_eq!(body["status"], 201);
    // Remove bob with a fresh nonce, then replay the old add: refused, bob stays out.
    let (body, _) = by_alice.remove(&res, bob, room, &nonce()).await;
    assert_eq!(body["status"], 200);
    let (body, receipt) = forward(&e.kms, &ca, room, alice, &add).await;
    assert_eq!(
        (body["status"].clone(), body["errorCode"].clone()),
        (json!(409), json!(409_002))
    );
    assert!(receipt.is_none());
    // A fresh request with the same nonce is a replay too.
    let (body, _) = by_alice.add(&res, bob, room, &n).await;
    assert_eq!(body["errorCode"], 409_002);
    assert!(!can_read(&e.kms, &cb, &key).await);

    drop(e.kms);
    let kms = fixture::start(&e.hsm, &e.dir, &e.issuer, &e.clock, &e.fail).await;
    let (body, receipt) = forward(&kms, &ca, room, alice, &add).await;
    assert_eq!(
        body["errorCode"], 409_002,
        "the nonce is remembered across a restart"
    );
    assert!(receipt.is_none());
    assert!(!can_read(&kms, &cb, &key).await);
}

#[tokio::test]
async fn a_core_forwarding_another_room_or_actor_is_refused() {
    let (e, (alice, ca), (bob, cb), (res, key), room) = scene("m-mismatch").await;
    let by_alice = Actor::new(&e.kms, &ca, alice);
    let mallory = Uuid::new_v4();
    let part = add_part(&ca, &res, bob, room, &nonce());
    let (body, r) = forward(&e.kms, &ca, Uuid::new_v4(), alice, &part).await;
    assert_eq!(
        (body["status"].clone(), body["errorCode"].clone()),
        (json!(403), json!(403_003))
    );
    assert!(r.is_none());
    let (body, r) = forward(&e.kms, &ca, room, mallory, &part).await;
    assert_eq!(body["errorCode"], 403_003, "{body}");
    assert!(r.is_none());
    assert!(!can_read(&e.kms, &cb, &key).await, "nothing applied");
    // The refusals did not burn the nonce: the genuine forward still works.
    let (body, r) = forward(&e.kms, &ca, room, alice, &part).await;
    assert_eq!(body["status"], 201);
    assert!(r.is_some());
    // The resource now belongs to `room`: a change for another room is refused.
    let other = Uuid::new_v4();
    let (body, _) = by_alice.remove(&res, bob, other, &nonce()).await;
    assert_eq!(body["errorCode"], 403_003, "{body}");
    assert!(can_read(&e.kms, &cb, &key).await);
}

#[tokio::test]
async fn a_core_token_and_a_non_member_actor_are_refused() {
    let (e, (alice, ca), (bob, cb), (res, key), room) = scene("m-tokens").await;
    let (eve, ce) = user(&e).await;
    let by_eve = Actor::new(&e.kms, &ce, eve);
    // A core token (another audience) on alice's own channel.
    let mut core_tok = e.client(alice).await;
    core_tok.set_bearer(secrecy::SecretString::from(e.issuer.token_full(
        alice,
        ISS,
        "https://core.test",
        e.now_s(),
        3600,
    )));
    let by_core_token = Actor::new(&e.kms, &core_tok, alice);
    let (body, r) = by_core_token.add(&res, bob, room, &nonce()).await;
    assert_eq!(body["status"], 401, "{body}");
    assert!(r.is_none());
    // Eve holds no authorization on the resource: she cannot add herself nor bob.
    for subject in [eve, bob] {
        let (body, r) = by_eve.add(&res, subject, room, &nonce()).await;
        assert_eq!(body["errorCode"], 403_001, "{body}");
        assert!(r.is_none());
    }
    assert!(!can_read(&e.kms, &cb, &key).await);
    assert!(!can_read(&e.kms, &ce, &key).await);
    // Eve "leaving" a room she holds nothing in is harmless and does not claim the
    // resource for her room: alice's plain authorizations still work (not room-bound).
    let eves_room = Uuid::new_v4();
    let (body, _) = by_eve.remove(&res, eve, eves_room, &nonce()).await;
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(
        e.kms
            .store()
            .room_of(
                strongroom_kms::uri::Uris::new(fixture::DOMAIN)
                    .resource_id(&res)
                    .unwrap()
            )
            .unwrap(),
        None
    );
    // A KMS part sent through the plain relay is not a membership change.
    let part = add_part(&ca, &res, bob, room, &nonce());
    let body = ca.open(&e.kms.handle(&part).await).unwrap();
    assert_eq!(body["status"], 400, "{body}");
    assert!(!can_read(&e.kms, &cb, &key).await);
}

#[tokio::test]
async fn undo_of_an_add_is_idempotent_and_a_removal_is_final() {
    let (e, (alice, ca), (bob, cb), (res, key), room) = scene("m-undo").await;
    let by_alice = Actor::new(&e.kms, &ca, alice);
    let n = nonce();
    let (_, r) = by_alice.add(&res, bob, room, &n).await;
    assert!(r.is_some());
    assert!(can_read(&e.kms, &cb, &key).await);
    let first = verify_receipt(&e.kms, &e.kms.membership_undo(&n).await.unwrap());
    assert_eq!(first["state"], "undone");
    assert!(
        !can_read(&e.kms, &cb, &key).await,
        "undo removed the authorization"
    );
    let second = verify_receipt(&e.kms, &e.kms.membership_undo(&n).await.unwrap());
    assert_eq!(second, first, "a second undo answers the same receipt");
    assert!(e.kms.membership_pending().await.unwrap().is_empty());
    assert!(matches!(
        e.kms.membership_undo(&nonce()).await,
        Err(FrameError::UnknownNonce)
    ));

    // Add again (new nonce), then remove: the remove cannot be undone.
    let (_, r) = by_alice.add(&res, bob, room, &nonce()).await;
    assert!(r.is_some());
    let rn = nonce();
    let (_, r) = by_alice.remove(&res, bob, room, &rn).await;
    assert!(r.is_some());
    let err = e.kms.membership_undo(&rn).await.unwrap_err();
    assert_eq!(err.code(), "remove_is_final");
    assert!(!can_read(&e.kms, &cb, &key).await, "the removal stands");
    // Recorded as what it is: a 409 conflict with the removal's state, not a refusal.
    let (mut conflicts, mut unknown) = (Vec::new(), Vec::new());
    strongroom_audit::query(
        &e.dir.path().join("audit"),
        e.kms.audit().key(),
        &strongroom_audit::VerifyOptions::default(),
        &strongroom_audit::Filter::default(),
        &mut |r, _| {
            if r.status == Some(409) {
                conflicts.push((r.action, r.reason, r.outcome));
            }
            if r.status == Some(404) {
                unknown.push((r.action, r.reason, r.resource.is_none()));
            }
        },
    )
    .unwrap();
    // The undo of a nonce the KMS never issued is refused and recorded too.
    assert_eq!(
        unknown,
        [(
            strongroom_audit::Action::Delete,
            strongroom_audit::Reason::NotFound,
            true
        )]
    );
    assert_eq!(
        conflicts,
        [(
            strongroom_audit::Action::Delete,
            strongroom_audit::Reason::Conflict,
            strongroom_audit::Outcome::Denied
        )]
    );
    // The stale undo of the first add does not touch the newer authorization.
    let (_, r) = by_alice.add(&res, bob, room, &nonce()).await;
    assert!(r.is_some());
    e.kms.membership_undo(&n).await.unwrap();
    assert!(can_read(&e.kms, &cb, &key).await);
}

#[tokio::test]
async fn plain_authorization_changes_on_a_room_bound_resource_are_refused() {
    let (e, (alice, ca), (bob, _), (res, key), room) = scene("m-plain").await;
    let (carol, cc) = user(&e).await;
    let by_alice = Actor::new(&e.kms, &ca, alice);
    // Before any two-part change, plain changes work (node-kms compatibility).
    let ok = by_alice.authorize(&res, bob).await;
    assert_eq!(ok["status"], 201);
    let (_, r) = by_alice.add(&res, carol, room, &nonce()).await;
    assert!(r.is_some());
    let add = by_alice.authorize(&res, Uuid::new_v4()).await;
    assert_eq!(add["errorCode"], 403_004, "{add}");
    let del = call(
        &e.kms,
        &ca,
        "delete",
        &format!("{res}/authorizations?authId={carol}"),
        json!({}),
    )
    .await;
    assert_eq!(del["errorCode"], 403_004, "{del}");
    assert!(
        can_read(&e.kms, &cc, &key).await,
        "carol kept her authorization"
    );
}

#[tokio::test]
async fn a_deprovisioning_statement_removes_every_authorization_of_the_user() {
    let (e, (alice, ca), (bob, cb), (res1, key1), room) = scene("m-deprov").await;
    let (res2, key2) = resource(&e, &ca).await;
    let by_alice = Actor::new(&e.kms, &ca, alice);
    by_alice.add(&res1, bob, room, &nonce()).await;
    by_alice.authorize(&res2, bob).await;
    assert!(can_read(&e.kms, &cb, &key1).await && can_read(&e.kms, &cb, &key2).await);
    let aud = strongroom_kms::service::deprovision_audience(AUD);
    // A KMS bearer token is not a statement, and a statement is not a bearer token.
    assert!(matches!(
        e.kms.deprovision(&e.token(bob)).await,
        Err(FrameError::Unauthenticated(_))
    ));
    let statement = e.issuer.token_full(bob, ISS, &aud, e.now_s(), 300);
    let mut as_bearer = e.client(bob).await;
    as_bearer.set_bearer(secrecy::SecretString::from(statement.clone()));
    assert_eq!(
        call(&e.kms, &as_bearer, "retrieve", &key1, json!({})).await["status"],
        401
    );
    // A statement from an unknown signer is refused.
    let forged = fixture::TestIssuer::new().token_full(bob, ISS, &aud, e.now_s(), 300);
    assert!(e.kms.deprovision(&forged).await.is_err());
    assert!(can_read(&e.kms, &cb, &key1).await);

    let mut removed = e.kms.deprovision(&statement).await.unwrap();
    removed.sort();
    let mut want = vec![res1, res2];
    want.sort();
    assert_eq!(removed, want);
    assert!(!can_read(&e.kms, &cb, &key1).await);
    assert!(!can_read(&e.kms, &cb, &key2).await);
    assert!(can_read(&e.kms, &ca, &key1).await, "others keep theirs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audit_record_no_change_and_no_receipt() {
    let (e, (alice, ca), (bob, cb), (res, key), room) = scene("m-audit").await;
    let n = nonce();
    let part = add_part(&ca, &res, bob, room, &n);
    e.fail.set(true);
    // The first failed record marks the log unwritable (as in audit.rs).
    let _ = call(&e.kms, &ca, "retrieve", &key, json!({})).await;
    assert!(!e.kms.audit().health().writable);
    let (body, receipt) = forward(&e.kms, &ca, room, alice, &part).await;
    assert_eq!(body["status"], 503, "{body}");
    assert!(receipt.is_none(), "no receipt without an audit record");
    assert!(
        e.kms.store().membership(&b64d_16(&n)).unwrap().is_none(),
        "nothing written"
    );
    assert!(matches!(
        e.kms.membership_confirm(&n).await,
        Err(FrameError::UnknownNonce | FrameError::Unavailable)
    ));
    e.fail.set(false);
    for _ in 0..50 {
        if e.kms.audit().health().writable {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (body, receipt) = forward(&e.kms, &ca, room, alice, &part).await;
    assert_eq!(
        body["status"], 201,
        "the refused part did not burn its nonce: {body}"
    );
    assert!(receipt.is_some());
    assert!(can_read(&e.kms, &cb, &key).await);
}

fn b64d_16(s: &str) -> [u8; 16] {
    strongroom_kms::jose::b64d("nonce", s)
        .unwrap()
        .try_into()
        .unwrap()
}
