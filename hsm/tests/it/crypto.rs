//! RSA-OAEP decryption and signatures, checked with independent software implementations.

use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier;
use sha1::Sha1;
use sha2::Sha256;
use strongroom_hsm::{Error, RsaScheme};

use crate::fixture::{ec_key, hsm_with_keys, rsa_key};

/// Test 2: software OAEP(SHA-1) encryption, HSM decryption.
#[test]
fn rsa_oaep_sha1_roundtrip_and_wrong_ciphertext() {
    let (hsm, _config) = hsm_with_keys("oaep");
    let public = rsa_key(&hsm);
    let secret = b"ephemeral ECDH half of the handshake";
    let ciphertext = public.oaep_encrypt::<Sha1>(secret).unwrap();
    assert_eq!(ciphertext.len(), 384);
    let plaintext = hsm.rsa_oaep_sha1_decrypt(&ciphertext).unwrap();
    assert_eq!(plaintext.as_slice(), secret);

    let mut tampered = ciphertext.clone();
    tampered[100] ^= 0x01;
    let err = hsm.rsa_oaep_sha1_decrypt(&tampered).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Pkcs11 {
                function: "C_Decrypt",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("C_Decrypt failed: "), "{err}");

    // OAEP with SHA-256 is a different scheme: must not decrypt as SHA-1.
    let other = public.oaep_encrypt::<Sha256>(secret).unwrap();
    assert!(hsm.rsa_oaep_sha1_decrypt(&other).is_err());

    // A failure leaves nothing behind that breaks the next call.
    let again = hsm.rsa_oaep_sha1_decrypt(&ciphertext).unwrap();
    assert_eq!(again.as_slice(), secret);
}

/// Test 3: RS256 and PS256 verify with the `rsa` crate, ES256 with `p256`.
#[test]
fn signatures_verify_in_software() {
    let (hsm, _config) = hsm_with_keys("signatures");
    let public = rsa_key(&hsm);
    let message = b"KMS handshake reply";
    let wrong = b"KMS handshake reply!";

    let rs256 = hsm.rsa_sign(RsaScheme::Pkcs1v15Sha256, message).unwrap();
    assert_eq!(rs256.len(), 384);
    public.pkcs1v15_verify::<Sha256>(message, &rs256).unwrap();
    assert!(public.pkcs1v15_verify::<Sha256>(wrong, &rs256).is_err());
    assert!(public.pss_verify::<Sha256>(message, &rs256).is_err());

    let ps256 = hsm.rsa_sign(RsaScheme::PssSha256, message).unwrap();
    // pss_verify checks the salt length equals the digest size (32), as PS256 requires.
    public.pss_verify::<Sha256>(message, &ps256).unwrap();
    assert!(public.pss_verify::<Sha256>(wrong, &ps256).is_err());
    let ps256_again = hsm.rsa_sign(RsaScheme::PssSha256, message).unwrap();
    assert_ne!(ps256, ps256_again, "PSS salt is random");

    let verifying = ec_key(&hsm);
    let es256 = hsm.ecdsa_p256_sign(message).unwrap();
    let signature = Signature::from_slice(&es256).unwrap();
    verifying.verify(message, &signature).unwrap();
    assert!(verifying.verify(wrong, &signature).is_err());
}
