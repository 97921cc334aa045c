//! Test fixtures: the token store and per-test tokens come from `strongroom_hsm::testing`
//! (shared with the kms tests); raw cryptoki access for poking the token lives here.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;
use strongroom_hsm::{Hsm, HsmConfig};

pub use strongroom_hsm::testing::{SO_PIN, USER_PIN, hsm_with_keys, token};

/// Plain cryptoki on the same module, to poke the token behind the `Hsm`'s back.
/// In-process, so it shares `SoftHSM2`'s state (and login) with the `Hsm`.
pub struct Raw {
    pub ctx: Pkcs11,
    pub slot: Slot,
}

pub fn raw(token_label: &str) -> Raw {
    let ctx = Pkcs11::new(HsmConfig::softhsm_default_module()).expect("load module");
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => panic!("C_Initialize: {err}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|slot| {
            ctx.get_token_info(*slot)
                .is_ok_and(|info| info.label() == token_label)
        })
        .expect("token slot");
    Raw { ctx, slot }
}

/// Verify RSA signatures and encrypt with the `rsa` crate.
pub fn rsa_key(hsm: &Hsm) -> rsa::PublicKey {
    let public = hsm.rsa_public_key().expect("rsa_public_key");
    assert_eq!(public.modulus.len(), 384, "RSA-3072");
    assert_eq!(public.public_exponent, vec![1, 0, 1]);
    let n = rsa::BoxedUint::from_be_slice(&public.modulus, 3072).expect("modulus");
    let e = rsa::BoxedUint::from_be_slice(&public.public_exponent, 32).expect("exponent");
    rsa::PublicKey::new(n, e).expect("rsa public key")
}

pub fn ec_key(hsm: &Hsm) -> p256::ecdsa::VerifyingKey {
    let point = hsm.ec_public_key().expect("ec_public_key");
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).expect("P-256 point")
}
