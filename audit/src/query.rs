//! Filters for `show`/`query`, and `reconcile`: key accesses by machines, the indexer
//! and federation peers that the enterprise's allowlist does not cover.

use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkpoint::LogKey;
use crate::error::Result;
use crate::record::{Action, Domain, KeyUri, Kind, Outcome, Record, ResourceUri};
use crate::verify::{self, Item, Verified, VerifyOptions};

/// Every set field must match (AND); `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    pub kind: Option<Kind>,
    pub outcome: Option<Outcome>,
    pub user: Option<Uuid>,
    pub org: Option<Uuid>,
    pub client: Option<Uuid>,
    pub machine: Option<Uuid>,
    pub key: Option<KeyUri>,
    pub resource: Option<ResourceUri>,
    /// Records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Records strictly before this time.
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        fn eq<T: PartialEq>(want: Option<&T>, have: Option<&T>) -> bool {
            want.is_none_or(|w| have == Some(w))
        }
        eq(self.kind.as_ref(), Some(&r.kind))
            && eq(self.outcome.as_ref(), Some(&r.outcome))
            && eq(self.user.as_ref(), r.user.as_ref())
            && eq(self.org.as_ref(), r.org.as_ref())
            && eq(self.client.as_ref(), r.client.as_ref())
            && eq(self.machine.as_ref(), r.machine.as_ref())
            && eq(self.resource.as_ref(), r.resource.as_ref())
            && self.key.as_ref().is_none_or(|k| r.names_key(k))
            && self.since_ms.is_none_or(|t| r.time >= t)
            && self.until_ms.is_none_or(|t| r.time < t)
    }
}

/// Verifies the log while passing each matching record (and its exact line) to
/// `visit`; results come only from a log that verifies up to that point, and the
/// call fails at the first fault.
pub fn query(
    dir: &Path,
    key: &LogKey,
    opts: &VerifyOptions,
    filter: &Filter,
    visit: &mut dyn FnMut(&Record, &[u8]),
) -> Result<Verified> {
    verify::walk(dir, key, opts, &mut |item| {
        if let Item::Record { line, record, .. } = item
            && filter.matches(&record)
        {
            visit(&record, line);
        }
        Ok(())
    })
}

/// What the enterprise allowed (TOML/JSON, e.g. `[[machines]] machine = "<uuid>"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Allowlist {
    #[serde(default)]
    pub machines: Vec<MachineGrant>,
    #[serde(default)]
    pub peers: Vec<PeerGrant>,
}

/// A machine account (or the indexer) allowed to access keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineGrant {
    pub machine: Uuid,
    /// Resources it may touch; empty = any.
    #[serde(default)]
    pub resources: Vec<ResourceUri>,
    /// Users or orgs it may act on behalf of; empty = any.
    #[serde(default)]
    pub on_behalf_of: Vec<Uuid>,
}

/// A federation peer allowed to fetch keys on behalf of its users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerGrant {
    pub peer: Domain,
    /// Orgs of the peer whose users may be served; empty = any.
    #[serde(default)]
    pub orgs: Vec<Uuid>,
}

/// Why an access is outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Violation {
    /// A machine/indexer record without a machine ID.
    NoMachineId,
    UnknownMachine,
    ResourceNotAllowed,
    OnBehalfNotAllowed,
    /// A federation record without a peer.
    NoPeer,
    UnknownPeer,
    OrgNotAllowed,
}

/// One access outside the allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub seq: u64,
    pub violation: Violation,
    pub record: Record,
}

/// A key access: an allowed decision naming keys or retrieving.
fn is_key_access(r: &Record) -> bool {
    r.outcome == Outcome::Allowed
        && (!r.keys.is_empty()
            || matches!(
                r.action,
                Action::Retrieve | Action::FederatedFetch | Action::FederatedRelease
            ))
}

impl Allowlist {
    /// Checks one record; `None` if it is not a machine/indexer/federation key access
    /// or the allowlist covers it. User decisions are the KMS's own authorization and
    /// are not reconciled here.
    pub fn check(&self, r: &Record) -> Option<Violation> {
        if !is_key_access(r) {
            return None;
        }
        let machine_kind = matches!(r.kind, Kind::Machine | Kind::Indexer) || r.machine.is_some();
        if machine_kind {
            let Some(m) = r.machine else {
                return Some(Violation::NoMachineId);
            };
            let grants: Vec<&MachineGrant> =
                self.machines.iter().filter(|g| g.machine == m).collect();
            if grants.is_empty() {
                return Some(Violation::UnknownMachine);
            }
            let resource_ok = |g: &&MachineGrant| {
                g.resources.is_empty()
                    || r.resource.as_ref().is_some_and(|x| g.resources.contains(x))
            };
            let behalf_ok = |g: &&MachineGrant| {
                g.on_behalf_of.is_empty()
                    || [r.user, r.org]
                        .iter()
                        .flatten()
                        .any(|id| g.on_behalf_of.contains(id))
            };
            if !grants.iter().any(resource_ok) {
                return Some(Violation::ResourceNotAllowed);
            }
            if !grants.iter().any(|g| resource_ok(g) && behalf_ok(g)) {
                return Some(Violation::OnBehalfNotAllowed);
            }
        }
        if r.kind == Kind::Federation {
            let Some(peer) = &r.peer else {
                return Some(Violation::NoPeer);
            };
            let grants: Vec<&PeerGrant> = self.peers.iter().filter(|g| &g.peer == peer).collect();
            if grants.is_empty() {
                return Some(Violation::UnknownPeer);
            }
            let org_ok =
                |g: &&PeerGrant| g.orgs.is_empty() || r.org.is_some_and(|o| g.orgs.contains(&o));
            if !grants.iter().any(org_ok) {
                return Some(Violation::OrgNotAllowed);
            }
        }
        None
    }
}

/// Verifies the log and lists every key access outside `allow`.
pub fn reconcile(
    dir: &Path,
    key: &LogKey,
    opts: &VerifyOptions,
    allow: &Allowlist,
) -> Result<(Verified, Vec<Finding>)> {
    let mut findings = Vec::new();
    let verified = verify::walk(dir, key, opts, &mut |item| {
        if let Item::Record { record, .. } = item
            && let Some(violation) = allow.check(&record)
        {
            findings.push(Finding {
                seq: record.seq,
                violation,
                record,
            });
        }
        Ok(())
    })?;
    Ok((verified, findings))
}
