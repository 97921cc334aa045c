//! Signed checkpoints: a C2SP tlog-checkpoint (origin line, tree size, base64 root; no
//! extension lines) inside a C2SP signed note, signed with ECDSA P-256 by a key that
//! stays in the HSM.
//!
//! Signature type `0x02` (ECDSA, as transparency-dev/witness implements it):
//! - the signature line is `— <origin> base64(key ID || DER ECDSA-SHA256 signature)`;
//! - key ID = first four bytes (big-endian) of SHA-256 of the public key's DER
//!   SubjectPublicKeyInfo, as the signed-note spec says for type 0x02;
//! - the verifier key string is `<origin>+<hex key ID>+base64(0x02 || SPKI DER)`.
//!
//! The HSM returns raw `r || s`; it is DER-encoded here so that Go's
//! `ecdsa.VerifyASN1` (witness, sumdb tooling) verifies our notes unchanged.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::Digest as _;
use signed_note::{Note, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

use crate::error::{Error, Result};
use crate::tree::Digest;

/// Signs checkpoints. Implemented by [`HsmSigner`](crate::HsmSigner) (feature `hsm`)
/// and [`SoftwareSigner`]; anything that signs SHA-256(msg) with ECDSA P-256.
pub trait CheckpointSigner: Send + Sync {
    /// ECDSA P-256 signature of SHA-256(`msg`), raw `r || s`.
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]>;
    /// The uncompressed SEC1 public point (`0x04 || x || y`).
    fn public_key(&self) -> [u8; 65];
}

/// A P-256 key in memory, for tests, benchmarks and development. Production uses the HSM.
/// No `Debug`, `Clone` or serialisation; the `p256` key zeroizes itself on drop.
pub struct SoftwareSigner {
    key: p256::ecdsa::SigningKey,
}

impl SoftwareSigner {
    /// From a 32-byte big-endian scalar.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self> {
        let key = p256::ecdsa::SigningKey::from_slice(secret).map_err(|_| Error::PublicKey {
            reason: "the secret scalar is not a valid P-256 key",
        })?;
        Ok(SoftwareSigner { key })
    }
}

impl CheckpointSigner for SoftwareSigner {
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        use p256::ecdsa::signature::Signer as _;
        let sig: Signature = self
            .key
            .try_sign(msg)
            .map_err(|e| Error::Signer(Box::new(e)))?;
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }
    fn public_key(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out.copy_from_slice(&self.key.verifying_key().to_sec1_bytes());
        out
    }
}

/// DER SubjectPublicKeyInfo prefix of an uncompressed P-256 key (id-ecPublicKey,
/// prime256v1, BIT STRING of 66 bytes); the 65-byte point follows.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const SIG_TYPE_ECDSA: u8 = 0x02;

/// The public half of a log's checkpoint key, with the log's origin (the note key name).
/// This is what an auditor needs to verify a log or an export offline.
#[derive(Clone, PartialEq, Eq)]
pub struct LogKey {
    origin: String,
    point: [u8; 65],
    key: VerifyingKey,
}

impl fmt::Debug for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.vkey())
    }
}

