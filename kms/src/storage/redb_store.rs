//! The embedded store: redb (ACID, copy-on-write B-trees, fsync on commit) with a group
//! committer thread. Callers hand batches to the committer; it drains everything queued,
//! applies it in one write transaction, commits once (one fsync for many callers) and only
//! then answers each caller. Reads use MVCC read transactions and never wait for writes.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::records::{decode, encode};
use super::{
    AuthId, MembershipOp, MembershipState, StorageError, Store, StoredAuth, StoredChannel,
    StoredKey, StoredMembership, StoredResource, Write, WriteFuture, WriteOutcome,
};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("keys");
const RESOURCES: TableDefinition<u128, &[u8]> = TableDefinition::new("resources");
/// (resource, key) -> bind time: the keys bound to a resource.
const RESOURCE_KEYS: TableDefinition<(u128, u128), i64> = TableDefinition::new("resource_keys");
/// (resource, auth id storage key) -> authorization record.
const AUTHS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("authorizations");
const CHANNELS: TableDefinition<u128, &[u8]> = TableDefinition::new("channels");
/// nonce -> two-part membership change record (R10). Every nonce ever used, forever.
const MEMBERSHIPS: TableDefinition<u128, &[u8]> = TableDefinition::new("memberships");
/// nonce -> change time: the changes still in state `Applied` (reconciliation).
const PENDING: TableDefinition<u128, i64> = TableDefinition::new("memberships_pending");
/// resource -> room: set by the resource's first two-part change.
const ROOM_OF: TableDefinition<u128, u128> = TableDefinition::new("resource_room");

/// Most jobs one transaction takes; bounds latency under extreme load.
const MAX_GROUP: usize = 4096;

struct Job {
    batch: Vec<Write>,
    reply: oneshot::Sender<Result<Vec<WriteOutcome>, StorageError>>,
}

pub struct RedbStore {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RedbStore {
    /// Stops the committer after it has answered every queued write, so that the database
    /// file is closed when `drop` returns (a restart in the same process can reopen it).
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the database file, checks its integrity (repairing an interrupted
    /// commit is redb's job; a failed check is an error, never silently ignored), creates
    /// missing tables and starts the committer.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Self, StorageError> {
        let mut db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(backend)?;
        if !db.check_integrity().map_err(backend)? {
            tracing::warn!("redb integrity check repaired the database after an unclean stop");
        }
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(META).map_err(backend)?;
            txn.open_table(KEYS).map_err(backend)?;
            txn.open_table(RESOURCES).map_err(backend)?;
            txn.open_table(RESOURCE_KEYS).map_err(backend)?;
            txn.open_table(AUTHS).map_err(backend)?;
            txn.open_table(CHANNELS).map_err(backend)?;
            txn.open_table(MEMBERSHIPS).map_err(backend)?;
            txn.open_table(PENDING).map_err(backend)?;
            txn.open_table(ROOM_OF).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let committer_db = Arc::clone(&db);
        let handle = std::thread::Builder::new()
            .name("redb-committer".into())
            .spawn(move || committer(&committer_db, &rx))
            .map_err(backend)?;
        Ok(Self {
            db,
            jobs: Some(tx),
            committer: Some(handle),
        })
    }
}

/// What [`RedbStore::snapshot`] found.
pub struct Snapshot {
    /// The database file's bytes, read while this process held redb's exclusive lock.
    pub bytes: Vec<u8>,
    /// Number of stored keys at the snapshot.
    pub keys: u64,
}

impl RedbStore {
    /// A consistent copy of a database file for `strongroom backup`: opens it (taking
    /// redb's exclusive file lock, so a running service makes this fail with
    /// [`StorageError::InUse`] instead of copying a file that is being written), checks and
    /// closes it cleanly, then reads its bytes under an exclusive lock of its own.
    pub fn snapshot(path: &Path) -> Result<Snapshot, StorageError> {
        let db = open_existing(path)?;
        let keys = {
            let r = db.begin_read().map_err(backend)?;
            r.open_table(KEYS)
                .map_err(backend)?
                .len()
                .map_err(backend)?
        };
        // Close it cleanly first: the bytes of an open redb file carry its "needs
        // recovery" mark. Then read under the same kind of lock redb takes (flock), so no
        // process can open it for writing while we copy.
        drop(db);
        let mut file = std::fs::File::open(path).map_err(backend)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StorageError::InUse),
            Err(std::fs::TryLockError::Error(e)) => return Err(backend(e)),
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(backend)?;
        drop(file);
        Ok(Snapshot { bytes, keys })
    }

