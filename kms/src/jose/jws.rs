//! Compact JWS (RFC 7515) with `RS256`, `PS256` and `ES256`. The server signs through a
//! closure (the private key is in the HSM); verification with software public keys is
//! for clients, tests and benchmarks.

use serde::{Deserialize, Serialize};

use super::{JoseError, b64d, b64e, parse_header, split_exact};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwsAlg {
    RS256,
    PS256,
    ES256,
}

impl JwsAlg {
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JwsHeader {
    pub alg: JwsAlg,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// Signs `payload`: builds the signing input and hands it to `sign`, which returns the raw
/// signature (RSA signature bytes, or `r||s` for ES256 as PKCS#11 `CKM_ECDSA` returns it).
pub fn sign<E>(
    alg: JwsAlg,
    kid: &str,
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<String, E> {
    let header = JwsHeader {
        alg,
        kid: Some(kid.to_owned()),
    };
    // INVARIANT: serialising a struct of strings to JSON cannot fail.
    #[allow(clippy::expect_used)]
    let header = serde_json::to_vec(&header).expect("header serialises");
    let mut out = b64e(&header);
    out.push('.');
    out.push_str(&b64e(payload));
    let sig = sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&b64e(&sig));
    Ok(out)
}

/// A parsed, unverified JWS.
#[derive(Debug)]
pub struct Jws<'a> {
    pub header: JwsHeader,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub fn parse(compact: &'a str) -> Result<Self, JoseError> {
        let [h, p, s] = split_exact::<3>(compact)?;
        let header: JwsHeader = parse_header(h)?;
        let signing_input = compact
            .get(..h.len() + 1 + p.len())
            .ok_or(JoseError::Header("truncated"))?;
        Ok(Self {
            header,
            signing_input,
            payload: b64d("payload", p)?,
            signature: b64d("signature", s)?,
        })
    }

    /// Verifies with an RSA public key (RS256 or PS256 per the header) and returns the payload.
    pub fn verify_rsa(self, key: &rsa::PublicKey) -> Result<Vec<u8>, JoseError> {
        use rsa::signature::Verifier as _;
        let ok = match self.header.alg {
            JwsAlg::RS256 => {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key.clone());
                let sig = rsa::pkcs1v15::Signature::try_from(self.signature.as_slice())
                    .map_err(|_| JoseError::BadSignature)?;
                vk.verify(self.signing_input.as_bytes(), &sig).is_ok()
            }
            JwsAlg::PS256 => {
                let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new(key.clone());
                let sig = rsa::pss::Signature::try_from(self.signature.as_slice())
                    .map_err(|_| JoseError::BadSignature)?;
                vk.verify(self.signing_input.as_bytes(), &sig).is_ok()
            }
            JwsAlg::ES256 => false,
        };
        if ok {
            Ok(self.payload)
        } else {
            Err(JoseError::BadSignature)
        }
    }

    /// Verifies an ES256 signature (`r||s`) and returns the payload.
    pub fn verify_es256(self, key: &p256::ecdsa::VerifyingKey) -> Result<Vec<u8>, JoseError> {
        use p256::ecdsa::signature::Verifier as _;
        if self.header.alg != JwsAlg::ES256 {
            return Err(JoseError::BadSignature);
        }
        let sig = p256::ecdsa::Signature::from_slice(&self.signature)
            .map_err(|_| JoseError::BadSignature)?;
        key.verify(self.signing_input.as_bytes(), &sig)
            .map_err(|_| JoseError::BadSignature)?;
        Ok(self.payload)
    }

    /// The payload without verification: only for code that verifies by other means.
    pub fn unverified_payload(&self) -> &[u8] {
        &self.payload
    }
}
