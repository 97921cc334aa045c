//! Key objects: protection of the root key, create-or-find, label rules.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use strongroom_hsm::{Error, Hsm};

use crate::fixture::{hsm_with_keys, raw, token};

fn count_labelled(label: &str, token_label: &str) -> usize {
    let raw = raw(token_label);
    let session = raw.ctx.open_ro_session(raw.slot).unwrap();
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
        .len()
}

/// Generates a 256-bit AES key behind the Hsm's back, with `extra` attributes.
fn aes_key(session: &Session, extra: &[Attribute]) -> ObjectHandle {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
    ];
    template.extend_from_slice(extra);
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .unwrap()
}

/// Test 1: the root key cannot leave the HSM.
#[test]
fn root_key_is_sensitive_and_never_leaves_the_hsm() {
    let (hsm, config) = hsm_with_keys("root-key");
    let flags = hsm.root_key_flags().unwrap();
    assert!(flags.sensitive, "{flags:?}");
    assert!(!flags.extractable, "{flags:?}");
    assert!(flags.token, "{flags:?}");
    assert!(flags.always_sensitive, "{flags:?}");
    assert!(flags.never_extractable, "{flags:?}");

    // Behind the Hsm's back, with plain cryptoki in the same (logged-in) application.
    let raw = raw(&config.token_label);
    let session = raw.ctx.open_rw_session(raw.slot).unwrap();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(config.labels.root.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let root = found[0];

    // Wrapping it out under another key fails.
    let wrapping = aes_key(&session, &[Attribute::Token(false), Attribute::Wrap(true)]);
    let wrapped = session.wrap_key(&Mechanism::AesKeyWrap, wrapping, root);
    assert!(
        matches!(wrapped, Err(CkError::Pkcs11(RvError::KeyUnextractable, _))),
        "{wrapped:?}"
    );

    // Reading CKA_VALUE fails: the token reports it sensitive and returns no value.
    let info = session
        .get_attribute_info(root, &[AttributeType::Value])
        .unwrap();
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "{info:?}"
    );
    let read = session.get_attributes(root, &[AttributeType::Value]);
    let leaked = read.is_ok_and(|attrs| attrs.iter().any(|a| matches!(a, Attribute::Value(_))));
    assert!(!leaked, "CKA_VALUE of the root key was readable");

    // And it cannot be made extractable after the fact.
    let flip = session.update_attributes(root, &[Attribute::Extractable(true)]);
    assert!(flip.is_err(), "CKA_EXTRACTABLE flipped to true");
    assert!(!hsm.root_key_flags().unwrap().extractable);
}

/// Test 5: `ensure_keys` finds instead of creating again; a reopened token has the same keys.
#[test]
fn ensure_keys_is_idempotent_and_keys_survive_reopen() {
    let (hsm, config) = hsm_with_keys("idempotent");
    let rsa_before = hsm.rsa_public_key().unwrap();
    let ec_before = hsm.ec_public_key().unwrap();
    let blob = hsm.wrap_key(&[0x5a; 32]).unwrap();

    hsm.ensure_keys().unwrap();
    hsm.ensure_keys().unwrap();
    assert_eq!(hsm.rsa_public_key().unwrap(), rsa_before);
    assert_eq!(hsm.ec_public_key().unwrap(), ec_before);
    assert_eq!(count_labelled(&config.labels.root, &config.token_label), 1);
    assert_eq!(count_labelled(&config.labels.rsa, &config.token_label), 2);
    assert_eq!(count_labelled(&config.labels.ec, &config.token_label), 2);

    drop(hsm);
    let hsm = Hsm::open(&config).unwrap();
    // No ensure_keys: the keys are found by label.
    assert_eq!(hsm.rsa_public_key().unwrap(), rsa_before);
    assert_eq!(hsm.ec_public_key().unwrap(), ec_before);
    assert_eq!(*hsm.unwrap_key(&blob).unwrap(), [0x5a; 32], "same root key");
    hsm.ensure_keys().unwrap();
    assert_eq!(count_labelled(&config.labels.rsa, &config.token_label), 2);
    assert_eq!(hsm.rsa_public_key().unwrap(), rsa_before);
}

#[test]
fn missing_keys_are_reported_not_created() {
    let config = token("missing-keys");
    let hsm = Hsm::open(&config).unwrap();
    let err = hsm.ecdsa_p256_sign(b"x").unwrap_err();
    assert!(
        matches!(&err, Error::KeyNotFound { label, .. } if *label == config.labels.ec),
        "{err}"
    );
    assert_eq!(count_labelled(&config.labels.ec, &config.token_label), 0);
}

/// Two objects with one label: error out, do not guess.
#[test]
fn duplicate_labels_are_refused() {
    let (_hsm, config) = hsm_with_keys("duplicates");
    let raw = raw(&config.token_label);
    let session = raw.ctx.open_rw_session(raw.slot).unwrap();
    let twin = aes_key(
        &session,
        &[
            Attribute::Token(false),
            Attribute::Label(config.labels.root.as_bytes().to_vec()),
        ],
    );
    // A fresh Hsm has no cached handle and must look the root key up.
    let hsm = Hsm::open(&config).unwrap();
    let err = hsm.wrap_key(&[1; 32]).unwrap_err();
    assert!(
        matches!(&err, Error::DuplicateKey { count: 2, .. }),
        "{err}"
    );
    assert!(hsm.ensure_keys().is_err());
    session.destroy_object(twin).unwrap();
    hsm.wrap_key(&[1; 32]).unwrap();
}

/// A pre-existing key that could leave the token is refused rather than used.
#[test]
fn extractable_root_key_is_refused() {
    let config = token("insecure-root");
    let hsm = Hsm::open(&config).unwrap();
    let raw = raw(&config.token_label);
    let session = raw.ctx.open_rw_session(raw.slot).unwrap();
    aes_key(
        &session,
        &[
            Attribute::Token(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Label(config.labels.root.as_bytes().to_vec()),
        ],
    );
    let err = hsm.ensure_keys().unwrap_err();
    assert!(matches!(&err, Error::InsecureKey { .. }), "{err}");
}

#[test]
fn init_token_is_idempotent_and_open_checks_labels() {
    let config = token("init-twice");
    let so = secrecy::SecretString::from(crate::fixture::SO_PIN);
    Hsm::init_token(&config.module, &config.token_label, &so, &config.pin).unwrap();
    let hsm = Hsm::open(&config).unwrap();
    assert_eq!(hsm.token_label(), config.token_label);

    let mut missing = strongroom_hsm::HsmConfig::new("t-no-such-token", config.pin.clone());
    missing.module.clone_from(&config.module);
    let err = Hsm::open(&missing).unwrap_err();
    assert!(matches!(err, Error::TokenNotFound { .. }), "{err}");

    let too_long = "x".repeat(33);
    let err = Hsm::init_token(&config.module, &too_long, &so, &config.pin).unwrap_err();
    assert!(matches!(err, Error::InvalidTokenLabel { .. }), "{err}");
}
