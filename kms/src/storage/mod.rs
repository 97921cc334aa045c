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

pub use records::{
    AuthId, MembershipOp, MembershipState, StoredAuth, StoredChannel, StoredKey, StoredMembership,
    StoredResource,
};
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
    /// record is returned in its place. Outcome `RoomBound` if the resource is bound to a
    /// room (R10: its authorizations change only through the two-part flow).
    AddAuths {
        resource: Uuid,
        auths: Vec<StoredAuth>,
    },
    /// Removes one authorization; outcome `Removed(Some(..))` or `Removed(None)`, or
    /// `RoomBound` as for `AddAuths`.
    RemoveAuth {
        resource: Uuid,
        auth_id: AuthId,
    },
    /// A two-part membership change (R10): the nonce must be unused (else `Conflict`
    /// "nonce"), the resource unbound or bound to `change.room` (else `Conflict` "room";
    /// an unbound resource is bound to it); then the authorization is added (`add`, an
    /// existing one is kept and `auth` stays `None`) or removed, and the record stored in
    /// state `Applied`, all in the same transaction. Outcome `Membership(record)`.
    /// `bind_room` false: an unbound resource stays unbound (a leave by someone holding no
    /// authorization must not claim the resource for a room).
    Membership {
        record: StoredMembership,
        bind_room: bool,
    },
    /// Moves a membership record to `state`. `Confirmed` only from `Applied`; `Undone`
    /// only for an add (from `Applied` or `Confirmed`), removing the authorization it
    /// created if it is still that one. Idempotent: the same state again is a no-op.
    /// Outcome `Membership(record as it now is)`, `NotFound`, or `Conflict` "remove_is_final"
    /// / "undone".
    SetMembershipState {
        nonce: [u8; 16],
        state: MembershipState,
        at_ms: i64,
    },
    /// Deprovisioning (R24): removes every authorization naming `user` created at or before
    /// `created_until_ms`, on every resource. Outcome `RemovedMany`.
    RemoveUserAuths {
        user: Uuid,
        created_until_ms: i64,
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
    RoomBound,
    Membership(Box<StoredMembership>),
    RemovedMany(Vec<StoredAuth>),
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
    /// The room a resource is bound to by its first two-part membership change (R10).
    fn room_of(&self, resource: Uuid) -> Result<Option<Uuid>, StorageError>;
    fn membership(&self, nonce: &[u8; 16]) -> Result<Option<StoredMembership>, StorageError>;
    /// Membership changes still in state `Applied` (not confirmed nor undone).
    fn pending_memberships(&self) -> Result<Vec<StoredMembership>, StorageError>;
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Number of stored keys (status and benchmarks).
    fn key_count(&self) -> Result<u64, StorageError>;
}
