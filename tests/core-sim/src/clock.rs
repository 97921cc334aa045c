//! The injectable clock, shared with the KMS (one definition: `strongroom_kms::clock`), so
//! token expiry and event times are testable (STYLE.md).

pub use strongroom_kms::clock::{Clock, ManualClock, SystemClock};
