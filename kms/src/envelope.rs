//! The request/response envelope inside the JOSE layer (protocol.md "Envelope", "Objects").

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

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

    pub fn to_json(&self) -> Vec<u8> {
        // INVARIANT: every member is a string, number or a struct of those.
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("response serialises")
    }
}
