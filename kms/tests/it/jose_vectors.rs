//! Known-answer tests for the JOSE profile (`strongroom_kms::jose`) and the ECDHE key
//! derivation: RFC 7520 §5.2 (RSA-OAEP + A256GCM) and §4.1 (RS256), RFC 7515 A.3 (ES256),
//! RFC 5869 A.3, node-kms's own test fixtures, and objects produced by the real node-kms 0.4.1 /
//! node-jose 2.2.0. Every source is named in `kms/test-vectors/README.md`.
//!
//! The server does its private-key operations in the HSM through closures; here the rsa and
//! p256 crates do them in software. RFC 7638 (thumbprint) is a unit test in `jose/jwk.rs`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed expectation is the test failing"
)]

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use rsa::BoxedUint;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
use serde::Deserialize;
use serde_json::Value;
use strongroom_kms::crypto::{self, SecretKey32};
use strongroom_kms::jose::jwe::{self, Jwe, KeyAlg};
use strongroom_kms::jose::jwk::{EcPublicJwk, RsaPublicJwk};
use strongroom_kms::jose::jws::{self, Jws, JwsAlg};
use strongroom_kms::jose::{JoseError, b64d, b64e};
use zeroize::Zeroizing;

const RFC7520_5_2: &str = include_str!("../../test-vectors/rfc7520-5.2-rsa-oaep-a256gcm.json");
const RFC7520_4_1: &str = include_str!("../../test-vectors/rfc7520-4.1-rs256.json");
const RFC7515_A_3: &str = include_str!("../../test-vectors/rfc7515-a.3-es256.json");
const NODE_KMS_FIXTURES: &str = include_str!("../../test-vectors/node-kms-fixtures.json");
const NODE_KMS_GENERATED: &str = include_str!("../../test-vectors/node-kms-generated.json");

// ---------------------------------------------------------------------------------------------
// Vector file shapes
// ---------------------------------------------------------------------------------------------

/// An RSA JWK with its private part (RFC 7518 §6.3.2). CRT members other than `p`/`q` are
/// ignored: the rsa crate recomputes them.
#[derive(Deserialize)]
struct RsaPrivateJwk {
    #[serde(default)]
    kid: String,
    n: String,
    e: String,
    d: String,
    p: String,
    q: String,
}

impl RsaPrivateJwk {
    /// The public key through our own JWK code path.
    fn public(&self) -> rsa::PublicKey {
        RsaPublicJwk {
            kty: "RSA".into(),
            kid: self.kid.clone(),
            n: self.n.clone(),
            e: self.e.clone(),
            x5c: vec![],
        }
        .to_public_key()
        .expect("vector public key is valid")
    }

    /// The private key as the HSM would hold it.
    fn private(&self) -> rsa::PrivateKey {
        let bits = u32::try_from(b64(&self.n).len() * 8).unwrap();
        let uint = |s: &str| BoxedUint::from_be_slice(&b64(s), bits).expect("fits the modulus");
        let e = BoxedUint::from_be_slice(&b64(&self.e), 64).expect("small exponent");
        rsa::PrivateKey::from_components(
            uint(&self.n),
            e,
            uint(&self.d),
            vec![uint(&self.p), uint(&self.q)],
        )
        .expect("vector private key is consistent")
    }
}

#[derive(Deserialize)]
struct EcPrivateJwk {
    x: String,
    y: String,
    d: String,
}

#[derive(Deserialize)]
struct Rfc7520Jwe {
    plaintext: String,
    key: RsaPrivateJwk,
    cek: String,
    compact: String,
}

#[derive(Deserialize)]
struct Rfc7520Jws {
    payload: String,
    key: RsaPrivateJwk,
    signing_input: String,
    signature: String,
    compact: String,
}

#[derive(Deserialize)]
struct Rfc7515Es256 {
    key: EcPrivateJwk,
    payload: String,
    compact: String,
}

