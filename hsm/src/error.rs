//! The crate's one error type, and which PKCS#11 failures the session layer heals itself.

use std::fmt;
use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

use crate::config::WrapMechanism;

/// Everything that can go wrong talking to the HSM.
///
/// No variant carries a PIN or key bytes; `Debug` and `Display` are safe to log.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PKCS#11 module could not be loaded (`dlopen`, missing symbols).
    #[error("cannot load PKCS#11 module {}", path.display())]
    ModuleLoad {
        path: PathBuf,
        #[source]
        source: CkError,
    },
    /// A PKCS#11 call failed; `function` is its `C_` name, e.g. `C_Decrypt`.
    #[error("{function} failed: {}", RvName(source))]
    Pkcs11 {
        function: &'static str,
        #[source]
        source: CkError,
    },
    /// No token with this label is present.
    #[error("no token labelled {label:?} in any slot")]
    TokenNotFound { label: String },
    /// More than one token carries this label; we refuse to pick one.
    #[error("{count} tokens are labelled {label:?}; refusing to guess")]
    DuplicateToken { label: String, count: usize },
    /// `init_token` found no slot with an uninitialised token.
    #[error("no free slot to initialise token {label:?}")]
    NoFreeSlot { label: String },
    /// Token labels are 1 to 32 bytes without surrounding blanks.
    #[error("invalid token label {label:?}: 1 to 32 bytes, no surrounding blanks")]
    InvalidTokenLabel { label: String },
    /// The key object is missing; `Hsm::ensure_keys` creates it.
    #[error("no {kind} labelled {label:?} on the token (run ensure_keys)")]
    KeyNotFound { label: String, kind: &'static str },
    /// Several objects of one class and type share a label.
    #[error("{count} objects of kind {kind} are labelled {label:?}; refusing to guess")]
    DuplicateKey {
        label: String,
        kind: &'static str,
        count: usize,
    },
    /// Only one half of a key pair exists; regenerating would orphan the other half.
    #[error("key pair {label:?} is incomplete: {missing} is missing")]
    IncompleteKeyPair {
        label: String,
        missing: &'static str,
    },
    /// An existing key object lacks the protection strongroom requires.
    #[error("key {label:?} is not acceptable: {reason}")]
    InsecureKey { label: String, reason: &'static str },
    /// A key had an unexpected length.
    #[error("expected a {expected}-byte key, got {actual} bytes")]
    BadKeyLength { expected: usize, actual: usize },
    /// The configured static RSA modulus size is not 2048, 3072 or 4096 bits.
    #[error("unsupported RSA modulus size {bits} (use 2048, 3072 or 4096)")]
    UnsupportedRsaBits { bits: u32 },
    /// The token answered with something we cannot interpret.
    #[error("unexpected {what} from the token")]
    UnexpectedResponse { what: &'static str },
    /// The configured wrap mechanism cannot be used.
    #[error("wrap mechanism {mechanism} is not usable: {reason}")]
    UnsupportedMechanism {
        mechanism: WrapMechanism,
        reason: &'static str,
    },
    /// The token rejected the PIN once; we do not try again (a real HSM would lock the PIN).
    #[error("the token rejected the PIN earlier ({rv:?}); reopen the HSM with the right PIN")]
    LoginBlocked { rv: RvError },
}

/// What a failed call says about the state of our sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Sessions are gone (closed, token removed): open new ones and log in.
    Sessions,
    /// The application was logged out: log in again, keep the sessions if they live.
    Login,
    /// Cached object handles are stale: find the keys by label again.
    Handles,
}

impl Error {
    /// The PKCS#11 return value, when the error is a PKCS#11 failure.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            Self::Pkcs11 {
                source: CkError::Pkcs11(rv, _),
                ..
            } => Some(*rv),
            _ => None,
        }
    }

    /// Whether reconnecting, logging in and re-finding handles may cure this failure.
    pub(crate) fn recovery(&self) -> Option<Recovery> {
        match self.rv()? {
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent => Some(Recovery::Sessions),
            RvError::UserNotLoggedIn => Some(Recovery::Login),
            RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::WrappingKeyHandleInvalid
            | RvError::UnwrappingKeyHandleInvalid => Some(Recovery::Handles),
            _ => None,
        }
    }
}

