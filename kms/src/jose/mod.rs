//! The JOSE profile the KMS speaks (RFC 7515/7516/7517/7638), exactly as protocol.md fixes it.
//!
//! Why our own module and not a crate: no maintained pure-Rust crate covers JWE with
//! `RSA-OAEP` (SHA-1) where the RSA private key lives in an HSM, plus `dir`+`A256GCM`, without
//! OpenSSL (see docs/adr/0002-jose.md). The module is deliberately narrow: compact
//! serialisation only, one content encryption (`A256GCM`), key management `RSA-OAEP` and
//! `dir`, signatures `RS256`, `PS256`, `ES256`. Private-key operations are passed in as
//! closures so the HSM does them. Everything is proven against RFC 7520/7515 examples and
//! node-kms's vectors (`kms/tests/it/jose_vectors.rs`).

pub mod jwe;
pub mod jwk;
pub mod jws;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a JOSE object was refused. Deliberately coarse: a peer learns nothing about which
/// check failed beyond what it needs to fix a well-meant request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoseError {
    #[error("not a compact JOSE object: expected {expected} dots, found {found}")]
    DotCount { expected: usize, found: usize },
    #[error("invalid base64url in part {part}")]
    Base64 { part: &'static str },
    #[error("invalid protected header: {0}")]
    Header(&'static str),
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlg(String),
    #[error("decryption failed")]
    Decrypt,
    #[error("signature invalid")]
    BadSignature,
    #[error("invalid key: {0}")]
    Key(&'static str),
    #[error("signing failed")]
    Sign,
}

/// base64url without padding (RFC 7515 §2). Rejects padding and non-canonical trailing bits.
pub fn b64d(part: &'static str, s: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JoseError::Base64 { part })
}

pub fn b64e(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Counts the dots of a compact serialisation: 2 means JWS, 4 means JWE (protocol.md).
pub fn dot_count(s: &str) -> usize {
    s.bytes().filter(|b| *b == b'.').count()
}

/// Splits a compact serialisation into exactly `N` parts.
pub(crate) fn split_exact<const N: usize>(s: &str) -> Result<[&str; N], JoseError> {
    let found = dot_count(s);
    if found != N - 1 {
        return Err(JoseError::DotCount {
            expected: N - 1,
            found,
        });
    }
    let mut out = [""; N];
    for (slot, part) in out.iter_mut().zip(s.split('.')) {
        *slot = part;
    }
    Ok(out)
}

/// Parses a protected header; refuses `crit` (we understand no extensions) and `zip`.
pub(crate) fn parse_header<T: serde::de::DeserializeOwned>(b64: &str) -> Result<T, JoseError> {
    let raw = b64d("protected header", b64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| JoseError::Header("not JSON"))?;
    let obj = value
        .as_object()
        .ok_or(JoseError::Header("not a JSON object"))?;
    if obj.contains_key("crit") {
        return Err(JoseError::Header("crit is not supported"));
    }
    if obj.contains_key("zip") {
        return Err(JoseError::Header("zip is not supported"));
    }
    serde_json::from_value(value).map_err(|_| JoseError::Header("missing or mistyped member"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_counts_dots() {
        assert!(split_exact::<5>("a.b.c.d.e").is_ok());
        assert_eq!(
            split_exact::<5>("a.b.c"),
            Err(JoseError::DotCount {
                expected: 4,
                found: 2
            })
        );
        assert!(split_exact::<3>("a.b.c.d").is_err());
    }

    #[test]
    fn base64_is_strict() {
        assert!(b64d("x", "AQAB").is_ok());
        assert!(b64d("x", "AQAB=").is_err());
        assert!(b64d("x", "AQ+B").is_err());
    }

    #[test]
    fn header_refuses_crit_and_zip() {
        #[derive(serde::Deserialize)]
        struct H {
            #[allow(dead_code)]
            alg: String,
        }
        let crit = b64e(br#"{"alg":"dir","crit":["x"]}"#);
        assert!(parse_header::<H>(&crit).is_err());
        let zip = b64e(br#"{"alg":"dir","zip":"DEF"}"#);
        assert!(parse_header::<H>(&zip).is_err());
        let ok = b64e(br#"{"alg":"dir"}"#);
        assert!(parse_header::<H>(&ok).is_ok());
    }
}
