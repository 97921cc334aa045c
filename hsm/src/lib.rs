//! PKCS#11 HSM access for strongroom: the only crate that knows cryptoki.
//!
//! # Key hierarchy (requirement R1, "architecture.md key hierarchy")
//!
//! The KMS creates, stores and hands out keys (R1) without ever holding the keys at the
//! top of the hierarchy in plain memory. Three objects live on the token, found by
//! `CKA_LABEL` + `CKA_CLASS` + `CKA_KEY_TYPE` (two objects with one label are an error,
//! never a guess):
//!
//! - the **root key**: AES-256, `CKA_TOKEN`, `CKA_SENSITIVE=true`, `CKA_EXTRACTABLE=false`.
//!   It never leaves the HSM. It wraps the key-encryption key (KEK): the KEK is generated
//!   at `strongroom init`, stored only as [`Hsm::wrap_key`] output, and unwrapped with
//!   [`Hsm::unwrap_key`] into zeroized memory at start. Conversation and search keys are
//!   encrypted under the KEK by the KMS, not here.
//! - the **static RSA-3072 key**: decrypts the RSA-OAEP handshake
//!   ([`Hsm::rsa_oaep_sha1_decrypt`]) and signs handshake replies ([`Hsm::rsa_sign`]).
//! - the **audit key**: ECDSA P-256, signs audit log checkpoints ([`Hsm::ecdsa_p256_sign`]).
//!
//! Private and secret keys are sensitive and non-extractable; [`Hsm::ensure_keys`]
//! creates what is missing and refuses existing keys that are not.
//!
//! # Sessions and recovery
//!
//! One *anchor* session stays open for the life of an [`Hsm`]: PKCS#11 login belongs to
//! the application, and closing its last session logs it out. Operations borrow a
//! session from a small pool (cryptoki's `Session` is `Send` but not `Sync`).
//!
//! When a call fails with `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`,
//! `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, `CKR_USER_NOT_LOGGED_IN` or an invalid
//! object/key handle, the `Hsm` drops its pooled sessions (when they are gone), opens a
//! new anchor, logs in again (`CKR_USER_ALREADY_LOGGED_IN` counts as success), finds
//! the keys by label again and retries the operation once, logging a warning without
//! secrets. Callers see either the result or the second failure. If the token rejects
//! the PIN, the `Hsm` stops logging in (a real HSM would lock the PIN) and reports
//! [`Error::LoginBlocked`] until it is reopened.
//!
//! `C_Initialize` runs once per process and module, shared by every `Hsm` and
//! [`Hsm::init_token`]; the library is never finalised. Do not fork after opening.
//!
//! # Example
//!
//! ```no_run
//! // no_run: it would create a token in whatever SOFTHSM2_CONF points at. The
//! // integration tests (hsm/tests/it) run this flow against a private SoftHSM2 store.
//! use secrecy::SecretString;
//! use strongroom_hsm::{Hsm, HsmConfig, RsaScheme};
//!
//! # fn main() -> Result<(), strongroom_hsm::Error> {
//! let config = HsmConfig::new("strongroom", SecretString::from("user-pin"));
//! Hsm::init_token(&config.module, &config.token_label,
//!                 &SecretString::from("so-pin"), &config.pin)?;
//! let hsm = Hsm::open(&config)?;
//! hsm.ensure_keys()?;
//!
//! let kek = [7u8; 32];
//! let stored = hsm.wrap_key(&kek)?;
//! assert_eq!(*hsm.unwrap_key(&stored)?, kek);
//!
//! let signature = hsm.rsa_sign(RsaScheme::PssSha256, b"handshake")?;
//! assert_eq!(signature.len(), 384);
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod keys;
mod module;
mod ops;
mod pool;
#[cfg(feature = "testing")]
#[allow(clippy::expect_used, clippy::panic, clippy::missing_panics_doc)]
pub mod testing;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;

pub use crate::config::{HsmConfig, KeyLabels, WrapMechanism};
pub use crate::error::Error;
pub use crate::ops::{RootKeyFlags, RsaPublicKey, RsaScheme};
pub use crate::pool::PoolStats;

/// A logged-in connection to one token. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<pool::Inner>,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("token_label", &self.inner.token_label)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Initialise a token labelled `label` in a free slot unless a token with that label
    /// exists (used by `strongroom dev` and `strongroom init` on `SoftHSM2`). Sets the SO PIN
    /// and the user PIN. Idempotent: an existing token is left alone (its PINs are not
    /// checked), except that a missing user PIN is set.
    ///
    /// Serialised within the process. `SoftHSM2` is not safe against *another process*
    /// initialising a token in the same token directory at the same moment (it can abort
    /// in `C_Initialize`, or list the half-made token as free): serialise such processes.
    pub fn init_token(
        module: &Path,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), Error> {
        module::load(module)?.init_token(label, so_pin, user_pin)
    }

    /// Load the module (once per process), find the token by label, open the anchor
    /// session and log in. Keys are looked up on first use.
    pub fn open(config: &HsmConfig) -> Result<Hsm, Error> {
        config::check_token_label(&config.token_label)?;
        if ![2048, 3072, 4096].contains(&config.rsa_bits) {
            return Err(Error::UnsupportedRsaBits {
                bits: config.rsa_bits,
            });
        }
        // Reject a mechanism we cannot even name before touching the token.
        let mechanism = config.wrap_mechanism.mechanism()?.mechanism_type();
        let module = module::load(&config.module)?;
        let slot = module.find_slot(&config.token_label)?;
        let supported = module
            .ctx
            .get_mechanism_info(slot, mechanism)
            .is_ok_and(|info| info.wrap() && info.unwrap());
        if !supported {
            return Err(Error::UnsupportedMechanism {
                mechanism: config.wrap_mechanism,
                reason: "the token does not offer it for wrapping and unwrapping",
            });
        }
        let inner = pool::Inner::connect(module, slot, config)?;
        Ok(Hsm {
            inner: Arc::new(inner),
        })
    }

    /// Find the root key, the RSA key pair and the EC key pair by label; create those
    /// that are missing. Idempotent. Existing keys that are extractable or not sensitive
    /// are refused ([`Error::InsecureKey`]), as is half a key pair.
    ///
    /// Within a process this is serialised; two *processes* creating keys on one token
    /// at the same moment can still produce duplicates, which later lookups report as
    /// [`Error::DuplicateKey`]. Run it from `strongroom init` / start-up only.
    pub fn ensure_keys(&self) -> Result<(), Error> {
        self.inner.run_exclusive(|session, handles| {
            keys::ensure(session, &self.inner.labels, self.inner.rsa_bits, handles)
        })
    }

    /// Close every session this `Hsm` holds (waiting for operations in flight), which
    /// also logs the application out of the token. For tests and for an operator
    /// "reset": the next operation reconnects and logs in by itself.
    ///
    /// cryptoki 0.12 has no safe binding for `C_CloseAllSessions`, so this closes our
    /// sessions one by one; sessions other code in the process opened on the slot stay.
    pub fn close_all_sessions(&self) -> Result<(), Error> {
        self.inner.close_all()
    }

    /// Session pool figures (for `/metrics`).
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.stats()
    }

    /// The label of the token this `Hsm` is logged in to.
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn hsm_is_send_sync() {
        assert_send_sync::<Hsm>();
        assert_send_sync::<Error>();
    }
}