    /// Number of keys in a database file no process has open (`strongroom status`);
    /// [`StorageError::InUse`] while the service runs.
    /// Opened read-only: a database that needs recovery is reported, not repaired.
    pub fn count_keys(path: &Path) -> Result<u64, StorageError> {
        let db = match redb::ReadOnlyDatabase::open(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StorageError::InUse),
            Err(e) => return Err(backend(e)),
        };
        let r = db.begin_read().map_err(backend)?;
        r.open_table(KEYS).map_err(backend)?.len().map_err(backend)
    }
}

fn open_existing(path: &Path) -> Result<Database, StorageError> {
    if !path.exists() {
        return Err(StorageError::Backend(format!(
            "{} does not exist",
            path.display()
        )));
    }
    match Database::builder().open(path) {
        Ok(mut db) => {
            if !db.check_integrity().map_err(backend)? {
                tracing::warn!("redb integrity check repaired the database");
            }
            Ok(db)
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StorageError::InUse),
        Err(e) => Err(backend(e)),
    }
}

fn committer(db: &Database, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = apply_group(db, &mut group);
        match result {
            Ok(outcomes) => {
                for (job, out) in group.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "storage commit failed; every write in the group is refused");
                for job in group {
                    let _ = job.reply.send(Err(StorageError::Backend(e.to_string())));
                }
            }
        }
    }
}

fn apply_group(db: &Database, group: &mut [Job]) -> Result<Vec<Vec<WriteOutcome>>, StorageError> {
    let txn = db.begin_write().map_err(backend)?;
    let mut all = Vec::with_capacity(group.len());
    for job in group.iter_mut() {
        let batch = std::mem::take(&mut job.batch);
        let mut outs = Vec::with_capacity(batch.len());
        for w in batch {
            outs.push(apply_one(&txn, w)?);
        }
        all.push(outs);
    }
    txn.commit().map_err(backend)?;
    Ok(all)
}

fn bind_check(
    keys: &redb::Table<u128, &[u8]>,
    key: Uuid,
    resource: Uuid,
) -> Result<Result<StoredKey, WriteOutcome>, StorageError> {
    let Some(raw) = keys.get(key.as_u128()).map_err(backend)? else {
        return Ok(Err(WriteOutcome::NotFound));
    };
    let k: StoredKey = decode(raw.value())?;
    match k.resource {
        Some(r) if r != resource => Ok(Err(WriteOutcome::Conflict(
            "key is already bound to another resource",
        ))),
        _ => Ok(Ok(k)),
    }
}

fn do_bind(
    keys: &mut redb::Table<u128, &[u8]>,
    rk: &mut redb::Table<(u128, u128), i64>,
    mut k: StoredKey,
    resource: Uuid,
    at_ms: i64,
) -> Result<StoredKey, StorageError> {
    if k.resource.is_none() {
        k.resource = Some(resource);
        k.bound_ms = Some(at_ms);
        keys.insert(k.id.as_u128(), encode(&k)?.as_slice())
            .map_err(backend)?;
        rk.insert((resource.as_u128(), k.id.as_u128()), at_ms)
            .map_err(backend)?;
    }
    Ok(k)
}

