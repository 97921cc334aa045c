//! Integration tests against a real `SoftHSM2` (not a mock), one binary:
//! `cargo nextest run -p strongroom-hsm`. See `fixture` for how the token store is set up.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod concurrency;
mod crypto;
mod debug;
mod fixture;
mod keys;
mod recovery;
mod wrap;
