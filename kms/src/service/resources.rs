//! Resources (a room's key set) and their authorizations (R4, R10 groundwork, R11).

use uuid::Uuid;

use super::{Caller, Kms};
use crate::clock::parse_rfc3339;
use crate::envelope::{Payload, Request, ResourceObject, Response};
use crate::error::KmsError;
use crate::storage::{AuthId, StoredResource, Write, WriteOutcome};

impl Kms {
    fn resource_object(&self, id: Uuid) -> Result<ResourceObject, KmsError> {
        let keys = self.store.resource_keys(id)?;
        let auths = self.store.authorizations(id)?;
        Ok(ResourceObject {
            uri: self.uris.resource(id),
            key_uris: keys.iter().map(|k| self.uris.key(k.id)).collect(),
            authorization_uris: auths
                .iter()
                .map(|a| self.uris.authorization(id, a.id))
                .collect(),
        })
    }

    /// `create /resources`: the creator is always authorized; `userIds`/`authIds` are
    /// merged; keys in `keyUris` (the caller's own, unbound) are bound, all or nothing.
    pub(super) async fn create_resource(
        &self,
        caller: &Caller,
        req: &Request,
    ) -> Result<Response, KmsError> {
        let mut ids = vec![AuthId::User(caller.user)];
        for a in self.auth_ids(req)? {
            if !ids.contains(&a) {
                ids.push(a);
            }
        }
        let key_uris = req.key_uris.as_deref().unwrap_or_default();
        if key_uris.len() > self.cfg.max_ids_per_request {
            return Err(KmsError::BadRequest("too many keyUris".into()));
        }
        let mut bind = Vec::with_capacity(key_uris.len());
        for uri in key_uris {
            let kid = self.uris.key_id(uri)?;
            let k = self
                .store
                .key(kid)?
                .ok_or_else(|| KmsError::NotFound(format!("no such key: {uri}")))?;
            if k.user != caller.user {
                return Err(KmsError::ForbiddenOther(format!(
                    "only the key's creator may bind it: {uri}"
                )));
            }
            if !bind.contains(&kid) {
                bind.push(kid);
            }
        }
        let now = self.now_ms();
        let id = Uuid::new_v4();
        let auths = ids.into_iter().map(|a| self.new_auth(id, a, now)).collect();
        let out = self
            .store
            .apply(vec![Write::CreateResource {
                resource: StoredResource {
                    id,
                    creator: caller.user,
                    created_ms: now,
                },
                auths,
                bind,
                at_ms: now,
            }])
            .await?;
        match out.into_iter().next() {
            Some(WriteOutcome::Auths(_)) => Ok(Response::ok(
                201,
                req.request_id.clone(),
                Some(Payload::Resource(self.resource_object(id)?)),
            )),
            Some(WriteOutcome::Conflict(why)) => Err(KmsError::Conflict(why.into())),
            Some(WriteOutcome::NotFound) => Err(KmsError::NotFound("a key in keyUris".into())),
            other => Err(KmsError::Internal(format!(
                "unexpected create outcome {other:?}"
            ))),
        }
    }

    pub(super) fn retrieve_resource(
        &self,
        caller: &Caller,
        id: Uuid,
        rid: String,
    ) -> Result<Response, KmsError> {
        self.require_resource(caller, id)?;
        Ok(Response::ok(
            200,
            rid,
            Some(Payload::Resource(self.resource_object(id)?)),
        ))
    }

