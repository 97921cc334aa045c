//! Conversation keys (R4, R7, R8): create, retrieve, bind to a resource.

use uuid::Uuid;

use super::{Caller, Kms};
use crate::clock::rfc3339;
use crate::crypto::SecretKey32;
use crate::envelope::{KeyObject, Payload, Request, Response};
use crate::error::KmsError;
use crate::jose::b64e;
use crate::jose::jwk::OctJwk;
use crate::storage::{StoredKey, Write, WriteOutcome};

impl Kms {
    /// The client-facing object, with the key material unsealed into its JWK.
    pub(super) fn key_object(&self, k: &StoredKey) -> Result<KeyObject, KmsError> {
        let uri = self.uris.key(k.id);
        let secret = self.kek.unseal(&uri, &k.sealed)?;
        Ok(KeyObject {
            jwk: Some(OctJwk {
                kty: "oct".into(),
                kid: uri.clone(),
                k: b64e(secret.expose()),
            }),
            uri,
            user_id: k.user.to_string(),
            client_id: k.client_id.clone(),
            create_date: rfc3339(k.created_ms),
            expiration_date: rfc3339(k.expires_ms),
            bind_date: k.bound_ms.map(rfc3339),
            resource_uri: k.resource.map(|r| self.uris.resource(r)),
        })
    }

    pub(super) async fn create_keys(
        &self,
        caller: &Caller,
        req: &Request,
    ) -> Result<Response, KmsError> {
        let count = req.count.unwrap_or(1);
        if count == 0 || count > self.cfg.max_keys_per_request {
            return Err(KmsError::BadRequest(format!(
                "count must be between 1 and {}",
                self.cfg.max_keys_per_request
            )));
        }
        let now = self.now_ms();
        let mut stored = Vec::new();
        for _ in 0..count {
            let id = Uuid::new_v4();
            let secret = SecretKey32::generate();
            stored.push(StoredKey {
                id,
                user: caller.user,
                client_id: caller.client_id.clone(),
                created_ms: now,
                expires_ms: now + self.cfg.key_bind_ttl_ms,
                resource: None,
                bound_ms: None,
                sealed: self.kek.seal(&self.uris.key(id), &secret),
            });
        }
        let objects = stored
            .iter()
            .map(|k| self.key_object(k))
            .collect::<Result<Vec<_>, _>>()?;
        self.store.apply(vec![Write::PutKeys(stored)]).await?;
        Ok(Response::ok(
            201,
            req.request_id.clone(),
            Some(Payload::Keys(objects)),
        ))
    }

    fn load_key(&self, id: Uuid) -> Result<StoredKey, KmsError> {
        self.store
            .key(id)?
            .ok_or_else(|| KmsError::NotFound(format!("no such key: {}", self.uris.key(id))))
    }

    /// An unbound key is retrievable by its creator only; a bound key by every user
    /// authorized on its resource.
    pub(super) fn retrieve_key(
        &self,
        caller: &Caller,
        id: Uuid,
        rid: String,
    ) -> Result<Response, KmsError> {
        let k = self.load_key(id)?;
        match k.resource {
            None if k.user != caller.user => {
                return Err(KmsError::ForbiddenOther(format!(
                    "User {} doesn't have authorization to access key {}",
                    caller.user,
                    self.uris.key(id)
                )));
            }
            None => {}
            Some(r) => self.require_authorized(caller, r)?,
        }
        Ok(Response::ok(
            200,
            rid,
            Some(Payload::Key(self.key_object(&k)?)),
        ))
    }

    /// `update` on a key URI with `resourceUri`: binds the key (creator only, and the
    /// creator must be authorized on the resource).
    pub(super) async fn bind_key(
        &self,
        caller: &Caller,
        id: Uuid,
        req: &Request,
    ) -> Result<Response, KmsError> {
        let resource_uri = req
            .resource_uri
            .as_deref()
            .ok_or_else(|| KmsError::BadRequest("resourceUri is required to bind a key".into()))?;
        let resource = self.uris.resource_id(resource_uri)?;
        let k = self.load_key(id)?;
        if k.user != caller.user {
            return Err(KmsError::ForbiddenOther(
                "only the key's creator may bind it".into(),
            ));
        }
        self.require_resource(caller, resource)?;
        let now = self.now_ms();
        if k.resource.is_none() && k.expires_ms <= now {
            return Err(KmsError::Conflict(
                "the key expired before it was bound".into(),
            ));
        }
        let out = self
            .store
            .apply(vec![Write::BindKey {
                key: id,
                resource,
                at_ms: now,
            }])
            .await?;
        match out.into_iter().next() {
            Some(WriteOutcome::Bound(k)) => Ok(Response::ok(
                200,
                req.request_id.clone(),
                Some(Payload::Key(self.key_object(&k)?)),
            )),
            Some(WriteOutcome::Conflict(why)) => Err(KmsError::Conflict(why.into())),
            Some(WriteOutcome::NotFound) => Err(KmsError::NotFound(self.uris.key(id))),
            other => Err(KmsError::Internal(format!(
                "unexpected bind outcome {other:?}"
            ))),
        }
    }
}
