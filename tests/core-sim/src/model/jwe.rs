//! The only thing the core reads of content: the protected header of a compact JWE. It
//! never decrypts (it holds no key); it checks the shape and keeps the `kid` (key URI).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize)]
struct Protected {
    alg: String,
    enc: String,
    kid: String,
}

/// Checks `compact` is `header.encrypted_key.iv.ciphertext.tag` with a protected header
/// `{"alg":"dir","enc":"A256GCM","kid":"kms://<domain>/keys/<uuid>"}` and returns the kid.
pub fn content_kid(compact: &str) -> Result<String> {
    let parts: Vec<&str> = compact.split('.').collect();
    let [header, cek, iv, ciphertext, tag] = parts.as_slice() else {
        return Err(Error::NotJwe("not five dot-separated parts"));
    };
    if !cek.is_empty() {
        return Err(Error::NotJwe("alg dir has an empty encrypted key"));
    }
    for part in [iv, ciphertext, tag] {
        if part.is_empty() || URL_SAFE_NO_PAD.decode(part).is_err() {
            return Err(Error::NotJwe("iv, ciphertext and tag must be base64url"));
        }
    }
    let raw = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Error::NotJwe("protected header is not base64url"))?;
    let h: Protected = serde_json::from_slice(&raw)
        .map_err(|_| Error::NotJwe("protected header lacks alg, enc or kid"))?;
    if h.alg != "dir" || h.enc != "A256GCM" {
        return Err(Error::NotJwe("alg must be dir and enc A256GCM"));
    }
    let valid_kid = h.kid.strip_prefix("kms://").and_then(|rest| {
        let (domain, key) = rest.split_once("/keys/")?;
        (!domain.is_empty() && uuid::Uuid::parse_str(key).is_ok()).then_some(())
    });
    if valid_kid.is_none() {
        return Err(Error::NotJwe("kid must be kms://<domain>/keys/<uuid>"));
    }
    Ok(h.kid)
}

/// Builds a syntactically valid JWE (random bytes, not a real encryption) for tests and tools.
pub fn fake_jwe(kid: &str, ciphertext: &[u8]) -> String {
    let header = serde_json::json!({"alg": "dir", "enc": "A256GCM", "kid": kid}).to_string();
    format!(
        "{}..{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode([7u8; 12]),
        URL_SAFE_NO_PAD.encode(ciphertext),
        URL_SAFE_NO_PAD.encode([9u8; 16])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dir_a256gcm_with_key_uri_and_refuses_the_rest() {
        let kid = format!("kms://acme.test/keys/{}", uuid::Uuid::new_v4());
        assert_eq!(content_kid(&fake_jwe(&kid, b"ct")).unwrap(), kid);
        assert!(content_kid("hello world").is_err());
        assert!(content_kid(&fake_jwe("kms://acme.test/keys/not-a-uuid", b"c")).is_err());
        assert!(content_kid(&fake_jwe("https://x/keys/1", b"c")).is_err());
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"k"}"#);
        assert!(content_kid(&format!("{h}.abc.AAAA.AAAA.AAAA")).is_err());
    }
}
