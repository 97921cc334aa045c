//! `strongroom backup` and `strongroom restore`: an encrypted, integrity-checked archive of
//! the appliance's state (docs/adr/0007-backup-format.md, docs/operations.md). The archive
//! key is a fresh AES-256 key wrapped by the HSM root key, so a backup restores only where
//! the same HSM keys are (the token itself is never in it).
//!
//! The service must be stopped: the backup takes the audit log's lock and redb's exclusive
//! lock for as long as it reads, so what it copies is one consistent state.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use strongroom_hsm::{Hsm, WrapMechanism};
use strongroom_kms::crypto::{SecretKey32, gcm_decrypt, gcm_encrypt, random_iv};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::files;
use crate::serve::{ensure_softhsm_env, hsm_config};

/// File magic: the first 8 bytes of every backup.
pub const MAGIC: &[u8; 8] = b"SRBACKUP";
/// Format version (byte 8).
pub const VERSION: u8 = 1;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Largest wrapped archive key we accept (AES key wrap of 32 bytes is 40).
const MAX_WRAPPED: usize = 512;
/// Largest manifest we accept (it lists file names and hashes, nothing more).
const MAX_MANIFEST: usize = 16 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Configuration file.
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// The backup file to write (must not exist; written mode 0600).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Configuration file of the appliance to restore into (its HSM must hold the keys the
    /// backup was made with).
    #[arg(long, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// The backup file.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Replace existing state (it is moved aside to `<state_dir>.pre-restore-<time>`, not
    /// deleted) and existing certificate files.
    #[arg(long)]
    pub force: bool,
}

/// The authenticated table of contents (inside the encryption).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u8,
    created_unix: u64,
    domain: String,
    token_label: String,
    files: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// `state/<relative path>`, `tls/certificate`, `tls/private_key`,
    /// `static_certificate` or `config/strongroom.toml`.
    name: String,
    size: u64,
    /// Lowercase hex SHA-256 of the contents.
    sha256: String,
    mode: u32,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn mechanism_code(m: WrapMechanism) -> u32 {
    // INVARIANT: PKCS#11 mechanism codes of the wrap mechanisms fit in 32 bits.
    u32::try_from(m.code()).unwrap_or(u32::MAX)
}

/// The fixed header: magic, version, wrap mechanism, wrapped archive key, IV. It is the
/// AEAD's associated data, so changing any byte of it fails decryption.
fn header(mechanism: u32, wrapped: &[u8], iv: &[u8; IV_LEN]) -> anyhow::Result<Vec<u8>> {
    let mut h = Vec::with_capacity(8 + 1 + 4 + 2 + wrapped.len() + IV_LEN);
    h.extend_from_slice(MAGIC);
    h.push(VERSION);
    h.extend_from_slice(&mechanism.to_be_bytes());
    h.extend_from_slice(&u16::try_from(wrapped.len())?.to_be_bytes());
    h.extend_from_slice(wrapped);
    h.extend_from_slice(iv);
    Ok(h)
}

/// One file to archive.
struct Item {
    name: String,
    bytes: Zeroizing<Vec<u8>>,
    mode: u32,
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name();
        let ty = e.file_type()?;
        let rel = rel.join(&name);
        if name.to_string_lossy().starts_with('.') {
            continue; // temporary files of atomic writes
        }
        if ty.is_dir() {
            walk(&e.path(), &rel, out)?;
        } else if ty.is_file() {
            out.push((e.path(), rel));
        } else {
            bail!(
                "{} is neither a file nor a directory; refusing to guess how to back it up",
                e.path().display()
            );
        }
    }
    Ok(())
}

