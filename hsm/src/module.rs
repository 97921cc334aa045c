//! Loading a PKCS#11 module once per process, finding tokens, initialising a token.
//!
//! `C_Initialize` may run only once per process and module: a second call returns
//! `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and a `C_Finalize` would pull the library out from
//! under every other user in the process. So every `Hsm` and every `init_token` in a
//! process shares one [`Pkcs11`] per module path, kept in a process-global registry and
//! never finalised.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::UserType;
use cryptoki::slot::{Slot, TokenInfo};
use secrecy::SecretString;
use tracing::info;

use crate::config::check_token_label;
use crate::error::{Error, pkcs11};

/// One loaded and initialised PKCS#11 module.
pub(crate) struct Module {
    pub(crate) ctx: Pkcs11,
    /// Serialises `init_token` in this process: two threads must not pick the same free slot.
    init_lock: Mutex<()>,
}

type Registry = Mutex<HashMap<PathBuf, Arc<Module>>>;

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process-wide [`Module`] for `path`, loading and initialising it on first use.
pub(crate) fn load(path: &Path) -> Result<Arc<Module>, Error> {
    // dlopen hands out one library per file however it is named, so key by the real path.
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let registry = REGISTRY.get_or_init(Registry::default);
    // Held across dlopen and C_Initialize on purpose: they must not run twice.
    let mut modules = registry.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(&key) {
        return Ok(Arc::clone(module));
    }
    let ctx = Pkcs11::new(&key).map_err(|source| Error::ModuleLoad {
        path: key.clone(),
        source,
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Someone else in the process (another library) initialised it: that is fine.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(pkcs11("C_Initialize")(e)),
    }
    let module = Arc::new(Module {
        ctx,
        init_lock: Mutex::new(()),
    });
    modules.insert(key, Arc::clone(&module));
    Ok(module)
}

/// Tries of `C_GetTokenInfo` before its `CKR_GENERAL_ERROR` is believed.
const TOKEN_INFO_TRIES: u32 = 5;

impl Module {
    /// `C_GetTokenInfo`, retried a few times on `CKR_GENERAL_ERROR`. `SoftHSM2` re-reads a
    /// token's files on every call, for every slot, and fails the read with that error
    /// while another process is rewriting its own token at that moment (seen once in CI:
    /// one test's `init_token` failed while parallel test processes generated keys in
    /// their tokens; `SoftHSMv2` issue 757 reports such failures under parallel access).
    /// Only slot listing at open and token set-up call it.
    fn token_info(&self, slot: Slot) -> Result<TokenInfo, Error> {
        let mut tries = 1;
        loop {
            match self.ctx.get_token_info(slot) {
                Err(CkError::Pkcs11(RvError::GeneralError, _)) if tries < TOKEN_INFO_TRIES => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.map_err(pkcs11("C_GetTokenInfo")),
            }
        }
    }

    /// Slots holding an initialised token with this label, with their token info.
    fn tokens_labelled(&self, label: &str) -> Result<Vec<(Slot, TokenInfo)>, Error> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(pkcs11("C_GetSlotList"))?;
        let mut found = Vec::new();
        for slot in slots {
            let info = self.token_info(slot)?;
            if info.token_initialized() && info.label() == label {
                found.push((slot, info));
            }
        }
        Ok(found)
    }

    /// The one slot whose token carries `label`.
    pub(crate) fn find_slot(&self, label: &str) -> Result<Slot, Error> {
        let mut found = self.tokens_labelled(label)?;
        if found.len() > 1 {
            return Err(Error::DuplicateToken {
                label: label.to_owned(),
                count: found.len(),
            });
        }
        found
            .pop()
            .map(|(slot, _)| slot)
            .ok_or_else(|| Error::TokenNotFound {
                label: label.to_owned(),
            })
    }

    /// A slot with a token present but not initialised (`SoftHSM2` keeps one such slot).
    fn free_slot(&self) -> Result<Option<Slot>, Error> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(pkcs11("C_GetSlotList"))?;
        for slot in slots {
            let info = self.token_info(slot)?;
            if !info.token_initialized() {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// Initialise a token labelled `label` unless one exists; see `Hsm::init_token`.
    pub(crate) fn init_token(
        &self,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), Error> {
        check_token_label(label)?;
        let _serial = self
            .init_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut existing = self.tokens_labelled(label)?;
        if existing.len() > 1 {
            return Err(Error::DuplicateToken {
                label: label.to_owned(),
                count: existing.len(),
            });
        }
        if let Some((slot, info)) = existing.pop() {
            // A crash between C_InitToken and C_InitPIN leaves a token without user PIN:
            // finish the job instead of failing forever.
            if !info.user_pin_initialized() {
                info!(token = label, "token exists without user PIN; setting it");
                self.set_user_pin(slot, so_pin, user_pin)?;
            }
            return Ok(());
        }
        let slot = self.free_slot()?.ok_or_else(|| Error::NoFreeSlot {
            label: label.to_owned(),
        })?;
        self.ctx
            .init_token(slot, so_pin, label)
            .map_err(pkcs11("C_InitToken"))?;
        self.set_user_pin(slot, so_pin, user_pin)?;
        info!(token = label, slot = slot.id(), "initialised token");
        Ok(())
    }

    fn set_user_pin(
        &self,
        slot: Slot,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), Error> {
        // A short-lived session of our own: closing it on drop logs the SO out.
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(pkcs11("C_OpenSession"))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(pkcs11("C_Login"))?;
        session.init_pin(user_pin).map_err(pkcs11("C_InitPIN"))?;
        session.logout().map_err(pkcs11("C_Logout"))?;
        session.close().map_err(pkcs11("C_CloseSession"))
    }
}
