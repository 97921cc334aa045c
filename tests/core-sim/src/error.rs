//! The crate's one error type and its one mapping to HTTP (STYLE.md: an exhaustive
//! `match`, a stable code per error, generic 5xx bodies with the cause in the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("bearer token missing")]
    Missing,
    #[error("bearer token is malformed")]
    Malformed,
    #[error("bearer token signature or issuer is invalid")]
    BadSignature,
    #[error("bearer token audience is not this core")]
    WrongAudience,
    #[error("bearer token has expired")]
    Expired,
    #[error("bearer token claims are invalid")]
    Claims,
    #[error("the token's user is unknown or deactivated")]
    UserInactive,
    #[error("admin token required")]
    NotAdmin,
    #[error("realm token not valid for this realm")]
    BadRealmToken,
}

/// What a request named that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Org,
    User,
    Room,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Org => "organization",
            Self::User => "user",
            Self::Room => "room",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("not a member of room {0}")]
    NotMember(Uuid),
    #[error("identity details are only given to the same organization or a shared room")]
    IdentityNotShared,
    #[error("user {0} is deactivated")]
    UserDeactivated(Uuid),
    #[error("request body is invalid: {0}")]
    InvalidBody(#[source] serde_json::Error),
    #[error("content is not a compact JWE with alg dir, enc A256GCM and a kms:// kid: {0}")]
    NotJwe(&'static str),
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("{0} not found")]
    NotFound(Missing),
    #[error("user {0} is already a member")]
    AlreadyMember(Uuid),
    #[error("user {0} is not a member")]
    NotAMember(Uuid),
    #[error("email already registered")]
    EmailTaken,
    #[error("rotate: key {kid} predates the last membership removal")]
    RotationRequired { kid: String },
    #[error("no realm connected for {0}")]
    RealmNotConnected(String),
    #[error("the realm connection closed before answering")]
    RealmGone,
    #[error("the realm did not answer in time")]
    RealmTimeout,
    #[error("the realm answered with an unexpected frame: {0}")]
    BadRealmAnswer(&'static str),
    /// R10: a membership change needs the client's KMS part.
    #[error("a membership change needs kms_part (the KMS part, a JWE on the client's channel)")]
    KmsPartRequired,
    /// R10: the KMS refused its part; `kms_response` tells the client why (on its channel).
    #[error("the KMS refused the membership change")]
    KmsRefused { kms_response: String },
    /// R10: the receipt does not verify or does not match the core part.
    #[error("the KMS receipt is invalid: {0}")]
    BadReceipt(&'static str),
    #[error("storage failed: {context}")]
    Storage {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// HTTP status and stable code: the only place errors meet HTTP.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::NotMember(_) => (StatusCode::FORBIDDEN, "not_member"),
            Self::IdentityNotShared => (StatusCode::FORBIDDEN, "identity_not_shared"),
            Self::UserDeactivated(_) => (StatusCode::FORBIDDEN, "user_deactivated"),
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            Self::NotJwe(_) => (StatusCode::BAD_REQUEST, "not_jwe"),
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::AlreadyMember(_) => (StatusCode::CONFLICT, "already_member"),
            Self::NotAMember(_) => (StatusCode::CONFLICT, "not_a_member"),
            Self::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            Self::RotationRequired { .. } => (StatusCode::CONFLICT, "rotation_required"),
            Self::RealmNotConnected(_) | Self::RealmGone => {
                (StatusCode::BAD_GATEWAY, "realm_not_connected")
            }
            Self::RealmTimeout => (StatusCode::GATEWAY_TIMEOUT, "realm_timeout"),
            Self::BadRealmAnswer(_) => (StatusCode::BAD_GATEWAY, "bad_realm_answer"),
            Self::KmsPartRequired => (StatusCode::BAD_REQUEST, "kms_part_required"),
            Self::KmsRefused { .. } => (StatusCode::FORBIDDEN, "kms_refused"),
            Self::BadReceipt(_) => (StatusCode::BAD_GATEWAY, "bad_receipt"),
            Self::Storage { .. } | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut body = serde_json::json!({"error": code, "message": message});
        if let (Self::KmsRefused { kms_response }, Some(obj)) = (&self, body.as_object_mut()) {
            obj.insert("kms_response".into(), kms_response.clone().into());
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_have_generic_bodies_and_rotation_names_the_key() {
        let e = Error::RotationRequired {
            kid: "kms://a/keys/1".into(),
        };
        assert_eq!(e.status_and_code().0, StatusCode::CONFLICT);
        assert!(e.to_string().contains("kms://a/keys/1"));
        assert!(
            e.to_string()
                .contains("predates the last membership removal")
        );
        let e = Error::Internal("secret detail");
        assert_eq!(
            e.status_and_code(),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
    }
}
