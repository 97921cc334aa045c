//! The KMS side of the two-part membership change (R10, protocol.md "Two-part membership
//! change"): the KMS part arrives with the room and actor the core forwarded; the KMS runs
//! its checks in the documented order, applies the change, nonce and state in one durable
//! batch, audits it, and signs a receipt with its static key. Confirm, undo (adds only) and
//! the pending list serve the core's fate sharing and reconciliation; deprovisioning
//! removes a deactivated user's authorizations on the identity service's signed word (R24).

use uuid::Uuid;

use super::audit::Decision;
use super::{Caller, Kms};
use crate::auth::AuthError;
use crate::clock::rfc3339;
use crate::envelope::{AuthorizationObject, Payload, Request, Response};
use crate::error::KmsError;
use crate::jose::jwe::{Jwe, KeyAlg};
use crate::jose::{b64d, b64e};
use crate::storage::{
    AuthId, MembershipOp, MembershipState, StoredMembership, Write, WriteOutcome,
};
use crate::uri::Target;

/// What the core forwarded next to the KMS part (unverified claims to check).
#[derive(Debug)]
pub(crate) struct Forwarded<'a> {
    pub room: &'a str,
    pub actor: &'a str,
}

/// The realm's answer to `membership.request`.
#[derive(Debug)]
pub struct MembershipAnswer {
    /// The channel answer for the client (JWE), or a signed JWS refusal.
    pub kms_message: String,
    /// The signed receipt, only when the change was applied and audited.
    pub receipt: Option<String>,
}

/// Why a `membership.confirm|undo|pending|deprovision` frame was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("no membership change with this nonce")]
    UnknownNonce,
    #[error("a removal is final: it cannot be undone")]
    RemoveIsFinal,
    #[error("bad frame: {0}")]
    BadFrame(&'static str),
    #[error("statement refused: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("the realm cannot record this decision now")]
    Unavailable,
}

impl FrameError {
    /// The stable code of a `membership.error` frame.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownNonce => "unknown_nonce",
            Self::RemoveIsFinal => "remove_is_final",
            Self::BadFrame(_) => "bad_frame",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Unavailable => "unavailable",
        }
    }
}

impl From<KmsError> for FrameError {
    fn from(e: KmsError) -> Self {
        tracing::error!(error = %e, "membership frame failed");
        Self::Unavailable
    }
}

impl From<crate::storage::StorageError> for FrameError {
    fn from(e: crate::storage::StorageError) -> Self {
        KmsError::from(e).into()
    }
}

/// Audience of a deprovisioning statement: not the KMS token audience, so neither can
/// stand in for the other.
pub fn deprovision_audience(cluster: &str) -> String {
    format!("{cluster}/deprovision")
}

fn parse_nonce(s: &str) -> Option<[u8; 16]> {
    b64d("nonce", s).ok()?.try_into().ok()
}

impl Kms {
    /// `membership.request`: the KMS part with the room and actor the core forwarded.
    pub async fn membership_request(
        &self,
        room: &str,
        actor: &str,
        kms_message: &str,
    ) -> MembershipAnswer {
        let refuse = |e: KmsError| async move {
            MembershipAnswer {
                kms_message: self
                    .refuse_signed(Decision::default(), String::new(), &e)
                    .await,
                receipt: None,
            }
        };
        let jwe = match Jwe::parse(kms_message) {
            Ok(j) if j.alg == KeyAlg::Dir => j,
            Ok(_) => {
                return refuse(KmsError::BadRequest(
                    "the KMS part must be a request on an ECDHE channel".into(),
                ))
                .await;
            }
            Err(e) => return refuse(KmsError::BadRequest(super::jose_reason(&e))).await,
        };
        let fwd = Forwarded { room, actor };
        let mut applied = None;
        let kms_message = self.handle_on_channel(jwe, Some(&fwd), &mut applied).await;
        let receipt = match applied {
            Some(m) => self.receipt(&m).await.ok(),
            None => None,
        };
        MembershipAnswer {
            kms_message,
            receipt,
        }
    }

