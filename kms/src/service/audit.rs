//! Every KMS decision, allowed or denied, becomes one audit record that is durable before
//! the answer leaves (R16; architecture.md flow 6: "no audit, no answer"). Records carry
//! obfuscated UUIDs and URIs only: the audit crate's types cannot hold key material,
//! tokens or plaintext (R14, R22).

use strongroom_audit::{Action, Event, KeyUri, Kind, Outcome, Reason, ResourceUri};
use uuid::Uuid;

use super::{Caller, Kms};
use crate::auth::AuthError;
use crate::envelope::{Payload, Request, Response};
use crate::error::KmsError;
use crate::uri::Target;

/// Reserve left (bytes) below which a full disk stops state changes: room for the records
/// of about 600 changes already under way (records are 300-400 bytes).
pub(crate) const CHANGE_MARGIN: u64 = 256 * 1024;

/// What the service learned while deciding, for the record.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub action: Option<Action>,
    pub caller: Option<Caller>,
    pub request: Option<Uuid>,
    pub resource: Option<Uuid>,
    pub keys: Vec<Uuid>,
    pub subject: Option<Uuid>,
    /// The users or orgs a `create` grants access to (`userIds`, `authIds`): once allowed,
    /// one more record each, with its `subject`, so that who was given access is in the log.
    pub grants: Vec<Uuid>,
}

pub(crate) fn action_of(method: &str) -> Action {
    match method {
        "create" => Action::Create,
        "retrieve" => Action::Retrieve,
        "update" => Action::Update,
        "delete" => Action::Delete,
        _ => Action::UnknownMethod,
    }
}

pub(crate) fn reason_of(e: &KmsError) -> Reason {
    match e {
        KmsError::BadRequest(_) => Reason::BadRequest,
        KmsError::UnknownMethod(_) => Reason::UnknownMethod,
        KmsError::NotFound(_) => Reason::NotFound,
        KmsError::Unauthenticated(AuthError::Expired) => Reason::TokenExpired,
        KmsError::Unauthenticated(AuthError::WrongAudience) => Reason::WrongAudience,
        KmsError::Unauthenticated(_) | KmsError::UserMismatch => Reason::Unauthenticated,
        KmsError::Forbidden { .. } => Reason::NotMember,
        KmsError::ForbiddenOther(_)
        | KmsError::MembershipMismatch(_)
        | KmsError::OutsideMembershipFlow => Reason::Forbidden,
        KmsError::Conflict(_) | KmsError::Replay => Reason::Conflict,
        KmsError::Reset => Reason::ChannelExpired,
        KmsError::AuditUnavailable => Reason::Unavailable,
        KmsError::Internal(_) => Reason::Internal,
    }
}

impl Kms {
    /// What a request addresses, for the record (before the decision).
    pub(crate) fn note_request(&self, d: &mut Decision, req: &Request) {
        d.action = Some(action_of(&req.method));
        d.request = Some(strongroom_audit::record::request_id(&req.request_id));
        match self.uris.parse(&req.uri) {
            Ok(Target::Key(k)) => d.keys.push(k),
            Ok(
                Target::Resource(r)
                | Target::ResourceKeys(r)
                | Target::ResourceAuthorizations { resource: r, .. },
            ) => d.resource = Some(r),
            _ => {}
        }
        if let Ok(Target::ResourceAuthorizations {
            auth_id: Some(a), ..
        }) = self.uris.parse(&req.uri)
        {
            d.subject = Uuid::parse_str(&a).ok();
        }
        if d.resource.is_none()
            && let Some(r) = req.resource_uri.as_deref()
        {
            d.resource = self.uris.resource_id(r).ok();
        }
        for k in req.key_uris.iter().flatten() {
            if let Ok(id) = self.uris.key_id(k) {
                d.keys.push(id);
            }
        }
        let grants = req
            .user_ids
            .iter()
            .flatten()
            .chain(req.auth_ids.iter().flatten());
        // A list longer than the KMS takes is refused anyway: not worth a record each.
        if req.method == "create" && grants.clone().count() <= self.cfg.max_ids_per_request {
            for id in grants.filter_map(|g| Uuid::parse_str(g).ok()) {
                if !d.grants.contains(&id) {
                    d.grants.push(id);
                }
            }
        }
    }

