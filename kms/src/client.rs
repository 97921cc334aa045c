//! A sans-I/O KMS client: builds and opens messages in the same dialect as node-kms 0.4.1.
//! Used by the demo, the end-to-end tests, the benchmarks and (later) federation peers.
//! It never touches the network: callers carry the strings however they like.

use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::crypto::{self, SecretKey32};
use crate::jose::jwe::{self, Jwe};
use crate::jose::jwk::{EcPublicJwk, RsaPublicJwk};
use crate::jose::jws::Jws;
use crate::jose::{JoseError, dot_count};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Jose(#[from] JoseError),
    #[error("no channel: run the ECDHE handshake first")]
    NoChannel,
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

struct ChannelKey {
    uri: String,
    key: SecretKey32,
}

/// One user's device talking to one KMS.
pub struct KmsClient {
    static_jwk: RsaPublicJwk,
    static_key: rsa::PublicKey,
    cluster: String,
    user_id: Uuid,
    client_id: String,
    bearer: SecretString,
    channel: Option<ChannelKey>,
}

impl std::fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsClient")
            .field("cluster", &self.cluster)
            .field("user_id", &self.user_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A handshake in flight: the client's ephemeral secret waits for the server's half.
pub struct PendingHandshake {
    secret: p256::ecdh::EphemeralSecret,
    request_id: String,
}

impl KmsClient {
    pub fn new(
        static_jwk: RsaPublicJwk,
        cluster: &str,
        user_id: Uuid,
        client_id: &str,
        bearer: SecretString,
    ) -> Result<Self, ClientError> {
        let static_key = static_jwk.to_public_key()?;
        Ok(Self {
            static_jwk,
            static_key,
            cluster: cluster.to_owned(),
            user_id,
            client_id: client_id.to_owned(),
            bearer,
            channel: None,
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn set_bearer(&mut self, bearer: SecretString) {
        self.bearer = bearer;
    }

    pub fn channel_uri(&self) -> Option<&str> {
        self.channel.as_ref().map(|c| c.uri.as_str())
    }

    fn envelope(&self, method: &str, uri: &str, extra: Value) -> (Value, String) {
        let request_id = Uuid::new_v4().to_string();
        let mut body = json!({
            "uri": uri,
            "method": method,
            "requestId": request_id,
            "client": {
                "clientId": self.client_id,
                "credential": {
                    "userId": self.user_id.to_string(),
                    "bearer": self.bearer.expose_secret(),
                }
            }
        });
        if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
            obj.extend(more);
        }
        (body, request_id)
    }

    /// Starts the ECDHE handshake: a JWE to the static key carrying a fresh P-256 key.
    pub fn begin_handshake(&self) -> Result<(String, PendingHandshake), ClientError> {
        let secret =
            <p256::ecdh::EphemeralSecret as p256::elliptic_curve::Generate>::generate_from_rng(
                &mut rand::rng(),
            );
        let jwk = EcPublicJwk::from_public_key(&secret.public_key());
        let (body, request_id) = self.envelope(
            "create",
            &format!("{}/ecdhe", self.cluster),
            json!({ "jwk": jwk }),
        );
        let jwe = jwe::encrypt_rsa_oaep(
            &self.static_key,
            &self.static_jwk.kid,
            body.to_string().as_bytes(),
        )?;
        Ok((jwe, PendingHandshake { secret, request_id }))
    }

    /// Completes the handshake from the server's signed answer. Takes the pending
    /// handshake by value: its ephemeral secret is used once.
    #[allow(clippy::needless_pass_by_value)]
    pub fn finish_handshake(
        &mut self,
        answer: &str,
        pending: PendingHandshake,
    ) -> Result<Value, ClientError> {
        let body = self.open(answer)?;
        if body["requestId"] != pending.request_id.as_str() {
            return Err(ClientError::Unexpected("requestId not echoed".into()));
        }
        if body["status"] != 201 {
            return Err(ClientError::Unexpected(format!(
                "handshake refused: {body}"
            )));
        }
        let server: EcPublicJwk = serde_json::from_value(body["key"]["jwk"].clone())
            .map_err(|_| ClientError::Unexpected("no server jwk".into()))?;
        let uri = body["key"]["uri"]
            .as_str()
            .ok_or_else(|| ClientError::Unexpected("no channel uri".into()))?
            .to_owned();
        let shared = pending.secret.diffie_hellman(&server.to_public_key()?);
        let key = crypto::hkdf_sha256_zero_salt(shared.raw_secret_bytes());
        self.channel = Some(ChannelKey { uri, key });
        Ok(body)
    }

    /// Builds a request on the channel. Returns the JWE and its requestId.
    pub fn request(
        &self,
        method: &str,
        uri: &str,
        extra: Value,
    ) -> Result<(String, String), ClientError> {
        let ch = self.channel.as_ref().ok_or(ClientError::NoChannel)?;
        let (body, rid) = self.envelope(method, uri, extra);
        Ok((
            jwe::encrypt_dir(&ch.key, &ch.uri, body.to_string().as_bytes()),
            rid,
        ))
    }

    /// Opens an answer: a JWE on the channel, or a JWS verified with the static key.
    pub fn open(&self, answer: &str) -> Result<Value, ClientError> {
        let bytes = match dot_count(answer) {
            2 => Jws::parse(answer)?.verify_rsa(&self.static_key)?,
            4 => {
                let ch = self.channel.as_ref().ok_or(ClientError::NoChannel)?;
                let j = Jwe::parse(answer)?;
                if j.kid() != Some(ch.uri.as_str()) {
                    return Err(ClientError::Unexpected("answer for another channel".into()));
                }
                j.decrypt_dir(&ch.key)?.to_vec()
            }
            n => return Err(ClientError::Unexpected(format!("{n} dots"))),
        };
        serde_json::from_slice(&bytes).map_err(|_| ClientError::Unexpected("not JSON".into()))
    }

    /// The channel's URI and key, for a client that keeps its channel between runs in a
    /// file only its user can read (the reference CLI). `None` before the handshake.
    pub fn export_channel(&self) -> Option<(String, [u8; 32])> {
        self.channel
            .as_ref()
            .map(|c| (c.uri.clone(), *c.key.expose()))
    }

    /// Restores a channel saved by [`KmsClient::export_channel`]. If the KMS no longer
    /// knows it, its answer is a 499 reset and the caller handshakes again.
    pub fn import_channel(&mut self, uri: String, key: [u8; 32]) {
        self.channel = Some(ChannelKey {
            uri,
            key: SecretKey32::from_bytes(key),
        });
    }

    pub fn static_jwk(&self) -> &RsaPublicJwk {
        &self.static_jwk
    }

    /// Forgets the channel (after status 499, or to rotate it).
    pub fn reset(&mut self) {
        self.channel = None;
    }
}
