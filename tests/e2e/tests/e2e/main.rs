//! End-to-end tests: real `strongroom`, `core-sim` and `strongroom-client` processes on
//! 127.0.0.1 with real SoftHSM2 tokens and real TLS. One test binary (STYLE.md): each module
//! was its own binary before, and each linked the whole stack again.

mod audit_cli;
mod audit_disk_full;
mod bad_input;
mod client_cli;
mod client_flow;
mod dialout;
mod durability;
mod journal_mirror;
mod membership;
mod operations;
mod serve_https;
mod systemd_service;