    /// The checks and the change, in protocol.md's order (token and channel owner were
    /// checked by the caller).
    pub(super) async fn membership_change(
        &self,
        caller: &Caller,
        req: &Request,
        fwd: &Forwarded<'_>,
        d: &mut Decision,
        applied: &mut Option<StoredMembership>,
    ) -> Result<Response, KmsError> {
        if Uuid::parse_str(fwd.actor).ok() != Some(caller.user) {
            return Err(KmsError::MembershipMismatch(
                "the forwarded actor is not the user of the KMS part",
            ));
        }
        let part = req
            .membership
            .as_ref()
            .ok_or_else(|| KmsError::BadRequest("the KMS part has no membership member".into()))?;
        let room = Uuid::parse_str(&part.room)
            .map_err(|_| KmsError::BadRequest("membership.room is not a UUID".into()))?;
        if Uuid::parse_str(fwd.room).ok() != Some(room) {
            return Err(KmsError::MembershipMismatch(
                "the forwarded room is not the room of the KMS part",
            ));
        }
        let nonce = parse_nonce(&part.nonce).ok_or_else(|| {
            KmsError::BadRequest("membership.nonce must be 16 bytes, base64url".into())
        })?;
        if self.store.membership(&nonce)?.is_some() {
            return Err(KmsError::Replay);
        }
        let (op, resource, subject) = self.one_change(req, &part.op)?;
        d.resource = Some(resource);
        d.subject = Some(subject);
        if self.store.resource(resource)?.is_none() {
            return Err(KmsError::NotFound(format!(
                "no such resource: {}",
                self.uris.resource(resource)
            )));
        }
        // Leaving is always allowed; anything else needs an authorization on the resource.
        // Only an authorized actor's change binds an unbound resource to the room.
        let authorized = self.is_authorized(caller.user, resource)?;
        if !(authorized || (op == MembershipOp::Remove && subject == caller.user)) {
            self.require_authorized(caller, resource)?;
        }
        if self.store.room_of(resource)?.is_some_and(|r| r != room) {
            return Err(KmsError::MembershipMismatch(
                "the resource belongs to another room",
            ));
        }
        if !self.audit_writable() {
            return Err(KmsError::AuditUnavailable);
        }
        let before = self.store.authorization(resource, &AuthId::User(subject))?;
        let now = self.now_ms();
        let record = StoredMembership {
            nonce,
            room,
            resource,
            op,
            subject,
            actor: caller.user,
            auth: None,
            state: MembershipState::Applied,
            at_ms: now,
            state_ms: now,
        };
        let out = self
            .store
            .apply(vec![Write::Membership {
                record,
                bind_room: authorized,
            }])
            .await?;
        let m = match out.into_iter().next() {
            Some(WriteOutcome::Membership(m)) => *m,
            Some(WriteOutcome::Conflict("nonce")) => return Err(KmsError::Replay),
            Some(WriteOutcome::Conflict(_)) => {
                return Err(KmsError::MembershipMismatch(
                    "the resource belongs to another room",
                ));
            }
            Some(WriteOutcome::NotFound) => {
                return Err(KmsError::NotFound(self.uris.resource(resource)));
            }
            other => {
                return Err(KmsError::Internal(format!(
                    "unexpected membership outcome {other:?}"
                )));
            }
        };
        let rid = req.request_id.clone();
        let response = match op {
            MembershipOp::Add => {
                let current = self
                    .store
                    .authorization(resource, &AuthId::User(subject))?
                    .ok_or_else(|| KmsError::Internal("added authorization vanished".into()))?;
                Response::ok(
                    201,
                    rid,
                    Some(Payload::Authorizations(vec![self.auth_object(&current)])),
                )
            }
            MembershipOp::Remove => {
                let removed: Vec<AuthorizationObject> = before
                    .filter(|b| Some(b.id) == m.auth)
                    .map(|b| self.auth_object(&b))
                    .into_iter()
                    .collect();
                Response::ok(200, rid, Some(Payload::Authorizations(removed)))
            }
        };
        *applied = Some(m);
        Ok(response)
    }