impl LogKey {
    /// `origin` must be a valid note key name (non-empty, no spaces or `+`), e.g.
    /// `kms.example.com/audit`.
    pub fn new(origin: &str, point: [u8; 65]) -> Result<Self> {
        if !signed_note::is_key_name_valid(origin) || origin.contains('\n') {
            return Err(Error::PublicKey {
                reason: "origin is not a valid note key name",
            });
        }
        let key = VerifyingKey::from_sec1_bytes(&point).map_err(|_| Error::PublicKey {
            reason: "not an uncompressed P-256 point",
        })?;
        Ok(LogKey {
            origin: origin.to_owned(),
            point,
            key,
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The uncompressed public point.
    pub fn point(&self) -> [u8; 65] {
        self.point
    }

    /// DER SubjectPublicKeyInfo of the key.
    pub fn spki_der(&self) -> Vec<u8> {
        [&SPKI_P256_PREFIX[..], &self.point[..]].concat()
    }

    /// SHA-256(SPKI DER)[:4], big-endian (signed-note type 0x02).
    pub fn key_id(&self) -> u32 {
        let d = sha2::Sha256::digest(self.spki_der());
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// `<origin>+<hex key ID>+base64(0x02 || SPKI DER)`.
    pub fn vkey(&self) -> String {
        let mut body = vec![SIG_TYPE_ECDSA];
        body.extend(self.spki_der());
        format!("{}+{:08x}+{}", self.origin, self.key_id(), B64.encode(body))
    }

    /// Parses [`LogKey::vkey`] output, checking that the key ID matches the key.
    pub fn from_vkey(vkey: &str) -> Result<Self> {
        let bad = |reason| Error::PublicKey { reason };
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(origin), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected <origin>+<id>+<key>"));
        };
        let body = B64.decode(body).map_err(|_| bad("key is not base64"))?;
        let spki = body
            .strip_prefix(&[SIG_TYPE_ECDSA])
            .ok_or(bad("not an ECDSA (0x02) verifier key"))?;
        let point = spki
            .strip_prefix(&SPKI_P256_PREFIX[..])
            .and_then(|p| <[u8; 65]>::try_from(p).ok())
            .ok_or(bad("not a P-256 SubjectPublicKeyInfo"))?;
        let key = LogKey::new(origin, point)?;
        if format!("{:08x}", key.key_id()) != id {
            return Err(bad("key ID does not match the key"));
        }
        Ok(key)
    }
}

/// signed_note's verifier interface over our ECDSA key.
struct NoteVerifier<'a>(&'a LogKey);

impl signed_note::Verifier for NoteVerifier<'_> {
    fn name(&self) -> &str {
        &self.0.origin
    }
    fn key_id(&self) -> u32 {
        self.0.key_id()
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_der(sig).is_ok_and(|s| self.0.key.verify(msg, &s).is_ok())
    }
}

/// A verified (or freshly signed) checkpoint and its note text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    size: u64,
    root: Digest,
    note: String,
}

impl SignedCheckpoint {
    /// Builds the checkpoint body and signs it with `signer`; the signer's key must be
    /// `key`'s (checked, so a misconfigured HSM cannot write unverifiable checkpoints).
    pub fn sign(
        key: &LogKey,
        signer: &dyn CheckpointSigner,
        size: u64,
        root: Digest,
    ) -> Result<Self> {
        if signer.public_key() != key.point {
            return Err(Error::PublicKey {
                reason: "the signer's public key is not the log key",
            });
        }
        let body = Checkpoint::new(&key.origin, size, Hash(root), "")
            .map_err(|_| Error::Checkpoint {
                reason: "origin is not valid in a checkpoint",
            })?
            .to_bytes();
        let raw = signer.sign(&body)?;
        let der = Signature::from_slice(&raw)
            .map_err(|_| Error::Checkpoint {
                reason: "the signer returned an invalid ECDSA signature",
            })?
            .to_der();
        let sig =
            signed_note::Signature::new(key.origin.clone(), key.key_id(), der.as_bytes().to_vec())
                .map_err(|_| Error::Checkpoint {
                    reason: "origin is not a valid note key name",
                })?;
        let note = Note::new(&body, &[sig]).map_err(|_| Error::Checkpoint {
            reason: "checkpoint body is not a valid note text",
        })?;
        let checked = SignedCheckpoint::verify(&note.to_bytes(), key)?;
        Ok(checked)
    }