/// `map_err` adapter: `session.decrypt(..).map_err(pkcs11("C_Decrypt"))`.
///
/// The name given here is used only when cryptoki does not say which function failed
/// (conversion errors); cryptoki's own record wins, so `find_objects` failing in
/// `C_FindObjectsInit` is reported as such.
pub(crate) fn pkcs11(fallback: &'static str) -> impl Fn(CkError) -> Error {
    move |source| {
        let function = match &source {
            CkError::Pkcs11(_, f) => function_name(*f).unwrap_or(fallback),
            _ => fallback,
        };
        Error::Pkcs11 { function, source }
    }
}

/// The `C_` names of the functions this crate calls (a table, not logic).
fn function_name(function: Function) -> Option<&'static str> {
    Some(match function {
        Function::Initialize => "C_Initialize",
        Function::GetInfo => "C_GetInfo",
        Function::GetSlotList => "C_GetSlotList",
        Function::GetSlotInfo => "C_GetSlotInfo",
        Function::GetTokenInfo => "C_GetTokenInfo",
        Function::GetMechanismInfo => "C_GetMechanismInfo",
        Function::InitToken => "C_InitToken",
        Function::InitPIN => "C_InitPIN",
        Function::OpenSession => "C_OpenSession",
        Function::CloseSession => "C_CloseSession",
        Function::CloseAllSessions => "C_CloseAllSessions",
        Function::GetSessionInfo => "C_GetSessionInfo",
        Function::Login => "C_Login",
        Function::Logout => "C_Logout",
        Function::CreateObject => "C_CreateObject",
        Function::DestroyObject => "C_DestroyObject",
        Function::GetAttributeValue => "C_GetAttributeValue",
        Function::FindObjectsInit => "C_FindObjectsInit",
        Function::FindObjects => "C_FindObjects",
        Function::FindObjectsFinal => "C_FindObjectsFinal",
        Function::DecryptInit => "C_DecryptInit",
        Function::Decrypt => "C_Decrypt",
        Function::SignInit => "C_SignInit",
        Function::Sign => "C_Sign",
        Function::GenerateKey => "C_GenerateKey",
        Function::GenerateKeyPair => "C_GenerateKeyPair",
        Function::WrapKey => "C_WrapKey",
        Function::UnwrapKey => "C_UnwrapKey",
        _ => return None,
    })
}

/// Short form of a cryptoki error for our `Display`: the return value's name
/// (`EncryptedDataInvalid`); the long prose stays in the `source`.
struct RvName<'a>(&'a CkError);

impl fmt::Display for RvName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            CkError::Pkcs11(rv, _) => write!(f, "{rv:?}"),
            other => write!(f, "{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(rv: RvError, f: Function) -> Error {
        pkcs11("C_Something")(CkError::Pkcs11(rv, f))
    }

    #[test]
    fn display_names_the_function() {
        let err = ck(RvError::EncryptedDataInvalid, Function::Decrypt);
        assert_eq!(err.to_string(), "C_Decrypt failed: EncryptedDataInvalid");
        assert_eq!(err.rv(), Some(RvError::EncryptedDataInvalid));
    }

    #[test]
    fn cryptoki_function_wins_over_fallback() {
        let err = ck(RvError::OperationActive, Function::FindObjectsInit);
        assert!(err.to_string().starts_with("C_FindObjectsInit failed"));
        let err = pkcs11("C_WrapKey")(CkError::InvalidValue);
        assert!(err.to_string().starts_with("C_WrapKey failed: "), "{err}");
        assert_eq!(err.rv(), None);
    }

    #[test]
    fn recovery_classes() {
        let sessions = [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
        ];
        for rv in sessions {
            assert_eq!(ck(rv, Function::Sign).recovery(), Some(Recovery::Sessions));
        }
        assert_eq!(
            ck(RvError::UserNotLoggedIn, Function::Sign).recovery(),
            Some(Recovery::Login)
        );
        for rv in [RvError::ObjectHandleInvalid, RvError::KeyHandleInvalid] {
            assert_eq!(ck(rv, Function::Sign).recovery(), Some(Recovery::Handles));
        }
        for rv in [
            RvError::EncryptedDataInvalid,
            RvError::GeneralError,
            RvError::PinIncorrect,
        ] {
            assert_eq!(ck(rv, Function::Decrypt).recovery(), None);
        }
        let not_pkcs11 = Error::TokenNotFound { label: "x".into() };
        assert_eq!(not_pkcs11.recovery(), None);
    }
}
