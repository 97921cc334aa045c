//! Durable small files: write to a temporary sibling, fsync, rename, fsync the directory,
//! so a kill at any point leaves either the old or the new content.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::error::{Error, Result};

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Storage { context, source }
}

/// Atomically replaces `path` with `bytes`, created with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or(Error::Internal("state file has no parent directory"))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(tmp)
            .map_err(io("creating a state file"))?;
        f.write_all(bytes).map_err(io("writing a state file"))?;
        f.sync_all().map_err(io("syncing a state file"))?;
    }
    std::fs::rename(tmp, path).map_err(io("renaming a state file"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the state directory"))?;
    Ok(())
}

/// Reads a file that must not be readable by group or others (keys, tokens).
pub fn read_secret(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(io("reading a secret file"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::InvalidRequest(
            "secret file is readable by group or others (chmod 600)",
        ));
    }
    std::fs::read(path).map_err(io("reading a secret file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_secret_mode_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(read_secret(&p).unwrap(), b"two");
        assert!(!dir.path().join("a.json.tmp").exists());
        let q = dir.path().join("b");
        write_atomic(&q, b"x", 0o644).unwrap();
        assert!(read_secret(&q).is_err());
    }
}
