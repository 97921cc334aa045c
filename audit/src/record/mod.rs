//! The record schema (version 1) and its canonical encoding.
//!
//! A record is one line of compact JSON, keys in the fixed order below, no spaces,
//! terminated by `\n` (the newline is not part of the record). **The Merkle leaf is the
//! exact bytes of the line**, so verifiers hash what is on disk and never re-serialise.
//! Readers still check that a line is canonical (re-encoding it gives the same bytes)
//! and reject unknown fields, so one record has one spelling.
//!
//! ```text
//! {"v":1,"seq":7,"time":"2026-05-01T10:00:00.123Z","kind":"kms.decision","action":"retrieve",
//!  "outcome":"allowed","reason":"ok","status":200,"user":"<uuid>","org":"<uuid>",
//!  "client":"<uuid>","request":"<uuid>","resource":"kms://d/resources/<uuid>",
//!  "keys":["kms://d/keys/<uuid>"]}
//! ```
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `v` | 1 | schema version |
//! | `seq` | u64 | position in the log = Merkle leaf index, from 0, no gaps |
//! | `time` | RFC 3339 UTC, ms | when the log committed the record (non-decreasing) |
//! | `kind` | [`Kind`] | `kms.decision`, `admin`, `federation`, `machine`, `indexer` |
//! | `action` | [`Action`] | the method or admin action |
//! | `outcome` | [`Outcome`] | `allowed`, `denied`, `failed` |
//! | `reason` | [`Reason`] | stable reason code; its text is [`Reason::text`] |
//! | `status` | u16, optional | the KMS status code answered |
//! | `user`, `org`, `client`, `machine` | UUID, optional | obfuscated actor IDs (R22) |
//! | `subject` | UUID, optional | the user/org an authorization change is about |
//! | `peer` | [`Domain`], optional | the other KMS of a federation request |
//! | `request` | UUID, optional | request ID ([`request_id`] maps non-UUID IDs) |
//! | `resource` | [`ResourceUri`], optional | the resource (room) |
//! | `keys` | [`KeyUri`] list, omitted when empty | the keys the decision is about |
//!
//! No field takes free text: every value is an enum, a number, a UUID or a validated
//! URI/DNS name, so key bytes, tokens, plaintext or real names cannot be recorded.

mod kinds;
mod uri;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

pub use kinds::{Action, Kind, Outcome, Reason};
pub use uri::{Domain, KeyUri, ResourceUri};

/// The schema version written by this crate.
pub const RECORD_VERSION: u32 = 1;
/// Most key URIs one record may name; split larger decisions.
pub const MAX_KEYS: usize = 1024;

/// What a caller appends: a decision without its log position and time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Event {
    pub kind: Kind,
    pub action: Action,
    pub outcome: Outcome,
    pub reason: Reason,
    pub status: Option<u16>,
    pub user: Option<Uuid>,
    pub org: Option<Uuid>,
    pub client: Option<Uuid>,
    pub machine: Option<Uuid>,
    pub subject: Option<Uuid>,
    pub peer: Option<Domain>,
    pub request: Option<Uuid>,
    pub resource: Option<ResourceUri>,
    pub keys: Vec<KeyUri>,
}

impl Event {
    pub fn new(kind: Kind, action: Action, outcome: Outcome, reason: Reason) -> Self {
        Event {
            kind,
            action,
            outcome,
            reason,
            status: None,
            user: None,
            org: None,
            client: None,
            machine: None,
            subject: None,
            peer: None,
            request: None,
            resource: None,
            keys: Vec::new(),
        }
    }
    #[must_use]
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
    #[must_use]
    pub fn user(mut self, id: Uuid) -> Self {
        self.user = Some(id);
        self
    }
    #[must_use]
    pub fn org(mut self, id: Uuid) -> Self {
        self.org = Some(id);
        self
    }
    #[must_use]
    pub fn client(mut self, id: Uuid) -> Self {
        self.client = Some(id);
        self
    }
    #[must_use]
    pub fn machine(mut self, id: Uuid) -> Self {
        self.machine = Some(id);
        self
    }
    #[must_use]
    pub fn subject(mut self, id: Uuid) -> Self {
        self.subject = Some(id);
        self
    }
    #[must_use]
    pub fn peer(mut self, domain: Domain) -> Self {
        self.peer = Some(domain);
        self
    }
    #[must_use]
    pub fn request(mut self, id: Uuid) -> Self {
        self.request = Some(id);
        self
    }
    #[must_use]
    pub fn resource(mut self, uri: ResourceUri) -> Self {
        self.resource = Some(uri);
        self
    }
    #[must_use]
    pub fn key(mut self, uri: KeyUri) -> Self {
        self.keys.push(uri);
        self
    }
    #[must_use]
    pub fn keys(mut self, uris: impl IntoIterator<Item = KeyUri>) -> Self {
        self.keys.extend(uris);
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.keys.len() > MAX_KEYS {
            return Err(Error::InvalidField {
                field: "keys",
                reason: "more than MAX_KEYS key URIs in one record",
            });
        }
        Ok(())
    }

