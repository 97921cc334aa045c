//! `strongroom.toml`: versioned, unknown keys refused, raw serde form validated into
//! [`Config`] (STYLE.md "Config and secrets"). Secrets are never in the file itself, only
//! paths to files that must not be group- or world-readable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/strongroom/strongroom.toml";
/// Where the HSM user PIN comes from when `hsm.pin_file` is not set (never argv).
pub const PIN_ENV: &str = "STRONGROOM_HSM_PIN";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    kms: RawKms,
    tls: RawTls,
    hsm: RawHsm,
    auth: RawAuth,
    #[serde(default)]
    core: Option<RawCore>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    audit: AuditSettings,
}

/// Default audit group-commit window (docs/benchmarks.md, "The cost of auditing").
pub const DEFAULT_GROUP_COMMIT_WINDOW_US: u32 = 0;

/// Default `[audit] checkpoint_every`: the writer's own (ADR 0017).
pub const DEFAULT_CHECKPOINT_EVERY: u64 = strongroom_audit::DEFAULT_CHECKPOINT_EVERY;

/// Default `[audit] checkpoint_interval_seconds`: the writer's own (ADR 0017).
pub const DEFAULT_CHECKPOINT_INTERVAL_SECONDS: u64 =
    strongroom_audit::DEFAULT_CHECKPOINT_INTERVAL.as_secs();

/// Most records between two checkpoints `[audit]` accepts.
pub const MAX_CHECKPOINT_EVERY: u64 = 1_000_000;

/// Longest interval between two checkpoints `[audit]` accepts, in seconds.
pub const MAX_CHECKPOINT_INTERVAL_SECONDS: u64 = 3600;

/// How the audit writer trades latency for fewer flushes under load, and how often it
/// signs a checkpoint (`[audit]`, R16; ADRs 0012, 0014 and 0017).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditTuning {
    /// Longest wait for more records before a flush under load.
    pub group_window: std::time::Duration,
    /// Nice steps the committer thread runs below the request workers (0–19).
    pub committer_nice: u8,
    /// Sign a checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ... or once this long has passed since the previous one.
    pub checkpoint_interval: std::time::Duration,
}

/// The `[audit]` values as written (absent ones take their defaults), before their ranges
/// are checked.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    pub group_commit_window_us: u32,
    pub committer_nice: u8,
    pub checkpoint_every: u64,
    pub checkpoint_interval_seconds: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            group_commit_window_us: DEFAULT_GROUP_COMMIT_WINDOW_US,
            committer_nice: strongroom_audit::DEFAULT_COMMITTER_NICE,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval_seconds: DEFAULT_CHECKPOINT_INTERVAL_SECONDS,
        }
    }
}

impl AuditTuning {
    /// Checks the ranges `[audit]` and `strongroom dev` accept.
    pub fn new(s: AuditSettings) -> anyhow::Result<Self> {
        if s.group_commit_window_us > 100_000 {
            bail!("audit.group_commit_window_us must be between 0 and 100000");
        }
        if s.committer_nice > 19 {
            bail!("audit.committer_nice must be between 0 and 19");
        }
        if !(1..=MAX_CHECKPOINT_EVERY).contains(&s.checkpoint_every) {
            bail!("audit.checkpoint_every must be between 1 and {MAX_CHECKPOINT_EVERY}");
        }
        if !(1..=MAX_CHECKPOINT_INTERVAL_SECONDS).contains(&s.checkpoint_interval_seconds) {
            bail!(
                "audit.checkpoint_interval_seconds must be between 1 and {MAX_CHECKPOINT_INTERVAL_SECONDS}"
            );
        }
        Ok(AuditTuning {
            group_window: std::time::Duration::from_micros(u64::from(s.group_commit_window_us)),
            committer_nice: s.committer_nice,
            checkpoint_every: s.checkpoint_every,
            checkpoint_interval: std::time::Duration::from_secs(s.checkpoint_interval_seconds),
        })
    }