#[derive(Deserialize)]
struct NodeKmsFixtures {
    ecdhe_hkdf: HkdfVector,
    server_key: RsaPrivateJwk,
    shared_key: SharedKey,
    response_rs256: ExpectedJson,
    response_dir: ExpectedJson,
    response_rsa1_5: Compact,
}

#[derive(Deserialize)]
struct HkdfVector {
    client: EcPrivateJwk,
    server: EcPublicJwk,
    k: String,
}

#[derive(Deserialize)]
struct SharedKey {
    uri: String,
    k: String,
}

#[derive(Deserialize)]
struct ExpectedJson {
    compact: String,
    expected: Value,
}

#[derive(Deserialize)]
struct Compact {
    compact: String,
}

#[derive(Deserialize)]
struct NodeKmsGenerated {
    rsa_private_jwk: RsaPrivateJwk,
    ec_public_jwk: EcPublicJwk,
    dir_shared_key: GeneratedDir,
    dir_derived_key: GeneratedDir,
    rsa_oaep_handshake: GeneratedJwe,
    jws: GeneratedJws,
}

#[derive(Deserialize)]
struct GeneratedDir {
    key: String,
    jwe: String,
    plaintext: String,
}

#[derive(Deserialize)]
struct GeneratedJwe {
    jwe: String,
    plaintext: String,
}

#[derive(Deserialize)]
struct GeneratedJws {
    payload: String,
    rs256: String,
    ps256: String,
    es256: String,
}

fn load<T: serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).expect("vector file parses")
}

// ---------------------------------------------------------------------------------------------
// Helpers: software stand-ins for the HSM, and tampering
// ---------------------------------------------------------------------------------------------

fn b64(s: &str) -> Vec<u8> {
    b64d("test vector", s).expect("vector is base64url")
}

fn key32(k: &str) -> SecretKey32 {
    SecretKey32::from_slice(&b64(k)).expect("32-byte key")
}

fn ec_public(x: &str, y: &str) -> EcPublicJwk {
    EcPublicJwk {
        kty: "EC".into(),
        crv: "P-256".into(),
        x: x.into(),
        y: y.into(),
    }
}

/// RSA-OAEP (SHA-1, MGF1-SHA-1) decryption, as `CKM_RSA_PKCS_OAEP` does it in the HSM.
fn oaep_decrypt(key: &rsa::PrivateKey, ek: &[u8]) -> Result<Zeroizing<Vec<u8>>, rsa::Error> {
    key.decrypt(rsa::Oaep::<sha1::Sha1>::new(), ek)
        .map(Zeroizing::new)
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (deterministic).
fn rs256_sign(key: &rsa::PrivateKey, input: &[u8]) -> Result<Vec<u8>, rsa::signature::Error> {
    rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone())
        .try_sign(input)
        .map(|s| s.to_vec())
}

/// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (RFC 7518 §3.5).
fn ps256_sign(key: &rsa::PrivateKey, input: &[u8]) -> Result<Vec<u8>, rsa::signature::Error> {
    rsa::pss::SigningKey::<sha2::Sha256>::new_with_salt_len(key.clone(), 32)
        .try_sign_with_rng(&mut rand::rng(), input)
        .map(|s| s.to_vec())
}

/// Flips one bit in the middle of the decoded `part` of a compact serialisation.
fn flip(compact: &str, part: usize) -> String {
    let mut parts: Vec<String> = compact.split('.').map(str::to_owned).collect();
    let mut bytes = b64(&parts[part]);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    parts[part] = b64e(&bytes);
    parts.join(".")
}

/// Replaces `from` by `to` in the decoded protected header: still valid JSON, different bytes.
fn edit_header(compact: &str, from: &str, to: &str) -> String {
    let (h, rest) = compact.split_once('.').unwrap();
    let header = String::from_utf8(b64(h)).unwrap();
    assert!(header.contains(from), "{header} lacks {from}");
    format!("{}.{rest}", b64e(header.replacen(from, to, 1).as_bytes()))
}

