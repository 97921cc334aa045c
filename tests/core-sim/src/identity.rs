//! The identity service's signing side (R22): one P-256 key (ES256) kept in the state
//! directory, two kinds of token with distinct audiences — the core token (`aud` =
//! [`CORE_AUDIENCE`]) and the KMS token (`aud` = `kms://<the user's org domain>`) — and
//! the public JWK set the appliance's KMS trusts.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{AuthError, Error, Result};
use crate::files;

/// `iss` of every token this identity service signs.
pub const ISSUER: &str = "https://core.strongroom.test/identity";
/// `aud` of core tokens: fixed, so tokens survive a restart on another port.
pub const CORE_AUDIENCE: &str = "https://core.strongroom.test";
/// Token lifetime.
pub const TOKEN_TTL_S: i64 = 3600;
const LEEWAY_S: i64 = 30;
const KEY_FILE: &str = "identity-key.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    kid: String,
    pkcs8_b64: String,
}

/// Claims of both token kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub org: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A verified core token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorePrincipal {
    pub user: Uuid,
    pub org: Uuid,
}

pub struct Identity {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: p256::PublicKey,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("kid", &self.kid).finish()
    }
}

impl Identity {
    /// Loads the signing key from `dir`, or creates it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        let (kid, secret) = if path.exists() {
            let kf: KeyFile =
                serde_json::from_slice(&files::read_secret(&path)?).map_err(Error::InvalidBody)?;
            let der = URL_SAFE_NO_PAD
                .decode(kf.pkcs8_b64)
                .map_err(|_| Error::Internal("identity key file is corrupt"))?;
            let sk = p256::SecretKey::from_pkcs8_der(&der)
                .map_err(|_| Error::Internal("identity key file is corrupt"))?;
            (kf.kid, sk)
        } else {
            let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
                &mut rand::rng(),
            );
            let kid = format!("core-identity-{}", Uuid::new_v4().simple());
            let der = sk
                .to_pkcs8_der()
                .map_err(|_| Error::Internal("encoding the identity key"))?;
            let kf = KeyFile {
                kid: kid.clone(),
                pkcs8_b64: URL_SAFE_NO_PAD.encode(der.as_bytes()),
            };
            let bytes =
                serde_json::to_vec(&kf).map_err(|_| Error::Internal("encoding the key file"))?;
            files::write_atomic(&path, &bytes, 0o600)?;
            (kid, sk)
        };
        let der = secret
            .to_pkcs8_der()
            .map_err(|_| Error::Internal("encoding the identity key"))?;
        let public = secret.public_key();
        let (x, y) = xy(&public);
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|_| Error::Internal("identity public key"))?;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            decoding,
            public,
            clock,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set (`GET /identity/jwks`).
    pub fn jwks(&self) -> serde_json::Value {
        let (x, y) = xy(&self.public);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": x, "y": y
        }]})
    }

    /// Signs a token for `user` of `org` with audience `aud`.
    pub fn mint(
        &self,
        user: Uuid,
        org: Uuid,
        aud: &str,
        client_id: Option<&str>,
        ttl_s: i64,
    ) -> Result<String> {
        let now_s = self.clock.now_ms() / 1000;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: aud.to_owned(),
            sub: user.to_string(),
            org: org.to_string(),
            iat: now_s,
            exp: now_s + ttl_s,
            client_id: client_id.map(str::to_owned),
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|_| Error::Internal("signing a token"))
    }

    /// Verifies a core token: signature, `iss`, `aud` = [`CORE_AUDIENCE`] (a KMS token is
    /// refused here), `exp` against the injected clock, UUID `sub` and `org`.
    pub fn verify_core(&self, token: &str) -> Result<CorePrincipal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::BadSignature);
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[CORE_AUDIENCE]);
        v.validate_exp = false; // checked below against the injected clock
        v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidIssuer => AuthError::BadSignature,
                    jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_)
                    | jsonwebtoken::errors::ErrorKind::Json(_) => AuthError::Claims,
                    _ => AuthError::Malformed,
                }
            })?;
        let c = data.claims;
        if c.exp + LEEWAY_S < self.clock.now_ms() / 1000 {
            return Err(AuthError::Expired);
        }
        let user = Uuid::parse_str(&c.sub).map_err(|_| AuthError::Claims)?;
        let org = Uuid::parse_str(&c.org).map_err(|_| AuthError::Claims)?;
        Ok(CorePrincipal { user, org })
    }
}

fn xy(public: &p256::PublicKey) -> (String, String) {
    let point = public.to_sec1_bytes();
    // INVARIANT: an uncompressed SEC1 P-256 point is 0x04 || x (32) || y (32).
    let (x, y) = point.get(1..).unwrap_or_default().split_at(32);
    (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn core_tokens_verify_kms_tokens_do_not_and_key_persists() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let id = Identity::load_or_create(dir.path(), clock.clone()).unwrap();
        let (u, o) = (Uuid::new_v4(), Uuid::new_v4());
        let core = id.mint(u, o, CORE_AUDIENCE, None, TOKEN_TTL_S).unwrap();
        let kms = id.mint(u, o, "kms://acme.test", None, TOKEN_TTL_S).unwrap();
        assert_eq!(
            id.verify_core(&core).unwrap(),
            CorePrincipal { user: u, org: o }
        );
        assert_eq!(id.verify_core(&kms), Err(AuthError::WrongAudience));
        let again = Identity::load_or_create(dir.path(), clock.clone()).unwrap();
        assert_eq!(again.kid(), id.kid());
        assert!(again.verify_core(&core).is_ok());
        clock.advance_ms((TOKEN_TTL_S + LEEWAY_S + 1) * 1000);
        assert_eq!(id.verify_core(&core), Err(AuthError::Expired));
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path(), clock).unwrap();
        let forged = other.mint(u, o, CORE_AUDIENCE, None, TOKEN_TTL_S).unwrap();
        assert_eq!(id.verify_core(&forged), Err(AuthError::BadSignature));
    }
}
