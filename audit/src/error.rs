//! The crate's one error type. Callers act on the variant: [`Error::Io`] and
//! [`Error::Closed`] mean "the record is not durable: refuse the request" (fail closed);
//! [`Error::Tampered`] is a verification verdict, with its location.

use std::path::PathBuf;

use crate::verify::Fault;

/// Errors of the audit log, its verifier and its proofs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed (disk full, I/O error, permissions). For `append`, the
    /// record is **not** durable and was not given a sequence number.
    #[error("audit log I/O failed: {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The log was closed or its committer thread is gone; nothing more can be appended.
    #[error("the audit log is closed")]
    Closed,
    /// Another process (or another `AuditLog` in this one) holds the log directory.
    #[error("the audit log directory {} is in use by another writer", .0.display())]
    Locked(PathBuf),
    /// A value offered for a record field was refused (shape, length or character set).
    #[error("invalid audit record field `{field}`: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid audit log configuration `{field}`: {reason}")]
    Config {
        field: &'static str,
        reason: &'static str,
    },
    /// A stored line is not a valid record of a known version.
    #[error("malformed audit record: {reason}")]
    MalformedRecord { reason: &'static str },
    /// A record's JSON did not parse into the schema.
    #[error("malformed audit record JSON")]
    RecordJson(#[source] serde_json::Error),
    /// The checkpoint signer (the HSM) failed; records stay durable but unsigned until
    /// the next checkpoint succeeds.
    #[error("checkpoint signing failed")]
    Signer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A checkpoint (signed note) is malformed, from another log, or its signature does
    /// not verify with the given public key.
    #[error("checkpoint rejected: {reason}")]
    Checkpoint { reason: &'static str },
    /// A public key is not an uncompressed P-256 point / verifier key string.
    #[error("invalid audit public key: {reason}")]
    PublicKey { reason: &'static str },
    /// An inclusion or consistency proof does not verify, or was asked for sizes the
    /// tree does not have.
    #[error("proof rejected: {reason}")]
    Proof { reason: &'static str },
    /// An export bundle is malformed or does not verify.
    #[error("export bundle rejected: {reason}")]
    Bundle { reason: &'static str },
    /// Verification found the first fault in the log: where and why.
    #[error("audit log verification failed: {0}")]
    Tampered(Box<Fault>),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The fault, when this is a verification verdict.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Error::Tampered(f) => Some(f),
            _ => None,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
