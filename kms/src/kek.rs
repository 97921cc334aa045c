//! The key-encryption key (architecture.md "Key hierarchy"): generated once, stored only
//! wrapped by the HSM root key, unwrapped at start into a zeroizing buffer. Every stored
//! conversation key and channel key is sealed under it with AES-256-GCM and the key's URI
//! as associated data, so a sealed blob moved to another record does not open.

use zeroize::Zeroizing;

use crate::crypto::{self, GCM_IV_LEN, GCM_TAG_LEN, SecretKey32};
use crate::storage::{StorageError, Store, Write};

/// Name of the meta record that holds the wrapped KEK.
pub const KEK_META: &str = "kek.wrapped.v1";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    #[error("HSM: {0}")]
    Hsm(#[from] strongroom_hsm::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("sealed key does not open (wrong KEK, wrong URI or tampered record)")]
    Unseal,
}

/// The KEK. No `Debug`, `Clone` or `Serialize`; wiped on drop; its page is locked in RAM
/// (`mlock`) so it never reaches swap. Field order matters: the key is wiped before the
/// page is unlocked.
pub struct Kek {
    key: Box<SecretKey32>,
    lock: Option<region::LockGuard>,
}

impl Kek {
    pub fn from_key(key: SecretKey32) -> Self {
        let key = Box::new(key);
        let lock = match region::lock(key.expose().as_ptr(), 32) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(error = %e, "could not lock the KEK in memory (raise RLIMIT_MEMLOCK / LimitMEMLOCK); it may be swapped");
                None
            }
        };
        Self { key, lock }
    }

    /// Whether the KEK's memory is locked (reported by status and health).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// Loads the wrapped KEK from the store and unwraps it in the HSM; `None` before the
    /// first start.
    pub fn load(store: &dyn Store, hsm: &strongroom_hsm::Hsm) -> Result<Option<Self>, KekError> {
        let Some(wrapped) = store.meta(KEK_META)? else {
            return Ok(None);
        };
        let raw = hsm.unwrap_key(&wrapped)?;
        Ok(Some(Self::from_key(SecretKey32::from_bytes(*raw))))
    }

    /// On first start: generates the KEK, wraps it in the HSM and stores it durably.
    pub async fn create(store: &dyn Store, hsm: &strongroom_hsm::Hsm) -> Result<Self, KekError> {
        let key = SecretKey32::generate();
        let wrapped = hsm.wrap_key(key.expose())?;
        store
            .apply(vec![Write::PutMeta {
                name: KEK_META.into(),
                value: wrapped,
            }])
            .await?;
        Ok(Self::from_key(key))
    }

    /// IV || ciphertext || tag.
    pub fn seal(&self, uri: &str, secret: &SecretKey32) -> Vec<u8> {
        let iv = crypto::random_iv();
        let mut buf = *secret.expose();
        // INVARIANT: AES-GCM over 32 bytes cannot exceed its length limit.
        #[allow(clippy::expect_used)]
        let tag = crypto::gcm_encrypt(&self.key, &iv, uri.as_bytes(), &mut buf).expect("seal");
        let mut out = Vec::with_capacity(GCM_IV_LEN + 32 + GCM_TAG_LEN);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&buf);
        out.extend_from_slice(&tag);
        out
    }

    pub fn unseal(&self, uri: &str, sealed: &[u8]) -> Result<SecretKey32, KekError> {
        if sealed.len() != GCM_IV_LEN + 32 + GCM_TAG_LEN {
            return Err(KekError::Unseal);
        }
        let (iv, rest) = sealed.split_at(GCM_IV_LEN);
        let (ct, tag) = rest.split_at(32);
        let mut buf = Zeroizing::new([0u8; 32]);
        buf.copy_from_slice(ct);
        crypto::gcm_decrypt(&self.key, iv, uri.as_bytes(), buf.as_mut(), tag)
            .map_err(|_| KekError::Unseal)?;
        Ok(SecretKey32::from_bytes(*buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_memory_is_locked() {
        // 32 bytes fit in any default RLIMIT_MEMLOCK (64 KiB or more).
        assert!(Kek::from_key(SecretKey32::generate()).is_locked());
    }

    #[test]
    fn seal_binds_the_uri() {
        let kek = Kek::from_key(SecretKey32::generate());
        let k = SecretKey32::generate();
        let sealed = kek.seal("kms://a/keys/1", &k);
        assert_eq!(
            kek.unseal("kms://a/keys/1", &sealed).unwrap().expose(),
            k.expose()
        );
        assert!(kek.unseal("kms://a/keys/2", &sealed).is_err());
        let mut t = sealed.clone();
        t[20] ^= 1;
        assert!(kek.unseal("kms://a/keys/1", &t).is_err());
        let other = Kek::from_key(SecretKey32::generate());
        assert!(other.unseal("kms://a/keys/1", &sealed).is_err());
    }
}
