//! `strongroom`: the appliance daemon and CLI. Thin glue over the library crates
//! (`strongroom-kms`, `strongroom-hsm`); see docs/ARCHITECTURE.md.

mod audit_cli;
mod backup;
mod certs;
mod config;
mod dev;
mod devcore;
mod dialout;
mod files;
mod identity;
mod journal;
mod metrics;
mod pinning;
mod serve;
mod server;
mod status;
mod systemd;
mod version;

use clap::{Parser, Subcommand};

/// strongroom: the on-premises security realm (KMS with HSM-held root keys).
#[derive(Debug, Parser)]
#[command(name = "strongroom", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a complete development KMS on its own SoftHSM2 token (never for production).
    Dev(dev::DevArgs),
    /// Prepare the HSM token and keys, write the static key's CSR and trial certificates.
    Init(serve::ConfigArg),
    /// Serve the KMS over HTTPS (what the packaged service runs).
    Serve(serve::ConfigArg),
    /// The security team's tools over the audit log (verify, show, prove, export, reconcile).
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// What is running and what is wrong, at a glance (exit 1 names the failed checks).
    Status(status::StatusArgs),
    /// Write an encrypted backup of the state (the service must be stopped).
    Backup(backup::BackupArgs),
    /// Restore a backup made with the same HSM keys.
    Restore(backup::RestoreArgs),
    /// Print the version; --verbose adds the source commit, Cargo.lock hash and toolchain.
    Version(version::VersionArgs),
    /// Print shell completions (bash, zsh, fish, ...); used when building the packages.
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff); used when building the packages.
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration file and the files it names.
    Check(serve::ConfigArg),
    /// Print a documented example configuration.
    Example,
}

fn init_logging() {
    // Under systemd the journal gets structured records; elsewhere (and if the journal
    // socket is unreachable) human-readable lines on stderr.
    if systemd::under_systemd() && systemd::log_to_journal() {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Keeps key material out of core dumps and away from ptrace by other processes of the
/// same user: `RLIMIT_CORE` = 0 and `PR_SET_DUMPABLE` = 0 (architecture.md key hierarchy).
fn harden_process() {
    if let Err(e) = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging();
    harden_process();
    let result = match cli.command {
        Command::Dev(args) => dev::run(&args),
        Command::Init(args) => serve::init(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Config(ConfigCommand::Check(args)) => serve::config_check(&args),
        Command::Status(args) => status::status(&args),
        Command::Backup(args) => backup::backup(&args),
        Command::Restore(args) => backup::restore(&args),
        Command::Audit(cmd) => match audit_cli::run(&cmd) {
            Ok(0) => Ok(()),
            Ok(code) => return std::process::ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Version(args) => {
            print!("{}", version::text(args.verbose));
            Ok(())
        }
        Command::Completions { shell } => version::completions(shell),
        Command::Man => version::man(),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strongroom: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
