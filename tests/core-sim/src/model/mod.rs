//! The core's data (no HTTP here): the directory of organizations and users, rooms with
//! their membership events, stored ciphertext, and the key-first-seen table behind
//! rotation enforcement (R9).
//!
//! Persistence: `state.json` (everything but message and file contents) is rewritten
//! atomically on every change; contents are appended to `contents.jsonl` (fsync per line)
//! so storing a message costs one append, not a rewrite. A torn last line is ignored.

pub mod directory;
pub mod jwe;
pub mod rooms;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::files;

const STATE_FILE: &str = "state.json";
const CONTENTS_FILE: &str = "contents.jsonl";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    pub id: Uuid,
    pub name: String,
    /// The domain of the org's KMS: its cluster is `kms://<kms_domain>`.
    pub kms_domain: String,
}

impl Org {
    pub fn kms_cluster(&self) -> String {
        format!("kms://{}", self.kms_domain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: Uuid,
    pub org: Uuid,
    pub name: String,
    pub email: String,
    pub active: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Join,
    Leave,
    Removed,
}

/// A membership event, shown inline in the room (R11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: EventKind,
    pub user: Uuid,
    /// Who made the change; `None` for directory sync.
    pub actor: Option<Uuid>,
    #[serde(default)]
    pub directory_sync: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentKind {
    Message,
    File,
}

/// A stored message or file: ciphertext and key URI only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub room: Uuid,
    pub seq: u64,
    pub at_ms: i64,
    pub kind: ContentKind,
    pub sender: Uuid,
    pub kid: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Title {
    pub kid: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Room {
    pub id: Uuid,
    pub resource_uri: String,
    pub title: Title,
    pub created_at_ms: i64,
    pub members: BTreeSet<Uuid>,
    pub events: Vec<Event>,
    /// Last sequence number used by an event or a content item of this room.
    pub last_seq: u64,
    /// Global sequence of the last leave/removal: keys first seen at or before it are
    /// refused (R9).
    pub rotation_after: Option<u64>,
}

/// When the core first saw a key URI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstSeen {
    pub gseq: u64,
    pub at_ms: i64,
    pub room: Uuid,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub version: u32,
    pub orgs: BTreeMap<Uuid, Org>,
    pub users: BTreeMap<Uuid, User>,
    pub rooms: BTreeMap<Uuid, Room>,
    pub key_first_seen: BTreeMap<String, FirstSeen>,
    /// Global sequence ordering first sightings of keys and removals.
    pub gseq: u64,
    /// The static JWK each realm sent in its last hello, by `kms://` cluster.
    #[serde(default)]
    pub realm_static_jwks: BTreeMap<String, serde_json::Value>,
    /// R10: nonces of the two-part membership changes this core applied.
    #[serde(default)]
    pub applied_nonces: BTreeSet<String>,
    /// R24: deactivated users whose KMS authorizations a realm has not yet dropped, by
    /// realm (`kms://` cluster); retried on every reconciliation.
    #[serde(default)]
    pub pending_deprovisions: BTreeMap<String, BTreeSet<Uuid>>,
}

impl Model {
    pub fn next_gseq(&mut self) -> u64 {
        self.gseq += 1;
        self.gseq
    }
}

struct Inner {
    model: Model,
    contents: HashMap<Uuid, Vec<Content>>,
    contents_file: std::fs::File,
}

/// The model behind one lock, persisted on every change.
pub struct Db {
    dir: PathBuf,
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("dir", &self.dir).finish()
    }
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Storage { context, source }
}

impl Db {
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let mut model = if state_path.exists() {
            let bytes = std::fs::read(&state_path).map_err(io("reading state.json"))?;
            serde_json::from_slice::<Model>(&bytes).map_err(Error::InvalidBody)?
        } else {
            Model {
                version: STATE_VERSION,
                ..Model::default()
            }
        };
        if model.version != STATE_VERSION {
            return Err(Error::Internal("state.json has an unknown version"));
        }
        let contents_path = dir.join(CONTENTS_FILE);
        let mut contents: HashMap<Uuid, Vec<Content>> = HashMap::new();
        if contents_path.exists() {
            let f = std::fs::File::open(&contents_path).map_err(io("reading contents"))?;
            for line in std::io::BufReader::new(f).lines() {
                let line = line.map_err(io("reading contents"))?;
                // A torn last line (killed mid-append) is skipped.
                let Ok(c) = serde_json::from_str::<Content>(&line) else {
                    continue;
                };
                if let Some(room) = model.rooms.get_mut(&c.room) {
                    room.last_seq = room.last_seq.max(c.seq);
                    contents.entry(c.room).or_default().push(c);
                }
            }
        }
        let contents_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&contents_path)
            .map_err(io("opening contents"))?;
        let db = Self {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                model,
                contents,
                contents_file,
            }),
            clock,
        };
        {
            let inner = db.lock()?;
            db.persist(&inner.model)?;
        }
        Ok(db)
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Internal("model lock poisoned"))
    }

    fn persist(&self, model: &Model) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(model).map_err(|_| Error::Internal("encoding state"))?;
        files::write_atomic(&self.dir.join(STATE_FILE), &bytes, 0o600)
    }

    /// Reads the model.
    pub fn read<T>(&self, f: impl FnOnce(&Model) -> Result<T>) -> Result<T> {
        f(&self.lock()?.model)
    }

    /// Changes the model: `f` runs on a copy that replaces the model only once persisted,
    /// so a refused or failed change leaves nothing behind.
    pub fn write<T>(&self, f: impl FnOnce(&mut Model, i64) -> Result<T>) -> Result<T> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let mut next = inner.model.clone();
        let out = f(&mut next, now)?;
        if next != inner.model {
            self.persist(&next)?;
            inner.model = next;
        }
        Ok(out)
    }

    /// Stores a content item after `check` (membership, rotation) accepted it; registers a
    /// first sighting of its key. Returns the stored item.
    pub fn append_content(
        &self,
        room: Uuid,
        check: impl FnOnce(&mut Model, i64) -> Result<Content>,
    ) -> Result<Content> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let mut next = inner.model.clone();
        let item = check(&mut next, now)?;
        // Only a first sighting (it bumps gseq) needs state.json; `last_seq` is rebuilt
        // from contents.jsonl on load.
        if next.gseq != inner.model.gseq {
            self.persist(&next)?;
        }
        let mut line = serde_json::to_vec(&item).map_err(|_| Error::Internal("encoding"))?;
        line.push(b'\n');
        inner
            .contents_file
            .write_all(&line)
            .and_then(|()| inner.contents_file.sync_data())
            .map_err(io("appending contents"))?;
        inner.model = next;
        inner.contents.entry(room).or_default().push(item.clone());
        Ok(item)
    }

    /// Contents of `room` with a sequence number above `after`.
    pub fn contents_after(&self, room: Uuid, after: u64) -> Result<Vec<Content>> {
        let inner = self.lock()?;
        Ok(inner
            .contents
            .get(&room)
            .map(|v| v.iter().filter(|c| c.seq > after).cloned().collect())
            .unwrap_or_default())
    }
}