    /// Exactly one add (`create /authorizations` with one user in `userIds`) or one remove
    /// (`delete <resource>/authorizations?authId=<user>`), matching `membership.op`.
    fn one_change(&self, req: &Request, op: &str) -> Result<(MembershipOp, Uuid, Uuid), KmsError> {
        let bad = |why: &str| KmsError::BadRequest(format!("membership change: {why}"));
        match (req.method.as_str(), self.uris.parse(&req.uri)?, op) {
            ("create", Target::Authorizations, "add") => {
                let uri = req
                    .resource_uri
                    .as_deref()
                    .ok_or_else(|| bad("resourceUri is required"))?;
                let resource = self.uris.resource_id(uri)?;
                if req.auth_ids.as_ref().is_some_and(|a| !a.is_empty()) {
                    return Err(bad("authIds are not allowed; name one user in userIds"));
                }
                let subject = match req.user_ids.as_deref() {
                    Some([one]) => {
                        Uuid::parse_str(one).map_err(|_| bad("the subject must be a user UUID"))?
                    }
                    _ => return Err(bad("exactly one user in userIds")),
                };
                Ok((MembershipOp::Add, resource, subject))
            }
            (
                "delete",
                Target::ResourceAuthorizations {
                    resource,
                    auth_id: Some(a),
                },
                "remove",
            ) => {
                let subject =
                    Uuid::parse_str(&a).map_err(|_| bad("the subject must be a user UUID"))?;
                Ok((MembershipOp::Remove, resource, subject))
            }
            _ => Err(bad(
                "method, URI and membership.op must be one add or one remove",
            )),
        }
    }

    /// The signed receipt of a change in its current state.
    async fn receipt(&self, m: &StoredMembership) -> Result<String, FrameError> {
        let body = serde_json::json!({
            "typ": "strongroom-membership-receipt",
            "v": 1,
            "realm": self.uris.cluster(),
            "room": m.room,
            "resourceUri": self.uris.resource(m.resource),
            "op": m.op.name(),
            "subject": m.subject,
            "actor": m.actor,
            "nonce": b64e(&m.nonce),
            "state": m.state.name(),
            "at": rfc3339(m.at_ms),
        });
        let signed = self.sign(body.to_string().into_bytes()).await;
        if signed.is_empty() {
            Err(FrameError::Unavailable)
        } else {
            Ok(signed)
        }
    }

    async fn set_state(&self, nonce: &str, state: MembershipState) -> Result<String, FrameError> {
        // A confirm or undo the core sends for no known change is refused and recorded: a
        // core that invents nonces shows in the log.
        let refuse = |status: u16, reason, e: FrameError| async move {
            let d = Decision {
                action: Some(audit_action(state)),
                ..Decision::default()
            };
            self.record(d, status, reason).await?;
            Err(e)
        };
        let Some(nonce) = parse_nonce(nonce) else {
            return refuse(
                400,
                strongroom_audit::Reason::BadRequest,
                FrameError::BadFrame("nonce is not 16 bytes"),
            )
            .await;
        };
        let Some(current) = self.store.membership(&nonce)? else {
            return refuse(
                404,
                strongroom_audit::Reason::NotFound,
                FrameError::UnknownNonce,
            )
            .await;
        };
        if state == MembershipState::Undone && current.op == MembershipOp::Remove {
            self.record_frame(
                &current,
                audit_action(state),
                409,
                strongroom_audit::Reason::Conflict,
            )
            .await?;
            return Err(FrameError::RemoveIsFinal);
        }
        if !self.audit_writable() {
            return Err(FrameError::Unavailable);
        }
        let out = self
            .store
            .apply(vec![Write::SetMembershipState {
                nonce,
                state,
                at_ms: self.now_ms(),
            }])
            .await?;
        let m = match out.into_iter().next() {
            Some(WriteOutcome::Membership(m)) => *m,
            Some(WriteOutcome::NotFound) => {
                self.record_frame(
                    &current,
                    audit_action(state),
                    404,
                    strongroom_audit::Reason::NotFound,
                )
                .await?;
                return Err(FrameError::UnknownNonce);
            }
            Some(WriteOutcome::Conflict("remove_is_final")) => {
                self.record_frame(
                    &current,
                    audit_action(state),
                    409,
                    strongroom_audit::Reason::Conflict,
                )
                .await?;
                return Err(FrameError::RemoveIsFinal);
            }
            // Confirm after undo: answer the receipt as it is (state `undone`).
            Some(WriteOutcome::Conflict(_)) => self
                .store
                .membership(&nonce)?
                .ok_or(FrameError::UnknownNonce)?,
            other => {
                tracing::error!(?other, "unexpected membership state outcome");
                return Err(FrameError::Unavailable);
            }
        };
        self.record_frame(&m, audit_action(state), 200, strongroom_audit::Reason::Ok)
            .await?;
        self.receipt(&m).await
    }

