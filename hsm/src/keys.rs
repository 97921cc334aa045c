//! The three key objects: templates, finding by label, creating when missing.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use tracing::info;

use crate::config::KeyLabels;
use crate::error::{Error, pkcs11};

/// AES-256.
const ROOT_KEY_BYTES: u64 = 32;
const RSA_PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];
/// DER of OID 1.2.840.10045.3.1.7 (prime256v1 / secp256r1), as `CKA_EC_PARAMS` wants it.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// One of the key objects strongroom keeps on the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Root,
    RsaPrivate,
    RsaPublic,
    EcPrivate,
    EcPublic,
}

impl Key {
    pub(crate) fn label(self, labels: &KeyLabels) -> &str {
        match self {
            Self::Root => &labels.root,
            Self::RsaPrivate | Self::RsaPublic => &labels.rsa,
            Self::EcPrivate | Self::EcPublic => &labels.ec,
        }
    }

    fn class(self) -> ObjectClass {
        match self {
            Self::Root => ObjectClass::SECRET_KEY,
            Self::RsaPrivate | Self::EcPrivate => ObjectClass::PRIVATE_KEY,
            Self::RsaPublic | Self::EcPublic => ObjectClass::PUBLIC_KEY,
        }
    }

    fn key_type(self) -> KeyType {
        match self {
            Self::Root => KeyType::AES,
            Self::RsaPrivate | Self::RsaPublic => KeyType::RSA,
            Self::EcPrivate | Self::EcPublic => KeyType::EC,
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Self::Root => "AES root key",
            Self::RsaPrivate => "RSA private key",
            Self::RsaPublic => "RSA public key",
            Self::EcPrivate => "EC private key",
            Self::EcPublic => "EC public key",
        }
    }
}

/// Object handles found so far. Handles are per process and may go stale
/// (`CKR_OBJECT_HANDLE_INVALID`); the session layer then clears them and they are found again.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Handles {
    root: Option<ObjectHandle>,
    rsa_private: Option<ObjectHandle>,
    rsa_public: Option<ObjectHandle>,
    ec_private: Option<ObjectHandle>,
    ec_public: Option<ObjectHandle>,
}

impl Handles {
    fn slot(&mut self, key: Key) -> &mut Option<ObjectHandle> {
        match key {
            Key::Root => &mut self.root,
            Key::RsaPrivate => &mut self.rsa_private,
            Key::RsaPublic => &mut self.rsa_public,
            Key::EcPrivate => &mut self.ec_private,
            Key::EcPublic => &mut self.ec_public,
        }
    }

    pub(crate) fn get(&self, key: Key) -> Option<ObjectHandle> {
        match key {
            Key::Root => self.root,
            Key::RsaPrivate => self.rsa_private,
            Key::RsaPublic => self.rsa_public,
            Key::EcPrivate => self.ec_private,
            Key::EcPublic => self.ec_public,
        }
    }

    pub(crate) fn set(&mut self, key: Key, handle: ObjectHandle) {
        *self.slot(key) = Some(handle);
    }

    /// The handle of `key`; the session layer resolves every key an operation names
    /// before running it, so `KeyNotFound` here means a key was not declared.
    pub(crate) fn require(&self, key: Key, labels: &KeyLabels) -> Result<ObjectHandle, Error> {
        self.get(key).ok_or_else(|| Error::KeyNotFound {
            label: key.label(labels).to_owned(),
            kind: key.kind(),
        })
    }
}

