//! strongroom's audit log (R16): tamper-evident, HSM-signed, fail-closed. Sync code,
//! no async runtime; one committer thread per log.
//!
//! # What is in it
//!
//! - [`record`]: the versioned record schema (canonical one-line JSON). Callers build an
//!   [`Event`] from typed values only (enums, UUIDs, validated `kms://` URIs), so no key
//!   material, token, plaintext or real identity can be recorded (R14, R22).
//! - [`AuditLog`]: append-only segmented files with group commit (under load an adaptive
//!   window, [`LogConfig::group_window`], lets one flush serve more records). `append`
//!   returns once the record is fsynced; on any I/O failure it returns [`Error::Io`], the log reports
//!   unhealthy ([`AuditLog::health`]) and recovers by itself when writing works again.
//! - [`tree`]: the RFC 9162 Merkle tree (tlog_tiles); the leaf is the exact bytes of a
//!   record line. [`SignedCheckpoint`]: C2SP tlog-checkpoint in a signed note, ECDSA
//!   P-256 (type 0x02) through a [`CheckpointSigner`] (`HsmSigner` with feature `hsm`:
//!   the key never leaves the HSM).
//! - [`verify_dir`]: the verifier, which names the first bad segment/line/record and why
//!   ([`Fault`]); [`LogSnapshot`] for inclusion/consistency proofs; [`export`] for
//!   bundles an auditor checks offline with the public key ([`Bundle::verify`]);
//!   [`query`] and [`reconcile`] for security teams.
//!
//! # Wiring (for the KMS and the `strongroom audit` CLI)
//!
//! - Start-up: `AuditLog::open(LogConfig::new(state_dir.join("audit"), "<domain>/audit"),
//!   Arc::new(HsmSigner::new(hsm.clone())?))`; set `config.on_checkpoint` to mirror each
//!   checkpoint note to the journal (that copy is what catches a rewritten history).
//! - Every decision: build an `Event` and await `append_async` (async callers, the KMS),
//!   or call `append` (blocking) or `submit` (a callback on the committer thread)
//!   **before** answering; on `Err`, refuse the request. The record is encoded on the
//!   caller's thread (ADR 0015). `health()` feeds the health endpoint.
//! - Shutdown: `close()` writes the final checkpoint and returns it.
//! - CLI: `verify` = [`verify_dir`] (exit non-zero on `Err`, print the [`Fault`]);
//!   `--against <checkpoint>` = [`VerifyOptions::trusted`]; `show`/`query` = [`query`]
//!   with a [`Filter`]; `prove inclusion|consistency` = [`LogSnapshot`];
//!   `export` = [`export`] then [`Bundle::to_json`]; `reconcile` = [`reconcile`] with an
//!   [`Allowlist`] read from TOML/JSON. The auditor's key is [`LogKey::vkey`] text.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use strongroom_audit::*;
//! # fn main() -> Result<(), Error> {
//! # let tmp = tempfile::tempdir().map_err(|e| Error::Io { op: "tempdir", path: ".".into(), source: e })?;
//! # let dir = tmp.path().join("audit");
//! let signer = Arc::new(SoftwareSigner::from_bytes(&[7; 32])?); // the HSM in production
//! let log = AuditLog::open(LogConfig::new(&dir, "kms.example.com/audit"), signer)?;
//!
//! let domain: Domain = "kms.example.com".parse()?;
//! let user = uuid::Uuid::new_v4(); // the obfuscated user ID from the token
//! let receipt = log.append(
//!     &Event::new(Kind::KmsDecision, Action::Retrieve, Outcome::Allowed, Reason::Ok)
//!         .user(user)
//!         .key(KeyUri::new(&domain, uuid::Uuid::new_v4())),
//! )?; // durable now: answer the client
//! assert_eq!(receipt.seq, 0);
//! let key = log.key().clone();
//! let last = log.close()?.expect("final checkpoint");
//!
//! // An auditor, with the public key only:
//! let report = verify_dir(&dir, &key, &VerifyOptions::default().trusted([last]))?;
//! assert_eq!(report.records, 1);
//! # Ok(())
//! # }
//! ```
// Lengths and counts are u64 on disk and usize in memory; we target 64-bit only.
#![allow(clippy::cast_possible_truncation)]

mod checkpoint;
mod error;
mod export;
#[cfg(feature = "hsm")]
mod hsm_signer;
mod proof;
mod query;
pub mod record;
mod segment;
pub mod tree;
mod verify;
mod writer;

pub use checkpoint::{CheckpointSigner, LogKey, SignedCheckpoint, SoftwareSigner};
pub use error::{Error, Result};
pub use export::{Bundle, BundleEntry, export};
#[cfg(feature = "hsm")]
pub use hsm_signer::HsmSigner;
pub use proof::{ConsistencyProof, InclusionProof, LogSnapshot};
pub use query::{Allowlist, Filter, Finding, MachineGrant, PeerGrant, Violation, query, reconcile};
pub use record::{Action, Domain, Event, KeyUri, Kind, Outcome, Reason, Record, ResourceUri};
pub use verify::{Fault, FaultKind, Verified, VerifyOptions, verify_dir};
#[cfg(feature = "testing")]
pub use writer::FailSwitch;
pub use writer::{
    AuditLog, CheckpointSink, Clock, DEFAULT_CHECKPOINT_EVERY, DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_COMMITTER_NICE, Health, LogConfig, Receipt, Receipts, RecordSink, SystemClock,
};
