//! Compact JWE (RFC 7516) for exactly two key-management modes, both with `A256GCM`:
//! `RSA-OAEP` (SHA-1/MGF1-SHA-1, the ECDHE handshake, R2) and `dir` (every message on an
//! established channel, and content encryption under conversation keys, R4/R5).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{JoseError, b64d, b64e, parse_header, split_exact};
use crate::crypto::{self, GCM_IV_LEN, SecretKey32};

/// Key management algorithm of a JWE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    RsaOaep,
    Dir,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JweHeader {
    pub alg: String,
    pub enc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// A parsed, not yet decrypted, compact JWE. Borrowing the protected header text keeps the
/// AAD exactly as received (RFC 7516 §5.2 step 14).
#[derive(Debug)]
pub struct Jwe<'a> {
    pub header: JweHeader,
    pub alg: KeyAlg,
    protected_b64: &'a str,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl<'a> Jwe<'a> {
    /// Parses and validates the structure; refuses anything outside our profile.
    pub fn parse(compact: &'a str) -> Result<Self, JoseError> {
        let [h, ek, iv, ct, tag] = split_exact::<5>(compact)?;
        let header: JweHeader = parse_header(h)?;
        if header.enc != "A256GCM" {
            return Err(JoseError::UnsupportedAlg(header.enc));
        }
        let alg = match header.alg.as_str() {
            "RSA-OAEP" => KeyAlg::RsaOaep,
            "dir" => KeyAlg::Dir,
            other => return Err(JoseError::UnsupportedAlg(other.to_owned())),
        };
        let encrypted_key = b64d("encrypted key", ek)?;
        if alg == KeyAlg::Dir && !encrypted_key.is_empty() {
            return Err(JoseError::Header("dir requires an empty encrypted key"));
        }
        let iv = b64d("iv", iv)?;
        if iv.len() != GCM_IV_LEN {
            return Err(JoseError::Header("A256GCM requires a 96-bit IV"));
        }
        let tag = b64d("tag", tag)?;
        if tag.len() != crypto::GCM_TAG_LEN {
            return Err(JoseError::Header("A256GCM requires a 128-bit tag"));
        }
        Ok(Self {
            header,
            alg,
            protected_b64: h,
            encrypted_key,
            iv,
            ciphertext: b64d("ciphertext", ct)?,
            tag,
        })
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// Decrypts a `dir` JWE with the given content key.
    pub fn decrypt_dir(self, key: &SecretKey32) -> Result<Zeroizing<Vec<u8>>, JoseError> {
        if self.alg != KeyAlg::Dir {
            return Err(JoseError::UnsupportedAlg(self.header.alg));
        }
        self.decrypt_content(key)
    }

    /// Decrypts an `RSA-OAEP` JWE. `rsa_decrypt` performs the RSA-OAEP(SHA-1) private-key
    /// operation (in the HSM). If it fails, or yields a CEK of the wrong size, a random CEK
    /// is used so that the caller observes the same failure as for a bad tag (RFC 7516 §11.5:
    /// no padding oracle).
    pub fn decrypt_rsa_oaep<E>(
        self,
        rsa_decrypt: impl FnOnce(&[u8]) -> Result<Zeroizing<Vec<u8>>, E>,
    ) -> Result<Zeroizing<Vec<u8>>, JoseError> {
        if self.alg != KeyAlg::RsaOaep {
            return Err(JoseError::UnsupportedAlg(self.header.alg));
        }
        let cek = match rsa_decrypt(&self.encrypted_key) {
            Ok(bytes) => SecretKey32::from_slice(&bytes),
            Err(_) => None,
        }
        .unwrap_or_else(SecretKey32::generate);
        self.decrypt_content(&cek)
    }

    fn decrypt_content(self, key: &SecretKey32) -> Result<Zeroizing<Vec<u8>>, JoseError> {
        let mut buf = Zeroizing::new(self.ciphertext);
        crypto::gcm_decrypt(
            key,
            &self.iv,
            self.protected_b64.as_bytes(),
            &mut buf,
            &self.tag,
        )
        .map_err(|_| JoseError::Decrypt)?;
        Ok(buf)
    }
}

fn assemble(header_b64: &str, ek: &[u8], iv: &[u8], ct: &[u8], tag: &[u8]) -> String {
    let mut out = String::with_capacity(header_b64.len() + (ek.len() + ct.len()) * 4 / 3 + 64);
    out.push_str(header_b64);
    for part in [ek, iv, ct, tag] {
        out.push('.');
        out.push_str(&b64e(part));
    }
    out
}

fn header_b64(alg: &str, kid: Option<&str>) -> String {
    let header = JweHeader {
        alg: alg.to_owned(),
        enc: "A256GCM".to_owned(),
        kid: kid.map(str::to_owned),
    };
    // INVARIANT: serialising a struct of strings to JSON cannot fail.
    #[allow(clippy::expect_used)]
    let json = serde_json::to_vec(&header).expect("header serialises");
    b64e(&json)
}

/// Encrypts `plaintext` as a `dir`+`A256GCM` JWE with `kid` in the protected header (Webex
/// routes on it; protocol.md handshake step 4).
pub fn encrypt_dir(key: &SecretKey32, kid: &str, plaintext: &[u8]) -> String {
    let h = header_b64("dir", Some(kid));
    encrypt_with_cek(&h, &[], key, plaintext)
}

fn encrypt_with_cek(h: &str, ek: &[u8], cek: &SecretKey32, plaintext: &[u8]) -> String {
    let iv = crypto::random_iv();
    let mut buf = Zeroizing::new(plaintext.to_vec());
    // INVARIANT: AES-GCM encryption fails only for inputs over 64 GiB.
    #[allow(clippy::expect_used)]
    let tag = crypto::gcm_encrypt(cek, &iv, h.as_bytes(), &mut buf).expect("gcm encrypt");
    assemble(h, ek, &iv, &buf, &tag)
}

/// Client side (reference client, tests, benchmarks): `RSA-OAEP`+`A256GCM` to the KMS's
/// static public key.
pub fn encrypt_rsa_oaep(
    public: &rsa::PublicKey,
    kid: &str,
    plaintext: &[u8],
) -> Result<String, JoseError> {
    let cek = SecretKey32::generate();
    let ek = public
        .encrypt(
            &mut rand::rng(),
            rsa::Oaep::<sha1::Sha1>::new(),
            cek.expose(),
        )
        .map_err(|_| JoseError::Key("RSA-OAEP encryption failed"))?;
    let h = header_b64("RSA-OAEP", Some(kid));
    Ok(encrypt_with_cek(&h, &ek, &cek, plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_round_trip_and_every_part_is_authenticated() {
        let key = SecretKey32::generate();
        let jwe = encrypt_dir(&key, "kms://x/ecdhe/1", b"{\"a\":1}");
        let parsed = Jwe::parse(&jwe).unwrap();
        assert_eq!(parsed.kid(), Some("kms://x/ecdhe/1"));
        assert_eq!(&*parsed.decrypt_dir(&key).unwrap(), b"{\"a\":1}");

        let parts: Vec<&str> = jwe.split('.').collect();
        for (i, name) in [(0, "header"), (2, "iv"), (3, "ciphertext"), (4, "tag")] {
            let mut bytes = b64d("t", parts[i]).unwrap();
            bytes[0] ^= 0x01;
            let mut tampered = parts.clone();
            let enc = b64e(&bytes);
            tampered[i] = &enc;
            let t = tampered.join(".");
            let res = Jwe::parse(&t).and_then(|j| j.decrypt_dir(&key));
            assert!(res.is_err(), "tampered {name} accepted");
        }
        let other = SecretKey32::generate();
        assert!(Jwe::parse(&jwe).unwrap().decrypt_dir(&other).is_err());
    }

    #[test]
    fn refuses_other_algorithms() {
        let h = b64e(br#"{"alg":"A256KW","enc":"A256GCM"}"#);
        let jwe = format!("{h}.AA.AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA");
        assert!(matches!(
            Jwe::parse(&jwe),
            Err(JoseError::UnsupportedAlg(_))
        ));
        let h = b64e(br#"{"alg":"dir","enc":"A128GCM"}"#);
        let jwe = format!("{h}..AAAAAAAAAAAAAAAA.AA.AAAAAAAAAAAAAAAAAAAAAA");
        assert!(matches!(
            Jwe::parse(&jwe),
            Err(JoseError::UnsupportedAlg(_))
        ));
    }
}
