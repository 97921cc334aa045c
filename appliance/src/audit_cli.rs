//! `strongroom audit ...`: the security team's tools over the audit log (R16). Every
//! command verifies the log as it reads it; a fault is reported with its segment, line and
//! record and the command exits non-zero. Output is text, or JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use strongroom_audit::{
    Allowlist, Filter, KeyUri, LogKey, LogSnapshot, Outcome, ResourceUri, SignedCheckpoint,
    VerifyOptions,
};
use uuid::Uuid;

/// Exit status for a log that failed verification (distinct from usage errors, 2).
pub const EXIT_TAMPERED: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The state directory (the log is `<state>/audit`).
    #[arg(long, default_value = "/var/lib/strongroom")]
    pub state: PathBuf,
    /// The log's public key (`vkey` text, as `strongroom audit key` prints it). Keep a copy
    /// off the box: without `--key` the copy in the state directory is used, which whoever
    /// controls the box could replace.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Checkpoints kept off the box (signed notes, one file each): the log must extend them.
    #[arg(long = "against")]
    pub against: Vec<PathBuf>,
    /// Also fail on records after the last checkpoint and on a partial last write. For a
    /// log whose service stopped cleanly (its final checkpoint covers every record); a
    /// live log or one a crash ended has such a tail, which reopening signs or removes.
    #[arg(long)]
    pub strict: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub user: Option<Uuid>,
    #[arg(long)]
    pub org: Option<Uuid>,
    /// A key URI (`kms://<domain>/keys/<uuid>`).
    #[arg(long = "key-uri")]
    pub key_uri: Option<String>,
    /// A resource URI (`kms://<domain>/resources/<uuid>`).
    #[arg(long)]
    pub resource: Option<String>,
    /// allowed, denied or failed.
    #[arg(long)]
    pub outcome: Option<String>,
    /// RFC 3339 time: records at or after it.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time: records before it.
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the whole log: exit 0 if intact, 3 naming the first bad record or segment.
    Verify(LogArgs),
    /// Show records matching a filter (alias: `query`).
    #[command(visible_alias = "query")]
    Show {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Inclusion and consistency proofs (RFC 9162) from the verified log.
    #[command(subcommand)]
    Prove(ProveCommand),
    /// Export matching records with proofs and a checkpoint: verifies offline with the key.
    Export {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an exported bundle with only the public key.
    VerifyBundle {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// List every key access outside what the enterprise allowed (TOML or JSON allowlist).
    Reconcile {
        #[command(flatten)]
        log: LogArgs,
        #[arg(long)]
        allow: PathBuf,
    },
    /// Print the log's public key (`vkey`) read from the HSM itself, to keep off the box.
    Key(crate::serve::ConfigArg),
}

#[derive(Debug, clap::Subcommand)]
pub enum ProveCommand {
    /// Prove that record INDEX is in the tree of size SIZE (default: the whole log).
    Inclusion {
        #[command(flatten)]
        log: LogArgs,
        #[arg(long)]
        index: u64,
        #[arg(long)]
        size: Option<u64>,
    },
    /// Prove that the tree of size OLD is a prefix of the tree of size NEW.
    Consistency {
        #[command(flatten)]
        log: LogArgs,
        #[arg(long)]
        old: u64,
        #[arg(long)]
        new: Option<u64>,
    },
}

fn b64(d: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d)
}

/// The file the appliance writes its log key to at start (convenience copy).
pub fn vkey_path(state: &Path) -> PathBuf {
    state.join("audit.vkey")
}

fn load_key(args: &LogArgs) -> anyhow::Result<LogKey> {
    let path = args.key.clone().unwrap_or_else(|| vkey_path(&args.state));
    if args.key.is_none() && !args.json {
        eprintln!(
            "note: using the key in {}; pass --key with a copy kept elsewhere for full assurance",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the log key {}", path.display()))?;
    LogKey::from_vkey(text.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn options(args: &LogArgs, key: &LogKey) -> anyhow::Result<VerifyOptions> {
    let mut trusted = Vec::new();
    for p in &args.against {
        let note = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        trusted.push(SignedCheckpoint::verify(&note, key).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a checkpoint signed by this log's key: {e}",
                p.display()
            )
        })?);
    }
    let opts = VerifyOptions::default().trusted(trusted);
    Ok(if args.strict { opts.strict() } else { opts })
}

fn filter(f: &FilterArgs) -> anyhow::Result<Filter> {
    let mut out = Filter::default();
    out.user = f.user;
    out.org = f.org;
    if let Some(k) = &f.key_uri {
        out.key = Some(
            k.parse::<KeyUri>()
                .map_err(|e| anyhow::anyhow!("--key-uri: {e}"))?,
        );
    }
    if let Some(r) = &f.resource {
        out.resource = Some(
            r.parse::<ResourceUri>()
                .map_err(|e| anyhow::anyhow!("--resource: {e}"))?,
        );
    }
    out.outcome = match f.outcome.as_deref() {
        None => None,
        Some("allowed") => Some(Outcome::Allowed),
        Some("denied") => Some(Outcome::Denied),
        Some("failed") => Some(Outcome::Failed),
        Some(o) => bail!("--outcome must be allowed, denied or failed (got {o})"),
    };
    let time = |s: &Option<String>, name: &str| -> anyhow::Result<Option<i64>> {
        s.as_deref()
            .map(|t| {
                strongroom_kms::clock::parse_rfc3339(t)
                    .with_context(|| format!("{name} is not RFC 3339"))
            })
            .transpose()
    };
    out.since_ms = time(&f.since, "--since")?;
    out.until_ms = time(&f.until, "--until")?;
    Ok(out)
}

fn log_dir(args: &LogArgs) -> PathBuf {
    args.state.join("audit")
}

/// Runs a command; `Ok(code)` is the process exit status.
pub fn run(cmd: &AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Verify(log) => {
            let key = load_key(log)?;
            let opts = options(log, &key)?;
            match verify_with_progress(&log_dir(log), &key, &opts, !log.json) {
                Ok(v) => {
                    if log.json {
                        println!(
                            "{}",
                            serde_json::json!({"intact": true, "records": v.records, "segments": v.segments, "checkpoints": v.checkpoints,
                                "unsigned_tail": v.unsigned_tail, "torn_tail_bytes": v.torn_tail_bytes})
                        );
                    } else {
                        println!(
                            "intact: {} records in {} segments, {} checkpoints",
                            v.records, v.segments, v.checkpoints
                        );
                        // Not faults (a live log, or a crash), but nothing vouches for them
                        // yet: say so, so that `intact` is never read as more than it is.
                        if v.unsigned_tail > 0 {
                            println!(
                                "  {} records after the last checkpoint are not signed yet (--strict refuses them)",
                                v.unsigned_tail
                            );
                        }
                        if v.torn_tail_bytes > 0 {
                            println!(
                                "  {} bytes of a partial last write (a crash; removed when the log reopens; --strict refuses them)",
                                v.torn_tail_bytes
                            );
                        }
                    }
                    Ok(0)
                }
                Err(e) => report_fault(log.json, &e),
            }
        }
        AuditCommand::Show { log, filter: f } => {
            let key = load_key(log)?;
            let opts = options(log, &key)?;
            let flt = filter(f)?;
            let mut n = 0u64;
            let res = strongroom_audit::query(&log_dir(log), &key, &opts, &flt, &mut |_, line| {
                n += 1;
                println!("{}", String::from_utf8_lossy(line).trim_end());
            });
            match res {
                Ok(_) => {
                    if !log.json {
                        eprintln!("{n} matching records; log verified");
                    }
                    Ok(0)
                }
                Err(e) => report_fault(log.json, &e),
            }
        }
        AuditCommand::Prove(ProveCommand::Inclusion { log, index, size }) => {
            let key = load_key(log)?;
            let snap = match LogSnapshot::load(&log_dir(log), &key, &options(log, &key)?) {
                Ok(s) => s,
                Err(e) => return report_fault(log.json, &e),
            };
            let size = size.unwrap_or_else(|| snap.size());
            let proof = snap.prove_inclusion(*index, size)?;
            let out = serde_json::json!({"proof": proof, "root": b64(&snap.root(size)?)});
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        AuditCommand::Prove(ProveCommand::Consistency { log, old, new }) => {
            let key = load_key(log)?;
            let snap = match LogSnapshot::load(&log_dir(log), &key, &options(log, &key)?) {
                Ok(s) => s,
                Err(e) => return report_fault(log.json, &e),
            };
            let new = new.unwrap_or_else(|| snap.size());
            let proof = snap.prove_consistency(*old, new)?;
            let (old_root, new_root) = (snap.root(*old)?, snap.root(new)?);
            proof
                .verify(&old_root, &new_root)
                .context("the consistency proof does not verify")?;
            let out = serde_json::json!({
                "proof": proof, "old_root": b64(&old_root), "new_root": b64(&new_root)
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        AuditCommand::Key(args) => {
            println!("{}", crate::serve::audit_key(args)?.vkey());
            Ok(0)
        }
        AuditCommand::Export {
            log,
            filter: f,
            out,
        } => {
            let key = load_key(log)?;
            let bundle = match strongroom_audit::export(
                &log_dir(log),
                &key,
                &options(log, &key)?,
                &filter(f)?,
            ) {
                Ok(b) => b,
                Err(e) => return report_fault(log.json, &e),
            };
            crate::files::write_file(out, bundle.to_json()?.as_bytes(), 0o600)?;
            let (cp, records) = bundle.verify(&key)?;
            println!(
                "exported {} records with proofs against checkpoint size {} to {}",
                records.len(),
                cp.size(),
                out.display()
            );
            Ok(0)
        }
        AuditCommand::VerifyBundle { bundle, key } => {
            let key = LogKey::from_vkey(std::fs::read_to_string(key)?.trim())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let b = strongroom_audit::Bundle::from_json(&std::fs::read_to_string(bundle)?)?;
            match b.verify(&key) {
                Ok((cp, records)) => {
                    println!(
                        "bundle verifies: {} records included in the signed tree of size {}",
                        records.len(),
                        cp.size()
                    );
                    Ok(0)
                }
                Err(e) => {
                    println!("bundle does NOT verify: {e}");
                    Ok(EXIT_TAMPERED)
                }
            }
        }
        AuditCommand::Reconcile { log, allow } => {
            let key = load_key(log)?;
            let text = std::fs::read_to_string(allow)
                .with_context(|| format!("reading {}", allow.display()))?;
            let list: Allowlist = if allow.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)?
            } else {
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", allow.display()))?
            };
            match strongroom_audit::reconcile(&log_dir(log), &key, &options(log, &key)?, &list) {
                Ok((v, findings)) => {
                    for f in &findings {
                        println!(
                            "{}",
                            serde_json::json!({"seq": f.seq, "violation": format!("{:?}", f.violation), "record": f.record})
                        );
                    }
                    eprintln!(
                        "{} key accesses outside the allowlist among {} records",
                        findings.len(),
                        v.records
                    );
                    Ok(u8::from(!findings.is_empty()))
                }
                Err(e) => report_fault(log.json, &e),
            }
        }
    }
}

/// Verifies the whole log; on a terminal, shows a running count on stderr (long logs take
/// seconds: about 4 s per million records here).
fn verify_with_progress(
    dir: &Path,
    key: &LogKey,
    opts: &VerifyOptions,
    show: bool,
) -> Result<strongroom_audit::Verified, strongroom_audit::Error> {
    use std::io::{IsTerminal as _, Write as _};
    let tty = show && std::io::stderr().is_terminal();
    let mut n = 0u64;
    let started = std::time::Instant::now();
    let res = strongroom_audit::query(dir, key, opts, &Filter::default(), &mut |_, _| {
        n += 1;
        if tty && n.is_multiple_of(50_000) {
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\rverifying: {n} records, {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let _ = err.flush();
        }
    });
    if tty && n >= 50_000 {
        eprintln!();
    }
    res
}

fn report_fault(json: bool, e: &strongroom_audit::Error) -> anyhow::Result<u8> {
    if let strongroom_audit::Error::Tampered(fault) = e {
        if json {
            println!(
                "{}",
                serde_json::json!({"intact": false, "fault": fault.to_string(), "segment": fault.segment, "line": fault.line, "seq": fault.seq})
            );
        } else {
            println!("NOT INTACT: {fault}");
        }
        return Ok(EXIT_TAMPERED);
    }
    Err(anyhow::anyhow!("{e}"))
}
