//! Test 8: the PIN never shows in `Debug` output.

use secrecy::SecretString;
use strongroom_hsm::{Hsm, HsmConfig};

use crate::fixture::{USER_PIN, token};

#[test]
fn debug_output_has_no_pin() {
    let config = token("debug");
    let shown = format!("{config:?}");
    assert!(!shown.contains(USER_PIN), "{shown}");
    assert!(shown.contains(&config.token_label), "{shown}");

    let hsm = Hsm::open(&config).unwrap();
    let shown = format!("{hsm:?} {hsm:#?}");
    assert!(!shown.contains(USER_PIN), "{shown}");
    assert!(shown.contains(&config.token_label), "{shown}");

    // Nor in errors: a wrong PIN that is itself distinctive. Drop the logged-in Hsm first:
    // login belongs to the application, so while it is open C_Login answers
    // CKR_USER_ALREADY_LOGGED_IN whatever the PIN.
    drop(hsm);
    let wrong = "wrong-PIN-Zq9-do-not-print";
    let mut bad = HsmConfig::new(config.token_label.clone(), SecretString::from(wrong));
    bad.module.clone_from(&config.module);
    let err = Hsm::open(&bad).unwrap_err();
    let shown = format!("{err} {err:?} {bad:?}");
    assert!(
        !shown.contains(wrong) && !shown.contains(USER_PIN),
        "{shown}"
    );
}
