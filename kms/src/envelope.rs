//! The request/response envelope inside the JOSE layer (protocol.md "Envelope", "Objects").

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::jose::jwk::{EcPublicJwk, OctJwk};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub client: Client,
    /// ECDHE: the client's public key. A `d` member, if present, is ignored (never read).
    #[serde(default)]
    pub jwk: Option<EcPublicJwk>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub resource_uri: Option<String>,
    #[serde(default)]
    pub user_ids: Option<Vec<String>>,
    #[serde(default)]
    pub auth_ids: Option<Vec<String>>,
    #[serde(default)]
    pub key_uris: Option<Vec<String>>,
    #[serde(default)]
    pub bound_after: Option<String>,
    #[serde(default)]
    pub bound_before: Option<String>,
    /// R10: present only in the KMS part of a two-part membership change.
    #[serde(default)]
    pub membership: Option<MembershipPart>,
}

/// The `membership` member of a KMS part (protocol.md "Two-part membership change").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipPart {
    pub op: String,
    pub room: String,
    pub nonce: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub credential: Credential,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub bearer: Option<SecretString>,
}

/// A key object as returned to clients.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyObject {
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwk: Option<OctJwk>,
    pub user_id: String,
    pub client_id: String,
    pub create_date: String,
    pub expiration_date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_uri: Option<String>,
}

/// The server half of an ECDHE exchange (handshake reply).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EcdheKeyObject {
    pub uri: String,
    pub jwk: EcPublicJwk,
    pub user_id: String,
    pub client_id: String,
    pub create_date: String,
    pub expiration_date: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceObject {
    pub uri: String,
    pub key_uris: Vec<String>,
    pub authorization_uris: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationObject {
    pub uri: String,
    pub auth_id: String,
    pub resource_uri: String,
    pub create_date: String,
}

/// The payload member of a successful response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Payload {
    Key(KeyObject),
    Keys(Vec<KeyObject>),
    #[serde(rename = "key")]
    Ecdhe(EcdheKeyObject),
    Resource(ResourceObject),
    Authorizations(Vec<AuthorizationObject>),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub status: u16,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    #[serde(flatten)]
    pub payload: Option<Payload>,
}

impl Response {
    pub fn ok(status: u16, request_id: String, payload: Option<Payload>) -> Self {
        Self {
            status,
            request_id,
            reason: None,
            error_code: None,
            payload,
        }
    }

    /// The JSON of an answer that holds no secret (signed errors, the ECDHE answer).
    pub fn to_json(&self) -> Vec<u8> {
        // INVARIANT: every member is a string, number or a struct of those.
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("response serialises")
    }

    /// The JSON of an answer that may carry key material (sealed on a channel). A plain
    /// `Vec` doubles as serde_json writes into it and frees each smaller buffer with a
    /// copy of the keys in it; this one wipes every buffer it leaves behind and itself.
    pub fn to_json_wiped(&self) -> Zeroizing<Vec<u8>> {
        let mut out = WipingWriter(Zeroizing::new(Vec::with_capacity(WIPED_START)));
        // INVARIANT: as in `to_json`; the writer itself cannot fail.
        #[allow(clippy::expect_used)]
        serde_json::to_writer(&mut out, self).expect("response serialises");
        out.0
    }
}

/// Enough for an answer with a few keys, so most never grow.
const WIPED_START: usize = 2048;

/// An `io::Write` into a zeroizing buffer that grows by moving to a buffer twice as large
/// and wiping the old one (`Zeroizing<Vec>` wipes the whole capacity when dropped).
struct WipingWriter(Zeroizing<Vec<u8>>);

impl std::io::Write for WipingWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let need = self.0.len() + data.len();
        if need > self.0.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(2 * self.0.capacity())));
            bigger.extend_from_slice(&self.0);
            self.0 = bigger;
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys(n: usize) -> Response {
        let key = |i: usize| KeyObject {
            uri: format!("kms://kms.example.com/keys/{i:08}"),
            jwk: Some(OctJwk {
                kty: "oct".into(),
                kid: format!("kms://kms.example.com/keys/{i:08}"),
                k: "A".repeat(43),
            }),
            user_id: "u".into(),
            client_id: "c".into(),
            create_date: "2026-12-03T00:00:00Z".into(),
            expiration_date: "2026-12-04T00:00:00Z".into(),
            bind_date: None,
            resource_uri: None,
        };
        Response::ok(
            201,
            "r".into(),
            Some(Payload::Keys((0..n).map(key).collect())),
        )
    }

    /// The wiping writer writes exactly what serde_json writes, below its starting
    /// capacity and well past it (several moves to a larger buffer).
    #[test]
    fn wiped_json_is_the_same_json_at_every_size() {
        for n in [0, 1, 5, 40, 300] {
            let r = keys(n);
            let wiped = r.to_json_wiped();
            assert_eq!(*wiped, r.to_json(), "{n} keys");
            assert!(wiped.capacity() >= WIPED_START);
        }
        assert!(
            keys(40).to_json().len() > 4 * WIPED_START,
            "the test makes it grow"
        );
    }
}
