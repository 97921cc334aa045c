//! Self-recovery: lost sessions, lost login, stale object handles.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier;
use secrecy::SecretString;
use sha1::Sha1;
use sha2::Sha256;
use strongroom_hsm::{Error, Hsm, RsaScheme};

use crate::fixture::{USER_PIN, ec_key, hsm_with_keys, raw, rsa_key, token};

/// Every public operation once, each checked against its expected result.
fn exercise_everything(hsm: &Hsm, blob: &[u8], kek: &[u8; 32]) {
    let rsa = rsa_key(hsm);
    let ciphertext = rsa.oaep_encrypt::<Sha1>(b"after reset").unwrap();
    assert_eq!(
        hsm.rsa_oaep_sha1_decrypt(&ciphertext).unwrap().as_slice(),
        b"after reset"
    );
    let rs256 = hsm.rsa_sign(RsaScheme::Pkcs1v15Sha256, b"m").unwrap();
    rsa.pkcs1v15_verify::<Sha256>(b"m", &rs256).unwrap();
    let ps256 = hsm.rsa_sign(RsaScheme::PssSha256, b"m").unwrap();
    rsa.pss_verify::<Sha256>(b"m", &ps256).unwrap();
    let es256 = hsm.ecdsa_p256_sign(b"m").unwrap();
    ec_key(hsm)
        .verify(b"m", &Signature::from_slice(&es256).unwrap())
        .unwrap();
    assert_eq!(*hsm.unwrap_key(blob).unwrap(), *kek);
    let again = hsm.wrap_key(kek).unwrap();
    assert_eq!(*hsm.unwrap_key(&again).unwrap(), *kek);
    assert!(!hsm.root_key_flags().unwrap().extractable);
}

/// Test 6: after `close_all_sessions` (which logs the application out) every operation
/// works without the caller doing anything.
#[test]
fn every_operation_recovers_after_close_all_sessions() {
    let (hsm, config) = hsm_with_keys("close-all");
    let kek = [0x11; 32];
    let blob = hsm.wrap_key(&kek).unwrap();

    hsm.close_all_sessions().unwrap();
    // The application really is logged out: a fresh session sees no private objects.
    let raw = raw(&config.token_label);
    {
        let session = raw.ctx.open_ro_session(raw.slot).unwrap();
        let private = session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap();
        assert!(
            private.is_empty(),
            "still logged in after close_all_sessions"
        );
    }
    exercise_everything(&hsm, &blob, &kek);

    // Now before each single operation.
    let ops: [fn(&Hsm); 7] = [
        |h| assert_eq!(h.rsa_public_key().unwrap().modulus.len(), 384),
        |h| assert_eq!(h.ec_public_key().unwrap()[0], 0x04),
        |h| assert_eq!(h.rsa_sign(RsaScheme::PssSha256, b"x").unwrap().len(), 384),
        |h| assert_eq!(h.ecdsa_p256_sign(b"x").unwrap().len(), 64),
        |h| assert_eq!(h.wrap_key(&[3; 32]).unwrap().len(), 40),
        |h| assert!(h.root_key_flags().unwrap().sensitive),
        |h| h.ensure_keys().unwrap(),
    ];
    for op in &ops {
        hsm.close_all_sessions().unwrap();
        op(&hsm);
    }
    hsm.close_all_sessions().unwrap();
    assert_eq!(*hsm.unwrap_key(&blob).unwrap(), kek);
    hsm.close_all_sessions().unwrap();
    hsm.close_all_sessions().unwrap();
    exercise_everything(&hsm, &blob, &kek);
}

/// Someone else logs the application out (`C_Logout` is application-wide): the next
/// operation fails with a not-logged-in/handle error, logs in again and retries.
#[test]
fn external_logout_is_recovered() {
    let (hsm, config) = hsm_with_keys("ext-logout");
    let kek = [0x22; 32];
    let blob = hsm.wrap_key(&kek).unwrap();
    let raw = raw(&config.token_label);
    let session = raw.ctx.open_rw_session(raw.slot).unwrap();
    for round in 0..3 {
        session.logout().unwrap();
        assert!(
            session
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                .unwrap()
                .is_empty(),
            "round {round}: logout did not take"
        );
        exercise_everything(&hsm, &blob, &kek);
    }

    // A fresh Hsm has no handles yet: the first lookup must not run logged out
    // (it would miss the private keys and report them missing).
    drop(hsm);
    let hsm = Hsm::open(&config).unwrap();
    session.logout().unwrap();
    hsm.ecdsa_p256_sign(b"first use after logout").unwrap();
    session.logout().unwrap();
    hsm.ensure_keys().unwrap();
    assert_eq!(
        session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .unwrap()
            .len(),
        2,
        "ensure_keys created keys while logged out"
    );
}

