//! The journal mirror of the audit log (R16, issue 4 item 4): under systemd every durable
//! audit record is also sent to the journal with structured `AUDIT_*` fields, for SIEM
//! pickup and as a copy off the box. Uses systemd-journal-logger directly (not as the
//! global logger: operational logs stay on `tracing`).
//!
//! Enabled when the process runs as a systemd service (`INVOCATION_ID` is set) or when
//! `STRONGROOM_AUDIT_JOURNAL=1`; `STRONGROOM_AUDIT_JOURNAL=0` turns it off.

use std::sync::Arc;

use systemd_journal_logger::JournalLog;

/// The audit record's fields that go to the journal (a subset of the schema, all of them
/// obfuscated IDs, URIs or enums: R14, R22).
const FIELDS: [&str; 15] = [
    "seq", "time", "kind", "action", "outcome", "reason", "status", "user", "org", "client",
    "machine", "subject", "peer", "request", "resource",
];

pub fn wanted() -> bool {
    match std::env::var("STRONGROOM_AUDIT_JOURNAL").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::env::var_os("INVOCATION_ID").is_some(),
    }
}

/// A record sink for [`strongroom_audit::LogConfig::on_record`], or `None` (with a warning)
/// if the journal cannot be reached.
pub fn audit_mirror() -> Option<strongroom_audit::RecordSink> {
    if !wanted() {
        return None;
    }
    let journal = match JournalLog::empty() {
        Ok(j) => j.with_syslog_identifier("strongroom-audit".into()),
        Err(e) => {
            tracing::warn!(error = %e, "the journal is not reachable; audit records are not mirrored to it");
            return None;
        }
    };
    let journal = Arc::new(journal);
    Some(Arc::new(move |line: &[u8]| send(&journal, line)))
}

fn send(journal: &JournalLog, line: &[u8]) {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let Ok(serde_json::Value::Object(rec)) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let mut kvs: Vec<(String, String)> = Vec::with_capacity(FIELDS.len() + 1);
    for f in FIELDS {
        if let Some(v) = rec.get(f) {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            kvs.push((format!("AUDIT_{}", f.to_ascii_uppercase()), v));
        }
    }
    if let Some(keys) = rec.get("keys").and_then(|k| k.as_array()) {
        let joined: Vec<&str> = keys.iter().filter_map(|k| k.as_str()).collect();
        kvs.push(("AUDIT_KEYS".into(), joined.join(" ")));
    }
    let kv_refs: Vec<(&str, &str)> = kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let source: &dyn log::kv::Source = &kv_refs;
    let sent = journal.journal_send(
        &log::Record::builder()
            .level(log::Level::Info)
            .target("strongroom::audit")
            .args(format_args!("{text}"))
            .key_values(source)
            .build(),
    );
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sending an audit record to the journal failed");
    }
}