/// The unique object for `key`, or `None`. Two objects with one label are an error:
/// picking one could sign with the wrong key or wrap under a key that is not backed up.
pub(crate) fn find(
    session: &Session,
    key: Key,
    labels: &KeyLabels,
) -> Result<Option<ObjectHandle>, Error> {
    let label = key.label(labels);
    let template = [
        Attribute::Class(key.class()),
        Attribute::KeyType(key.key_type()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let mut found = session
        .find_objects(&template)
        .map_err(pkcs11("C_FindObjects"))?;
    if found.len() > 1 {
        return Err(Error::DuplicateKey {
            label: label.to_owned(),
            kind: key.kind(),
            count: found.len(),
        });
    }
    Ok(found.pop())
}

/// Find every key, create what is missing, check that what exists is protected.
/// Runs under the exclusive lock, so two threads of this process never both create.
pub(crate) fn ensure(
    session: &Session,
    labels: &KeyLabels,
    rsa_bits: u32,
    handles: &mut Handles,
) -> Result<(), Error> {
    let root = match find(session, Key::Root, labels)? {
        Some(root) => {
            check_protected(session, root, &labels.root, true)?;
            root
        }
        None => generate_root(session, &labels.root)?,
    };
    handles.set(Key::Root, root);
    for (private, public) in [
        (Key::RsaPrivate, Key::RsaPublic),
        (Key::EcPrivate, Key::EcPublic),
    ] {
        let label = private.label(labels);
        let found = (
            find(session, private, labels)?,
            find(session, public, labels)?,
        );
        let pair = match found {
            (Some(sk), Some(pk)) => {
                check_protected(session, sk, label, false)?;
                (sk, pk)
            }
            (None, None) => generate_pair(session, private, label, rsa_bits)?,
            (Some(_), None) | (None, Some(_)) => {
                let missing = if found.0.is_none() { private } else { public };
                return Err(Error::IncompleteKeyPair {
                    label: label.to_owned(),
                    missing: missing.kind(),
                });
            }
        };
        handles.set(private, pair.0);
        handles.set(public, pair.1);
    }
    Ok(())
}

fn generate_root(session: &Session, label: &str) -> Result<ObjectHandle, Error> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(ROOT_KEY_BYTES.into()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    let handle = session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(pkcs11("C_GenerateKey"))?;
    info!(label, "generated AES-256 root key in the HSM");
    Ok(handle)
}

fn generate_pair(
    session: &Session,
    private: Key,
    label: &str,
    rsa_bits: u32,
) -> Result<(ObjectHandle, ObjectHandle), Error> {
    let common = |class| {
        vec![
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
            Attribute::Token(true),
        ]
    };
    let mut public = common(ObjectClass::PUBLIC_KEY);
    public.extend([Attribute::Private(false), Attribute::Verify(true)]);
    let mut secret = common(ObjectClass::PRIVATE_KEY);
    secret.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    let mechanism = if private == Key::RsaPrivate {
        public.extend([
            Attribute::KeyType(KeyType::RSA),
            Attribute::ModulusBits(u64::from(rsa_bits).into()),
            Attribute::PublicExponent(RSA_PUBLIC_EXPONENT.to_vec()),
            Attribute::Encrypt(true),
        ]);
        secret.extend([Attribute::KeyType(KeyType::RSA), Attribute::Decrypt(true)]);
        Mechanism::RsaPkcsKeyPairGen
    } else {
        public.extend([
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256_EC_PARAMS.to_vec()),
        ]);
        secret.push(Attribute::KeyType(KeyType::EC));
        Mechanism::EccKeyPairGen
    };
    let (pk, sk) = session
        .generate_key_pair(&mechanism, &public, &secret)
        .map_err(pkcs11("C_GenerateKeyPair"))?;
    info!(
        label,
        kind = private.kind(),
        "generated key pair in the HSM"
    );
    Ok((sk, pk))
}

/// Refuse an existing key that could leave the HSM: someone may have created it by hand.
fn check_protected(
    session: &Session,
    handle: ObjectHandle,
    label: &str,
    is_root: bool,
) -> Result<(), Error> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
                AttributeType::ValueLen,
            ],
        )
        .map_err(pkcs11("C_GetAttributeValue"))?;
    let insecure = |reason| {
        Err(Error::InsecureKey {
            label: label.to_owned(),
            reason,
        })
    };
    let (mut sensitive, mut extractable, mut token, mut len) = (None, None, None, None);
    for attr in attrs {
        match attr {
            Attribute::Sensitive(v) => sensitive = Some(v),
            Attribute::Extractable(v) => extractable = Some(v),
            Attribute::Token(v) => token = Some(v),
            Attribute::ValueLen(v) => len = Some(u64::from(v)),
            _ => {}
        }
    }
    if sensitive != Some(true) {
        return insecure("CKA_SENSITIVE is not true");
    }
    if extractable != Some(false) {
        return insecure("CKA_EXTRACTABLE is not false");
    }
    if token != Some(true) {
        return insecure("not a token object");
    }
    if is_root && len != Some(ROOT_KEY_BYTES) {
        return insecure("not an AES-256 key");
    }
    Ok(())
}

/// The SEC1 uncompressed point inside `CKA_EC_POINT`. PKCS#11 says the attribute is a
/// DER OCTET STRING (`04 41 04 x y`); some tokens return the bare point, accept both.
pub(crate) fn sec1_point(ec_point: &[u8]) -> Option<[u8; 65]> {
    let point = match ec_point {
        [0x04, 0x41, inner @ ..] if inner.len() == 65 => inner,
        bare if bare.len() == 65 => bare,
        _ => return None,
    };
    match point {
        [0x04, ..] => point.try_into().ok(),
        _ => None,
    }
}

/// Big-endian integer without leading zero bytes (zero stays one byte).
pub(crate) fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes.get(start..).unwrap_or_default().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_der_and_bare() {
        let mut bare = [7u8; 65];
        bare[0] = 0x04;
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&bare);
        assert_eq!(sec1_point(&der), Some(bare));
        assert_eq!(sec1_point(&bare), Some(bare));
        // Compressed point, wrong lengths, wrong inner tag.
        assert_eq!(sec1_point(&[0x02; 33]), None);
        assert_eq!(sec1_point(&der[..66]), None);
        let mut bad = der.clone();
        bad[2] = 0x03;
        assert_eq!(sec1_point(&bad), None);
        assert_eq!(sec1_point(&[]), None);
    }

    #[test]
    fn leading_zeros() {
        assert_eq!(strip_leading_zeros(&[0, 0, 1, 0]), vec![1, 0]);
        assert_eq!(strip_leading_zeros(&[1, 0, 1]), vec![1, 0, 1]);
        assert_eq!(strip_leading_zeros(&[0, 0]), vec![0]);
        assert_eq!(strip_leading_zeros(&[]), Vec::<u8>::new());
    }

    #[test]
    fn handles_roundtrip() {
        let labels = KeyLabels::default();
        let handles = Handles::default();
        assert!(matches!(
            handles.require(Key::EcPublic, &labels),
            Err(Error::KeyNotFound { .. })
        ));
        assert_eq!(Key::EcPublic.label(&labels), "strongroom-audit-ec");
        assert_eq!(Key::RsaPrivate.label(&labels), "strongroom-static-rsa");
        assert_eq!(Key::Root.label(&labels), "strongroom-root");
        assert!(handles.get(Key::Root).is_none());
    }
}
