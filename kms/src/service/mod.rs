//! The KMS service: decrypts a compact JOSE message, authenticates the caller, applies the
//! method and answers with a compact JOSE message (protocol.md). One file per group of
//! operations: `ecdhe` (channels, R2), `keys` (R4, R7, R8), `resources` (resources and
//! authorizations).

mod audit;
mod authz;
mod ecdhe;
mod keys;
mod membership;
mod resources;

pub use membership::{FrameError, MembershipAnswer, deprovision_audience};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use crate::auth::{Principal, TokenVerifier};
use crate::clock::Clock;
use crate::crypto::SecretKey32;
use crate::envelope::{Request, Response};
use crate::error::KmsError;
use crate::jose::jwe::{Jwe, KeyAlg};
use crate::jose::jwk::RsaPublicJwk;
use crate::jose::jws::{self, JwsAlg};
use crate::jose::{self, JoseError};
use crate::kek::Kek;
use crate::storage::Store;
use crate::uri::{Target, Uris};
use audit::Decision;

/// Tunables, with the defaults a production deployment starts from.
#[derive(Debug, Clone)]
pub struct KmsConfig {
    /// The KMS domain: URIs are `kms://<domain>/...` and tokens must name it as audience.
    pub domain: String,
    /// Lifetime of an ECDHE channel key (R9: channel keys rotate periodically).
    pub channel_ttl_ms: i64,
    /// How long a new key may stay unbound (its `expirationDate`).
    pub key_bind_ttl_ms: i64,
    /// Signature algorithm of handshake replies and pre-channel errors.
    pub handshake_alg: JwsAlg,
    /// Most keys one `create /keys` may ask for.
    pub max_keys_per_request: u64,
    /// Most ids in one `userIds`/`authIds`/`keyUris` list.
    pub max_ids_per_request: usize,
}

impl KmsConfig {
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            channel_ttl_ms: 60 * 60 * 1000,
            key_bind_ttl_ms: 30 * 24 * 60 * 60 * 1000,
            handshake_alg: JwsAlg::PS256,
            max_keys_per_request: 100,
            max_ids_per_request: 1000,
        }
    }
}

/// An established ECDHE channel.
pub(crate) struct Channel {
    pub id: Uuid,
    pub user: Uuid,
    pub expires_ms: i64,
    pub key: SecretKey32,
}

/// Who is asking, after authentication.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub user: Uuid,
    pub org: Uuid,
    pub client_id: String,
}

pub struct Kms {
    cfg: KmsConfig,
    uris: Uris,
    store: Arc<dyn Store>,
    hsm: strongroom_hsm::Hsm,
    kek: Kek,
    verifier: TokenVerifier,
    clock: Arc<dyn Clock>,
    static_jwk: RsaPublicJwk,
    static_thumbprint: String,
    channels: RwLock<HashMap<Uuid, Arc<Channel>>>,
    audit: Arc<strongroom_audit::AuditLog>,
    audit_domain: strongroom_audit::Domain,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("domain", &self.cfg.domain)
            .finish_non_exhaustive()
    }
}

/// Most channels kept in memory before expired ones are swept.
const CHANNEL_CACHE_SWEEP: usize = 100_000;

impl Kms {
    /// Wires the service. Loads (or on first start creates, recording `admin init`) the KEK
    /// through the HSM.
    /// `x5c` is the certificate chain published in the static JWK (leaf first, DER base64).
    pub async fn new(
        cfg: KmsConfig,
        store: Arc<dyn Store>,
        hsm: strongroom_hsm::Hsm,
        verifier: TokenVerifier,
        clock: Arc<dyn Clock>,
        x5c: Vec<String>,
        audit: Arc<strongroom_audit::AuditLog>,
    ) -> Result<Self, KmsError> {
        let uris = Uris::new(&cfg.domain);
        let audit_domain: strongroom_audit::Domain = cfg
            .domain
            .parse()
            .map_err(|e| KmsError::Internal(format!("domain for the audit log: {e}")))?;
        let kek = match Kek::load(store.as_ref(), &hsm)? {
            Some(kek) => kek,
            None => {
                // First start on this state: the KEK's creation is an administrator
                // action, recorded first (no record, no KEK).
                let init = strongroom_audit::Event::new(
                    strongroom_audit::Kind::Admin,
                    strongroom_audit::Action::Init,
                    strongroom_audit::Outcome::Allowed,
                    strongroom_audit::Reason::Ok,
                );
                audit
                    .append_async(std::slice::from_ref(&init))
                    .await
                    .map_err(|_| KmsError::AuditUnavailable)?;
                Kek::create(store.as_ref(), &hsm).await?
            }
        };
        let public = hsm
            .rsa_public_key()
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        let static_jwk = RsaPublicJwk::new(
            uris.static_kid(),
            &public.modulus,
            &public.public_exponent,
            x5c,
        );
        let static_thumbprint = static_jwk.thumbprint();
        Ok(Self {
            cfg,
            uris,
            store,
            hsm,
            kek,
            verifier,
            clock,
            static_jwk,
            static_thumbprint,
            channels: RwLock::new(HashMap::new()),
            audit,
            audit_domain,
        })
    }

