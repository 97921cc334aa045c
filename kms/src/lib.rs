//! The strongroom KMS (requirements R1, R2, R4, R5, R7, R8): the node-kms 0.4.1 protocol
//! (protocol.md), conversation keys sealed under an HSM-wrapped KEK, durable state.
//!
//! Layers: [`jose`] (wire cryptography, no I/O) → [`service::Kms`] (decisions) →
//! [`storage`] (durable state behind a trait) and [`http`] (axum routes, the only place
//! axum appears).

pub mod auth;
pub mod client;
pub mod clock;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod http;
pub mod jose;
pub mod kek;
pub mod service;
pub mod storage;
pub mod uri;

pub use service::{Kms, KmsConfig};
