//! `strongroom version [--verbose]` and the hidden `completions` and `man` generators the
//! packages call at build time (issue 5). The verbose facts come from build.rs and are the
//! same for every build of one commit, so an auditor can compare them (docs/verify-a-release.md).

use std::io::Write as _;

use clap::CommandFactory as _;

pub const SOURCE_COMMIT: &str = env!("STRONGROOM_SOURCE_COMMIT");
pub const CARGO_LOCK_SHA256: &str = env!("STRONGROOM_CARGO_LOCK_SHA256");
pub const RUSTC: &str = env!("STRONGROOM_RUSTC");

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Also print the source commit, the Cargo.lock hash, the toolchain and the target.
    #[arg(long)]
    pub verbose: bool,
}

pub fn text(verbose: bool) -> String {
    let version = format!("strongroom {}\n", env!("CARGO_PKG_VERSION"));
    if !verbose {
        return version;
    }
    format!(
        "{version}source commit: {SOURCE_COMMIT}\nCargo.lock sha256: {CARGO_LOCK_SHA256}\ntoolchain: {RUSTC}\ntarget: {}\nprofile: {}\n",
        env!("STRONGROOM_TARGET"),
        env!("STRONGROOM_PROFILE"),
    )
}

/// Shell completions for `shell` on stdout (generated into memory first: clap_complete
/// panics on a write error such as a closed pipe).
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "strongroom", &mut out);
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}

/// The man page (roff) on stdout. clap_mangen writes no date, so it is reproducible.
pub fn man() -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::Cli::command()).render(&mut out)?;
    std::io::stdout().lock().write_all(&out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn verbose_version_names_commit_lock_hash_and_toolchain() {
        let t = super::text(true);
        assert!(t.starts_with(&format!("strongroom {}\n", env!("CARGO_PKG_VERSION"))));
        let hash = t
            .lines()
            .find_map(|l| l.strip_prefix("Cargo.lock sha256: "))
            .unwrap_or_default();
        assert_eq!(hash.len(), 64, "{t}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{t}");
        assert!(t.contains("toolchain: rustc "), "{t}");
        assert!(!super::text(false).contains("source commit"));
    }
}
