//! An in-process KMS on a real SoftHSM2 token, a redb store in a temporary directory, a
//! test identity provider and a manual clock.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey as _;
use secrecy::SecretString;
use serde_json::{Value, json};
use strongroom_audit::FailSwitch;
use strongroom_hsm::Hsm;
use strongroom_kms::auth::{Issuer, TokenVerifier};
use strongroom_kms::client::KmsClient;
use strongroom_kms::clock::ManualClock;
use strongroom_kms::jose::b64e;
use strongroom_kms::storage::RedbStore;
use strongroom_kms::{Kms, KmsConfig};
use uuid::Uuid;

pub const DOMAIN: &str = "kms.test.example";
pub const AUD: &str = "kms://kms.test.example";
pub const ISS: &str = "https://idp.test.example";

pub struct TestIssuer {
    key: EncodingKey,
    pub jwks: String,
    pub org: Uuid,
}

impl TestIssuer {
    pub fn new() -> Self {
        let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let der = sk.to_pkcs8_der().unwrap();
        let point = sk.public_key().to_sec1_bytes();
        let jwks = json!({"keys":[{"kty":"EC","crv":"P-256","kid":"t1",
            "x": b64e(&point[1..33]), "y": b64e(&point[33..65])}]})
        .to_string();
        Self {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            jwks,
            org: Uuid::new_v4(),
        }
    }

    pub fn token_full(&self, user: Uuid, iss: &str, aud: &str, now_s: i64, ttl_s: i64) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("t1".into());
        let claims = json!({"iss": iss, "aud": aud, "sub": user.to_string(),
            "org": self.org.to_string(), "iat": now_s, "exp": now_s + ttl_s});
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

pub struct Env {
    pub kms: Arc<Kms>,
    /// Makes the audit log's writes fail while set (disk-full injection).
    pub fail: Arc<FailSwitch>,
    pub clock: Arc<ManualClock>,
    pub issuer: TestIssuer,
    pub hsm: Hsm,
    pub dir: tempfile::TempDir,
}

pub const START_MS: i64 = 1_790_000_000_000;

pub async fn env(name: &str) -> Env {
    let (hsm, _cfg) = strongroom_hsm::testing::hsm_with_keys(name);
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::new();
    let clock = Arc::new(ManualClock::new(START_MS));
    let fail = Arc::new(FailSwitch::default());
    let kms = start(&hsm, &dir, &issuer, &clock, &fail).await;
    Env {
        kms,
        fail,
        clock,
        issuer,
        hsm,
        dir,
    }
}

/// Starts a KMS on an existing token and state directory (also used to "restart").
pub async fn start(
    hsm: &Hsm,
    dir: &tempfile::TempDir,
    issuer: &TestIssuer,
    clock: &Arc<ManualClock>,
    fail: &Arc<FailSwitch>,
) -> Arc<Kms> {
    let store = Arc::new(RedbStore::open(&dir.path().join("kms.redb"), 8 << 20).unwrap());
    let mut cfg =
        strongroom_audit::LogConfig::new(dir.path().join("audit"), &format!("{DOMAIN}/audit"));
    cfg.fail = Some(Arc::clone(fail));
    cfg.clock = clock.clone();
    let audit = Arc::new(
        strongroom_audit::AuditLog::open(
            cfg,
            Arc::new(strongroom_audit::HsmSigner::new(hsm.clone()).unwrap()),
        )
        .unwrap(),
    );
    let verifier = TokenVerifier::new(
        AUD.into(),
        vec![Issuer::from_jwks(ISS, &issuer.jwks).unwrap()],
        clock.clone(),
    );
    Arc::new(
        Kms::new(
            KmsConfig::new(DOMAIN),
            store,
            hsm.clone(),
            verifier,
            clock.clone(),
            vec![],
            audit,
        )
        .await
        .unwrap(),
    )
}

impl Env {
    pub fn now_s(&self) -> i64 {
        use strongroom_kms::clock::Clock as _;
        self.clock.now_ms() / 1000
    }

    pub fn token(&self, user: Uuid) -> String {
        self.issuer.token_full(user, ISS, AUD, self.now_s(), 3600)
    }

    /// A client for `user` with its channel established.
    pub async fn client(&self, user: Uuid) -> KmsClient {
        let mut c = self.raw_client(user, &self.token(user));
        let (jwe, pending) = c.begin_handshake().unwrap();
        let answer = self.kms.handle(&jwe).await;
        c.finish_handshake(&answer, pending).unwrap();
        c
    }

    pub fn raw_client(&self, user: Uuid, bearer: &str) -> KmsClient {
        KmsClient::new(
            self.kms.static_jwk().clone(),
            AUD,
            user,
            &format!("device-{user}"),
            SecretString::from(bearer.to_owned()),
        )
        .unwrap()
    }
}

/// Sends one request on the client's channel and opens the answer.
pub async fn call(kms: &Kms, c: &KmsClient, method: &str, uri: &str, extra: Value) -> Value {
    let (jwe, rid) = c.request(method, uri, extra).unwrap();
    let answer = kms.handle(&jwe).await;
    let body = c.open(&answer).unwrap();
    if body["status"] != 499 && !rid.is_empty() {
        assert_eq!(body["requestId"], rid.as_str(), "requestId echoed");
    }
    body
}
