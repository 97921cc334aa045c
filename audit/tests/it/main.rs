//! Integration tests of strongroom-audit (one binary, STYLE.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test data sizes are small; index casts cannot truncate here.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;
mod crash;
mod diskfull;
mod log;
mod prealloc;
mod proofs;
mod query;
mod secrets;
mod tamper;
