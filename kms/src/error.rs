//! Every refusal the KMS can send, with its HTTP-style status and stable error code, mapped
//! in one exhaustive place (STYLE.md "Errors"). Internal failures become a generic 500; the
//! cause goes to the log, never to the peer.

use crate::auth::AuthError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unknown method {0:?} for this URI")]
    UnknownMethod(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("authentication failed: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("userId in the envelope does not match the bearer token")]
    UserMismatch,
    #[error("User {user} doesn't have authorization to access resource {uri}")]
    Forbidden { user: String, uri: String },
    #[error("{0}")]
    ForbiddenOther(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// R10: the core forwarded another room or actor than the KMS part names, or the
    /// resource belongs to another room.
    #[error("two-part membership change refused: {0}")]
    MembershipMismatch(&'static str),
    /// R10: a room-bound resource's authorizations change only through the two-part flow.
    #[error(
        "the authorizations of a room's resource change only through a two-part membership change"
    )]
    OutsideMembershipFlow,
    /// R10: the KMS part's nonce was used before.
    #[error("two-part membership change refused: nonce already used")]
    Replay,
    #[error("ephemeral key expired or unknown: discard your ephemeral keys")]
    Reset,
    #[error("the audit log cannot record this decision; the request is refused")]
    AuditUnavailable,
    #[error("internal error")]
    Internal(String),
}

impl KmsError {
    /// (status, errorCode). Codes are status * 1000 + a stable sub-code.
    pub fn status(&self) -> (u16, u32) {
        match self {
            Self::BadRequest(_) => (400, 400_001),
            Self::UnknownMethod(_) => (400, 400_002),
            Self::Unauthenticated(AuthError::Missing) => (401, 401_001),
            Self::Unauthenticated(AuthError::Expired) => (401, 401_002),
            Self::Unauthenticated(AuthError::WrongAudience) => (401, 401_003),
            Self::Unauthenticated(_) => (401, 401_000),
            Self::UserMismatch => (401, 401_004),
            Self::Forbidden { .. } => (403, 403_001),
            Self::ForbiddenOther(_) => (403, 403_002),
            Self::NotFound(_) => (404, 404_001),
            Self::Conflict(_) => (409, 409_001),
            Self::MembershipMismatch(_) => (403, 403_003),
            Self::OutsideMembershipFlow => (403, 403_004),
            Self::Replay => (409, 409_002),
            Self::Reset => (499, 499_000),
            Self::AuditUnavailable => (503, 503_001),
            Self::Internal(_) => (500, 500_000),
        }
    }

    /// The reason text sent to the peer (generic for internal errors).
    pub fn reason(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<crate::storage::StorageError> for KmsError {
    fn from(e: crate::storage::StorageError) -> Self {
        Self::Internal(format!("storage: {e}"))
    }
}

impl From<crate::kek::KekError> for KmsError {
    fn from(e: crate::kek::KekError) -> Self {
        Self::Internal(format!("kek: {e}"))
    }
}
