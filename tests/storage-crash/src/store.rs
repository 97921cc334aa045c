//! The two candidate engines behind one small trait, the shape the KMS storage
//! trait will have: a durable batch commit, a point read and a full scan.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::record::{Id, Record};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Sled,
    Redb,
}

/// How a sled writer makes a batch atomic before `flush()` makes it durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SledApi {
    /// `Tree::apply_batch`, then `Db::flush()`.
    Batch,
    /// `Tree::transaction` inserting each record, then `Db::flush()`.
    Tx,
}

pub trait Store: Send + Sync {
    /// Writes `batch` atomically; when this returns `Ok` every record is durable.
    fn commit(&self, batch: &[Record]) -> Result<()>;
    fn get(&self, id: &Id) -> Result<Option<Vec<u8>>>;
    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()>;
}

/// What the engine said about the state it found on open.
#[derive(Debug, Default)]
pub struct Recovery {
    /// redb only: whether the open ran a repair (it does after an unclean shutdown).
    pub repaired_on_open: Option<bool>,
    /// redb only, when asked for: the result of `Database::check_integrity()`.
    pub integrity: Option<Integrity>,
}

#[derive(Debug)]
pub enum Integrity {
    Passed,
    /// `check_integrity()` returned `Ok(false)`: it found damage and repaired it.
    Repaired,
    /// `check_integrity()` returned an error: damage it could not repair.
    Failed(String),
}

pub struct Opened {
    pub store: Box<dyn Store>,
    pub recovery: Recovery,
}

pub struct OpenOptions {
    pub engine: Engine,
    pub sled_api: SledApi,
    /// Create the store if it does not exist (writers); checkers must find one.
    pub create: bool,
    /// redb: run `check_integrity()` after opening.
    pub check_integrity: bool,
}

pub fn open(dir: &Path, opts: &OpenOptions) -> Result<Opened> {
    if opts.create {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    } else if !dir.is_dir() {
        bail!("store directory {} does not exist", dir.display());
    }
    match opts.engine {
        Engine::Sled => open_sled(dir, opts),
        Engine::Redb => open_redb(&dir.join("keys.redb"), opts),
    }
}

struct SledStore {
    db: sled::Db,
    api: SledApi,
}

fn open_sled(dir: &Path, opts: &OpenOptions) -> Result<Opened> {
    if !opts.create && !dir.join("conf").exists() {
        bail!("{} holds no sled database (no conf file)", dir.display());
    }
    // Defaults as the product card would use them; durability comes from the
    // explicit flush() after each batch, not from the background flusher.
    let db = sled::Config::new()
        .path(dir)
        .open()
        .with_context(|| format!("sled::open({})", dir.display()))?;
    Ok(Opened {
        store: Box::new(SledStore {
            db,
            api: opts.sled_api,
        }),
        recovery: Recovery::default(),
    })
}

impl Store for SledStore {
    fn commit(&self, batch: &[Record]) -> Result<()> {
        match self.api {
            SledApi::Batch => {
                let mut b = sled::Batch::default();
                for r in batch {
                    b.insert(r.id.as_slice(), r.value.as_slice());
                }
                self.db.apply_batch(b).context("sled apply_batch")?;
            }
            SledApi::Tx => {
                self.db
                    .transaction(
                        |tx| -> sled::transaction::ConflictableTransactionResult<(), ()> {
                            for r in batch {
                                tx.insert(r.id.as_slice(), r.value.as_slice())?;
                            }
                            Ok(())
                        },
                    )
                    .map_err(|e| anyhow::anyhow!("sled transaction: {e:?}"))?;
            }
        }
        self.db.flush().context("sled flush")?;
        Ok(())
    }

    fn get(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(id)?.map(|v| v.to_vec()))
    }

    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        for item in self.db.iter() {
            let (k, v) = item.context("sled iter")?;
            f(&k, &v);
        }
        Ok(())
    }
}

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");

struct RedbStore {
    db: redb::Database,
}

fn open_redb(path: &PathBuf, opts: &OpenOptions) -> Result<Opened> {
    let repaired = Arc::new(AtomicBool::new(false));
    let mut builder = redb::Builder::new();
    let flag = Arc::clone(&repaired);
    builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
    let mut db = if opts.create {
        builder.create(path)
    } else {
        builder.open(path)
    }
    .with_context(|| format!("redb open {}", path.display()))?;
    let integrity = opts.check_integrity.then(|| match db.check_integrity() {
        Ok(true) => Integrity::Passed,
        Ok(false) => Integrity::Repaired,
        Err(e) => Integrity::Failed(e.to_string()),
    });
    Ok(Opened {
        store: Box::new(RedbStore { db }),
        recovery: Recovery {
            repaired_on_open: Some(repaired.load(Ordering::Relaxed)),
            integrity,
        },
    })
}

impl Store for RedbStore {
    fn commit(&self, batch: &[Record]) -> Result<()> {
        let mut tx = self.db.begin_write().context("redb begin_write")?;
        // Immediate is redb's default; set it anyway so the test does not depend on that.
        tx.set_durability(Durability::Immediate)
            .context("redb set_durability")?;
        {
            let mut table = tx.open_table(TABLE).context("redb open_table")?;
            for r in batch {
                table
                    .insert(r.id.as_slice(), r.value.as_slice())
                    .context("redb insert")?;
            }
        }
        tx.commit().context("redb commit")?;
        Ok(())
    }

    fn get(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().context("redb begin_read")?;
        let table = match tx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e).context("redb open_table"),
        };
        Ok(table.get(id.as_slice())?.map(|v| v.value().to_vec()))
    }

    fn for_each(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<()> {
        let tx = self.db.begin_read().context("redb begin_read")?;
        let table = match tx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e).context("redb open_table"),
        };
        for item in table.iter().context("redb iter")? {
            let (k, v) = item.context("redb iter")?;
            f(k.value(), v.value());
        }
        Ok(())
    }
}