    /// `retrieve <resource>/keys` with optional `boundAfter`, `boundBefore` (RFC 3339) and
    /// `count` (the most recently bound N, returned oldest first).
    pub(super) fn resource_keys(
        &self,
        caller: &Caller,
        id: Uuid,
        req: &Request,
    ) -> Result<Response, KmsError> {
        self.require_resource(caller, id)?;
        let date = |s: &Option<String>, name: &str| -> Result<Option<i64>, KmsError> {
            s.as_deref()
                .map(|d| {
                    parse_rfc3339(d)
                        .ok_or_else(|| KmsError::BadRequest(format!("{name} is not RFC 3339")))
                })
                .transpose()
        };
        let after = date(&req.bound_after, "boundAfter")?;
        let before = date(&req.bound_before, "boundBefore")?;
        let mut keys: Vec<_> = self
            .store
            .resource_keys(id)?
            .into_iter()
            .filter(|k| {
                let b = k.bound_ms.unwrap_or(0);
                after.is_none_or(|a| b > a) && before.is_none_or(|x| b < x)
            })
            .collect();
        if let Some(n) = req.count {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if keys.len() > n {
                keys.drain(..keys.len() - n);
            }
        }
        let objects = keys
            .iter()
            .map(|k| self.key_object(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::ok(
            200,
            req.request_id.clone(),
            Some(Payload::Keys(objects)),
        ))
    }

    pub(super) async fn create_authorizations(
        &self,
        caller: &Caller,
        req: &Request,
    ) -> Result<Response, KmsError> {
        let uri = req
            .resource_uri
            .as_deref()
            .ok_or_else(|| KmsError::BadRequest("resourceUri is required".into()))?;
        let resource = self.uris.resource_id(uri)?;
        self.require_resource(caller, resource)?;
        self.require_not_room_bound(resource)?;
        let ids = self.auth_ids(req)?;
        if ids.is_empty() {
            return Err(KmsError::BadRequest(
                "userIds or authIds must name someone".into(),
            ));
        }
        let now = self.now_ms();
        let auths = ids
            .into_iter()
            .map(|a| self.new_auth(resource, a, now))
            .collect();
        let out = self
            .store
            .apply(vec![Write::AddAuths { resource, auths }])
            .await?;
        match out.into_iter().next() {
            Some(WriteOutcome::Auths(list)) => Ok(Response::ok(
                201,
                req.request_id.clone(),
                Some(Payload::Authorizations(
                    list.iter().map(|a| self.auth_object(a)).collect(),
                )),
            )),
            Some(WriteOutcome::NotFound) => Err(KmsError::NotFound(uri.to_owned())),
            Some(WriteOutcome::RoomBound) => Err(KmsError::OutsideMembershipFlow),
            other => Err(KmsError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// R10: once a resource belongs to a room, its authorizations change only through the
    /// two-part flow (checked again inside the write transaction).
    fn require_not_room_bound(&self, resource: Uuid) -> Result<(), KmsError> {
        if self.store.room_of(resource)?.is_some() {
            return Err(KmsError::OutsideMembershipFlow);
        }
        Ok(())
    }

    pub(super) fn list_authorizations(
        &self,
        caller: &Caller,
        resource: Uuid,
        rid: String,
    ) -> Result<Response, KmsError> {
        self.require_resource(caller, resource)?;
        let list = self.store.authorizations(resource)?;
        Ok(Response::ok(
            200,
            rid,
            Some(Payload::Authorizations(
                list.iter().map(|a| self.auth_object(a)).collect(),
            )),
        ))
    }

    pub(super) async fn delete_authorization(
        &self,
        caller: &Caller,
        resource: Uuid,
        auth_id: &str,
        rid: String,
    ) -> Result<Response, KmsError> {
        self.require_resource(caller, resource)?;
        self.require_not_room_bound(resource)?;
        let a = self.parse_auth_id(auth_id)?;
        let out = self
            .store
            .apply(vec![Write::RemoveAuth {
                resource,
                auth_id: a,
            }])
            .await?;
        match out.into_iter().next() {
            Some(WriteOutcome::Removed(Some(removed))) => Ok(Response::ok(
                200,
                rid,
                Some(Payload::Authorizations(vec![self.auth_object(&removed)])),
            )),
            Some(WriteOutcome::Removed(None)) => Err(KmsError::NotFound(format!(
                "{auth_id} holds no authorization on {}",
                self.uris.resource(resource)
            ))),
            Some(WriteOutcome::RoomBound) => Err(KmsError::OutsideMembershipFlow),
            other => Err(KmsError::Internal(format!("unexpected outcome {other:?}"))),
        }
    }
}
