//! Wrapping secrets under the root key.

use cryptoki::object::{Attribute, ObjectClass};
use strongroom_hsm::{Error, Hsm, WrapMechanism};

use crate::fixture::{hsm_with_keys, raw};

/// Session objects (`CKA_TOKEN=false`) visible to this application on the token.
fn session_secret_keys(token_label: &str) -> usize {
    let raw = raw(token_label);
    let session = raw.ctx.open_ro_session(raw.slot).unwrap();
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(false),
        ])
        .unwrap()
        .len()
}

/// Test 4: round trip; tampering is detected; no temporary key objects are left over.
#[test]
fn wrap_unwrap_roundtrip_and_tamper_detection() {
    let (hsm, config) = hsm_with_keys("wrap");
    let kek: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap() * 7 + 1);
    let wrapped = hsm.wrap_key(&kek).unwrap();
    assert_eq!(wrapped.len(), 40, "RFC 3394 adds 8 bytes");
    assert!(
        !wrapped.windows(8).any(|w| kek.windows(8).any(|k| k == w)),
        "wrapped blob contains the key"
    );
    assert_eq!(*hsm.unwrap_key(&wrapped).unwrap(), kek);

    for position in [0, 17, wrapped.len() - 1] {
        let mut tampered = wrapped.clone();
        tampered[position] ^= 0x80;
        let err = hsm.unwrap_key(&tampered).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Pkcs11 {
                    function: "C_UnwrapKey",
                    ..
                }
            ),
            "byte {position}: {err:?}"
        );
    }
    assert!(hsm.unwrap_key(&wrapped[..32]).is_err(), "truncated");
    assert!(hsm.unwrap_key(&[]).is_err(), "empty");

    // A different secret wraps differently, and both still unwrap.
    let other = hsm.wrap_key(&[0xff; 32]).unwrap();
    assert_ne!(other, wrapped);
    assert_eq!(*hsm.unwrap_key(&other).unwrap(), [0xff; 32]);
    assert_eq!(*hsm.unwrap_key(&wrapped).unwrap(), kek);

    assert_eq!(
        session_secret_keys(&config.token_label),
        0,
        "temporary keys left"
    );
}

#[test]
fn softhsm_padded_wrap_and_unsupported_kwp() {
    let (_hsm, mut config) = hsm_with_keys("wrap-pad");
    config.wrap_mechanism = WrapMechanism::AesKeyWrapPadSoftHsm;
    let hsm = Hsm::open(&config).unwrap();
    let wrapped = hsm.wrap_key(&[0x42; 32]).unwrap();
    assert_eq!(*hsm.unwrap_key(&wrapped).unwrap(), [0x42; 32]);
    let mut tampered = wrapped.clone();
    tampered[3] ^= 1;
    assert!(hsm.unwrap_key(&tampered).is_err());

    // A blob wrapped with one mechanism does not unwrap with the other.
    config.wrap_mechanism = WrapMechanism::AesKeyWrap;
    let plain = Hsm::open(&config).unwrap();
    assert!(plain.unwrap_key(&wrapped).is_err());

    config.wrap_mechanism = WrapMechanism::AesKeyWrapKwp;
    let err = Hsm::open(&config).unwrap_err();
    assert!(matches!(err, Error::UnsupportedMechanism { .. }), "{err}");
}
