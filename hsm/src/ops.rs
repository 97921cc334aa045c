//! The cryptographic operations, each a few PKCS#11 calls on a pooled session.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::Hsm;
use crate::error::{Error, pkcs11};
use crate::keys::{Key, sec1_point, strip_leading_zeros};

/// Length of the secrets `wrap_key` protects (AES-256 KEKs).
const WRAPPED_SECRET_BYTES: usize = 32;
/// PS256 salt length: the SHA-256 output size, as RFC 7518 requires.
const PSS_SALT_BYTES: u64 = 32;

/// RSA signature scheme of [`Hsm::rsa_sign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaScheme {
    /// RS256: RSASSA-PKCS1-v1_5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    Pkcs1v15Sha256,
    /// PS256: RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt (`CKM_SHA256_RSA_PKCS_PSS`).
    PssSha256,
}

/// The static RSA public key: big-endian integers without leading zero bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    /// `n`, 384 bytes for the 3072-bit key.
    pub modulus: Vec<u8>,
    /// `e`, normally `[1, 0, 1]` (65537).
    pub public_exponent: Vec<u8>,
}

/// Protection attributes of the root key, as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // one bool per PKCS#11 attribute, by design
pub struct RootKeyFlags {
    /// `CKA_SENSITIVE`: the value cannot be read out in the clear.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key may be wrapped out of the token.
    pub extractable: bool,
    /// `CKA_TOKEN`: a persistent token object, not a session object.
    pub token: bool,
    /// `CKA_ALWAYS_SENSITIVE`: it has been sensitive since it was created.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: it has never been extractable.
    pub never_extractable: bool,
}

