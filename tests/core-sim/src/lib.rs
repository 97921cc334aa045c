//! The simulated hosted core: as untrusted as the real one. It holds the identity service
//! (organizations, users, login with a core token and a KMS token of distinct audiences,
//! the JWK set), rooms with membership events and ciphertext-only content, rotation
//! enforcement (R9), and the relay to each realm's dial-out connection (R3). It records
//! every byte it stores or relays in `recording.log` ([`record`]) so tests can prove it
//! never saw plaintext or keys. Endpoints: `tests/core-sim/README.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use core_sim::http::{AppState, Config, app};
//! let state = AppState::open(Config::new("/tmp/core-state".into()))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app(state)).await?;
//! # Ok(()) }
//! ```

pub mod clock;
pub mod error;
pub mod files;
pub mod http;
pub mod identity;
pub mod model;
pub mod record;
pub mod relay;
pub mod serve;

pub use error::{Error, Result};
