//! Build facts for `strongroom version --verbose` (issue 5, reproducible builds): the
//! source commit, the SHA-256 of Cargo.lock and the compiler. Nothing here may vary between
//! two builds of the same commit: no build time, no host name, no paths.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.parent().ok_or("appliance/ has no parent")?;

    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let mut lock_hex = String::new();
    for b in Sha256::digest(std::fs::read(&lock)?) {
        write!(lock_hex, "{b:02x}")?;
    }
    println!("cargo:rustc-env=STRONGROOM_CARGO_LOCK_SHA256={lock_hex}");

    // A source tarball has no .git: the packager passes the commit in the environment.
    println!("cargo:rerun-if-env-changed=STRONGROOM_SOURCE_COMMIT");
    let commit = match std::env::var("STRONGROOM_SOURCE_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => git_head(root).unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=STRONGROOM_SOURCE_COMMIT={commit}");

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-V").output()?;
    let toolchain = String::from_utf8(out.stdout)?.trim().to_owned();
    println!("cargo:rustc-env=STRONGROOM_RUSTC={toolchain}");
    println!(
        "cargo:rustc-env=STRONGROOM_TARGET={}",
        std::env::var("TARGET")?
    );
    println!(
        "cargo:rustc-env=STRONGROOM_PROFILE={}",
        std::env::var("PROFILE")?
    );
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    out.status.success().then_some(())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

/// HEAD's commit; rebuilds when HEAD moves (the HEAD file, the branch it names, packed-refs).
fn git_head(root: &Path) -> Option<String> {
    let commit = git(root, &["rev-parse", "HEAD"])?;
    let mut watch = vec![git(root, &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(root, &["rev-parse", "--git-path", &branch])?);
    }
    watch.push(git(root, &["rev-parse", "--git-path", "packed-refs"])?);
    for w in watch {
        let p = root.join(w);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Some(commit)
}
