//! Who may use a resource: a user holding an authorization on it, or a user authorized on
//! a resource that is itself authorized on it (protocol.md: "an authId may itself be a
//! resource URI"). One level of indirection, so a cycle of resources cannot loop.

use uuid::Uuid;

use super::{Caller, Kms};
use crate::clock::rfc3339;
use crate::envelope::{AuthorizationObject, Request};
use crate::error::KmsError;
use crate::storage::{AuthId, StoredAuth, StoredResource};

impl Kms {
    pub(super) fn is_authorized(&self, user: Uuid, resource: Uuid) -> Result<bool, KmsError> {
        if self
            .store
            .authorization(resource, &AuthId::User(user))?
            .is_some()
        {
            return Ok(true);
        }
        for a in self.store.authorizations(resource)? {
            if let AuthId::Resource(other) = a.auth_id
                && other != resource
                && self
                    .store
                    .authorization(other, &AuthId::User(user))?
                    .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn forbidden(&self, caller: &Caller, resource: Uuid) -> KmsError {
        KmsError::Forbidden {
            user: caller.user.to_string(),
            uri: self.uris.resource(resource),
        }
    }

    /// The resource, if it exists and the caller is authorized on it (404 / 403 otherwise).
    pub(super) fn require_resource(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<StoredResource, KmsError> {
        let r = self.store.resource(id)?.ok_or_else(|| {
            KmsError::NotFound(format!("no such resource: {}", self.uris.resource(id)))
        })?;
        if self.is_authorized(caller.user, id)? {
            Ok(r)
        } else {
            Err(self.forbidden(caller, id))
        }
    }

    pub(super) fn require_authorized(&self, caller: &Caller, id: Uuid) -> Result<(), KmsError> {
        if self.is_authorized(caller.user, id)? {
            Ok(())
        } else {
            Err(self.forbidden(caller, id))
        }
    }

    /// One `authId` string: a user UUID or the URI of an existing resource.
    pub(super) fn parse_auth_id(&self, s: &str) -> Result<AuthId, KmsError> {
        if let Ok(u) = Uuid::parse_str(s) {
            return Ok(AuthId::User(u));
        }
        let r = self.uris.resource_id(s).map_err(|_| {
            KmsError::BadRequest(format!(
                "authId is neither a user UUID nor a resource URI: {s}"
            ))
        })?;
        if self.store.resource(r)?.is_none() {
            return Err(KmsError::NotFound(format!("no such resource: {s}")));
        }
        Ok(AuthId::Resource(r))
    }

    /// `userIds` then `authIds`, duplicates merged, order kept.
    pub(super) fn auth_ids(&self, req: &Request) -> Result<Vec<AuthId>, KmsError> {
        let all: Vec<&String> = req
            .user_ids
            .iter()
            .flatten()
            .chain(req.auth_ids.iter().flatten())
            .collect();
        if all.len() > self.cfg.max_ids_per_request {
            return Err(KmsError::BadRequest(format!(
                "at most {} ids per request",
                self.cfg.max_ids_per_request
            )));
        }
        let mut out: Vec<AuthId> = Vec::with_capacity(all.len());
        for s in all {
            let id = self.parse_auth_id(s)?;
            if !out.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub(super) fn new_auth(&self, resource: Uuid, auth_id: AuthId, now: i64) -> StoredAuth {
        StoredAuth {
            id: Uuid::new_v4(),
            resource,
            auth_id,
            created_ms: now,
        }
    }

    pub(super) fn auth_object(&self, a: &StoredAuth) -> AuthorizationObject {
        AuthorizationObject {
            uri: self.uris.authorization(a.resource, a.id),
            auth_id: match a.auth_id {
                AuthId::User(u) => u.to_string(),
                AuthId::Resource(r) => self.uris.resource(r),
            },
            resource_uri: self.uris.resource(a.resource),
            create_date: rfc3339(a.created_ms),
        }
    }
}