fn apply_one(txn: &redb::WriteTransaction, w: Write) -> Result<WriteOutcome, StorageError> {
    match w {
        Write::PutKeys(ks) => {
            let mut t = txn.open_table(KEYS).map_err(backend)?;
            for k in ks {
                t.insert(k.id.as_u128(), encode(&k)?.as_slice())
                    .map_err(backend)?;
            }
            Ok(WriteOutcome::Done)
        }
        Write::BindKey {
            key,
            resource,
            at_ms,
        } => {
            let mut keys = txn.open_table(KEYS).map_err(backend)?;
            let mut rk = txn.open_table(RESOURCE_KEYS).map_err(backend)?;
            match bind_check(&keys, key, resource)? {
                Err(outcome) => Ok(outcome),
                Ok(k) => Ok(WriteOutcome::Bound(Box::new(do_bind(
                    &mut keys, &mut rk, k, resource, at_ms,
                )?))),
            }
        }
        Write::CreateResource {
            resource,
            auths,
            bind,
            at_ms,
        } => {
            let mut keys = txn.open_table(KEYS).map_err(backend)?;
            let mut rk = txn.open_table(RESOURCE_KEYS).map_err(backend)?;
            let mut to_bind = Vec::with_capacity(bind.len());
            for key in bind {
                match bind_check(&keys, key, resource.id)? {
                    Err(outcome) => return Ok(outcome),
                    Ok(k) => to_bind.push(k),
                }
            }
            for k in to_bind {
                do_bind(&mut keys, &mut rk, k, resource.id, at_ms)?;
            }
            txn.open_table(RESOURCES)
                .map_err(backend)?
                .insert(resource.id.as_u128(), encode(&resource)?.as_slice())
                .map_err(backend)?;
            let mut at = txn.open_table(AUTHS).map_err(backend)?;
            for a in &auths {
                at.insert(
                    (resource.id.as_u128(), a.auth_id.storage_key().as_str()),
                    encode(a)?.as_slice(),
                )
                .map_err(backend)?;
            }
            Ok(WriteOutcome::Auths(auths))
        }
        Write::AddAuths { resource, auths } => {
            if room_bound(txn, resource)? {
                return Ok(WriteOutcome::RoomBound);
            }
            if txn
                .open_table(RESOURCES)
                .map_err(backend)?
                .get(resource.as_u128())
                .map_err(backend)?
                .is_none()
            {
                return Ok(WriteOutcome::NotFound);
            }
            let mut at = txn.open_table(AUTHS).map_err(backend)?;
            let mut out = Vec::with_capacity(auths.len());
            for a in auths {
                let sk = a.auth_id.storage_key();
                let existing = at
                    .get((resource.as_u128(), sk.as_str()))
                    .map_err(backend)?
                    .map(|v| decode::<StoredAuth>(v.value()))
                    .transpose()?;
                if let Some(e) = existing {
                    out.push(e);
                } else {
                    at.insert((resource.as_u128(), sk.as_str()), encode(&a)?.as_slice())
                        .map_err(backend)?;
                    out.push(a);
                }
            }
            Ok(WriteOutcome::Auths(out))
        }
        Write::RemoveAuth { resource, auth_id } => {
            if room_bound(txn, resource)? {
                return Ok(WriteOutcome::RoomBound);
            }
            let mut at = txn.open_table(AUTHS).map_err(backend)?;
            let sk = auth_id.storage_key();
            let removed = at
                .remove((resource.as_u128(), sk.as_str()))
                .map_err(backend)?
                .map(|v| decode::<StoredAuth>(v.value()))
                .transpose()?;
            Ok(WriteOutcome::Removed(removed))
        }
        Write::Membership { record, bind_room } => apply_membership(txn, record, bind_room),
        Write::SetMembershipState {
            nonce,
            state,
            at_ms,
        } => set_membership_state(txn, nonce, state, at_ms),
        Write::RemoveUserAuths {
            user,
            created_until_ms,
        } => {
            let mut at = txn.open_table(AUTHS).map_err(backend)?;
            let wanted = AuthId::User(user);
            let mut hits = Vec::new();
            for entry in at.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let a: StoredAuth = decode(v.value())?;
                if a.auth_id == wanted && a.created_ms <= created_until_ms {
                    hits.push((k.value().0, a));
                }
            }
            let sk = wanted.storage_key();
            for (resource, _) in &hits {
                at.remove((*resource, sk.as_str())).map_err(backend)?;
            }
            Ok(WriteOutcome::RemovedMany(
                hits.into_iter().map(|(_, a)| a).collect(),
            ))
        }
        Write::PutChannel(c) => {
            txn.open_table(CHANNELS)
                .map_err(backend)?
                .insert(c.id.as_u128(), encode(&c)?.as_slice())
                .map_err(backend)?;
            Ok(WriteOutcome::Done)
        }
        Write::DeleteChannel(id) => {
            txn.open_table(CHANNELS)
                .map_err(backend)?
                .remove(id.as_u128())
                .map_err(backend)?;
            Ok(WriteOutcome::Done)
        }
        Write::PutMeta { name, value } => {
            txn.open_table(META)
                .map_err(backend)?
                .insert(name.as_str(), value.as_slice())
                .map_err(backend)?;
            Ok(WriteOutcome::Done)
        }
    }
}