/// Reads the state while holding both locks, so the copy is one consistent state.
fn collect(cfg: &Config, config_path: &Path) -> anyhow::Result<(Vec<Item>, u64)> {
    let audit_dir = cfg.state_dir.join("audit");
    let lock_path = audit_dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "the audit log is in use: stop the service first (systemctl stop strongroom); \
             a backup copies one consistent state"
        ),
        Err(std::fs::TryLockError::Error(e)) => return Err(e).context("locking the audit log"),
    }
    let store = cfg.state_dir.join("kms.redb");
    let snap = strongroom_kms::storage::RedbStore::snapshot(&store).map_err(|e| match e {
        strongroom_kms::storage::StorageError::InUse => anyhow::anyhow!(
            "{} is in use: stop the service first (systemctl stop strongroom)",
            store.display()
        ),
        e => anyhow::anyhow!("{}: {e}", store.display()),
    })?;
    let mut items = vec![Item {
        name: "state/kms.redb".into(),
        bytes: Zeroizing::new(snap.bytes),
        mode: 0o600,
    }];
    let mut found = Vec::new();
    walk(&cfg.state_dir, Path::new(""), &mut found)?;
    for (path, rel) in found {
        if rel == Path::new("kms.redb") || rel == Path::new("audit/LOCK") {
            continue;
        }
        let rel = rel
            .to_str()
            .with_context(|| format!("{} is not a UTF-8 path", path.display()))?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        items.push(Item {
            name: format!("state/{rel}"),
            bytes: Zeroizing::new(
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            ),
            mode,
        });
    }
    let mut add = |name: &str, path: &Path, secret: bool| -> anyhow::Result<()> {
        let bytes = if secret {
            files::read_secret_file(path)?
        } else {
            Zeroizing::new(
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )
        };
        items.push(Item {
            name: name.into(),
            bytes,
            mode: if secret { 0o600 } else { 0o644 },
        });
        Ok(())
    };
    add("config/strongroom.toml", config_path, false)?;
    add("tls/certificate", &cfg.tls_certificate, false)?;
    add("tls/private_key", &cfg.tls_private_key, true)?;
    if !cfg.static_certificate.starts_with(&cfg.state_dir) && cfg.static_certificate.exists() {
        add("static_certificate", &cfg.static_certificate, false)?;
    }
    drop(lock);
    Ok((items, snap.keys))
}

/// `strongroom backup`.
pub fn backup(args: &BackupArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    ensure_softhsm_env(cfg.softhsm2_conf.as_deref())?;
    if args.out.exists() {
        bail!("{} exists; choose a new file name", args.out.display());
    }
    let hsm = Hsm::open(&hsm_config(&cfg)?).context("opening the HSM token")?;
    let (items, keys) = collect(&cfg, &args.config)?;
    let manifest = Manifest {
        format: VERSION,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        domain: cfg.domain.clone(),
        token_label: cfg.token_label.clone(),
        files: items
            .iter()
            .map(|i| Entry {
                name: i.name.clone(),
                size: i.bytes.len() as u64,
                sha256: hex(&Sha256::digest(&i.bytes[..])),
                mode: i.mode,
            })
            .collect(),
    };
    let manifest_json = serde_json::to_vec(&manifest)?;
    let total: usize = items.iter().map(|i| i.bytes.len()).sum();
    let mut plain = Zeroizing::new(Vec::with_capacity(4 + manifest_json.len() + total));
    plain.extend_from_slice(&u32::try_from(manifest_json.len())?.to_be_bytes());
    plain.extend_from_slice(&manifest_json);
    for i in &items {
        plain.extend_from_slice(&i.bytes);
    }
    drop(items);

    let key = SecretKey32::generate();
    let wrapped = hsm
        .wrap_key(key.expose())
        .context("wrapping the archive key under the HSM root key")?;
    let iv = random_iv();
    let head = header(mechanism_code(cfg.wrap_mechanism), &wrapped, &iv)?;
    let mut body = plain.to_vec();
    drop(plain);
    let tag = gcm_encrypt(&key, &iv, &head, &mut body)
        .map_err(|_| anyhow::anyhow!("encrypting the backup failed"))?;
    let mut out = head;
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    files::write_secret_file(&args.out, &out)?;
    // In the live log after the copy (issue 4: admin actions are audited). No record, no
    // backup: the file is removed again.
    if let Err(e) = record(&cfg, &cfg.state_dir, &hsm, strongroom_audit::Action::Backup) {
        let _ = std::fs::remove_file(&args.out);
        return Err(e.context("the backup was not kept"));
    }
    println!(
        "backup written: {} ({} bytes, {} files, {keys} keys); it restores only with HSM token {:?}'s keys",
        args.out.display(),
        out.len(),
        manifest.files.len(),
        cfg.token_label
    );
    Ok(())
}

/// Appends an administrator action to the audit log in `state_dir` and closes it again
/// (the service is stopped: backup and restore hold the log's lock meanwhile).
fn record(
    cfg: &Config,
    state_dir: &Path,
    hsm: &Hsm,
    action: strongroom_audit::Action,
) -> anyhow::Result<()> {
    let log = crate::serve::open_audit(state_dir, &cfg.domain, hsm, cfg.audit)?;
    crate::serve::record_admin(&log, action, strongroom_audit::Outcome::Allowed)?;
    std::sync::Arc::try_unwrap(log)
        .map_err(|_| anyhow::anyhow!("the audit log is still in use"))?
        .close()
        .context("closing the audit log")?;
    Ok(())
}