    /// `membership.confirm`: the core applied the change too.
    pub async fn membership_confirm(&self, nonce: &str) -> Result<String, FrameError> {
        self.set_state(nonce, MembershipState::Confirmed).await
    }

    /// `membership.undo`: the core could not apply an add; its authorization goes.
    /// Idempotent. A removal is final.
    pub async fn membership_undo(&self, nonce: &str) -> Result<String, FrameError> {
        self.set_state(nonce, MembershipState::Undone).await
    }

    /// `membership.pending`: receipts of the changes neither confirmed nor undone.
    pub async fn membership_pending(&self) -> Result<Vec<String>, FrameError> {
        let list = self.store.pending_memberships()?;
        let d = Decision {
            action: Some(strongroom_audit::Action::Retrieve),
            ..Decision::default()
        };
        self.record(d, 200, strongroom_audit::Reason::Ok).await?;
        let mut out = Vec::with_capacity(list.len());
        for m in &list {
            out.push(self.receipt(m).await?);
        }
        Ok(out)
    }

    /// `membership.deprovision` (R24): a statement signed by a trusted identity issuer,
    /// audience `kms://<domain>/deprovision`, `sub` = the deactivated user, `iat` = when.
    /// Removes every authorization of that user created up to `iat`, on every resource,
    /// and audits each removal. Returns the resources it was removed from.
    pub async fn deprovision(&self, statement: &str) -> Result<Vec<String>, FrameError> {
        let aud = deprovision_audience(self.uris.cluster());
        let (p, iat) = match self.verifier.verify_statement(statement, &aud) {
            Ok(v) => v,
            Err(e) => {
                let d = Decision {
                    action: Some(strongroom_audit::Action::Delete),
                    ..Decision::default()
                };
                // The reason says why (expired, wrong audience...), as for a bearer token.
                let reason = super::audit::reason_of(&KmsError::Unauthenticated(e.clone()));
                self.record(d, 401, reason).await?;
                return Err(e.into());
            }
        };
        if !self.audit_writable() {
            return Err(FrameError::Unavailable);
        }
        let out = self
            .store
            .apply(vec![Write::RemoveUserAuths {
                user: p.user,
                created_until_ms: iat.saturating_mul(1000).saturating_add(999),
            }])
            .await?;
        let Some(WriteOutcome::RemovedMany(removed)) = out.into_iter().next() else {
            return Err(FrameError::Unavailable);
        };
        let decision = |resource| Decision {
            action: Some(strongroom_audit::Action::Delete),
            subject: Some(p.user),
            resource,
            ..Decision::default()
        };
        // One record per removal, all appended in one write: durable together or not at all.
        if removed.is_empty() {
            self.record(decision(None), 200, strongroom_audit::Reason::Ok)
                .await?;
        } else {
            self.record_all(removed.iter().map(|a| {
                (
                    decision(Some(a.resource)),
                    200,
                    strongroom_audit::Reason::Ok,
                )
            }))
            .await?;
        }
        tracing::info!(user = %p.user, removed = removed.len(), "deprovisioned a deactivated user");
        Ok(removed
            .iter()
            .map(|a| self.uris.resource(a.resource))
            .collect())
    }

    async fn record_frame(
        &self,
        m: &StoredMembership,
        action: strongroom_audit::Action,
        status: u16,
        reason: strongroom_audit::Reason,
    ) -> Result<(), FrameError> {
        let d = Decision {
            action: Some(action),
            resource: Some(m.resource),
            subject: Some(m.subject),
            ..Decision::default()
        };
        self.record(d, status, reason).await?;
        Ok(())
    }
}

fn audit_action(state: MembershipState) -> strongroom_audit::Action {
    match state {
        MembershipState::Undone => strongroom_audit::Action::Delete,
        MembershipState::Applied | MembershipState::Confirmed => strongroom_audit::Action::Update,
    }
}
