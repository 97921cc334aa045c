//! Checkpoints signed by the HSM's audit key (ECDSA P-256, never leaves the token).

use crate::checkpoint::CheckpointSigner;
use crate::error::{Error, Result};

/// [`CheckpointSigner`] over [`strongroom_hsm::Hsm::ecdsa_p256_sign`].
#[derive(Debug, Clone)]
pub struct HsmSigner {
    hsm: strongroom_hsm::Hsm,
    public: [u8; 65],
}

impl HsmSigner {
    /// Reads the audit public key once (the trait's `public_key` cannot fail).
    pub fn new(hsm: strongroom_hsm::Hsm) -> Result<Self> {
        let public = hsm
            .ec_public_key()
            .map_err(|e| Error::Signer(Box::new(e)))?;
        Ok(HsmSigner { hsm, public })
    }
}

impl CheckpointSigner for HsmSigner {
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        self.hsm
            .ecdsa_p256_sign(msg)
            .map_err(|e| Error::Signer(Box::new(e)))
    }
    fn public_key(&self) -> [u8; 65] {
        self.public
    }
}