    /// Parses a signed note and accepts it only if it is a checkpoint of `key`'s origin
    /// carrying a valid signature by `key` (other signatures, e.g. witnesses', are kept
    /// in the text but not required).
    pub fn verify(note: &[u8], key: &LogKey) -> Result<Self> {
        let parsed = Note::from_bytes(note).map_err(|_| Error::Checkpoint {
            reason: "not a well-formed signed note",
        })?;
        let verifiers = VerifierList::new(vec![Box::new(OwnedVerifier(key.clone()))]);
        parsed.verify(&verifiers).map_err(|e| Error::Checkpoint {
            reason: match e {
                signed_note::NoteError::InvalidSignature { .. } => "invalid signature",
                signed_note::NoteError::UnverifiedNote => "no signature by the log key",
                _ => "signature check failed",
            },
        })?;
        let cp = Checkpoint::from_bytes(parsed.text()).map_err(|_| Error::Checkpoint {
            reason: "not a well-formed checkpoint",
        })?;
        if cp.origin() != key.origin || !cp.extension().is_empty() {
            return Err(Error::Checkpoint {
                reason: "checkpoint of another log (origin) or with extension lines",
            });
        }
        let note = String::from_utf8(note.to_vec()).map_err(|_| Error::Checkpoint {
            reason: "not UTF-8",
        })?;
        Ok(SignedCheckpoint {
            size: cp.size(),
            root: cp.hash().0,
            note,
        })
    }

    /// Tree size (number of records) the checkpoint commits to.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// RFC 9162 root of the first `size` records.
    pub fn root(&self) -> Digest {
        self.root
    }
    /// The signed note, as written and exported (ends with a newline).
    pub fn note(&self) -> &str {
        &self.note
    }
}

/// `VerifierList` wants `'static` boxes.
struct OwnedVerifier(LogKey);

impl signed_note::Verifier for OwnedVerifier {
    fn name(&self) -> &str {
        &self.0.origin
    }
    fn key_id(&self) -> u32 {
        self.0.key_id()
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signed_note::Verifier::verify(&NoteVerifier(&self.0), msg, sig)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn signer(seed: u8) -> (SoftwareSigner, LogKey) {
        let s = SoftwareSigner::from_bytes(&[seed; 32]).unwrap();
        let k = LogKey::new("kms.example.com/audit", s.public_key()).unwrap();
        (s, k)
    }

    #[test]
    fn spki_prefix_matches_the_p256_crate() {
        use p256::pkcs8::EncodePublicKey as _;
        let (s, k) = signer(3);
        let der = s.key.verifying_key().to_public_key_der().unwrap();
        assert_eq!(der.as_bytes(), k.spki_der().as_slice());
    }

    #[test]
    fn sign_verify_and_reject_other_keys_and_edits() {
        let (s, k) = signer(1);
        let cp = SignedCheckpoint::sign(&k, &s, 42, [9; 32]).unwrap();
        assert!(cp.note().starts_with("kms.example.com/audit\n42\n"));
        assert!(cp.note().contains("\n\n— kms.example.com/audit "));
        let back = SignedCheckpoint::verify(cp.note().as_bytes(), &k).unwrap();
        assert_eq!((back.size(), back.root()), (42, [9; 32]));

        let (_, other) = signer(2);
        let other = LogKey::new("kms.example.com/audit", other.point()).unwrap();
        assert!(SignedCheckpoint::verify(cp.note().as_bytes(), &other).is_err());
        let edited = cp.note().replacen("\n42\n", "\n43\n", 1);
        assert!(SignedCheckpoint::verify(edited.as_bytes(), &k).is_err());
        assert!(SignedCheckpoint::sign(&other, &s, 1, [0; 32]).is_err());
    }

    #[test]
    fn vkey_round_trips_and_checks_the_id() {
        let (_, k) = signer(5);
        let v = k.vkey();
        assert_eq!(LogKey::from_vkey(&v).unwrap(), k);
        let (name, rest) = v.split_once('+').unwrap();
        let wrong_id = format!("{name}+00000000+{}", rest.split_once('+').unwrap().1);
        assert!(LogKey::from_vkey(&wrong_id).is_err());
    }
}