    /// Applies these settings to the writer's configuration.
    pub fn apply(&self, cfg: &mut strongroom_audit::LogConfig) {
        cfg.group_window = self.group_window;
        cfg.committer_nice = self.committer_nice;
        cfg.checkpoint_every = self.checkpoint_every;
        cfg.checkpoint_interval = self.checkpoint_interval;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCore {
    url: String,
    realm_token_file: PathBuf,
    pinned_roots: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKms {
    domain: String,
    listen: SocketAddr,
    state_dir: PathBuf,
    #[serde(default)]
    static_certificate: Option<PathBuf>,
    #[serde(default = "default_channel_ttl")]
    channel_ttl_seconds: u32,
    #[serde(default = "default_cache_mib")]
    storage_cache_mib: u32,
}

fn default_channel_ttl() -> u32 {
    3600
}
fn default_cache_mib() -> u32 {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    private_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    #[serde(default)]
    module: Option<PathBuf>,
    token_label: String,
    #[serde(default)]
    pin_file: Option<PathBuf>,
    #[serde(default)]
    so_pin_file: Option<PathBuf>,
    #[serde(default)]
    softhsm2_conf: Option<PathBuf>,
    #[serde(default)]
    wrap_mechanism: Option<String>,
    #[serde(default = "default_rsa_bits")]
    rsa_bits: u32,
}

fn default_rsa_bits() -> u32 {
    strongroom_hsm::HsmConfig::DEFAULT_RSA_BITS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    jwks_file: PathBuf,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub domain: String,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub static_certificate: PathBuf,
    pub channel_ttl_seconds: u32,
    pub storage_cache_bytes: usize,
    pub tls_certificate: PathBuf,
    pub tls_private_key: PathBuf,
    pub hsm_module: PathBuf,
    pub token_label: String,
    /// `None`: the PIN comes from the environment variable [`PIN_ENV`].
    pub pin_file: Option<PathBuf>,
    pub so_pin_file: Option<PathBuf>,
    pub softhsm2_conf: Option<PathBuf>,
    pub wrap_mechanism: strongroom_hsm::WrapMechanism,
    pub rsa_bits: u32,
    pub issuers: Vec<(String, PathBuf)>,
    /// The hosted core to dial out to (R3); `None` serves only the local HTTPS listener.
    pub core: Option<CoreConfig>,
    /// Where `/metrics` is served (plain HTTP); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Audit writer tuning (R16).
    pub audit: AuditTuning,
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub url: tokio_tungstenite::tungstenite::http::Uri,
    pub realm_token_file: PathBuf,
    /// PEM file of the pinned root CAs (each with pathLenConstraint 0, R21).
    pub pinned_roots: PathBuf,
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl TryFrom<RawConfig> for Config {
    type Error = anyhow::Error;

    fn try_from(raw: RawConfig) -> anyhow::Result<Self> {
        if raw.version != 1 {
            bail!(
                "unsupported config version {} (this strongroom reads version 1)",
                raw.version
            );
        }
        if !valid_domain(&raw.kms.domain) {
            bail!("kms.domain {:?} is not a DNS name", raw.kms.domain);
        }
        if !raw.kms.state_dir.is_absolute() {
            bail!("kms.state_dir must be an absolute path");
        }
        if raw.kms.channel_ttl_seconds < 60 || raw.kms.channel_ttl_seconds > 7 * 24 * 3600 {
            bail!("kms.channel_ttl_seconds must be between 60 and 604800");
        }
        if ![2048, 3072, 4096].contains(&raw.hsm.rsa_bits) {
            bail!("hsm.rsa_bits must be 2048, 3072 or 4096");
        }
        if raw.auth.issuers.is_empty() {
            bail!("auth.issuers must name at least one token issuer");
        }
        let wrap_mechanism = match raw.hsm.wrap_mechanism.as_deref() {
            None | Some("aes-key-wrap") => strongroom_hsm::WrapMechanism::AesKeyWrap,
            Some("aes-key-wrap-pad-softhsm") => strongroom_hsm::WrapMechanism::AesKeyWrapPadSoftHsm,
            Some("aes-key-wrap-kwp") => strongroom_hsm::WrapMechanism::AesKeyWrapKwp,
            Some(other) => bail!(
                "hsm.wrap_mechanism {other:?} is not one of aes-key-wrap, aes-key-wrap-pad-softhsm, aes-key-wrap-kwp"
            ),
        };
        let core = match raw.core {
            None => None,
            Some(c) => {
                let url: tokio_tungstenite::tungstenite::http::Uri = c
                    .url
                    .parse()
                    .with_context(|| format!("core.url {:?}", c.url))?;
                if url.scheme_str() != Some("wss") {
                    bail!("core.url must be a wss:// URL");
                }
                Some(CoreConfig {
                    url,
                    realm_token_file: c.realm_token_file,
                    pinned_roots: c.pinned_roots,
                })
            }
        };
        let audit = AuditTuning::new(raw.audit)?;
        let static_certificate = raw
            .kms
            .static_certificate
            .unwrap_or_else(|| raw.kms.state_dir.join("static-cert.pem"));
        Ok(Self {
            domain: raw.kms.domain.to_ascii_lowercase(),
            listen: raw.kms.listen,
            static_certificate,
            state_dir: raw.kms.state_dir,
            channel_ttl_seconds: raw.kms.channel_ttl_seconds,
            storage_cache_bytes: usize::try_from(raw.kms.storage_cache_mib)? * 1024 * 1024,
            tls_certificate: raw.tls.certificate,
            tls_private_key: raw.tls.private_key,
            hsm_module: raw
                .hsm
                .module
                .unwrap_or_else(strongroom_hsm::HsmConfig::softhsm_default_module),
            token_label: raw.hsm.token_label,
            pin_file: raw.hsm.pin_file,
            so_pin_file: raw.hsm.so_pin_file,
            softhsm2_conf: raw.hsm.softhsm2_conf,
            wrap_mechanism,
            rsa_bits: raw.hsm.rsa_bits,
            core,
            metrics_listen: raw.metrics.map(|m| m.listen),
            audit,
            issuers: raw
                .auth
                .issuers
                .into_iter()
                .map(|i| (i.issuer, i.jwks_file))
                .collect(),
        })
    }
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::try_from(raw)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Checks what can be checked without the HSM: secret file permissions, readable files.
    pub fn check_files(&self) -> anyhow::Result<()> {
        self.hsm_pin()?;
        if let Some(so) = &self.so_pin_file {
            crate::files::read_secret_file(so).context("hsm.so_pin_file")?;
        }
        // `strongroom init` writes a trial TLS key when there is none; one that exists must
        // be readable by its owner only.
        if self.tls_private_key.exists() {
            crate::files::read_secret_file(&self.tls_private_key).context("tls.private_key")?;
        }
        if !self.hsm_module.exists() {
            bail!("hsm.module {} does not exist", self.hsm_module.display());
        }
        if let Some(core) = &self.core {
            crate::files::read_secret_file(&core.realm_token_file)
                .context("core.realm_token_file")?;
            crate::pinning::load_roots(&core.pinned_roots).context("core.pinned_roots")?;
        }
        for (iss, path) in &self.issuers {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("auth.issuers {iss}: reading {}", path.display()))?;
            strongroom_kms::auth::Issuer::from_jwks(iss, &text)
                .map_err(|e| anyhow::anyhow!("auth.issuers {iss}: {e}"))?;
        }
        Ok(())
    }

    /// The HSM user PIN: from `hsm.pin_file` (mode 0600 or stricter) or from the
    /// environment variable `STRONGROOM_HSM_PIN` (e.g. systemd `LoadCredential`/`Environment`).
    pub fn hsm_pin(&self) -> anyhow::Result<secrecy::SecretString> {
        match &self.pin_file {
            Some(p) => crate::files::read_secret_string(p).context("hsm.pin_file"),
            None => std::env::var(PIN_ENV)
                .map(secrecy::SecretString::from)
                .map_err(|_| {
                    anyhow::anyhow!(
                        "hsm.pin_file is not set and {PIN_ENV} is not in the environment"
                    )
                }),
        }
    }

    /// A configuration for tests.
    #[cfg(test)]
    pub fn for_test() -> Self {
        #[allow(clippy::unwrap_used)]
        Self::parse(EXAMPLE).unwrap()
    }
}

/// The documented example (also the packaged default, with paths under /etc/strongroom).
pub const EXAMPLE: &str = r#"# strongroom configuration (version 1). `strongroom config check` validates it.
version = 1

[kms]
# The KMS domain: key URIs are kms://<domain>/..., and tokens must name it as audience.
domain = "kms.example.com"
listen = "0.0.0.0:8443"
state_dir = "/var/lib/strongroom"
# Certificate of the static RSA key (published in x5c). Default: <state_dir>/static-cert.pem,
# which `strongroom init` writes self-signed for a trial; replace it with one your CA signed
# from <state_dir>/static.csr.pem.
# static_certificate = "/etc/strongroom/static-cert.pem"
channel_ttl_seconds = 3600
storage_cache_mib = 64

[tls]
certificate = "/etc/strongroom/tls/cert.pem"
private_key = "/etc/strongroom/tls/key.pem"

[hsm]
# Any PKCS#11 module; SoftHSM2 is the default.
# module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "strongroom"
# The user PIN: a file readable only by strongroom, or (without pin_file) the
# environment variable STRONGROOM_HSM_PIN. Never on the command line.
pin_file = "/etc/strongroom/hsm-pin"
# Only `strongroom init` reads the SO PIN, to create a SoftHSM2 token that does not exist yet.
so_pin_file = "/etc/strongroom/hsm-so-pin"
# SoftHSM2's configuration: the packages install one whose token store is
# /var/lib/strongroom/softhsm/tokens, readable by the strongroom user only
# (docs/adr/0010-packaging.md). Omit it to use SOFTHSM2_CONF or SoftHSM2's default.
softhsm2_conf = "/etc/strongroom/softhsm2.conf"
wrap_mechanism = "aes-key-wrap"
# Size of the static RSA key `init` generates (2048, 3072 or 4096).
rsa_bits = 3072

[[auth.issuers]]
issuer = "https://idp.example.com"
jwks_file = "/etc/strongroom/idp-jwks.json"

# Prometheus metrics (plain HTTP, GET /metrics; no secrets, user IDs or key URIs). Keep it
# on loopback, or firewall it; remove the section to serve no metrics.
[metrics]
listen = "127.0.0.1:9464"

# The audit log (R16): every KMS decision is durable before its answer, and one flush
# serves every record queued meanwhile. With a window (microseconds, at most 100000) the
# writer also waits, under heavy load only, for more records before a flush: fewer
# flushes on slow disks with many concurrent clients, at the price of latency
# (docs/adr/0012-audit-group-commit-window.md). 0, the default, never waits.
# The writer's thread runs committer_nice steps (0-19) below the request workers, so under
# CPU load it flushes after them and each flush serves more records; on an idle machine it
# runs at once. 0 runs it at the workers' priority (docs/adr/0014-audit-committer-priority.md).
# A checkpoint (the signed head of the log's Merkle tree, also sent to the journal) is
# signed by the HSM after checkpoint_every records (1-1000000) or checkpoint_interval_seconds
# (1-3600) after the previous one, whichever comes first: no record stays unsigned longer.
# Records after the newest checkpoint kept off the box are the ones a root user could
# still cut off unseen; each checkpoint costs one HSM signature and one flush
# (docs/adr/0017-audit-checkpoint-cadence.md).
[audit]
group_commit_window_us = 0
committer_nice = 10
checkpoint_every = 10000
checkpoint_interval_seconds = 1

# The hosted core this realm dials out to (no inbound port is needed). Only the roots in
# pinned_roots are trusted, each must have pathLenConstraint 0, and chains with an
# intermediate are refused (R21).
# [core]
# url = "wss://core.example.net/realm/v1/connect"
# realm_token_file = "/etc/strongroom/core-realm-token"
# pinned_roots = "/etc/strongroom/core-roots.pem"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses() {
        let c = Config::for_test();
        assert_eq!(c.domain, "kms.example.com");
        assert_eq!(
            c.static_certificate,
            PathBuf::from("/var/lib/strongroom/static-cert.pem")
        );
    }

    #[test]
    fn unknown_keys_and_wrong_versions_are_refused() {
        let unknown = EXAMPLE.replace(
            "channel_ttl_seconds = 3600",
            "channel_ttl_seconds = 3600\ncolour = \"blue\"",
        );
        let e = Config::parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let v2 = EXAMPLE.replace("version = 1", "version = 2");
        assert!(
            Config::parse(&v2)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        let bad = EXAMPLE.replace("kms.example.com", "not a domain");
        assert!(Config::parse(&bad).is_err());
        let relative = EXAMPLE.replace("\"/var/lib/strongroom\"", "\"var/lib\"");
        assert!(Config::parse(&relative).is_err());
    }

    #[test]
    fn the_audit_tuning_is_bounded_and_defaults_when_absent() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.audit, AuditTuning::new(AuditSettings::default()).unwrap());
        assert!(c.audit.group_window.is_zero());
        let on = EXAMPLE.replace(
            "group_commit_window_us = 0",
            "group_commit_window_us = 1000",
        );
        assert_eq!(
            Config::parse(&on).unwrap().audit.group_window,
            std::time::Duration::from_millis(1)
        );
        let long = EXAMPLE.replace(
            "group_commit_window_us = 0",
            "group_commit_window_us = 100001",
        );
        let e = Config::parse(&long).unwrap_err().to_string();
        assert!(e.contains("audit.group_commit_window_us"), "{e}");
        let e = Config::parse(&EXAMPLE.replace("committer_nice = 10", "committer_nice = 20"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit.committer_nice"), "{e}");
        let zero = EXAMPLE.replace("committer_nice = 10", "committer_nice = 0");
        assert_eq!(Config::parse(&zero).unwrap().audit.committer_nice, 0);
        for (from, to, field) in [
            (
                "checkpoint_every = 10000",
                "checkpoint_every = 0",
                "audit.checkpoint_every",
            ),
            (
                "checkpoint_every = 10000",
                "checkpoint_every = 1000001",
                "audit.checkpoint_every",
            ),
            (
                "checkpoint_interval_seconds = 1",
                "checkpoint_interval_seconds = 0",
                "audit.checkpoint_interval_seconds",
            ),
            (
                "checkpoint_interval_seconds = 1",
                "checkpoint_interval_seconds = 3601",
                "audit.checkpoint_interval_seconds",
            ),
        ] {
            let bad = EXAMPLE.replace(from, to);
            assert_ne!(bad, EXAMPLE);
            let e = Config::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{to}: {e}");
        }
        let tuned = EXAMPLE
            .replace("checkpoint_every = 10000", "checkpoint_every = 50000")
            .replace(
                "checkpoint_interval_seconds = 1",
                "checkpoint_interval_seconds = 60",
            );
        let t = Config::parse(&tuned).unwrap().audit;
        assert_eq!(t.checkpoint_every, 50_000);
        assert_eq!(t.checkpoint_interval, std::time::Duration::from_mins(1));
        // The writer gets every setting.
        let mut cfg = strongroom_audit::LogConfig::new("/nonexistent", "o");
        t.apply(&mut cfg);
        assert_eq!(cfg.checkpoint_every, 50_000);
        assert_eq!(cfg.checkpoint_interval, std::time::Duration::from_mins(1));
        assert_eq!(cfg.committer_nice, t.committer_nice);
        assert_eq!(cfg.group_window, t.group_window);
        // The defaults here are the writer's own.
        let d = AuditTuning::new(AuditSettings::default()).unwrap();
        let w = strongroom_audit::LogConfig::new("/nonexistent", "o");
        assert_eq!(d.checkpoint_every, w.checkpoint_every);
        assert_eq!(d.checkpoint_interval, w.checkpoint_interval);
        assert_eq!(d.committer_nice, w.committer_nice);
        assert_eq!(d.group_window, w.group_window);
        let absent = EXAMPLE.replace(
            "[audit]\ngroup_commit_window_us = 0\ncommitter_nice = 10\ncheckpoint_every = 10000\ncheckpoint_interval_seconds = 1\n",
            "",
        );
        assert_ne!(absent, EXAMPLE);
        assert_eq!(
            Config::parse(&absent).unwrap().audit,
            AuditTuning::new(AuditSettings::default()).unwrap()
        );
        // Keys left out of `[audit]` take their defaults; unknown ones are refused.
        let partial = EXAMPLE.replace(
            "group_commit_window_us = 0\ncommitter_nice = 10\ncheckpoint_every = 10000\n",
            "",
        );
        assert_ne!(partial, EXAMPLE);
        let p = Config::parse(&partial.replace(
            "checkpoint_interval_seconds = 1",
            "checkpoint_interval_seconds = 5",
        ))
        .unwrap()
        .audit;
        assert_eq!(p.checkpoint_interval, std::time::Duration::from_secs(5));
        assert_eq!(p.checkpoint_every, DEFAULT_CHECKPOINT_EVERY);
        assert_eq!(p.committer_nice, strongroom_audit::DEFAULT_COMMITTER_NICE);
        let e = Config::parse(&EXAMPLE.replace("committer_nice = 10", "committer_nicety = 10"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("committer_nicety"), "{e:#}");
    }

    #[test]
    fn readable_secret_files_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = crate::files::read_secret_file(&p).unwrap_err().to_string();
        assert!(e.contains("readable by group or others"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(crate::files::read_secret_file(&p).is_ok());
    }
}
