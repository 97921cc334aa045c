//! Test support (feature `testing`, for this crate's tests and its dependents' tests):
//! a private `SoftHSM2` token store and one fresh token per test. Not for production
//! code: it panics on any failure, by design.
//!
//! `SOFTHSM2_CONF` comes from `.cargo/config.toml` (we forbid `unsafe`, so no `set_var`);
//! this fixture writes that file before the first PKCS#11 call of the process. Tests run
//! as parallel processes (nextest) sharing the token directory: each test gets its own
//! token, `SoftHSM2` creates each token in its own sub-directory, the configuration file
//! is created atomically, and token creation takes a file lock (see [`init_lock`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use crate::{Hsm, HsmConfig};
use secrecy::SecretString;

pub const SO_PIN: &str = "so-pin-0000";
/// Distinctive, so a leak into `Debug` or an error message is easy to spot.
pub const USER_PIN: &str = "user-pin-Q7xZ-do-not-print";

/// Token directories untouched for this long belong to finished test runs.
const STALE_TOKEN_AGE: Duration = Duration::from_hours(6);

static CONF: OnceLock<PathBuf> = OnceLock::new();

/// Make sure the `SoftHSM2` configuration named by `SOFTHSM2_CONF` and its token
/// directory exist. An existing file is left alone (it may be the developer's own).
pub fn softhsm_conf() -> &'static Path {
    CONF.get_or_init(|| {
        let conf = PathBuf::from(
            std::env::var_os("SOFTHSM2_CONF")
                .expect("SOFTHSM2_CONF is set by the workspace .cargo/config.toml"),
        );
        let tokens = if conf.exists() {
            let text = fs::read_to_string(&conf).expect("read SOFTHSM2_CONF");
            text.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once('=')?;
                    (key.trim() == "directories.tokendir").then(|| PathBuf::from(value.trim()))
                })
                .expect("directories.tokendir in SOFTHSM2_CONF")
        } else {
            write_conf(&conf)
        };
        fs::create_dir_all(&tokens).expect("create token directory");
        remove_stale_tokens(&tokens);
        conf
    })
}

/// Write our configuration (unless another test process just did) and return its token
/// directory.
fn write_conf(conf: &Path) -> PathBuf {
    let dir = conf.parent().expect("SOFTHSM2_CONF has a parent directory");
    let tokens = dir.join("tokens");
    fs::create_dir_all(&tokens).expect("create token directory");
    let abs_tokens = fs::canonicalize(&tokens).expect("canonical token directory");
    let mut file = tempfile::NamedTempFile::new_in(dir).expect("temp conf file");
    write!(
        file,
        "# written by strongroom-hsm tests\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n",
        abs_tokens.display()
    )
    .expect("write conf");
    // Another test process may have won the race: its file is identical.
    if let Err(err) = file.persist_noclobber(conf) {
        assert_eq!(err.error.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    }
    abs_tokens
}

/// Each test adds a token; `SoftHSM2` reads every token at `C_Initialize`, so drop the
/// ones left by old runs. Only ever inside our own `softhsm2-test/tokens`.
fn remove_stale_tokens(tokens: &Path) {
    if !tokens.ends_with("softhsm2-test/tokens") {
        return;
    }
    let Ok(entries) = fs::read_dir(tokens) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TOKEN_AGE);
        if old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh token "t-<name>-<random hex>" (at most 32 bytes) and a config to open it.
pub fn token(name: &str) -> HsmConfig {
    softhsm_conf();
    let short: String = name.chars().take(21).collect();
    let label = format!("t-{short}-{:08x}", unique_suffix());
    let module = HsmConfig::softhsm_default_module();
    {
        let _serial = init_lock();
        Hsm::init_token(
            &module,
            &label,
            &SecretString::from(SO_PIN),
            &SecretString::from(USER_PIN),
        )
        .expect("init_token");
    }
    HsmConfig::new(label, SecretString::from(USER_PIN))
}

/// Token creation is serialised across test processes. `SoftHSM2` reads the token
/// directory at `C_Initialize` (our first PKCS#11 call, inside `init_token`) and does not
/// cope with tokens another process is creating at that moment: with 12 parallel
/// `softhsm2-util --init-token` runs it aborted on `SlotManager.cpp` "Assertion
/// `result.second' failed" (two slots derived the same ID), and a half-created token is
/// listed as uninitialised, so `init_token` could pick it as the free slot. An exclusive
/// `flock` around the first `C_Initialize` and every `C_InitToken` rules both out.
fn init_lock() -> fs::File {
    let path = softhsm_conf().with_file_name("init.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open init.lock");
    file.lock().expect("lock init.lock");
    file
}

/// A fresh token, opened, with keys.
pub fn hsm_with_keys(name: &str) -> (Hsm, HsmConfig) {
    let config = token(name);
    let hsm = Hsm::open(&config).expect("open");
    hsm.ensure_keys().expect("ensure_keys");
    (hsm, config)
}

/// Distinct per call and per process: pid, time and a counter, mixed.
fn unique_suffix() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos.rotate_left(7)
        ^ std::process::id().wrapping_mul(0x9E37_79B9)
        ^ n.wrapping_mul(0x85EB_CA6B)
}
