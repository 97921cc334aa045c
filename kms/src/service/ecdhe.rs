//! The ephemeral ECDH handshake (R2; protocol.md "Ephemeral ECDH handshake") and channel
//! bookkeeping. The client's half arrives RSA-OAEP-encrypted to the static key (decrypted
//! in the HSM); our half goes back in a JWS signed by the static key. Channel keys are
//! sealed under the KEK and stored durably, and expire after `channel_ttl_ms`.

use std::sync::Arc;

use uuid::Uuid;

use super::audit::Decision;
use super::{CHANNEL_CACHE_SWEEP, Caller, Channel, Kms};
use crate::clock::rfc3339;
use crate::crypto;
use crate::envelope::{EcdheKeyObject, Payload, Request, Response};
use crate::error::KmsError;
use crate::jose::jwe::Jwe;
use crate::jose::jwk::EcPublicJwk;
use crate::storage::{StoredChannel, Write};
use crate::uri::Target;

impl Kms {
    pub(super) async fn handle_handshake(&self, jwe: Jwe<'_>, compact: &str) -> String {
        let kid_ok = jwe
            .kid()
            .is_some_and(|k| k == self.static_jwk.kid || k == self.static_thumbprint);
        let mut d = Decision::default();
        if !kid_ok {
            let e = KmsError::BadRequest("unknown kid: not this KMS's static key".into());
            return self.refuse_signed(d, String::new(), &e).await;
        }
        let hsm = self.hsm.clone();
        let owned = compact.to_owned();
        // The RSA private-key operation blocks (HSM); keep it off the async workers.
        let plaintext = tokio::task::spawn_blocking(move || {
            Jwe::parse(&owned)?.decrypt_rsa_oaep(|ek| hsm.rsa_oaep_sha1_decrypt(ek))
        })
        .await
        .map_err(|_| crate::jose::JoseError::Decrypt)
        .and_then(|r| r);
        let Ok(plaintext) = plaintext else {
            let e = KmsError::BadRequest("handshake message does not decrypt".into());
            return self.refuse_signed(d, String::new(), &e).await;
        };
        let req: Request = match serde_json::from_slice(&plaintext) {
            Ok(r) => r,
            Err(_) => {
                let e = KmsError::BadRequest("handshake body is not a valid KMS request".into());
                return self.refuse_signed(d, String::new(), &e).await;
            }
        };
        drop(plaintext);
        self.note_request(&mut d, &req);
        let rid = req.request_id.clone();
        let response = match self.create_channel(&req, &mut d).await {
            Ok(r) => r,
            Err(e) => return self.refuse_signed(d, rid, &e).await,
        };
        match self
            .record(d, response.status, strongroom_audit::Reason::Ok)
            .await
        {
            Ok(()) => self.sign(response.to_json()).await,
            Err(e) => self.signed_error(rid, &e).await,
        }
    }

    async fn create_channel(&self, req: &Request, d: &mut Decision) -> Result<Response, KmsError> {
        let caller = self.authenticate(req)?;
        d.caller = Some(caller.clone());
        if !self.audit_writable() {
            return Err(KmsError::AuditUnavailable);
        }
        if req.method != "create" || self.uris.parse(&req.uri)? != Target::Ecdhe {
            return Err(KmsError::BadRequest(
                "a message to the static key must be create on /ecdhe".into(),
            ));
        }
        let client_jwk = req.jwk.as_ref().ok_or_else(|| {
            KmsError::BadRequest("jwk (the client's EC public key) is required".into())
        })?;
        let client_pub = client_jwk
            .to_public_key()
            .map_err(|e| KmsError::BadRequest(format!("jwk: {e}")))?;
        let secret =
            <p256::ecdh::EphemeralSecret as p256::elliptic_curve::Generate>::generate_from_rng(
                &mut rand::rng(),
            );
        let server_pub = EcPublicJwk::from_public_key(&secret.public_key());
        let shared = secret.diffie_hellman(&client_pub);
        let key = crypto::hkdf_sha256_zero_salt(shared.raw_secret_bytes());
        drop(shared);

        let now = self.now_ms();
        let id = Uuid::new_v4();
        let uri = self.uris.channel(id);
        let expires_ms = now + self.cfg.channel_ttl_ms;
        let stored = StoredChannel {
            id,
            user: caller.user,
            client_id: caller.client_id.clone(),
            created_ms: now,
            expires_ms,
            sealed: self.kek.seal(&uri, &key),
        };
        self.store.apply(vec![Write::PutChannel(stored)]).await?;
        self.cache_channel(Channel {
            id,
            user: caller.user,
            expires_ms,
            key,
        });
        Ok(Response::ok(
            201,
            req.request_id.clone(),
            Some(Payload::Ecdhe(EcdheKeyObject {
                uri,
                jwk: server_pub,
                user_id: caller.user.to_string(),
                client_id: caller.client_id,
                create_date: rfc3339(now),
                expiration_date: rfc3339(expires_ms),
            })),
        ))
    }

    fn cache_channel(&self, channel: Channel) -> Arc<Channel> {
        let channel = Arc::new(channel);
        if let Ok(mut map) = self.channels.write() {
            if map.len() >= CHANNEL_CACHE_SWEEP {
                let now = self.now_ms();
                map.retain(|_, c| c.expires_ms > now);
            }
            map.insert(channel.id, Arc::clone(&channel));
        }
        channel
    }

    /// Finds a channel in memory or in the store (after a restart).
    pub(super) fn channel(&self, id: Uuid) -> Result<Option<Arc<Channel>>, KmsError> {
        if let Ok(map) = self.channels.read()
            && let Some(c) = map.get(&id)
        {
            return Ok(Some(Arc::clone(c)));
        }
        let Some(stored) = self.store.channel(id)? else {
            return Ok(None);
        };
        let key = self.kek.unseal(&self.uris.channel(id), &stored.sealed)?;
        Ok(Some(self.cache_channel(Channel {
            id,
            user: stored.user,
            expires_ms: stored.expires_ms,
            key,
        })))
    }

    pub(super) async fn delete_channel(
        &self,
        caller: &Caller,
        id: Uuid,
        rid: String,
    ) -> Result<Response, KmsError> {
        let Some(c) = self.channel(id)? else {
            return Err(KmsError::NotFound(format!(
                "no such ephemeral key: {}",
                self.uris.channel(id)
            )));
        };
        if c.user != caller.user {
            return Err(KmsError::ForbiddenOther(
                "an ephemeral key can only be deleted by its user".into(),
            ));
        }
        self.store.apply(vec![Write::DeleteChannel(id)]).await?;
        if let Ok(mut map) = self.channels.write() {
            map.remove(&id);
        }
        Ok(Response::ok(204, rid, None))
    }
}