/// A key replaced behind our back (old handle now invalid) is found again by label.
#[test]
fn replaced_key_is_found_again_by_label() {
    let (hsm, config) = hsm_with_keys("stale-handle");
    let before = hsm.ec_public_key().unwrap();
    hsm.ecdsa_p256_sign(b"warm the handle cache").unwrap();

    let raw = raw(&config.token_label);
    let session = raw.ctx.open_rw_session(raw.slot).unwrap();
    for handle in session
        .find_objects(&[Attribute::Label(config.labels.ec.as_bytes().to_vec())])
        .unwrap()
    {
        session.destroy_object(handle).unwrap();
    }
    let label = config.labels.ec.as_bytes().to_vec();
    session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Label(label.clone()),
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(vec![
                    0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07,
                ]),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Label(label),
                Attribute::KeyType(KeyType::EC),
                Attribute::Sign(true),
            ],
        )
        .unwrap();

    let signature = hsm.ecdsa_p256_sign(b"new key").unwrap();
    let after = hsm.ec_public_key().unwrap();
    assert_ne!(before, after, "still the old public key");
    ec_key(&hsm)
        .verify(b"new key", &Signature::from_slice(&signature).unwrap())
        .unwrap();
}

/// A wrong PIN names `C_Login`; a PIN changed under us stops further login attempts.
#[test]
fn rejected_pin_is_reported_and_not_retried() {
    let mut config = token("pin-change");
    let good_pin = config.pin.clone();
    // Before any Hsm is logged in: afterwards C_Login says "already logged in".
    config.pin = SecretString::from("wrong-pin-123");
    let err = Hsm::open(&config).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Pkcs11 {
                function: "C_Login",
                ..
            }
        ),
        "{err:?}"
    );
    config.pin = good_pin.clone();
    let hsm = Hsm::open(&config).unwrap();
    hsm.ensure_keys().unwrap();

    // Change the user PIN behind the Hsm's back, then log everybody out.
    let raw = raw(&config.token_label);
    let session = raw.ctx.open_rw_session(raw.slot).unwrap();
    session
        .set_pin(&good_pin, &SecretString::from("new-user-pin-456"))
        .unwrap();
    session.logout().unwrap();
    let first = hsm.rsa_sign(RsaScheme::Pkcs1v15Sha256, b"m").unwrap_err();
    assert!(
        matches!(
            &first,
            Error::Pkcs11 {
                function: "C_Login",
                ..
            }
        ),
        "{first:?}"
    );
    let second = hsm.rsa_sign(RsaScheme::Pkcs1v15Sha256, b"m").unwrap_err();
    assert!(matches!(&second, Error::LoginBlocked { .. }), "{second:?}");
    assert!(!format!("{first:?}{second:?}{first}{second}").contains(USER_PIN));

    // Put the PIN back so the token stays usable for whoever looks at it later.
    session
        .login(
            UserType::User,
            Some(&SecretString::from("new-user-pin-456")),
        )
        .unwrap();
    session
        .set_pin(&SecretString::from("new-user-pin-456"), &good_pin)
        .unwrap();
}

/// `pool_stats` (for `/metrics`) reports the login and counts recoveries.
#[test]
fn pool_stats_follow_close_and_recovery() {
    let (hsm, _config) = hsm_with_keys("pool-stats");
    let before = hsm.pool_stats();
    assert!(before.connected);
    assert_eq!(before.reconnects, 0);
    assert!(before.size >= 1);
    hsm.close_all_sessions().unwrap();
    let closed = hsm.pool_stats();
    assert!(!closed.connected, "{closed:?}");
    assert_eq!(closed.idle, 0);
    hsm.ecdsa_p256_sign(b"m").unwrap();
    let after = hsm.pool_stats();
    assert!(after.connected, "{after:?}");
    assert!(after.reconnects > before.reconnects, "{after:?}");
}
