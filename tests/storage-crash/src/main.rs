//! `storage-crash`: the kill -9 crash test and durable-write benchmark behind
//! docs/adr/0003-storage-engine.md.
//!
//! ```text
//! storage-crash write --engine redb --dir /tmp/s > acks    # until kill -9
//! storage-crash check --engine redb --dir /tmp/s --acks acks
//! storage-crash bench --engine redb --dir /tmp/b --seconds 10 --threads 8
//! ```
//!
//! `run.sh` beside this crate drives the kill loop.

mod bench;
mod check;
mod group;
mod record;
mod store;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::record::IdSource;
use crate::store::{Engine, OpenOptions, SledApi};

const EXIT_CODES: &str = "\
Exit codes:
  0  clean (check), or normal end (bench)
  1  check found loss or corruption
  2  usage error
  3  the store could not be opened (check, write, bench)
  4  any other error (ACK file unreadable or malformed, write or I/O failure)";

#[derive(Parser)]
#[command(name = "storage-crash", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct StoreArgs {
    #[arg(long, value_enum)]
    engine: Engine,
    /// Store directory (redb keeps `keys.redb` in it; sled owns it).
    #[arg(long)]
    dir: PathBuf,
    /// sled only: how each batch is made atomic before `flush()`.
    #[arg(long, value_enum, default_value_t = SledApi::Batch)]
    sled_api: SledApi,
}

impl StoreArgs {
    fn open_options(&self, create: bool, check_integrity: bool) -> OpenOptions {
        OpenOptions {
            engine: self.engine,
            sled_api: self.sled_api,
            create,
            check_integrity,
        }
    }

    fn label(&self) -> String {
        match self.engine {
            Engine::Redb => "engine=redb".to_owned(),
            Engine::Sled => format!("engine=sled sled_api={:?}", self.sled_api).to_lowercase(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Commit records until killed; print `ACK <hex id> <hex sha256(value)>`
    /// for each record once its transaction is durable.
    Write {
        #[command(flatten)]
        store: StoreArgs,
        /// Writer threads hand single records to one committer thread.
        #[arg(long)]
        group_commit: bool,
        /// Writer threads for --group-commit.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// Largest transaction: random 1..=N records, or the group-commit cap.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
        max_batch: u16,
    },
    /// Open the store, run redb's `check_integrity()`, verify every acknowledged
    /// record and every present record.
    Check {
        #[command(flatten)]
        store: StoreArgs,
        /// File of ACK lines accumulated over all writer runs on this store.
        #[arg(long)]
        acks: PathBuf,
    },
    /// Durable records/s: one record per transaction, then group commit.
    Bench {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Writer threads in the group-commit phase.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        /// Cap on records per group commit.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
        max_batch: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Write {
            store,
            group_commit,
            threads,
            max_batch,
        } => {
            let opened = match store::open(&store.dir, &store.open_options(true, false)) {
                Ok(o) => o,
                Err(e) => return fail(3, &e),
            };
            let ids = IdSource::new(&mut rand::rng());
            let s = opened.store.as_ref();
            let r = if group_commit {
                write::group_commit(s, &ids, threads.into(), max_batch.into())
            } else {
                write::direct(s, &ids, max_batch.into())
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(4, &e),
            }
        }
        Command::Check { store, acks } => {
            println!(
                "check {} dir={} acks={}",
                store.label(),
                store.dir.display(),
                acks.display()
            );
            match check::run(&store.dir, &store.open_options(false, true), &acks) {
                Ok(check::Verdict::Clean) => ExitCode::SUCCESS,
                Ok(check::Verdict::LossOrCorruption) => ExitCode::from(1),
                Ok(check::Verdict::CannotOpen) => ExitCode::from(3),
                Err(e) => fail(4, &e),
            }
        }
        Command::Bench {
            store,
            seconds,
            threads,
            max_batch,
        } => {
            let opened = match store::open(&store.dir, &store.open_options(true, false)) {
                Ok(o) => o,
                Err(e) => return fail(3, &e),
            };
            let opts = bench::BenchOptions {
                label: store.label(),
                seconds,
                threads: threads.into(),
                max_batch: max_batch.into(),
            };
            match bench::run(opened.store.as_ref(), &opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(4, &e),
            }
        }
    }
}

fn fail(code: u8, e: &anyhow::Error) -> ExitCode {
    eprintln!("storage-crash: error: {e:#}");
    ExitCode::from(code)
}