    /// Appends this event's record *body*: the canonical JSON object of its fields from
    /// `kind` on, with nothing of its log position or time. The caller encodes it on its
    /// own thread, so what it allocated is freed there, and the committer only puts
    /// [`line_prefix`] before the body's first byte past `{` (see `committer.rs`).
    pub(crate) fn encode_body_into(&self, buf: &mut Vec<u8>) -> Result<()> {
        let body = Body {
            kind: self.kind,
            action: self.action,
            outcome: self.outcome,
            reason: self.reason,
            status: self.status,
            user: self.user,
            org: self.org,
            client: self.client,
            machine: self.machine,
            subject: self.subject,
            peer: self.peer.as_ref(),
            request: self.request,
            resource: self.resource.as_ref(),
            keys: &self.keys,
        };
        serde_json::to_writer(buf, &body).map_err(Error::RecordJson)
    }
}

/// [`Record`]'s fields after `time`, borrowed, with the same names, order and omission
/// rules: `line_prefix` + a body past its `{` is byte for byte the canonical line (a unit
/// test compares the two for every optional field).
#[derive(Serialize)]
struct Body<'a> {
    kind: Kind,
    action: Action,
    outcome: Outcome,
    reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a Domain>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a ResourceUri>,
    #[serde(skip_serializing_if = "<[KeyUri]>::is_empty")]
    keys: &'a [KeyUri],
}

/// The start of a record's line up to and including the comma after `time`:
/// `{"v":1,"seq":7,"time":"2026-05-01T10:00:00.123Z",`. `time` is the text of
/// [`format_time`] (one per group: every record of a group has the same time).
pub(crate) fn line_prefix(buf: &mut Vec<u8>, seq: u64, time: &str) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(
        buf,
        "{{\"v\":{RECORD_VERSION},\"seq\":{seq},\"time\":\"{time}\","
    );
}

/// A commit time as records spell it (RFC 3339, UTC, milliseconds); `None` outside years
/// 0000–9999.
pub(crate) fn format_time(ms: i64) -> Option<String> {
    kinds::rfc3339_ms::format(ms)
}

/// Maps a client-chosen request ID to the UUID recorded: a UUID is kept as is; any other
/// string becomes the first 16 bytes of its SHA-256 (still correlatable with the
/// client's logs, but a client cannot smuggle text into the log).
pub fn request_id(client_value: &str) -> Uuid {
    use sha2::Digest;
    if let Ok(u) = Uuid::parse_str(client_value) {
        return u;
    }
    let digest = sha2::Sha256::digest(client_value.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(b)
}

/// A committed record, as stored (one line) and read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    /// Milliseconds since the Unix epoch (UTC), written as RFC 3339 with milliseconds.
    #[serde(with = "kinds::rfc3339_ms")]
    pub time: i64,
    pub kind: Kind,
    pub action: Action,
    pub outcome: Outcome,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Domain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceUri>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyUri>,
}

impl Record {
    /// Stamps an event with its log position and commit time (the committer assembles the
    /// same bytes from [`line_prefix`] and [`Event::encode_body_into`]; tests compare).
    #[cfg(test)]
    pub(crate) fn stamp(e: Event, seq: u64, time: i64) -> Record {
        Record {
            v: RECORD_VERSION,
            seq,
            time,
            kind: e.kind,
            action: e.action,
            outcome: e.outcome,
            reason: e.reason,
            status: e.status,
            user: e.user,
            org: e.org,
            client: e.client,
            machine: e.machine,
            subject: e.subject,
            peer: e.peer,
            request: e.request,
            resource: e.resource,
            keys: e.keys,
        }
    }

    /// The canonical line (without the newline): the Merkle leaf.
    pub fn encode(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(Error::RecordJson)
    }