/// A verified archive: the manifest and each file's bytes.
struct Opened {
    manifest: Manifest,
    files: Vec<Zeroizing<Vec<u8>>>,
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &str) -> anyhow::Result<&'a [u8]> {
    if buf.len() < n {
        bail!("the backup is truncated ({what})");
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

/// Checks and decrypts a backup. Any changed, missing or added byte is refused here,
/// before anything is written.
fn open_archive(bytes: &[u8], hsm: &Hsm, mechanism: WrapMechanism) -> anyhow::Result<Opened> {
    let mut rest = bytes;
    if take(&mut rest, 8, "magic")? != MAGIC {
        bail!("not a strongroom backup (bad magic)");
    }
    let version = take(&mut rest, 1, "version")?[0];
    if version != VERSION {
        bail!("backup format version {version} is not supported (this strongroom reads {VERSION})");
    }
    let mech = u32::from_be_bytes(take(&mut rest, 4, "mechanism")?.try_into()?);
    if mech != mechanism_code(mechanism) {
        bail!(
            "the backup's archive key is wrapped with mechanism 0x{mech:X}, the configuration uses 0x{:X} (hsm.wrap_mechanism)",
            mechanism_code(mechanism)
        );
    }
    let wlen = usize::from(u16::from_be_bytes(
        take(&mut rest, 2, "key length")?.try_into()?,
    ));
    if wlen == 0 || wlen > MAX_WRAPPED {
        bail!("the backup header is damaged (wrapped key length {wlen})");
    }
    let wrapped = take(&mut rest, wlen, "wrapped key")?;
    let iv: [u8; IV_LEN] = take(&mut rest, IV_LEN, "IV")?.try_into()?;
    let head_len = bytes.len() - rest.len();
    if rest.len() < TAG_LEN {
        bail!("the backup is truncated (no authentication tag)");
    }
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let key = hsm.unwrap_key(wrapped).map_err(|e| {
        anyhow::anyhow!(
            "the HSM cannot unwrap the backup's key: it was made with another token's root key, or its header was changed ({e})"
        )
    })?;
    let key = SecretKey32::from_bytes(*key);
    let mut plain = Zeroizing::new(ct.to_vec());
    gcm_decrypt(&key, &iv, &bytes[..head_len], &mut plain, tag).map_err(|_| {
        anyhow::anyhow!("the backup failed its integrity check: it was changed or truncated")
    })?;
    // From here the bytes are authentic (written by someone holding the HSM key); the
    // checks below guard against our own bugs and a hostile restore target path.
    let mut p: &[u8] = &plain;
    let mlen = usize::try_from(u32::from_be_bytes(take(&mut p, 4, "manifest")?.try_into()?))?;
    if mlen > MAX_MANIFEST {
        bail!("the backup's manifest is too large");
    }
    let manifest: Manifest =
        serde_json::from_slice(take(&mut p, mlen, "manifest")?).context("backup manifest")?;
    if manifest.format != VERSION {
        bail!(
            "backup manifest format {} is not supported",
            manifest.format
        );
    }
    let mut seen = BTreeSet::new();
    let mut files = Vec::with_capacity(manifest.files.len());
    for e in &manifest.files {
        check_name(&e.name)?;
        if !seen.insert(e.name.clone()) {
            bail!("the backup names {} twice", e.name);
        }
        let body = take(&mut p, usize::try_from(e.size)?, &e.name)?;
        if hex(&Sha256::digest(body)) != e.sha256 {
            bail!("{} does not match its SHA-256 in the manifest", e.name);
        }
        files.push(Zeroizing::new(body.to_vec()));
    }
    if !p.is_empty() {
        bail!(
            "the backup holds {} bytes the manifest does not list",
            p.len()
        );
    }
    Ok(Opened { manifest, files })
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let fixed = [
        "config/strongroom.toml",
        "tls/certificate",
        "tls/private_key",
        "static_certificate",
    ];
    if fixed.contains(&name) {
        return Ok(());
    }
    let Some(rel) = name.strip_prefix("state/") else {
        bail!("the backup names an unknown file {name:?}");
    };
    let ok = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        bail!("the backup names an unsafe path {name:?}");
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn dir_is_empty(dir: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// `strongroom restore`.
pub fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let cfg = Config::load(&args.config)?;
    ensure_softhsm_env(cfg.softhsm2_conf.as_deref())?;
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let hsm = Hsm::open(&hsm_config(&cfg)?).context("opening the HSM token")?;
    let opened = open_archive(&bytes, &hsm, cfg.wrap_mechanism)?;
    if opened.manifest.domain != cfg.domain {
        bail!(
            "the backup is of KMS {:?}, the configuration is for {:?}: key URIs would not match",
            opened.manifest.domain,
            cfg.domain
        );
    }
    // Where each file goes; refuse to overwrite anything unless --force.
    let state_exists = cfg.state_dir.exists() && !dir_is_empty(&cfg.state_dir)?;
    let mut outside = Vec::new();
    for (e, body) in opened.manifest.files.iter().zip(&opened.files) {
        let target = match e.name.as_str() {
            "tls/certificate" => Some((cfg.tls_certificate.clone(), 0o644)),
            "tls/private_key" => Some((cfg.tls_private_key.clone(), 0o600)),
            "static_certificate" => Some((cfg.static_certificate.clone(), 0o644)),
            _ => None,
        };
        if let Some((path, mode)) = target {
            if path.exists() && !args.force {
                bail!(
                    "{} exists; nothing was restored (use --force to replace it)",
                    path.display()
                );
            }
            outside.push((path, body, mode));
        }
    }
    if state_exists && !args.force {
        bail!(
            "{} already holds state; nothing was restored (use --force: the current state is moved aside, not deleted)",
            cfg.state_dir.display()
        );
    }
    // Stage the whole state directory next to its final place, then rename it in.
    let parent = cfg
        .state_dir
        .parent()
        .context("kms.state_dir has no parent directory")?;
    std::fs::create_dir_all(parent)?;
    let base = cfg
        .state_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("kms.state_dir has no name")?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{base}.restore-"))
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))?;
    for (e, body) in opened.manifest.files.iter().zip(&opened.files) {
        let path = if let Some(rel) = e.name.strip_prefix("state/") {
            staging.path().join(rel)
        } else if e.name == "config/strongroom.toml" {
            // The configuration in use is the one given; the backed-up one is kept for IT
            // to compare.
            staging.path().join("restored-config.toml")
        } else {
            continue;
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        write_new(&path, body, e.mode & 0o777)?;
    }
    // The restored log records its own restore before it is moved in; opening it also
    // checks its last segment (a log that contradicts its checkpoints is refused here,
    // with nothing changed).
    record(
        &cfg,
        staging.path(),
        &hsm,
        strongroom_audit::Action::Restore,
    )
    .context("the restored audit log; nothing was restored")?;
    for d in [staging.path().to_path_buf(), staging.path().join("audit")] {
        if d.exists() {
            sync_dir(&d)?;
        }
    }
    let mut moved_aside = None;
    if cfg.state_dir.exists() {
        if state_exists {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let aside = parent.join(format!("{base}.pre-restore-{now}"));
            std::fs::rename(&cfg.state_dir, &aside)
                .with_context(|| format!("moving {} aside", cfg.state_dir.display()))?;
            moved_aside = Some(aside);
        } else {
            std::fs::remove_dir(&cfg.state_dir)?;
        }
    }
    let staged = staging.keep();
    std::fs::rename(&staged, &cfg.state_dir)
        .with_context(|| format!("moving the restored state into {}", cfg.state_dir.display()))?;
    sync_dir(parent)?;
    for (path, body, mode) in outside {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        files::write_file(&path, body, mode)?;
    }
    println!(
        "restored {} files into {} from {}",
        opened.manifest.files.len(),
        cfg.state_dir.display(),
        args.input.display()
    );
    if let Some(a) = moved_aside {
        println!("the previous state was moved to {}", a.display());
    }
    println!(
        "next: strongroom audit verify --state {}, then start the service",
        cfg.state_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_state_directory_are_refused() {
        assert!(check_name("state/kms.redb").is_ok());
        assert!(check_name("state/audit/seg-1").is_ok());
        assert!(check_name("tls/private_key").is_ok());
        for bad in [
            "state/../etc/passwd",
            "state//abs",
            "state/",
            "etc/passwd",
            "/etc/x",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let h = header(0x2109, &[7u8; 40], &[9u8; 12]).unwrap();
        assert_eq!(&h[..8], b"SRBACKUP");
        assert_eq!(h[8], 1);
        assert_eq!(&h[9..13], &[0, 0, 0x21, 0x09]);
        assert_eq!(&h[13..15], &[0, 40]);
        assert_eq!(h.len(), 15 + 40 + 12);
    }
}
