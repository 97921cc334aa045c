#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests of the core-sim: the router with `oneshot`, the relay over a real
//! socket with a fake realm, and the real binary (JSON line, HTTPS, restart, recording).

mod common;
mod identity;
mod membership;
mod process;
mod relay;
mod rooms;
