use std::path::Path;
use std::sync::Arc;

use strongroom_audit::{
    Action, AuditLog, CheckpointSigner, Domain, Event, FaultKind, Filter, KeyUri, Kind, LogConfig,
    LogKey, Outcome, Reason, Record, ResourceUri, SoftwareSigner, VerifyOptions, verify_dir,
};
use uuid::Uuid;

pub const ORIGIN: &str = "kms.example.com/audit";

pub fn signer() -> Arc<SoftwareSigner> {
    Arc::new(SoftwareSigner::from_bytes(&[7; 32]).unwrap())
}

pub fn key() -> LogKey {
    LogKey::new(ORIGIN, signer().public_key()).unwrap()
}

pub fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir, ORIGIN);
    c.checkpoint_every = 10;
    c
}

pub fn open(c: LogConfig) -> AuditLog {
    AuditLog::open(c, signer()).unwrap()
}

pub fn domain() -> Domain {
    "kms.example.com".parse().unwrap()
}

/// A varied, deterministic event for index `i`.
pub fn event(i: u64) -> Event {
    let d = domain();
    let (kind, action) = match i % 5 {
        0 => (Kind::KmsDecision, Action::Retrieve),
        1 => (Kind::KmsDecision, Action::Create),
        2 => (Kind::Admin, Action::RotateKek),
        3 => (Kind::Machine, Action::Retrieve),
        _ => (Kind::Federation, Action::FederatedRelease),
    };
    let (outcome, reason) = if i % 7 == 3 {
        (Outcome::Denied, Reason::Forbidden)
    } else {
        (Outcome::Allowed, Reason::Ok)
    };
    let mut e = Event::new(kind, action, outcome, reason)
        .status(if outcome == Outcome::Allowed {
            200
        } else {
            403
        })
        .user(Uuid::from_u128(u128::from(i % 13) + 1))
        .org(Uuid::from_u128(1000))
        .request(Uuid::from_u128(u128::from(i) << 64 | 0xabc))
        .resource(ResourceUri::new(
            &d,
            Uuid::from_u128(u128::from(i % 3) + 500),
        ))
        .key(KeyUri::new(&d, Uuid::from_u128(u128::from(i) + 9000)));
    if kind == Kind::Machine {
        e = e.machine(Uuid::from_u128(77 + u128::from(i % 2)));
    }
    if kind == Kind::Federation {
        e = e.peer("peer.example.org".parse().unwrap());
    }
    e
}

/// A closed log of `n` records in `dir`.
pub fn write_log(dir: &Path, n: u64, tweak: impl FnOnce(&mut LogConfig)) {
    let mut c = config(dir);
    tweak(&mut c);
    let log = open(c);
    for i in 0..n {
        assert_eq!(log.append(&event(i)).unwrap().seq, i);
    }
    log.close().unwrap();
}

/// Every record of the verified log in `dir`, parsed and as its exact line.
pub fn all_records(dir: &Path) -> Vec<(Record, Vec<u8>)> {
    let mut all = Vec::new();
    strongroom_audit::query(
        dir,
        &key(),
        &VerifyOptions::default(),
        &Filter::default(),
        &mut |r, line| all.push((r.clone(), line.to_vec())),
    )
    .unwrap();
    all
}

/// The exact lines of every record of the verified log in `dir`.
pub fn all_lines(dir: &Path) -> Vec<Vec<u8>> {
    all_records(dir).into_iter().map(|(_, line)| line).collect()
}

pub fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// A log ending in a torn tail of `torn` bytes after `records` records: `verify` reports
/// it, `--strict` refuses it as `TornLine`, and reopening cuts it and goes on at `records`.
pub fn assert_torn_tail_recovers(dir: &Path, records: u64, torn: u64) {
    let v = verify_dir(dir, &key(), &VerifyOptions::default()).unwrap();
    assert_eq!((v.records, v.torn_tail_bytes), (records, torn));
    let err = verify_dir(dir, &key(), &VerifyOptions::default().strict()).unwrap_err();
    assert_eq!(err.fault().unwrap().kind, FaultKind::TornLine);
    let log = open(config(dir));
    assert_eq!(log.append(&event(records)).unwrap().seq, records);
    log.close().unwrap();
    let v = verify_dir(dir, &key(), &VerifyOptions::default().strict()).unwrap();
    assert_eq!((v.records, v.torn_tail_bytes), (records + 1, 0));
}
