//! KMS bearer tokens (R2: distinct from the core token). JWTs checked offline against the
//! issuer keys in the configuration: signature, `iss`, `aud` = this KMS's `kms://` domain
//! (so a core token is refused), `exp`, `sub` = user UUID, `org` = organisation UUID.
//!
//! A token that verified once is remembered by its SHA-256 until it expires, so the
//! asymmetric signature is not re-checked on every request (issue: "a token already
//! verified is not re-verified"). The cache holds hashes and claims, never tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Digest as _;
use uuid::Uuid;

use crate::clock::Clock;

/// Most verified tokens remembered; the cache is cleared when full (simple, bounded).
const CACHE_CAP: usize = 100_000;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: i64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("bearer token missing")]
    Missing,
    #[error("bearer token is malformed")]
    Malformed,
    #[error("bearer token issuer is not trusted")]
    UnknownIssuer,
    #[error("bearer token signature is invalid")]
    BadSignature,
    #[error("bearer token audience is not this KMS")]
    WrongAudience,
    #[error("bearer token has expired")]
    Expired,
    #[error("bearer token claims are invalid: {0}")]
    Claims(&'static str),
}

/// One trusted issuer: its `iss` value and its verification keys (JWK set).
#[derive(Clone)]
pub struct Issuer {
    pub iss: String,
    pub keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("iss", &self.iss)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Issuer {
    /// From a JWK set document (`{"keys":[...]}`); keys without a usable algorithm are skipped.
    pub fn from_jwks(iss: &str, jwks_json: &str) -> Result<Self, AuthError> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(jwks_json).map_err(|_| AuthError::Claims("invalid JWK set"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => continue,
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|_| AuthError::Claims("bad JWK"))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            return Err(AuthError::Claims("JWK set has no usable key"));
        }
        Ok(Self {
            iss: iss.to_owned(),
            keys,
        })
    }
}

/// What the KMS keeps from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Uuid,
    pub org: Uuid,
    pub expires_s: i64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    org: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
}

pub struct TokenVerifier {
    audience: String,
    issuers: Vec<Issuer>,
    clock: Arc<dyn Clock>,
    cache: RwLock<HashMap<[u8; 32], Principal>>,
    /// How many tokens went through full (asymmetric) verification: tests and metrics.
    slow_verifications: AtomicU64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("audience", &self.audience)
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    pub fn new(audience: String, issuers: Vec<Issuer>, clock: Arc<dyn Clock>) -> Self {
        Self {
            audience,
            issuers,
            clock,
            cache: RwLock::new(HashMap::new()),
            slow_verifications: AtomicU64::new(0),
        }
    }

    /// Tokens verified with their signature so far (cache misses).
    pub fn slow_verifications(&self) -> u64 {
        self.slow_verifications.load(Ordering::Relaxed)
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let now_s = self.clock.now_ms() / 1000;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.read()
            && let Some(p) = cache.get(&digest)
        {
            if p.expires_s + LEEWAY_S < now_s {
                return Err(AuthError::Expired);
            }
            return Ok(p.clone());
        }
        self.slow_verifications.fetch_add(1, Ordering::Relaxed);
        let principal = Self::principal(&self.verify_slow(token, &self.audience)?, now_s)?;
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
            cache.insert(digest, principal.clone());
        }
        Ok(principal)
    }

    /// Verifies a signed statement from a trusted issuer whose audience is `audience` (not
    /// this KMS's token audience, so a statement is never usable as a bearer token, nor a
    /// token as a statement). Not cached. Returns the principal it names and its `iat`
    /// (required).
    pub fn verify_statement(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(Principal, i64), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let now_s = self.clock.now_ms() / 1000;
        let claims = self.verify_slow(token, audience)?;
        let iat = claims.iat.ok_or(AuthError::Claims("iat is required"))?;
        if iat - LEEWAY_S > now_s {
            return Err(AuthError::Claims("statement issued in the future"));
        }
        Ok((Self::principal(&claims, now_s)?, iat))
    }

    fn verify_slow(&self, token: &str, audience: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        // Read `iss` before verification only to pick the key set; nothing else is trusted
        // until the signature checks out.
        #[derive(Deserialize)]
        struct IssOnly {
            iss: String,
        }
        let unverified: IssOnly = jsonwebtoken::dangerous::insecure_decode(token)
            .map_err(|_| AuthError::Malformed)?
            .claims;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.iss == unverified.iss)
            .ok_or(AuthError::UnknownIssuer)?;
        let mut last = AuthError::BadSignature;
        for (kid, alg, key) in &issuer.keys {
            if header.alg != *alg || (header.kid.is_some() && kid.is_some() && header.kid != *kid) {
                continue;
            }
            let mut v = Validation::new(*alg);
            v.set_issuer(&[&issuer.iss]);
            v.set_audience(&[audience]);
            v.validate_exp = false; // checked below against the injected clock
            v.validate_nbf = false;
            v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                            return Err(AuthError::WrongAudience);
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            AuthError::BadSignature
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
                        jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_)
                        | jsonwebtoken::errors::ErrorKind::Json(_) => {
                            AuthError::Claims("missing or mistyped claim")
                        }
                        _ => AuthError::Malformed,
                    };
                }
            }
        }
        Err(last)
    }

    fn principal(c: &Claims, now_s: i64) -> Result<Principal, AuthError> {
        if c.exp + LEEWAY_S < now_s {
            return Err(AuthError::Expired);
        }
        if c.nbf.is_some_and(|nbf| nbf - LEEWAY_S > now_s) {
            return Err(AuthError::Claims("token not yet valid"));
        }
        let user = Uuid::parse_str(&c.sub).map_err(|_| AuthError::Claims("sub is not a UUID"))?;
        let org = Uuid::parse_str(&c.org).map_err(|_| AuthError::Claims("org is not a UUID"))?;
        Ok(Principal {
            user,
            org,
            expires_s: c.exp,
        })
    }
}