impl Hsm {
    /// Decrypt an RSA-OAEP ciphertext (SHA-1, MGF1-SHA-1, empty label) with the static key.
    pub fn rsa_oaep_sha1_decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.inner.run(&[Key::RsaPrivate], |session, handles| {
            let key = handles.require(Key::RsaPrivate, &self.inner.labels)?;
            let params = PkcsOaepParams::new(
                MechanismType::SHA1,
                PkcsMgfType::MGF1_SHA1,
                PkcsOaepSource::empty(),
            );
            session
                .decrypt(&Mechanism::RsaPkcsOaep(params), key, ciphertext)
                .map(Zeroizing::new)
                .map_err(pkcs11("C_Decrypt"))
        })
    }

    /// Sign `message` with the static RSA key (the token hashes it).
    pub fn rsa_sign(&self, scheme: RsaScheme, message: &[u8]) -> Result<Vec<u8>, Error> {
        let mechanism = match scheme {
            RsaScheme::Pkcs1v15Sha256 => Mechanism::Sha256RsaPkcs,
            RsaScheme::PssSha256 => Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: PSS_SALT_BYTES.into(),
            }),
        };
        self.inner.run(&[Key::RsaPrivate], |session, handles| {
            let key = handles.require(Key::RsaPrivate, &self.inner.labels)?;
            session
                .sign(&mechanism, key, message)
                .map_err(pkcs11("C_Sign"))
        })
    }

    /// ECDSA P-256 over SHA-256 of `message`; returns `r || s` (the JWS ES256 format).
    /// `SoftHSM2` has no `CKM_ECDSA_SHA256`, so we hash here and sign with `CKM_ECDSA`.
    pub fn ecdsa_p256_sign(&self, message: &[u8]) -> Result<[u8; 64], Error> {
        let digest = Sha256::digest(message);
        let signature = self.inner.run(&[Key::EcPrivate], |session, handles| {
            let key = handles.require(Key::EcPrivate, &self.inner.labels)?;
            session
                .sign(&Mechanism::Ecdsa, key, &digest)
                .map_err(pkcs11("C_Sign"))
        })?;
        signature
            .as_slice()
            .try_into()
            .map_err(|_| Error::UnexpectedResponse {
                what: "ECDSA signature length",
            })
    }

    /// The static RSA public key.
    pub fn rsa_public_key(&self) -> Result<RsaPublicKey, Error> {
        self.inner.run(&[Key::RsaPublic], |session, handles| {
            let key = handles.require(Key::RsaPublic, &self.inner.labels)?;
            let attrs = session
                .get_attributes(
                    key,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(pkcs11("C_GetAttributeValue"))?;
            let (mut modulus, mut public_exponent) = (None, None);
            for attr in attrs {
                match attr {
                    Attribute::Modulus(n) => modulus = Some(strip_leading_zeros(&n)),
                    Attribute::PublicExponent(e) => public_exponent = Some(strip_leading_zeros(&e)),
                    _ => {}
                }
            }
            match (modulus, public_exponent) {
                (Some(modulus), Some(public_exponent)) => Ok(RsaPublicKey {
                    modulus,
                    public_exponent,
                }),
                _ => Err(Error::UnexpectedResponse {
                    what: "RSA public key attributes",
                }),
            }
        })
    }

    /// The audit key's public point, SEC1 uncompressed (`04 || x || y`).
    pub fn ec_public_key(&self) -> Result<[u8; 65], Error> {
        self.inner.run(&[Key::EcPublic], |session, handles| {
            let key = handles.require(Key::EcPublic, &self.inner.labels)?;
            let attrs = session
                .get_attributes(key, &[AttributeType::EcPoint])
                .map_err(pkcs11("C_GetAttributeValue"))?;
            attrs
                .iter()
                .find_map(|attr| match attr {
                    Attribute::EcPoint(point) => sec1_point(point),
                    _ => None,
                })
                .ok_or(Error::UnexpectedResponse {
                    what: "CKA_EC_POINT encoding",
                })
        })
    }

    /// Wrap a 32-byte secret under the root key with the configured mechanism.
    ///
    /// The secret enters the token as a sensitive, extractable session object that is
    /// destroyed right after `C_WrapKey` (and with its session, should that fail).
    pub fn wrap_key(&self, key: &[u8; 32]) -> Result<Vec<u8>, Error> {
        let mechanism = self.inner.wrap.mechanism()?;
        self.inner.run(&[Key::Root], |session, handles| {
            let root = handles.require(Key::Root, &self.inner.labels)?;
            let mut template = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Value(key.to_vec()),
            ];
            let created = session.create_object(&template);
            for attr in &mut template {
                if let Attribute::Value(value) = attr {
                    value.zeroize();
                }
            }
            let object = created.map_err(pkcs11("C_CreateObject"))?;
            let wrapped = session.wrap_key(&mechanism, root, object);
            // Destroy even when wrapping failed; on error the session is closed anyway.
            session
                .destroy_object(object)
                .map_err(pkcs11("C_DestroyObject"))?;
            wrapped.map_err(pkcs11("C_WrapKey"))
        })
    }

    /// Unwrap what [`Hsm::wrap_key`] produced. A tampered blob fails the AES key wrap
    /// integrity check inside the token (`C_UnwrapKey` fails).
    pub fn unwrap_key(&self, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, Error> {
        let mechanism = self.inner.wrap.mechanism()?;
        let value = self.inner.run(&[Key::Root], |session, handles| {
            let root = handles.require(Key::Root, &self.inner.labels)?;
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ];
            let object = session
                .unwrap_key(&mechanism, root, wrapped, &template)
                .map_err(pkcs11("C_UnwrapKey"))?;
            let attrs = session.get_attributes(object, &[AttributeType::Value]);
            let destroyed = session.destroy_object(object);
            let mut value = None;
            for attr in attrs.map_err(pkcs11("C_GetAttributeValue"))? {
                if let Attribute::Value(bytes) = attr {
                    value = Some(Zeroizing::new(bytes));
                }
            }
            destroyed.map_err(pkcs11("C_DestroyObject"))?;
            value.ok_or(Error::UnexpectedResponse {
                what: "unwrapped key without CKA_VALUE",
            })
        })?;
        if value.len() != WRAPPED_SECRET_BYTES {
            return Err(Error::BadKeyLength {
                expected: WRAPPED_SECRET_BYTES,
                actual: value.len(),
            });
        }
        let mut key = Zeroizing::new([0u8; WRAPPED_SECRET_BYTES]);
        // INVARIANT: lengths are equal (checked above), so copy_from_slice cannot panic.
        key.copy_from_slice(&value);
        Ok(key)
    }

    /// Protection attributes of the root key.
    pub fn root_key_flags(&self) -> Result<RootKeyFlags, Error> {
        self.inner.run(&[Key::Root], |session, handles| {
            let root = handles.require(Key::Root, &self.inner.labels)?;
            let attrs = session
                .get_attributes(
                    root,
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Token,
                        AttributeType::AlwaysSensitive,
                        AttributeType::NeverExtractable,
                    ],
                )
                .map_err(pkcs11("C_GetAttributeValue"))?;
            let (mut sensitive, mut extractable, mut token) = (None, None, None);
            let (mut always_sensitive, mut never_extractable) = (None, None);
            for attr in attrs {
                match attr {
                    Attribute::Sensitive(v) => sensitive = Some(v),
                    Attribute::Extractable(v) => extractable = Some(v),
                    Attribute::Token(v) => token = Some(v),
                    Attribute::AlwaysSensitive(v) => always_sensitive = Some(v),
                    Attribute::NeverExtractable(v) => never_extractable = Some(v),
                    _ => {}
                }
            }
            match (
                sensitive,
                extractable,
                token,
                always_sensitive,
                never_extractable,
            ) {
                (Some(sensitive), Some(extractable), Some(token), Some(always), Some(never)) => {
                    Ok(RootKeyFlags {
                        sensitive,
                        extractable,
                        token,
                        always_sensitive: always,
                        never_extractable: never,
                    })
                }
                _ => Err(Error::UnexpectedResponse {
                    what: "root key attributes",
                }),
            }
        })
    }
}