    /// Keys and resources the answer names (created keys, a new resource).
    pub(crate) fn note_response(&self, d: &mut Decision, r: &Response) {
        match &r.payload {
            Some(Payload::Keys(keys)) => {
                d.keys
                    .extend(keys.iter().filter_map(|k| self.uris.key_id(&k.uri).ok()));
            }
            Some(Payload::Resource(res)) => {
                d.resource = self.uris.resource_id(&res.uri).ok();
            }
            _ => {}
        }
    }

    /// Appends the record and waits until it is durable. `Err` means: refuse.
    pub(crate) async fn record(
        &self,
        d: Decision,
        status: u16,
        reason: Reason,
    ) -> Result<(), KmsError> {
        let mut events = Vec::with_capacity(1);
        self.events_into(&d, status, reason, &mut events);
        drop(d);
        self.append(events).await
    }

    /// Several decisions made in one step (a deprovisioning's removals): appended together,
    /// one write, all durable or none.
    pub(crate) async fn record_all(
        &self,
        decisions: impl IntoIterator<Item = (Decision, u16, Reason)>,
    ) -> Result<(), KmsError> {
        let mut events = Vec::new();
        for (d, status, reason) in decisions {
            self.events_into(&d, status, reason, &mut events);
        }
        self.append(events).await
    }

    /// Queues `events` (encoded now; freed before the wait) and waits until they are durable.
    async fn append(&self, events: Vec<Event>) -> Result<(), KmsError> {
        let durable = self.audit.append_async(&events);
        drop(events);
        match durable.await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "audit record not written: refusing the request");
                Err(KmsError::AuditUnavailable)
            }
        }
    }

    /// The record(s) of one decision, all with its request ID and appended together (one
    /// write, all or none). A record names at most MAX_KEYS keys: a decision about more (a
    /// client may list thousands, a room may hold more bound keys) is split, so it is never
    /// refused for its size. An allowed grant adds one record per user or org granted.
    fn events_into(&self, d: &Decision, status: u16, reason: Reason, out: &mut Vec<Event>) {
        let outcome = match status {
            0..400 => Outcome::Allowed,
            500.. => Outcome::Failed,
            _ => Outcome::Denied,
        };
        let mut e = Event::new(
            Kind::KmsDecision,
            d.action.unwrap_or(Action::UnknownMethod),
            outcome,
            reason,
        )
        .status(status);
        if let Some(c) = &d.caller {
            e = e
                .user(c.user)
                .org(c.org)
                .client(strongroom_audit::record::request_id(&c.client_id));
        }
        if let Some(r) = d.request {
            e = e.request(r);
        }
        if let Some(s) = d.subject {
            e = e.subject(s);
        }
        if let Some(r) = d.resource {
            e = e.resource(ResourceUri::new(&self.audit_domain, r));
        }
        let grants: Vec<Event> = if outcome == Outcome::Allowed && d.subject.is_none() {
            d.grants.iter().map(|g| e.clone().subject(*g)).collect()
        } else {
            Vec::new()
        };
        let key = |k: &Uuid| KeyUri::new(&self.audit_domain, *k);
        let mut chunks = d.keys.chunks(strongroom_audit::record::MAX_KEYS);
        let last = chunks.next_back();
        for keys in chunks {
            out.push(e.clone().keys(keys.iter().map(key)));
        }
        out.push(match last {
            Some(keys) => e.keys(keys.iter().map(key)),
            None => e,
        });
        out.extend(grants);
    }

    /// Whether a state change may be attempted: not while the log cannot take its record,
    /// and not once the disk is full and the log's preallocated reserve is down to
    /// [`CHANGE_MARGIN`]. A change is stored before its record is written, so it must
    /// stop while the records of the changes already let through still fit; retrieves,
    /// which change nothing, go on until the reserve is used up.
    pub(crate) fn audit_writable(&self) -> bool {
        let h = self.audit.health();
        h.writable && !(h.reserve_short && h.reserve_bytes < CHANGE_MARGIN)
    }
}