    /// Parses one line (without its newline) and checks version and canonical form.
    pub fn decode(line: &[u8]) -> Result<Record> {
        let rec: Record = serde_json::from_slice(line).map_err(Error::RecordJson)?;
        if rec.v != RECORD_VERSION {
            return Err(Error::MalformedRecord {
                reason: "unknown record version",
            });
        }
        if rec.encode()? != line {
            return Err(Error::MalformedRecord {
                reason: "not in canonical form",
            });
        }
        Ok(rec)
    }

    /// Whether the record names this key.
    pub fn names_key(&self, key: &KeyUri) -> bool {
        self.keys.iter().any(|k| k == key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Record {
        let d: Domain = "kms.example.com".parse().unwrap();
        let e = Event::new(
            Kind::KmsDecision,
            Action::Retrieve,
            Outcome::Allowed,
            Reason::Ok,
        )
        .status(200)
        .user(Uuid::from_u128(1))
        .org(Uuid::from_u128(2))
        .request(request_id("req-1"))
        .resource(ResourceUri::new(&d, Uuid::from_u128(3)))
        .key(KeyUri::new(&d, Uuid::from_u128(4)));
        Record::stamp(e, 7, 1_777_629_600_123)
    }

    #[test]
    fn encoding_is_fixed_and_round_trips() {
        let r = sample();
        let line = r.encode().unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with(
            r#"{"v":1,"seq":7,"time":"2026-05-01T10:00:00.123Z","kind":"kms.decision","action":"retrieve","outcome":"allowed","reason":"ok","status":200,"user":"00000000-0000-0000-0000-000000000001""#
        ), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(Record::decode(&line).unwrap(), r);
    }

    #[test]
    fn decode_rejects_non_canonical_unknown_and_future_lines() {
        let line = String::from_utf8(sample().encode().unwrap()).unwrap();
        let spaced = line.replacen(",\"seq\"", ", \"seq\"", 1);
        assert!(Record::decode(spaced.as_bytes()).is_err());
        let extra = line.replacen("{\"v\":1,", "{\"v\":1,\"details\":\"secret\",", 1);
        assert!(Record::decode(extra.as_bytes()).is_err());
        let v2 = line.replacen("{\"v\":1,", "{\"v\":2,", 1);
        assert!(Record::decode(v2.as_bytes()).is_err());
        let reordered = line.replacen(
            "\"kind\":\"kms.decision\",\"action\":\"retrieve\"",
            "\"action\":\"retrieve\",\"kind\":\"kms.decision\"",
            1,
        );
        assert!(Record::decode(reordered.as_bytes()).is_err());
    }

    /// The committer's assembly (prefix + the caller's body past `{`) is the canonical
    /// line, with every optional field absent, present alone, and all present.
    #[test]
    fn prefix_and_body_assemble_the_canonical_line() {
        let d: Domain = "kms.example.com".parse().unwrap();
        let u = |n| Uuid::from_u128(n);
        let base = || {
            Event::new(
                Kind::Admin,
                Action::Create,
                Outcome::Denied,
                Reason::NotMember,
            )
        };
        let full = base()
            .status(403)
            .user(u(1))
            .org(u(2))
            .client(u(3))
            .machine(u(4))
            .subject(u(5))
            .peer("peer.example.org".parse().unwrap())
            .request(u(6))
            .resource(ResourceUri::new(&d, u(7)))
            .keys([KeyUri::new(&d, u(8)), KeyUri::new(&d, u(9))]);
        let events = [
            base(),
            base().status(200),
            base().user(u(1)),
            base().org(u(2)),
            base().client(u(3)),
            base().machine(u(4)),
            base().subject(u(5)),
            base().peer("peer.example.org".parse().unwrap()),
            base().request(u(6)),
            base().resource(ResourceUri::new(&d, u(7))),
            base().key(KeyUri::new(&d, u(8))),
            full,
        ];
        for ((seq, time), e) in (0..u64::MAX).rev().zip(1_777_629_600_123..).zip(events) {
            let mut body = Vec::new();
            e.encode_body_into(&mut body).unwrap();
            let mut line = Vec::new();
            line_prefix(&mut line, seq, &format_time(time).unwrap());
            line.extend_from_slice(body.strip_prefix(b"{").unwrap());
            let canonical = Record::stamp(e, seq, time).encode().unwrap();
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(canonical).unwrap()
            );
        }
    }

    #[test]
    fn request_ids_keep_uuids_and_hash_other_strings() {
        let u = Uuid::new_v4();
        assert_eq!(request_id(&u.to_string()), u);
        let h = request_id("Bearer eyJhbGciOi-secret");
        assert_ne!(h, Uuid::nil());
        assert_eq!(h, request_id("Bearer eyJhbGciOi-secret"));
    }
}