fn room_bound(txn: &redb::WriteTransaction, resource: Uuid) -> Result<bool, StorageError> {
    Ok(txn
        .open_table(ROOM_OF)
        .map_err(backend)?
        .get(resource.as_u128())
        .map_err(backend)?
        .is_some())
}

fn apply_membership(
    txn: &redb::WriteTransaction,
    mut m: StoredMembership,
    bind_room: bool,
) -> Result<WriteOutcome, StorageError> {
    let nonce = u128::from_be_bytes(m.nonce);
    let mut memberships = txn.open_table(MEMBERSHIPS).map_err(backend)?;
    if memberships.get(nonce).map_err(backend)?.is_some() {
        return Ok(WriteOutcome::Conflict("nonce"));
    }
    if txn
        .open_table(RESOURCES)
        .map_err(backend)?
        .get(m.resource.as_u128())
        .map_err(backend)?
        .is_none()
    {
        return Ok(WriteOutcome::NotFound);
    }
    let mut rooms = txn.open_table(ROOM_OF).map_err(backend)?;
    let bound = rooms
        .get(m.resource.as_u128())
        .map_err(backend)?
        .map(|v| v.value());
    match bound {
        Some(r) if r != m.room.as_u128() => return Ok(WriteOutcome::Conflict("room")),
        Some(_) => {}
        None if !bind_room => {}
        None => {
            rooms
                .insert(m.resource.as_u128(), m.room.as_u128())
                .map_err(backend)?;
        }
    }
    let mut at = txn.open_table(AUTHS).map_err(backend)?;
    let sk = AuthId::User(m.subject).storage_key();
    let key = (m.resource.as_u128(), sk.as_str());
    m.auth = match m.op {
        MembershipOp::Add => {
            if at.get(key).map_err(backend)?.is_some() {
                None
            } else {
                let a = StoredAuth {
                    id: Uuid::new_v4(),
                    resource: m.resource,
                    auth_id: AuthId::User(m.subject),
                    created_ms: m.at_ms,
                };
                at.insert(key, encode(&a)?.as_slice()).map_err(backend)?;
                Some(a.id)
            }
        }
        MembershipOp::Remove => at
            .remove(key)
            .map_err(backend)?
            .map(|v| decode::<StoredAuth>(v.value()))
            .transpose()?
            .map(|a| a.id),
    };
    m.state = MembershipState::Applied;
    memberships
        .insert(nonce, encode(&m)?.as_slice())
        .map_err(backend)?;
    txn.open_table(PENDING)
        .map_err(backend)?
        .insert(nonce, m.at_ms)
        .map_err(backend)?;
    Ok(WriteOutcome::Membership(Box::new(m)))
}

fn set_membership_state(
    txn: &redb::WriteTransaction,
    nonce: [u8; 16],
    state: MembershipState,
    at_ms: i64,
) -> Result<WriteOutcome, StorageError> {
    let key = u128::from_be_bytes(nonce);
    let mut memberships = txn.open_table(MEMBERSHIPS).map_err(backend)?;
    let Some(mut m) = memberships
        .get(key)
        .map_err(backend)?
        .map(|v| decode::<StoredMembership>(v.value()))
        .transpose()?
    else {
        return Ok(WriteOutcome::NotFound);
    };
    if m.state == state {
        return Ok(WriteOutcome::Membership(Box::new(m)));
    }
    match (state, m.op, m.state) {
        (MembershipState::Confirmed, _, MembershipState::Applied) => {}
        (MembershipState::Confirmed, _, _) => return Ok(WriteOutcome::Conflict("undone")),
        (MembershipState::Undone, MembershipOp::Remove, _) => {
            return Ok(WriteOutcome::Conflict("remove_is_final"));
        }
        (MembershipState::Undone, MembershipOp::Add, _) => {
            if let Some(created) = m.auth {
                let mut at = txn.open_table(AUTHS).map_err(backend)?;
                let sk = AuthId::User(m.subject).storage_key();
                let k = (m.resource.as_u128(), sk.as_str());
                let current = at
                    .get(k)
                    .map_err(backend)?
                    .map(|v| decode::<StoredAuth>(v.value()))
                    .transpose()?;
                // Only the authorization this change created: a later change's is kept.
                if current.is_some_and(|a| a.id == created) {
                    at.remove(k).map_err(backend)?;
                }
            }
        }
        (MembershipState::Applied, _, _) => return Ok(WriteOutcome::Conflict("applied")),
    }
    m.state = state;
    m.state_ms = at_ms;
    memberships
        .insert(key, encode(&m)?.as_slice())
        .map_err(backend)?;
    txn.open_table(PENDING)
        .map_err(backend)?
        .remove(key)
        .map_err(backend)?;
    Ok(WriteOutcome::Membership(Box::new(m)))
}