    pub fn static_jwk(&self) -> &RsaPublicJwk {
        &self.static_jwk
    }

    pub fn uris(&self) -> &Uris {
        &self.uris
    }

    pub fn hsm(&self) -> &strongroom_hsm::Hsm {
        &self.hsm
    }

    pub fn audit(&self) -> &Arc<strongroom_audit::AuditLog> {
        &self.audit
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Unexpired channels held in memory (for `/metrics`; a channel only in the store,
    /// e.g. after a restart, is counted once it is used again).
    pub fn live_channels(&self) -> usize {
        let now = self.now_ms();
        self.channels
            .read()
            .map_or(0, |m| m.values().filter(|c| c.expires_ms > now).count())
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Handles one compact JOSE message and returns the compact JOSE answer. Never fails:
    /// every refusal is itself an answer (a JWE on the channel, or a JWS signed with the
    /// static key when no channel can be used).
    pub async fn handle(&self, compact: &str) -> String {
        let jwe = match Jwe::parse(compact) {
            Ok(j) => j,
            Err(e) => {
                let e = KmsError::BadRequest(jose_reason(&e));
                return self
                    .refuse_signed(Decision::default(), String::new(), &e)
                    .await;
            }
        };
        match jwe.alg {
            KeyAlg::RsaOaep => self.handle_handshake(jwe, compact).await,
            KeyAlg::Dir => self.handle_on_channel(jwe, None, &mut None).await,
        }
    }

    /// A request on a channel. `fwd`: what the core forwarded with a two-part membership
    /// change (R10); `applied` receives the change record once applied and audited.
    async fn handle_on_channel(
        &self,
        jwe: Jwe<'_>,
        fwd: Option<&membership::Forwarded<'_>>,
        applied: &mut Option<crate::storage::StoredMembership>,
    ) -> String {
        let mut d = Decision::default();
        let channel = match jwe.kid().map(|k| self.uris.parse(k)) {
            Some(Ok(Target::Channel(id))) => self.channel(id),
            _ => Ok(None),
        };
        let channel = match channel {
            Ok(Some(c)) => c,
            Ok(None) => return self.refuse_signed(d, String::new(), &KmsError::Reset).await,
            Err(e) => return self.refuse_signed(d, String::new(), &e).await,
        };
        let Ok(plaintext) = jwe.decrypt_dir(&channel.key) else {
            let e = KmsError::BadRequest("message does not decrypt on its channel".into());
            return self.refuse_signed(d, String::new(), &e).await;
        };
        let req: Request = match serde_json::from_slice(&plaintext) {
            Ok(r) => r,
            Err(_) => {
                let e = KmsError::BadRequest("message body is not a valid KMS request".into());
                return self.answer(&channel, d, Err(e), String::new()).await.0;
            }
        };
        drop(plaintext);
        self.note_request(&mut d, &req);
        if channel.expires_ms <= self.now_ms() {
            return self
                .refuse_signed(d, req.request_id, &KmsError::Reset)
                .await;
        }
        let result = self.dispatch(&channel, &req, &mut d, fwd, applied).await;
        let mut req = req;
        let request_id = std::mem::take(&mut req.request_id);
        drop(req);
        let (answer, recorded) = self.answer(&channel, d, result, request_id).await;
        if !recorded {
            // Not audited: no receipt leaves (R16). Reconciliation settles the change.
            applied.take();
        }
        answer
    }

    /// Seals the answer on the channel and records the decision; the answer leaves only once
    /// the record is durable. If the record cannot be written the sealed answer is dropped
    /// unsent and the answer is a 503 refusal instead (fail closed), and the flag is false.
    ///
    /// The answer is sealed before the wait so that the request holds one buffer, not its
    /// whole response, while hundreds of others wait with it (ADR 0016).
    async fn answer(
        &self,
        channel: &Channel,
        mut d: Decision,
        result: Result<Response, KmsError>,
        request_id: String,
    ) -> (String, bool) {
        let (response, reason) = match result {
            Ok(r) => {
                self.note_response(&mut d, &r);
                (r, strongroom_audit::Reason::Ok)
            }
            Err(e) => (
                self.error_response(request_id.clone(), &e),
                audit::reason_of(&e),
            ),
        };
        let status = response.status;
        let sealed = self.sealed(channel, &response);
        drop(response);
        match self.record(d, status, reason).await {
            Ok(()) => (sealed, true),
            Err(e) => {
                drop(sealed);
                (
                    self.sealed(channel, &self.error_response(request_id, &e)),
                    false,
                )
            }
        }
    }

    /// Records a refusal that can only be answered with a signed JWS, and signs it.
    async fn refuse_signed(&self, d: Decision, request_id: String, e: &KmsError) -> String {
        let (status, _) = e.status();
        match self.record(d, status, audit::reason_of(e)).await {
            Ok(()) => self.signed_error(request_id, e).await,
            Err(audit_err) => self.signed_error(request_id, &audit_err).await,
        }
    }

    fn sealed(&self, channel: &Channel, response: &Response) -> String {
        let body = response.to_json_wiped();
        jose::jwe::encrypt_dir(&channel.key, &self.uris.channel(channel.id), &body)
    }

    fn error_response(&self, request_id: String, e: &KmsError) -> Response {
        let (status, code) = e.status();
        if status >= 500 {
            tracing::error!(error = %e, "KMS request failed");
        } else {
            tracing::debug!(status, error = %e, "KMS request refused");
        }
        Response {
            status,
            request_id,
            reason: Some(e.reason()),
            error_code: Some(code),
            payload: None,
        }
    }

    /// A JWS error answer signed with the static key (before a channel exists, or to reset).
    async fn signed_error(&self, request_id: String, e: &KmsError) -> String {
        let body = self.error_response(request_id, e).to_json();
        self.sign(body).await
    }

    /// Signs a payload with the static key in the HSM, off the async executor.
    async fn sign(&self, payload: Vec<u8>) -> String {
        let hsm = self.hsm.clone();
        let alg = self.cfg.handshake_alg;
        let kid = self.static_jwk.kid.clone();
        let res = tokio::task::spawn_blocking(move || {
            jws::sign(alg, &kid, &payload, |input| {
                let scheme = match alg {
                    JwsAlg::RS256 => strongroom_hsm::RsaScheme::Pkcs1v15Sha256,
                    _ => strongroom_hsm::RsaScheme::PssSha256,
                };
                hsm.rsa_sign(scheme, input)
            })
        })
        .await;
        match res {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "signing with the static key failed");
                String::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "signing task failed");
                String::new()
            }
        }
    }

