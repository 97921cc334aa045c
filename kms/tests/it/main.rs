//! strongroom-kms integration tests (one binary, STYLE.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod audit;
mod fixture;
mod jose_vectors;
mod membership;
mod service;
mod snapshot;
