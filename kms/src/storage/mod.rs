//! Durable KMS state behind a trait (R1, R7): keys, resources, authorizations, channel
//! keys. The embedded default is redb (docs/adr/0003-storage-engine.md explains why not sled);
//! a PostgreSQL backend for clusters implements the same trait later.
//!
//! Contract every backend keeps:
//! - [`Store::apply`] returns only once the whole batch is durable (fsync'd); a batch is
//!   atomic; concurrent callers are group-committed so durability does not cost throughput.
//! - Writes carry their own preconditions ([`Write`] variants say which) and are checked
//!   inside the write transaction, so check-then-write races cannot happen.
//! - Key material arrives already sealed (AES-256-GCM under the KEK, AAD = key URI); the
//!   store never sees a plaintext key.

pub mod records;
pub mod redb_store;

use std::future::Future;
use std::pin::Pin;

use uuid::Uuid;

pub use records::{AuthId, StoredAuth, StoredChannel, StoredKey, StoredResource};
pub use redb_store::{RedbStore, Snapshot};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("storage backend error: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("the storage committer has stopped")]
    Stopped,
    /// Another process (the running service) has the database open.
    #[error("the database is in use by another process (is the service running?)")]
    InUse,
}

/// One write. Each variant documents its precondition; a failed precondition is reported
/// through [`WriteOutcome`] and the rest of the batch still applies.
#[derive(Debug, Clone)]
pub enum Write {
    /// Inserts new keys (ids are fresh random UUIDs).
    PutKeys(Vec<StoredKey>),
    /// Binds `key` to `resource` if the key is unbound (or already bound to this resource:
    /// idempotent). Outcome: `Bound(key)` or `Conflict`/`NotFound`.
    BindKey {
        key: Uuid,
        resource: Uuid,
        at_ms: i64,
    },
    /// Creates a resource with its initial authorizations; keys in `bind` are bound per
    /// `BindKey` semantics (all or nothing).
    CreateResource {
        resource: StoredResource,
        auths: Vec<StoredAuth>,
        bind: Vec<Uuid>,
        at_ms: i64,
    },
    /// Adds authorizations; an `auth_id` already present is kept (merged), and the existing
    /// record is returned in its place.
    AddAuths {
        resource: Uuid,
        auths: Vec<StoredAuth>,
    },
    /// Removes one authorization; outcome `Removed(Some(..))` or `Removed(None)`.
    RemoveAuth {
        resource: Uuid,
        auth_id: AuthId,
    },
    PutChannel(StoredChannel),
    DeleteChannel(Uuid),
    PutMeta {
        name: String,
        value: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    Bound(Box<StoredKey>),
    Auths(Vec<StoredAuth>),
    Removed(Option<StoredAuth>),
    NotFound,
    Conflict(&'static str),
}

pub type WriteFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<WriteOutcome>, StorageError>> + Send + 'a>>;

pub trait Store: Send + Sync + 'static {
    /// Applies a batch atomically and durably; one outcome per write, in order.
    fn apply(&self, batch: Vec<Write>) -> WriteFuture<'_>;
    fn key(&self, id: Uuid) -> Result<Option<StoredKey>, StorageError>;
    fn resource(&self, id: Uuid) -> Result<Option<StoredResource>, StorageError>;
    /// Keys bound to a resource, oldest binding first.
    fn resource_keys(&self, id: Uuid) -> Result<Vec<StoredKey>, StorageError>;
    fn authorizations(&self, resource: Uuid) -> Result<Vec<StoredAuth>, StorageError>;
    fn authorization(
        &self,
        resource: Uuid,
        auth_id: &AuthId,
    ) -> Result<Option<StoredAuth>, StorageError>;
    fn channel(&self, id: Uuid) -> Result<Option<StoredChannel>, StorageError>;
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Number of stored keys (status and benchmarks).
    fn key_count(&self) -> Result<u64, StorageError>;
}