/// Replaces the payload of a compact JWS.
fn with_payload(compact: &str, payload: &[u8]) -> String {
    let parts: Vec<&str> = compact.split('.').collect();
    format!("{}.{}.{}", parts[0], b64e(payload), parts[2])
}

fn decrypt_oaep(compact: &str, key: &rsa::PrivateKey) -> Result<Zeroizing<Vec<u8>>, JoseError> {
    Jwe::parse(compact)?.decrypt_rsa_oaep(|ek| oaep_decrypt(key, ek))
}

fn decrypt_dir(compact: &str, key: &SecretKey32) -> Result<Zeroizing<Vec<u8>>, JoseError> {
    Jwe::parse(compact)?.decrypt_dir(key)
}

fn verify_rsa(compact: &str, key: &rsa::PublicKey) -> Result<Vec<u8>, JoseError> {
    Jws::parse(compact)?.verify_rsa(key)
}

fn verify_es256(compact: &str, key: &p256::ecdsa::VerifyingKey) -> Result<Vec<u8>, JoseError> {
    Jws::parse(compact)?.verify_es256(key)
}

// ---------------------------------------------------------------------------------------------
// HKDF / ECDHE (protocol.md handshake step 3)
// ---------------------------------------------------------------------------------------------

#[test]
fn hkdf_ecdhe_node_kms_context_test_vector() {
    let v: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    let v = v.ecdhe_hkdf;
    let client = p256::SecretKey::from_slice(&b64(&v.client.d)).unwrap();
    // The transcribed d belongs to the transcribed public key.
    assert_eq!(
        EcPublicJwk::from_public_key(&client.public_key()),
        ec_public(&v.client.x, &v.client.y)
    );
    let server = v.server.to_public_key().expect("server key is on P-256");
    let shared = client.diffie_hellman(&server);
    let k = crypto::hkdf_sha256_zero_salt(shared.raw_secret_bytes());
    assert_eq!(b64e(k.expose()), v.k);
}

