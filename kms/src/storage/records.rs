//! Stored record types and their encoding (postcard, prefixed by a format version byte so
//! a later format can be read next to this one: R5's agility applies to storage too).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StorageError;

pub const FORMAT_V1: u8 = 1;

/// A conversation key. `sealed` = IV(12) || AES-256-GCM(KEK, key, AAD = key URI) || tag(16).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    pub id: Uuid,
    pub user: Uuid,
    pub client_id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub resource: Option<Uuid>,
    pub bound_ms: Option<i64>,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResource {
    pub id: Uuid,
    pub creator: Uuid,
    pub created_ms: i64,
}

/// Who an authorization admits: one user, or every user authorized on another resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AuthId {
    User(Uuid),
    Resource(Uuid),
}

impl AuthId {
    /// Storage key text: `u:<uuid>` or `r:<uuid>`; users sort before resources.
    pub fn storage_key(&self) -> String {
        match self {
            Self::User(u) => format!("u:{u}"),
            Self::Resource(r) => format!("r:{r}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAuth {
    pub id: Uuid,
    pub resource: Uuid,
    pub auth_id: AuthId,
    pub created_ms: i64,
}

/// A two-part membership change (R10), keyed by its nonce: the record of every nonce ever
/// used (kept forever, so a replay is refused even after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembership {
    pub nonce: [u8; 16],
    pub room: Uuid,
    pub resource: Uuid,
    pub op: MembershipOp,
    pub subject: Uuid,
    pub actor: Uuid,
    /// The authorization the change created (add) or removed (remove); `None` when the
    /// subject already held one (add) or held none (remove): nothing to undo.
    pub auth: Option<Uuid>,
    pub state: MembershipState,
    pub at_ms: i64,
    /// When the state last changed.
    pub state_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipOp {
    Add,
    Remove,
}

impl MembershipOp {
    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipState {
    /// The KMS applied it; the core has not confirmed yet.
    Applied,
    /// The core applied it too.
    Confirmed,
    /// The core could not apply an add; the authorization it created is gone.
    Undone,
}

impl MembershipState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Confirmed => "confirmed",
            Self::Undone => "undone",
        }
    }
}

/// An ECDHE channel key (R2), persisted so clients keep their channel across restarts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChannel {
    pub id: Uuid,
    pub user: Uuid,
    pub client_id: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredChannel")
            .field("id", &self.id)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![FORMAT_V1];
    let body = postcard::to_allocvec(value).map_err(|e| StorageError::Backend(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => {
            postcard::from_bytes(body).map_err(|_| StorageError::Corrupt("undecodable record"))
        }
        Some(_) => Err(StorageError::Corrupt("unknown record format version")),
        None => Err(StorageError::Corrupt("empty record")),
    }
}
