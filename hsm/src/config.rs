//! What `Hsm::open` needs to know: module, token, PIN, object labels, wrap mechanism.

use std::fmt;
use std::path::{Path, PathBuf};

use cryptoki::mechanism::Mechanism;
use secrecy::SecretString;

use crate::error::Error;

/// Debian's path, and what we name when `SoftHSM2` is not installed anywhere.
const SOFTHSM_MODULE_DEFAULT: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Where distributions install `SoftHSM2`'s PKCS#11 module, most common first.
const SOFTHSM_MODULE_CANDIDATES: [&str; 4] = [
    SOFTHSM_MODULE_DEFAULT,
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// PKCS#11 pads token labels to 32 bytes; anything longer is silently cut by cryptoki.
pub(crate) const MAX_TOKEN_LABEL_BYTES: usize = 32;

/// Everything needed to open the HSM. `Debug` never shows the PIN.
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`.so`); `SoftHSM2` is the default.
    pub module: PathBuf,
    /// Label of the token that holds strongroom's keys.
    pub token_label: String,
    /// User PIN. Never logged, never part of an error or of `Debug` output.
    pub pin: SecretString,
    /// `CKA_LABEL`s of the three key objects.
    pub labels: KeyLabels,
    /// How `wrap_key`/`unwrap_key` wrap under the root key.
    pub wrap_mechanism: WrapMechanism,
    /// How many idle sessions are kept for reuse (besides the anchor session).
    /// More may be open while many threads work at once; 0 keeps none.
    pub pool_size: usize,
    /// Modulus size of the static RSA key when `ensure_keys` has to generate it: 2048,
    /// 3072 (default) or 4096. An existing key is used whatever its size.
    pub rsa_bits: u32,
}

impl HsmConfig {
    /// Default pool size: enough for the request workers of one appliance.
    pub const DEFAULT_POOL_SIZE: usize = 4;
    /// Default static RSA modulus (NIST's 128-bit security level).
    pub const DEFAULT_RSA_BITS: u32 = 3072;

    /// A configuration with `SoftHSM2` as module and default labels, mechanism and pool size.
    pub fn new(token_label: impl Into<String>, pin: SecretString) -> Self {
        Self {
            module: Self::softhsm_default_module(),
            token_label: token_label.into(),
            pin,
            labels: KeyLabels::default(),
            wrap_mechanism: WrapMechanism::default(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            rsa_bits: Self::DEFAULT_RSA_BITS,
        }
    }

    /// The first `SoftHSM2` module found in the usual install locations
    /// (`/usr/lib/softhsm/libsofthsm2.so` when none exists, so the error names the usual path).
    pub fn softhsm_default_module() -> PathBuf {
        SOFTHSM_MODULE_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .unwrap_or(Path::new(SOFTHSM_MODULE_DEFAULT))
            .to_path_buf()
    }
}

impl fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"[redacted]")
            .field("labels", &self.labels)
            .field("wrap_mechanism", &self.wrap_mechanism)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// `CKA_LABEL`s of strongroom's key objects on the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLabels {
    /// Non-extractable AES-256 root key (wraps the KEK).
    pub root: String,
    /// Static RSA-3072 key pair (handshake decryption and signatures).
    pub rsa: String,
    /// ECDSA P-256 key pair (audit checkpoint signatures).
    pub ec: String,
}

impl Default for KeyLabels {
    fn default() -> Self {
        Self {
            root: "strongroom-root".to_owned(),
            rsa: "strongroom-static-rsa".to_owned(),
            ec: "strongroom-audit-ec".to_owned(),
        }
    }
}

/// Mechanism used to wrap keys under the root key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WrapMechanism {
    /// `CKM_AES_KEY_WRAP` (RFC 3394, 0x2109). Every HSM we target has it.
    #[default]
    AesKeyWrap,
    /// `SoftHSM2`'s padded AES key wrap, code 0x210A (`CKM_AES_KEY_WRAP_PAD` in the
    /// PKCS#11 2.40 headers; `SoftHSM2` implements RFC 5649 under it).
    AesKeyWrapPadSoftHsm,
    /// PKCS#11 3.x `CKM_AES_KEY_WRAP_KWP` (RFC 5649, 0x210B). cryptoki 0.12 has no way to
    /// name this mechanism without `unsafe`, so `Hsm::open` rejects it for now.
    AesKeyWrapKwp,
}

