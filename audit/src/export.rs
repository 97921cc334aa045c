//! Export bundles: selected records, each with an inclusion proof, against one signed
//! checkpoint, plus the log's verifier key. An auditor verifies a bundle offline with
//! only the log's public key ([`Bundle::verify`]): no access to the appliance.
//!
//! ```json
//! {"bundle":1,"vkey":"<origin>+<id>+<key>","checkpoint":"<signed note>",
//!  "entries":[{"record":"<exact record line>","proof":["<b64>",…]}]}
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{LogKey, SignedCheckpoint};
use crate::error::{Error, Result};
use crate::proof::{InclusionProof, b64_hashes};
use crate::query::Filter;
use crate::record::Record;
use crate::tree::{Digest, HashStore};
use crate::verify::{self, Item, VerifyOptions};

const BUNDLE_VERSION: u32 = 1;

/// An offline-verifiable export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub bundle: u32,
    /// The log's verifier key, for reference; trust comes from the key the auditor
    /// passes to [`Bundle::verify`], which must be the same.
    pub vkey: String,
    /// The signed checkpoint every proof is against.
    pub checkpoint: String,
    pub entries: Vec<BundleEntry>,
}

/// One record (its exact line, the Merkle leaf) and its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEntry {
    pub record: String,
    #[serde(with = "b64_hashes")]
    pub proof: Vec<Digest>,
}

/// Verifies the log and exports the records matching `filter` against its latest
/// checkpoint (records after it are left out: they are not signed yet).
pub fn export(dir: &Path, key: &LogKey, opts: &VerifyOptions, filter: &Filter) -> Result<Bundle> {
    let mut store = HashStore::new();
    let mut selected: Vec<(u64, String)> = Vec::new();
    let verified = verify::walk(dir, key, opts, &mut |item| {
        if let Item::Record { line, record, leaf } = item {
            store.push(leaf).map_err(|_| Error::Bundle {
                reason: "hash store inconsistent",
            })?;
            if filter.matches(&record) {
                let text = String::from_utf8(line.to_vec()).map_err(|_| Error::Bundle {
                    reason: "record is not UTF-8",
                })?;
                selected.push((record.seq, text));
            }
        }
        Ok(())
    })?;
    let cp = verified.latest.ok_or(Error::Bundle {
        reason: "the log has no checkpoint yet",
    })?;
    let mut entries = Vec::new();
    for (seq, record) in selected.into_iter().filter(|(s, _)| *s < cp.size()) {
        let proof = store
            .prove_inclusion(seq, cp.size())
            .map_err(|_| Error::Bundle {
                reason: "cannot build an inclusion proof",
            })?;
        entries.push(BundleEntry { record, proof });
    }
    Ok(Bundle {
        bundle: BUNDLE_VERSION,
        vkey: key.vkey(),
        checkpoint: cp.note().to_owned(),
        entries,
    })
}

impl Bundle {
    /// Checks the checkpoint signature with `key` and every record's inclusion proof;
    /// returns the checkpoint and the records.
    pub fn verify(&self, key: &LogKey) -> Result<(SignedCheckpoint, Vec<Record>)> {
        if self.bundle != BUNDLE_VERSION {
            return Err(Error::Bundle {
                reason: "unknown bundle version",
            });
        }
        if self.vkey != key.vkey() {
            return Err(Error::Bundle {
                reason: "bundle names another log key",
            });
        }
        let cp = SignedCheckpoint::verify(self.checkpoint.as_bytes(), key)?;
        let mut seen = BTreeSet::new();
        let mut records = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let record = Record::decode(e.record.as_bytes())?;
            if !seen.insert(record.seq) {
                return Err(Error::Bundle {
                    reason: "a record appears twice",
                });
            }
            InclusionProof {
                index: record.seq,
                tree_size: cp.size(),
                hashes: e.proof.clone(),
            }
            .verify_checkpoint(e.record.as_bytes(), &cp)?;
            records.push(record);
        }
        Ok((cp, records))
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|_| Error::Bundle {
            reason: "cannot encode",
        })
    }

    pub fn from_json(text: &str) -> Result<Bundle> {
        serde_json::from_str(text).map_err(|_| Error::Bundle {
            reason: "malformed bundle JSON",
        })
    }
}
