//! Inclusion and consistency proofs (RFC 9162 §2.1.3/§2.1.4, computed by tlog_tiles),
//! with a JSON form (`hashes` in base64) for the CLI and bundles.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tlog_tiles::Hash;

use crate::checkpoint::{LogKey, SignedCheckpoint};
use crate::error::{Error, Result};
use crate::tree::{Digest, HashStore, leaf_hash};
use crate::verify::{self, Item, Verified, VerifyOptions};

pub(crate) mod b64_hashes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::tree::Digest;

    pub(crate) fn serialize<S: Serializer>(v: &[Digest], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|h| B64.encode(h)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Digest>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| {
                B64.decode(s)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    .ok_or_else(|| de::Error::custom("hash is not 32 bytes of base64"))
            })
            .collect()
    }
}

const BAD: Error = Error::Proof {
    reason: "the proof does not verify",
};

/// Proof that record `index` is in the tree of `tree_size` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub index: u64,
    pub tree_size: u64,
    #[serde(with = "b64_hashes")]
    pub hashes: Vec<Digest>,
}

impl InclusionProof {
    /// Checks that `line` (a record's exact bytes) is leaf `index` of the tree with `root`.
    pub fn verify(&self, line: &[u8], root: &Digest) -> Result<()> {
        if self.index >= self.tree_size || self.hashes.len() > 64 {
            return Err(BAD);
        }
        let proof: Vec<Hash> = self.hashes.iter().map(|h| Hash(*h)).collect();
        tlog_tiles::check_record(
            &proof,
            self.tree_size,
            Hash(*root),
            self.index,
            Hash(leaf_hash(line)),
        )
        .map_err(|_| BAD)
    }

    /// As [`verify`](Self::verify), against a verified checkpoint of the same size.
    pub fn verify_checkpoint(&self, line: &[u8], cp: &SignedCheckpoint) -> Result<()> {
        if cp.size() != self.tree_size {
            return Err(Error::Proof {
                reason: "proof and checkpoint are for different tree sizes",
            });
        }
        self.verify(line, &cp.root())
    }
}

/// Proof that the tree of `old_size` records is a prefix of the tree of `new_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub new_size: u64,
    #[serde(with = "b64_hashes")]
    pub hashes: Vec<Digest>,
}

impl ConsistencyProof {
    /// Checks the proof between two roots.
    pub fn verify(&self, old_root: &Digest, new_root: &Digest) -> Result<()> {
        if self.old_size > self.new_size || self.hashes.len() > 128 {
            return Err(BAD);
        }
        if self.old_size == 0 {
            // Every tree extends the empty tree; the proof is empty by definition.
            return (self.hashes.is_empty() && *old_root == crate::tree::EMPTY_ROOT)
                .then_some(())
                .ok_or(BAD);
        }
        if self.old_size == self.new_size {
            return (self.hashes.is_empty() && old_root == new_root)
                .then_some(())
                .ok_or(BAD);
        }
        let proof: Vec<Hash> = self.hashes.iter().map(|h| Hash(*h)).collect();
        tlog_tiles::check_tree(
            &proof,
            self.new_size,
            Hash(*new_root),
            self.old_size,
            Hash(*old_root),
        )
        .map_err(|_| BAD)
    }

    /// As [`verify`](Self::verify), between two verified checkpoints.
    pub fn verify_checkpoints(&self, old: &SignedCheckpoint, new: &SignedCheckpoint) -> Result<()> {
        if old.size() != self.old_size || new.size() != self.new_size {
            return Err(Error::Proof {
                reason: "proof and checkpoints are for different tree sizes",
            });
        }
        self.verify(&old.root(), &new.root())
    }
}

/// A verified log's tree and checkpoints in memory (about 64 bytes per record), for
/// producing proofs.
#[derive(Debug)]
pub struct LogSnapshot {
    store: HashStore,
    checkpoints: Vec<SignedCheckpoint>,
    verified: Verified,
}

impl LogSnapshot {
    /// Verifies the log (see [`verify_dir`](crate::verify_dir)) and keeps its hashes.
    pub fn load(dir: &Path, key: &LogKey, opts: &VerifyOptions) -> Result<LogSnapshot> {
        let mut store = HashStore::new();
        let mut checkpoints = Vec::new();
        let verified = verify::walk(dir, key, opts, &mut |item| {
            match item {
                Item::Record { leaf, .. } => store.push(leaf).map_err(|_| Error::Proof {
                    reason: "hash store inconsistent",
                })?,
                Item::Checkpoint(cp) => checkpoints.push(cp.clone()),
            }
            Ok(())
        })?;
        Ok(LogSnapshot {
            store,
            checkpoints,
            verified,
        })
    }

    pub fn verified(&self) -> &Verified {
        &self.verified
    }

    /// Every checkpoint in the log, in order.
    pub fn checkpoints(&self) -> &[SignedCheckpoint] {
        &self.checkpoints
    }

    /// Number of records.
    pub fn size(&self) -> u64 {
        self.store.size()
    }

    /// Root of the first `size` records.
    pub fn root(&self, size: u64) -> Result<Digest> {
        self.store.root(size).map_err(|_| Error::Proof {
            reason: "size beyond the log",
        })
    }

    pub fn prove_inclusion(&self, index: u64, tree_size: u64) -> Result<InclusionProof> {
        if index >= tree_size || tree_size > self.size() {
            return Err(Error::Proof {
                reason: "index or tree size beyond the log",
            });
        }
        let hashes = self
            .store
            .prove_inclusion(index, tree_size)
            .map_err(|_| Error::Proof {
                reason: "cannot build the inclusion proof",
            })?;
        Ok(InclusionProof {
            index,
            tree_size,
            hashes,
        })
    }

    pub fn prove_consistency(&self, old_size: u64, new_size: u64) -> Result<ConsistencyProof> {
        if old_size > new_size || new_size > self.size() {
            return Err(Error::Proof {
                reason: "sizes out of order or beyond the log",
            });
        }
        let hashes = if old_size == 0 || old_size == new_size {
            Vec::new()
        } else {
            self.store
                .prove_consistency(old_size, new_size)
                .map_err(|_| Error::Proof {
                    reason: "cannot build the consistency proof",
                })?
        };
        Ok(ConsistencyProof {
            old_size,
            new_size,
            hashes,
        })
    }
}