impl RedbStore {
    fn get_u128<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<u128, &[u8]>,
        id: Uuid,
    ) -> Result<Option<T>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(table).map_err(backend)?;
        t.get(id.as_u128())
            .map_err(backend)?
            .map(|v| decode(v.value()))
            .transpose()
    }
}

impl Store for RedbStore {
    fn apply(&self, batch: Vec<Write>) -> WriteFuture<'_> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .jobs
            .as_ref()
            .ok_or(StorageError::Stopped)
            .and_then(|j| {
                j.send(Job { batch, reply })
                    .map_err(|_| StorageError::Stopped)
            });
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| StorageError::Stopped)?
        })
    }

    fn key(&self, id: Uuid) -> Result<Option<StoredKey>, StorageError> {
        self.get_u128(KEYS, id)
    }

    fn resource(&self, id: Uuid) -> Result<Option<StoredResource>, StorageError> {
        self.get_u128(RESOURCES, id)
    }

    fn resource_keys(&self, id: Uuid) -> Result<Vec<StoredKey>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let rk = r.open_table(RESOURCE_KEYS).map_err(backend)?;
        let keys = r.open_table(KEYS).map_err(backend)?;
        let lo = (id.as_u128(), 0u128);
        let hi = (id.as_u128(), u128::MAX);
        let mut out = Vec::new();
        for entry in rk.range(lo..=hi).map_err(backend)? {
            let (k, _) = entry.map_err(backend)?;
            let key_id = k.value().1;
            let raw = keys
                .get(key_id)
                .map_err(backend)?
                .ok_or(StorageError::Corrupt("resource index names a missing key"))?;
            out.push(decode::<StoredKey>(raw.value())?);
        }
        out.sort_by_key(|k| (k.bound_ms, k.id));
        Ok(out)
    }

    fn authorizations(&self, resource: Uuid) -> Result<Vec<StoredAuth>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(AUTHS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in t
            .range((resource.as_u128(), "")..(resource.as_u128().wrapping_add(1), ""))
            .map_err(backend)?
        {
            let (k, v) = entry.map_err(backend)?;
            if k.value().0 != resource.as_u128() {
                break;
            }
            out.push(decode::<StoredAuth>(v.value())?);
        }
        out.sort_by_key(|a| (a.created_ms, a.id));
        Ok(out)
    }

    fn authorization(
        &self,
        resource: Uuid,
        auth_id: &AuthId,
    ) -> Result<Option<StoredAuth>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(AUTHS).map_err(backend)?;
        t.get((resource.as_u128(), auth_id.storage_key().as_str()))
            .map_err(backend)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn channel(&self, id: Uuid) -> Result<Option<StoredChannel>, StorageError> {
        self.get_u128(CHANNELS, id)
    }

    fn room_of(&self, resource: Uuid) -> Result<Option<Uuid>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(ROOM_OF).map_err(backend)?;
        Ok(t.get(resource.as_u128())
            .map_err(backend)?
            .map(|v| Uuid::from_u128(v.value())))
    }

    fn membership(&self, nonce: &[u8; 16]) -> Result<Option<StoredMembership>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(MEMBERSHIPS).map_err(backend)?;
        t.get(u128::from_be_bytes(*nonce))
            .map_err(backend)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    fn pending_memberships(&self) -> Result<Vec<StoredMembership>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let pending = r.open_table(PENDING).map_err(backend)?;
        let all = r.open_table(MEMBERSHIPS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in pending.iter().map_err(backend)? {
            let (k, _) = entry.map_err(backend)?;
            let raw = all
                .get(k.value())
                .map_err(backend)?
                .ok_or(StorageError::Corrupt(
                    "pending index names a missing change",
                ))?;
            out.push(decode::<StoredMembership>(raw.value())?);
        }
        out.sort_by_key(|m| m.at_ms);
        Ok(out)
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(META).map_err(backend)?;
        Ok(t.get(name).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn key_count(&self) -> Result<u64, StorageError> {
        let r = self.db.begin_read().map_err(backend)?;
        r.open_table(KEYS).map_err(backend)?.len().map_err(backend)
    }
}
