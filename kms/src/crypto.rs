//! Small, audited-by-eye wrappers over RustCrypto primitives used by the JOSE layer and by
//! key sealing at rest: AES-256-GCM with detached tags, HKDF-SHA-256, randomness, and a
//! zeroizing 256-bit key type that has no `Debug`, `Clone` or `Serialize`.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::Rng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A 256-bit symmetric key, wiped on drop. Deliberately not `Debug`/`Clone`/`Serialize`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey32([u8; 32]);

impl SecretKey32 {
    /// A fresh key from the operating system's CSPRNG (through rand's thread RNG, reseeded
    /// from the OS).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }

    /// Takes ownership of the bytes; the caller's copy should be a `Zeroizing` buffer.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Copies from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    #[must_use]
    /// An explicit copy (for handing a key to a second owner, e.g. a cache).
    pub fn duplicate(&self) -> Self {
        Self(self.0)
    }
}

/// AEAD failure: the tag, IV, AAD or ciphertext did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AeadError;

pub const GCM_IV_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;

/// Random 96-bit GCM IV.
pub fn random_iv() -> [u8; GCM_IV_LEN] {
    let mut iv = [0u8; GCM_IV_LEN];
    rand::rng().fill_bytes(&mut iv);
    iv
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// AES-256-GCM encrypt in place; returns the 16-byte tag.
pub fn gcm_encrypt(
    key: &SecretKey32,
    iv: &[u8; GCM_IV_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; GCM_TAG_LEN], AeadError> {
    let cipher = Aes256Gcm::new(key.expose().into());
    let nonce = Nonce::from(*iv);
    let tag = cipher
        .encrypt_inout_detached(&nonce, aad, buf.into())
        .map_err(|_| AeadError)?;
    Ok(tag.into())
}

/// AES-256-GCM decrypt in place; on failure the buffer is wiped.
pub fn gcm_decrypt(
    key: &SecretKey32,
    iv: &[u8],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), AeadError> {
    let iv: [u8; GCM_IV_LEN] = iv.try_into().map_err(|_| AeadError)?;
    let tag: [u8; GCM_TAG_LEN] = tag.try_into().map_err(|_| AeadError)?;
    let cipher = Aes256Gcm::new(key.expose().into());
    let res = cipher.decrypt_inout_detached(&Nonce::from(iv), aad, buf.into(), &Tag::from(tag));
    if res.is_err() {
        buf.zeroize();
        return Err(AeadError);
    }
    Ok(())
}

/// HKDF-SHA-256 with a 32-zero-byte salt and empty info, L = 32: the node-kms ECDHE
/// key derivation (protocol.md, handshake step 3).
pub fn hkdf_sha256_zero_salt(ikm: &[u8]) -> SecretKey32 {
    let salt = [0u8; 32];
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    // INVARIANT: 32 bytes is far below HKDF-SHA-256's 255*32 output limit.
    #[allow(clippy::expect_used)]
    hk.expand(&[], okm.as_mut())
        .expect("32-byte HKDF output is always valid");
    SecretKey32::from_bytes(*okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcm_round_trip_and_tamper() {
        let k = SecretKey32::generate();
        let iv = random_iv();
        let mut buf = b"hello world".to_vec();
        let tag = gcm_encrypt(&k, &iv, b"aad", &mut buf).unwrap();
        assert_ne!(&buf, b"hello world");
        let mut ok = buf.clone();
        gcm_decrypt(&k, &iv, b"aad", &mut ok, &tag).unwrap();
        assert_eq!(ok, b"hello world");
        let mut bad = buf.clone();
        assert!(gcm_decrypt(&k, &iv, b"aae", &mut bad, &tag).is_err());
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert!(gcm_decrypt(&k, &iv, b"aad", &mut bad, &tag).is_err());
    }
}