#[test]
fn hkdf_zero_salt_rfc5869_a3() {
    // RFC 5869 A.3: an absent salt is HashLen zero bytes (§2.2), info empty. Our L = 32 output
    // is the first 32 bytes of the RFC's L = 42 OKM.
    let ikm = [0x0b_u8; 22];
    let okm = crypto::hkdf_sha256_zero_salt(&ikm);
    let expected: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(
                &"8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                    [2 * i..2 * i + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    assert_eq!(okm.expose().as_slice(), expected.as_slice());
}

// ---------------------------------------------------------------------------------------------
// RFC 7520 §5.2: RSA-OAEP + A256GCM
// ---------------------------------------------------------------------------------------------

#[test]
fn rfc7520_5_2_rsa_oaep_a256gcm_decrypts() {
    let v: Rfc7520Jwe = load(RFC7520_5_2);
    let key = v.key.private();
    let jwe = Jwe::parse(&v.compact).unwrap();
    assert_eq!(jwe.alg, KeyAlg::RsaOaep);
    assert_eq!(jwe.kid(), Some("samwise.gamgee@hobbiton.example"));
    let expected_ek = b64(v.compact.split('.').nth(1).unwrap());
    let plaintext = jwe
        .decrypt_rsa_oaep(|ek| {
            // The closure (the HSM) gets exactly the JWE Encrypted Key and yields the RFC's CEK.
            assert_eq!(ek, expected_ek.as_slice());
            let cek = oaep_decrypt(&key, ek)?;
            assert_eq!(cek.as_slice(), b64(&v.cek).as_slice());
            Ok::<_, rsa::Error>(cek)
        })
        .unwrap();
    assert_eq!(plaintext.as_slice(), v.plaintext.as_bytes());
}

#[test]
fn rfc7520_5_2_every_part_is_authenticated() {
    let v: Rfc7520Jwe = load(RFC7520_5_2);
    let key = v.key.private();
    assert!(decrypt_oaep(&v.compact, &key).is_ok());
    // Header: a flipped bit may break the JSON (parse error) or not (AAD mismatch): refused
    // either way. A well-formed but different header must fail authentication.
    assert!(decrypt_oaep(&flip(&v.compact, 0), &key).is_err());
    let kid_changed = edit_header(&v.compact, "samwise", "samwisE");
    assert_eq!(
        decrypt_oaep(&kid_changed, &key).err(),
        Some(JoseError::Decrypt)
    );
    // Encrypted key (OAEP fails, a random CEK is used: same error as a bad tag), IV,
    // ciphertext, tag.
    for part in 1..5 {
        let res = decrypt_oaep(&flip(&v.compact, part), &key);
        assert_eq!(res.err(), Some(JoseError::Decrypt), "tampered part {part}");
    }
    // The wrong private key (node-kms's test server key) also fails, with the same error.
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    let other = f.server_key.private();
    assert_eq!(
        decrypt_oaep(&v.compact, &other).err(),
        Some(JoseError::Decrypt)
    );
    // A `dir` decryption of an RSA-OAEP JWE is refused before any cryptography.
    let jwe = Jwe::parse(&v.compact).unwrap();
    assert!(matches!(
        jwe.decrypt_dir(&key32(&v.cek)),
        Err(JoseError::UnsupportedAlg(_))
    ));
}

#[test]
fn encrypt_rsa_oaep_round_trips_under_the_rfc7520_key() {
    // Our client-side encryption uses OAEP with SHA-1 (what the rsa crate's SHA-1 OAEP decrypts)
    // and a header that our parser and node-jose accept.
    let v: Rfc7520Jwe = load(RFC7520_5_2);
    let key = v.key.private();
    let compact =
        jwe::encrypt_rsa_oaep(&v.key.public(), "kms://kms.example/keys/static", b"ping").unwrap();
    let jwe = Jwe::parse(&compact).unwrap();
    assert_eq!(
        (jwe.header.alg.as_str(), jwe.header.enc.as_str()),
        ("RSA-OAEP", "A256GCM")
    );
    assert_eq!(jwe.kid(), Some("kms://kms.example/keys/static"));
    let ek = b64(compact.split('.').nth(1).unwrap());
    assert_eq!(oaep_decrypt(&key, &ek).unwrap().len(), 32);
    assert_eq!(decrypt_oaep(&compact, &key).unwrap().as_slice(), b"ping");
}

// ---------------------------------------------------------------------------------------------
// RFC 7520 §4.1: RS256
// ---------------------------------------------------------------------------------------------

#[test]
fn rfc7520_4_1_rs256_sign_reproduces_the_rfc_output() {
    let v: Rfc7520Jws = load(RFC7520_4_1);
    let key = v.key.private();
    let mut seen = Vec::new();
    let compact = jws::sign(JwsAlg::RS256, &v.key.kid, v.payload.as_bytes(), |input| {
        seen = input.to_vec();
        rs256_sign(&key, input)
    })
    .unwrap();
    // Our header serialises to the RFC's bytes, so the signing input and, PKCS#1 v1.5 being
    // deterministic, the whole JWS are the RFC's.
    assert_eq!(String::from_utf8(seen).unwrap(), v.signing_input);
    assert_eq!(compact, v.compact);
    assert_eq!(compact.rsplit('.').next(), Some(v.signature.as_str()));
}

#[test]
fn rfc7520_4_1_rs256_verifies_and_refuses_tampering() {
    let v: Rfc7520Jws = load(RFC7520_4_1);
    let public = v.key.public();
    assert_eq!(
        verify_rsa(&v.compact, &public).unwrap(),
        v.payload.as_bytes()
    );

    let mut payload = v.payload.clone().into_bytes();
    payload[0] ^= 0x01;
    let tampered_payload = with_payload(&v.compact, &payload);
    assert_eq!(
        verify_rsa(&tampered_payload, &public).err(),
        Some(JoseError::BadSignature)
    );
    assert_eq!(
        verify_rsa(&flip(&v.compact, 2), &public).err(),
        Some(JoseError::BadSignature)
    );
    let kid_changed = edit_header(&v.compact, "bilbo", "frodo");
    assert_eq!(
        verify_rsa(&kid_changed, &public).err(),
        Some(JoseError::BadSignature)
    );
    // Algorithm substitution: the same PKCS#1 v1.5 signature presented as PS256.
    let as_ps256 = edit_header(&v.compact, "RS256", "PS256");
    assert_eq!(
        verify_rsa(&as_ps256, &public).err(),
        Some(JoseError::BadSignature)
    );
    // Another key.
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    assert_eq!(
        verify_rsa(&v.compact, &f.server_key.public()).err(),
        Some(JoseError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// PS256: no RFC example (RFC 7520 §4.2 is PS384). Software PSS round trip plus an independent
// verifier; node-jose's PS256 is checked below with the generated vectors.
// ---------------------------------------------------------------------------------------------

#[test]
fn ps256_round_trip_and_independent_verifier() {
    let v: Rfc7520Jws = load(RFC7520_4_1);
    let key = v.key.private();
    let public = v.key.public();
    let payload = v.payload.as_bytes();

    let a = jws::sign(JwsAlg::PS256, &v.key.kid, payload, |i| ps256_sign(&key, i)).unwrap();
    let b = jws::sign(JwsAlg::PS256, &v.key.kid, payload, |i| ps256_sign(&key, i)).unwrap();
    assert_ne!(a, b, "PSS is randomised");
    assert_eq!(verify_rsa(&a, &public).unwrap(), payload);
    assert_eq!(verify_rsa(&b, &public).unwrap(), payload);

    // The rsa crate's verifier, detecting the salt length itself, accepts our JWS too.
    let (signing_input, sig) = a.rsplit_once('.').unwrap();
    let sig = rsa::pss::Signature::try_from(b64(sig).as_slice()).unwrap();
    rsa::pss::VerifyingKey::<sha2::Sha256>::new_with_auto_salt_len(public.clone())
        .verify(signing_input.as_bytes(), &sig)
        .expect("independent PSS verifier accepts");

    let mut tampered = payload.to_vec();
    tampered[0] ^= 0x01;
    assert_eq!(
        verify_rsa(&with_payload(&a, &tampered), &public).err(),
        Some(JoseError::BadSignature)
    );
    assert_eq!(
        verify_rsa(&flip(&a, 2), &public).err(),
        Some(JoseError::BadSignature)
    );
    assert_eq!(
        verify_rsa(&edit_header(&a, "PS256", "RS256"), &public).err(),
        Some(JoseError::BadSignature)
    );

    // The header's alg picks the verifier: a valid signature of the other RSA scheme, made
    // over that very header, is refused.
    let pss_as_rs256 =
        jws::sign(JwsAlg::RS256, &v.key.kid, payload, |i| ps256_sign(&key, i)).unwrap();
    assert_eq!(
        verify_rsa(&pss_as_rs256, &public).err(),
        Some(JoseError::BadSignature)
    );
    let pkcs1_as_ps256 =
        jws::sign(JwsAlg::PS256, &v.key.kid, payload, |i| rs256_sign(&key, i)).unwrap();
    assert_eq!(
        verify_rsa(&pkcs1_as_ps256, &public).err(),
        Some(JoseError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// RFC 7515 A.3: ES256
// ---------------------------------------------------------------------------------------------

#[test]
fn rfc7515_a3_es256_verifies_and_refuses_tampering() {
    let v: Rfc7515Es256 = load(RFC7515_A_3);
    let public = ec_public(&v.key.x, &v.key.y).to_public_key().unwrap();
    let vk = p256::ecdsa::VerifyingKey::from(&public);
    assert_eq!(verify_es256(&v.compact, &vk).unwrap(), v.payload.as_bytes());

    let mut payload = v.payload.clone().into_bytes();
    payload[0] ^= 0x01;
    assert_eq!(
        verify_es256(&with_payload(&v.compact, &payload), &vk).err(),
        Some(JoseError::BadSignature)
    );
    assert_eq!(
        verify_es256(&flip(&v.compact, 2), &vk).err(),
        Some(JoseError::BadSignature)
    );
    // An ES256 JWS never verifies as RSA, and an RS256 header never verifies as ES256.
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    assert!(verify_rsa(&v.compact, &f.server_key.public()).is_err());
    let as_rs256 = edit_header(&v.compact, "ES256", "RS256");
    assert_eq!(
        verify_es256(&as_rs256, &vk).err(),
        Some(JoseError::BadSignature)
    );
}

#[test]
fn es256_sign_round_trip_is_raw_r_s_not_der() {
    let v: Rfc7515Es256 = load(RFC7515_A_3);
    let sk = p256::ecdsa::SigningKey::from_slice(&b64(&v.key.d)).unwrap();
    // The transcribed d belongs to the RFC's public key.
    let public = ec_public(&v.key.x, &v.key.y).to_public_key().unwrap();
    let vk = p256::ecdsa::VerifyingKey::from(&public);
    assert_eq!(sk.verifying_key(), &vk);

    let payload = v.payload.as_bytes();
    let compact = jws::sign(JwsAlg::ES256, "es", payload, |input| {
        let sig: p256::ecdsa::Signature = sk.try_sign(input)?;
        Ok::<_, p256::ecdsa::Error>(sig.to_bytes().to_vec())
    })
    .unwrap();
    assert_eq!(verify_es256(&compact, &vk).unwrap(), payload);
    let (signing_input, sig) = compact.rsplit_once('.').unwrap();
    let sig_bytes = b64(sig);
    assert_eq!(sig_bytes.len(), 64, "JWS ES256 is r||s (RFC 7518 §3.4)");
    let sig = p256::ecdsa::Signature::from_slice(&sig_bytes).unwrap();
    vk.verify(signing_input.as_bytes(), &sig)
        .expect("p256 verifies our signing input");

    // A DER signature (what OpenSSL-style APIs return) is refused.
    let der = sig.to_der();
    let der_jws = format!("{signing_input}.{}", b64e(der.as_bytes()));
    assert_eq!(
        verify_es256(&der_jws, &vk).err(),
        Some(JoseError::BadSignature)
    );

    // A valid ECDSA signature under a header that claims another algorithm is refused.
    let mislabelled = jws::sign(JwsAlg::RS256, "es", payload, |input| {
        let sig: p256::ecdsa::Signature = sk.try_sign(input)?;
        Ok::<_, p256::ecdsa::Error>(sig.to_bytes().to_vec())
    })
    .unwrap();
    assert_eq!(
        verify_es256(&mislabelled, &vk).err(),
        Some(JoseError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// node-kms test fixtures (cisco/node-kms test/*.js)
// ---------------------------------------------------------------------------------------------

#[test]
fn node_kms_response_test_rs256_server_key() {
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    let v = &f.response_rs256;
    let public = f.server_key.public();
    let jws = Jws::parse(&v.compact).unwrap();
    assert_eq!(jws.header.alg, JwsAlg::RS256);
    assert_eq!(jws.header.kid.as_deref(), Some("kms.example"));
    let payload = jws.verify_rsa(&public).unwrap();
    let body: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(body, v.expected);

    // Re-signing node-kms's signing input with node-kms's key gives node-kms's signature.
    let key = f.server_key.private();
    let (signing_input, sig) = v.compact.rsplit_once('.').unwrap();
    assert_eq!(
        b64e(&rs256_sign(&key, signing_input.as_bytes()).unwrap()),
        sig
    );

    let mut tampered = payload.clone();
    tampered[10] ^= 0x01;
    assert_eq!(
        verify_rsa(&with_payload(&v.compact, &tampered), &public).err(),
        Some(JoseError::BadSignature)
    );
}

#[test]
fn node_kms_response_test_dir_ephemeral_key() {
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    let v = &f.response_dir;
    let key = key32(&f.shared_key.k);
    let jwe = Jwe::parse(&v.compact).unwrap();
    assert_eq!(jwe.alg, KeyAlg::Dir);
    assert_eq!(jwe.kid(), Some(f.shared_key.uri.as_str()));
    let plaintext = jwe.decrypt_dir(&key).unwrap();
    let body: Value = serde_json::from_slice(&plaintext).unwrap();
    assert_eq!(body, v.expected);

    for part in [2, 3, 4] {
        assert_eq!(
            decrypt_dir(&flip(&v.compact, part), &key).err(),
            Some(JoseError::Decrypt),
            "tampered part {part}"
        );
    }
    let kid_changed = edit_header(&v.compact, "a4752411", "a4752412");
    assert_eq!(
        decrypt_dir(&kid_changed, &key).err(),
        Some(JoseError::Decrypt)
    );
    let other = key32(&f.ecdhe_hkdf.k);
    assert_eq!(
        decrypt_dir(&v.compact, &other).err(),
        Some(JoseError::Decrypt)
    );
}

#[test]
fn node_kms_response_test_rsa1_5_is_refused() {
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    assert_eq!(
        Jwe::parse(&f.response_rsa1_5.compact).err(),
        Some(JoseError::UnsupportedAlg("RSA1_5".into()))
    );
}

// ---------------------------------------------------------------------------------------------
// Objects generated by node-kms 0.4.1 / node-jose 2.2.0 (test-vectors/generate-node-kms.js)
// ---------------------------------------------------------------------------------------------

#[test]
fn node_kms_generated_dir_under_shared_key() {
    let g: NodeKmsGenerated = load(NODE_KMS_GENERATED);
    let v = &g.dir_shared_key;
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    assert_eq!(v.key, f.shared_key.k);
    let jwe = Jwe::parse(&v.jwe).unwrap();
    assert_eq!(jwe.kid(), Some(f.shared_key.uri.as_str()));
    let plaintext = jwe.decrypt_dir(&key32(&v.key)).unwrap();
    assert_eq!(plaintext.as_slice(), v.plaintext.as_bytes());
    assert_eq!(
        decrypt_dir(&flip(&v.jwe, 3), &key32(&v.key)).err(),
        Some(JoseError::Decrypt)
    );
}

#[test]
fn node_kms_generated_dir_under_derived_key() {
    // node-kms derived this key itself (ECDH + HKDF) from the context-test.js pair: the same
    // k as our derivation in `hkdf_ecdhe_node_kms_context_test_vector`.
    let g: NodeKmsGenerated = load(NODE_KMS_GENERATED);
    let v = &g.dir_derived_key;
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    assert_eq!(v.key, f.ecdhe_hkdf.k);
    let jwe = Jwe::parse(&v.jwe).unwrap();
    assert_eq!(
        jwe.kid(),
        Some("kms://kms.example/ecdhe/5d9a92dd-b22d-4bcf-bacb-72775cea11c7")
    );
    let plaintext = jwe.decrypt_dir(&key32(&v.key)).unwrap();
    assert_eq!(plaintext.as_slice(), v.plaintext.as_bytes());
}

#[test]
fn node_kms_generated_rsa_oaep_handshake() {
    let g: NodeKmsGenerated = load(NODE_KMS_GENERATED);
    let v = &g.rsa_oaep_handshake;
    let key = g.rsa_private_jwk.private();
    let jwe = Jwe::parse(&v.jwe).unwrap();
    assert_eq!(jwe.alg, KeyAlg::RsaOaep);
    assert_eq!(jwe.kid(), Some(g.rsa_private_jwk.kid.as_str()));
    let plaintext = jwe.decrypt_rsa_oaep(|ek| oaep_decrypt(&key, ek)).unwrap();
    assert_eq!(plaintext.as_slice(), v.plaintext.as_bytes());
    for part in 1..5 {
        assert_eq!(
            decrypt_oaep(&flip(&v.jwe, part), &key).err(),
            Some(JoseError::Decrypt),
            "tampered part {part}"
        );
    }
}

#[test]
fn node_kms_generated_rs256_matches_our_signer() {
    let g: NodeKmsGenerated = load(NODE_KMS_GENERATED);
    let public = g.rsa_private_jwk.public();
    let payload = g.jws.payload.as_bytes();
    assert_eq!(verify_rsa(&g.jws.rs256, &public).unwrap(), payload);
    // node-jose's header is {"alg","kid"} in our order, so our RS256 JWS is byte-identical.
    let key = g.rsa_private_jwk.private();
    let ours = jws::sign(JwsAlg::RS256, &g.rsa_private_jwk.kid, payload, |i| {
        rs256_sign(&key, i)
    })
    .unwrap();
    assert_eq!(ours, g.jws.rs256);
    let mut tampered = payload.to_vec();
    tampered[1] ^= 0x01;
    assert_eq!(
        verify_rsa(&with_payload(&g.jws.rs256, &tampered), &public).err(),
        Some(JoseError::BadSignature)
    );
}

#[test]
fn node_kms_generated_ps256_verifies() {
    let g: NodeKmsGenerated = load(NODE_KMS_GENERATED);
    let public = g.rsa_private_jwk.public();
    let payload = g.jws.payload.as_bytes();
    let jws = Jws::parse(&g.jws.ps256).unwrap();
    assert_eq!(jws.header.alg, JwsAlg::PS256);
    assert_eq!(jws.verify_rsa(&public).unwrap(), payload);
    assert_eq!(
        verify_rsa(&flip(&g.jws.ps256, 2), &public).err(),
        Some(JoseError::BadSignature)
    );
    // Our PS256 under the same 2048-bit key verifies too.
    let key = g.rsa_private_jwk.private();
    let ours = jws::sign(JwsAlg::PS256, &g.rsa_private_jwk.kid, payload, |i| {
        ps256_sign(&key, i)
    })
    .unwrap();
    assert_eq!(verify_rsa(&ours, &public).unwrap(), payload);
}

#[test]
fn node_kms_generated_es256_verifies() {
    let g: NodeKmsGenerated = load(NODE_KMS_GENERATED);
    let vk = p256::ecdsa::VerifyingKey::from(&g.ec_public_jwk.to_public_key().unwrap());
    let payload = g.jws.payload.as_bytes();
    assert_eq!(verify_es256(&g.jws.es256, &vk).unwrap(), payload);
    let mut tampered = payload.to_vec();
    tampered[1] ^= 0x01;
    assert_eq!(
        verify_es256(&with_payload(&g.jws.es256, &tampered), &vk).err(),
        Some(JoseError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// Our encryption, decrypted by our parser (node-jose's side is tests/node-kms).
// ---------------------------------------------------------------------------------------------

#[test]
fn encrypt_dir_under_node_kms_shared_key_round_trips() {
    let f: NodeKmsFixtures = load(NODE_KMS_FIXTURES);
    let key = key32(&f.shared_key.k);
    let compact = jwe::encrypt_dir(&key, &f.shared_key.uri, br#"{"status":200}"#);
    let jwe = Jwe::parse(&compact).unwrap();
    assert_eq!(
        (jwe.header.alg.as_str(), jwe.header.enc.as_str()),
        ("dir", "A256GCM")
    );
    assert_eq!(jwe.kid(), Some(f.shared_key.uri.as_str()));
    assert_eq!(
        jwe.decrypt_dir(&key).unwrap().as_slice(),
        br#"{"status":200}"#
    );
}
