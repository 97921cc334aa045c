//! `strongroom`: the appliance daemon and CLI. Thin glue over the library crates
//! (`strongroom-kms`, `strongroom-hsm`); see docs/ARCHITECTURE.md.

mod certs;
mod dev;
mod files;
mod identity;
mod server;

use clap::{Parser, Subcommand};

/// strongroom: the on-premises security realm (KMS with HSM-held root keys).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a complete development KMS on its own SoftHSM2 token (never for production).
    Dev(dev::DevArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strongroom: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