impl WrapMechanism {
    /// The PKCS#11 mechanism code, for logs and errors.
    pub fn code(self) -> u64 {
        match self {
            Self::AesKeyWrap => 0x2109,
            Self::AesKeyWrapPadSoftHsm => 0x210A,
            Self::AesKeyWrapKwp => 0x210B,
        }
    }

    pub(crate) fn mechanism(self) -> Result<Mechanism<'static>, Error> {
        match self {
            Self::AesKeyWrap => Ok(Mechanism::AesKeyWrap),
            Self::AesKeyWrapPadSoftHsm => Ok(Mechanism::AesKeyWrapPad),
            // MechanismType::new_vendor_defined only accepts codes >= CKM_VENDOR_DEFINED and
            // TryFrom<CK_MECHANISM_TYPE> does not list 0x210B in cryptoki 0.12.1.
            Self::AesKeyWrapKwp => Err(Error::UnsupportedMechanism {
                mechanism: self,
                reason: "cryptoki 0.12 cannot express CKM_AES_KEY_WRAP_KWP (0x210B)",
            }),
        }
    }
}

impl fmt::Display for WrapMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::AesKeyWrap => "CKM_AES_KEY_WRAP",
            Self::AesKeyWrapPadSoftHsm => "CKM_AES_KEY_WRAP_PAD",
            Self::AesKeyWrapKwp => "CKM_AES_KEY_WRAP_KWP",
        };
        write!(f, "{name} (0x{:04X})", self.code())
    }
}

/// Token labels travel blank-padded in a 32-byte field: reject what would not round-trip.
pub(crate) fn check_token_label(label: &str) -> Result<(), Error> {
    let ok = !label.is_empty()
        && label.len() <= MAX_TOKEN_LABEL_BYTES
        && label.trim() == label
        && !label.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidTokenLabel {
            label: label.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn debug_hides_pin() {
        let config = HsmConfig::new("tok", SecretString::from("hunter2-pin"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-pin"), "{shown}");
        assert!(shown.contains("tok"), "{shown}");
        assert_eq!(config.pin.expose_secret(), "hunter2-pin");
    }

    #[test]
    fn defaults() {
        let labels = KeyLabels::default();
        assert_eq!(labels.root, "strongroom-root");
        assert_eq!(labels.rsa, "strongroom-static-rsa");
        assert_eq!(labels.ec, "strongroom-audit-ec");
        assert_eq!(WrapMechanism::default(), WrapMechanism::AesKeyWrap);
        let config = HsmConfig::new("tok", SecretString::from("x"));
        assert_eq!(config.pool_size, 4);
        assert!(config.module.ends_with("libsofthsm2.so"));
    }

    #[test]
    fn token_labels() {
        assert!(check_token_label("strongroom").is_ok());
        assert!(check_token_label(&"a".repeat(32)).is_ok());
        assert!(check_token_label(&"a".repeat(33)).is_err());
        assert!(check_token_label("").is_err());
        assert!(check_token_label(" padded").is_err());
        assert!(check_token_label("padded ").is_err());
    }

    #[test]
    fn mechanism_codes() {
        assert_eq!(WrapMechanism::AesKeyWrapPadSoftHsm.code(), 0x210A);
        assert!(WrapMechanism::AesKeyWrap.mechanism().is_ok());
        assert!(WrapMechanism::AesKeyWrapPadSoftHsm.mechanism().is_ok());
        let err = WrapMechanism::AesKeyWrapKwp.mechanism().err();
        assert!(matches!(err, Some(Error::UnsupportedMechanism { .. })));
        assert_eq!(
            WrapMechanism::AesKeyWrap.to_string(),
            "CKM_AES_KEY_WRAP (0x2109)"
        );
    }
}