    /// Authenticates the envelope's bearer token and checks its `userId`.
    pub(crate) fn authenticate(&self, req: &Request) -> Result<Caller, KmsError> {
        use secrecy::ExposeSecret as _;
        let bearer = req
            .client
            .credential
            .bearer
            .as_ref()
            .map(|b| b.expose_secret().to_owned())
            .unwrap_or_default();
        let Principal { user, org, .. } = self.verifier.verify(&bearer)?;
        if let Some(claimed) = &req.client.credential.user_id
            && !claimed.is_empty()
            && Uuid::parse_str(claimed).ok() != Some(user)
        {
            return Err(KmsError::UserMismatch);
        }
        Ok(Caller {
            user,
            org,
            client_id: req.client.client_id.clone(),
        })
    }

    async fn dispatch(
        &self,
        channel: &Channel,
        req: &Request,
        d: &mut Decision,
        fwd: Option<&membership::Forwarded<'_>>,
        applied: &mut Option<crate::storage::StoredMembership>,
    ) -> Result<Response, KmsError> {
        let caller = self.authenticate(req)?;
        d.caller = Some(caller.clone());
        if let Some(fwd) = fwd {
            if caller.user != channel.user {
                return Err(KmsError::MembershipMismatch(
                    "the bearer token's user does not own this channel",
                ));
            }
            return self.membership_change(&caller, req, fwd, d, applied).await;
        }
        if caller.user != channel.user {
            return Err(KmsError::ForbiddenOther(
                "the bearer token's user does not own this channel".into(),
            ));
        }
        if req.membership.is_some() {
            return Err(KmsError::BadRequest(
                "a membership change's KMS part must come through the core's two-part flow".into(),
            ));
        }
        let target = self.uris.parse(&req.uri)?;
        if matches!(req.method.as_str(), "create" | "update" | "delete") && !self.audit_writable() {
            return Err(KmsError::AuditUnavailable);
        }
        tracing::debug!(user = %caller.user, org = %caller.org, method = %req.method, uri = %req.uri, "KMS request");
        let rid = req.request_id.clone();
        match (req.method.as_str(), target) {
            ("delete", Target::Channel(id)) => self.delete_channel(&caller, id, rid).await,
            ("create", Target::Keys) => self.create_keys(&caller, req).await,
            ("retrieve", Target::Key(id)) => self.retrieve_key(&caller, id, rid),
            ("update", Target::Key(id)) => self.bind_key(&caller, id, req).await,
            ("create", Target::Resources) => self.create_resource(&caller, req).await,
            ("retrieve", Target::Resource(id)) => self.retrieve_resource(&caller, id, rid),
            ("retrieve", Target::ResourceKeys(id)) => self.resource_keys(&caller, id, req),
            ("create", Target::Authorizations) => self.create_authorizations(&caller, req).await,
            (
                "retrieve",
                Target::ResourceAuthorizations {
                    resource,
                    auth_id: None,
                },
            ) => self.list_authorizations(&caller, resource, rid),
            (
                "delete",
                Target::ResourceAuthorizations {
                    resource,
                    auth_id: Some(a),
                },
            ) => self.delete_authorization(&caller, resource, &a, rid).await,
            ("update", Target::Ping) => Ok(Response::ok(200, rid, None)),
            (method, _) => Err(KmsError::UnknownMethod(method.to_owned())),
        }
    }
}

fn jose_reason(e: &JoseError) -> String {
    format!("malformed JOSE message: {e}")
}
