//! JWKs: the static RSA key as published (protocol.md "Static key"), client EC P-256 keys
//! (public part only: a `d` that a client sends is never read), symmetric `oct` keys,
//! and RFC 7638 thumbprints.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{JoseError, b64d, b64e};

/// A public RSA JWK. No `use` and no `alg` member: node-kms then fails to verify ("no key
/// found"); protocol.md lists that trap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaPublicJwk {
    pub kty: String,
    pub kid: String,
    pub n: String,
    pub e: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x5c: Vec<String>,
}

impl RsaPublicJwk {
    pub fn new(kid: String, modulus: &[u8], exponent: &[u8], x5c: Vec<String>) -> Self {
        Self {
            kty: "RSA".into(),
            kid,
            n: b64e(strip_zeros(modulus)),
            e: b64e(strip_zeros(exponent)),
            x5c,
        }
    }

    /// RFC 7638 thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        let canonical = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, self.e, self.n);
        b64e(&sha2::Sha256::digest(canonical.as_bytes()))
    }

    pub fn to_public_key(&self) -> Result<rsa::PublicKey, JoseError> {
        let n = b64d("n", &self.n)?;
        let e = b64d("e", &self.e)?;
        let bits = u32::try_from(n.len() * 8).map_err(|_| JoseError::Key("modulus too large"))?;
        let n = rsa::BoxedUint::from_be_slice(&n, bits).map_err(|_| JoseError::Key("bad n"))?;
        let e = rsa::BoxedUint::from_be_slice(&e, 64).map_err(|_| JoseError::Key("bad e"))?;
        rsa::PublicKey::new(n, e).map_err(|_| JoseError::Key("invalid RSA public key"))
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

/// The public part of an EC P-256 JWK. Unknown members, `d` included, are ignored by serde
/// and never stored; the raw JSON they came in is zeroized by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcPublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
}

impl EcPublicJwk {
    pub fn from_public_key(key: &p256::PublicKey) -> Self {
        let point = key.to_sec1_bytes();
        // INVARIANT: an uncompressed P-256 point is 0x04 || x(32) || y(32).
        let (x, y) = point.get(1..).unwrap_or_default().split_at(32);
        Self {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64e(x),
            y: b64e(y),
        }
    }

    /// Validates the curve and that the point is on it (no invalid-curve attacks).
    pub fn to_public_key(&self) -> Result<p256::PublicKey, JoseError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(JoseError::Key("expected an EC P-256 key"));
        }
        let x = b64d("x", &self.x)?;
        let y = b64d("y", &self.y)?;
        if x.len() != 32 || y.len() != 32 {
            return Err(JoseError::Key("P-256 coordinates must be 32 bytes"));
        }
        let mut sec1 = Vec::with_capacity(65);
        sec1.push(0x04);
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| JoseError::Key("point not on P-256"))
    }
}

/// A symmetric key JWK as the KMS hands it out: `kty` `oct`, `kid` = key URI, no `use`/`alg`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OctJwk {
    pub kty: String,
    pub kid: String,
    pub k: String,
}

impl std::fmt::Debug for OctJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OctJwk")
            .field("kid", &self.kid)
            .field("k", &"<redacted>")
            .finish()
    }
}

impl Drop for OctJwk {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1.
        let jwk = RsaPublicJwk {
            kty: "RSA".into(),
            kid: "2011-04-29".into(),
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
            x5c: vec![],
        };
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn static_jwk_has_no_use_or_alg() {
        let jwk = RsaPublicJwk::new("kms://a/static".into(), &[0, 1, 2], &[1, 0, 1], vec![]);
        let v = serde_json::to_value(&jwk).unwrap();
        assert!(v.get("use").is_none() && v.get("alg").is_none());
        assert_eq!(v["n"], "AQI");
    }

    #[test]
    fn ec_jwk_ignores_d_and_rejects_off_curve() {
        let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate_from_rng(
            &mut rand::rng(),
        );
        let mut v = serde_json::to_value(EcPublicJwk::from_public_key(&sk.public_key())).unwrap();
        v["d"] = serde_json::Value::String("bogus".into());
        let parsed: EcPublicJwk = serde_json::from_value(v).unwrap();
        assert_eq!(parsed.to_public_key().unwrap(), sk.public_key());
        let mut bad = parsed.clone();
        bad.y = b64e(&[7u8; 32]);
        assert!(bad.to_public_key().is_err());
    }

    #[test]
    fn oct_debug_redacts() {
        let j = OctJwk {
            kty: "oct".into(),
            kid: "k".into(),
            k: "SECRET".into(),
        };
        assert!(!format!("{j:?}").contains("SECRET"));
    }
}
