//! The core's side of the two-part membership change (R10, docs/protocol.md): check the
//! core part, forward the KMS part to the room's realm with the room and the authenticated
//! actor, verify the signed receipt against the realm's static JWK and the core part,
//! apply durably (recording the nonce), confirm. An add the core cannot apply is undone;
//! a removal is final. Reconciliation (on every realm connection and periodically)
//! settles whatever a crash left between the two sides, and delivers pending
//! deprovisioning statements (R24).

use serde::Deserialize;
use serde_json::{Value, json};
use strongroom_kms::jose::jwk::RsaPublicJwk;
use strongroom_kms::jose::jws::Jws;
use uuid::Uuid;

use super::AppState;
use crate::error::{Error, Result};
use crate::model::rooms::{MembershipChange, MembershipOp};
use crate::model::{Event, Model};

/// Lifetime of a deprovisioning statement.
const STATEMENT_TTL_S: i64 = 300;

/// A verified receipt's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub typ: String,
    pub v: u32,
    pub realm: String,
    pub room: Uuid,
    pub resource_uri: String,
    pub op: String,
    pub subject: Uuid,
    pub actor: Uuid,
    pub nonce: String,
    pub state: String,
}

/// `kms://<domain>` of a `kms://<domain>/...` resource URI.
pub fn cluster_of(resource_uri: &str) -> Result<String> {
    let rest = resource_uri
        .strip_prefix("kms://")
        .ok_or(Error::InvalidRequest("resource_uri must be a kms:// URI"))?;
    let host = rest.split('/').next().unwrap_or_default();
    Ok(format!("kms://{host}"))
}

/// Verifies a receipt's signature with the realm's static key (from its `hello`).
pub fn verify_receipt(s: &AppState, cluster: &str, jws: &str) -> Result<Receipt> {
    let jwk =
        s.0.db
            .read(|m| Ok(m.realm_static_jwks.get(cluster).cloned()))?
            .ok_or(Error::BadReceipt(
                "the realm never announced its static key",
            ))?;
    let jwk: RsaPublicJwk =
        serde_json::from_value(jwk).map_err(|_| Error::BadReceipt("unusable static JWK"))?;
    let key = jwk
        .to_public_key()
        .map_err(|_| Error::BadReceipt("unusable static JWK"))?;
    let payload = Jws::parse(jws)
        .and_then(|j| j.verify_rsa(&key))
        .map_err(|_| Error::BadReceipt("signature does not verify"))?;
    let r: Receipt =
        serde_json::from_slice(&payload).map_err(|_| Error::BadReceipt("malformed receipt"))?;
    if r.typ != "strongroom-membership-receipt" || r.v != 1 || r.realm != cluster {
        return Err(Error::BadReceipt("not a receipt of this realm"));
    }
    Ok(r)
}

fn op_name(op: MembershipOp) -> &'static str {
    match op {
        MembershipOp::Add => "add",
        MembershipOp::Remove => "remove",
    }
}

/// Applies a change the KMS applied (its receipt), unless already applied. An add is
/// applied only if the core's checks still hold (else `Err`: undo it); a removal always.
pub fn apply_receipt(m: &mut Model, r: &Receipt, now_ms: i64) -> Result<Option<Event>> {
    if m.applied_nonces.contains(&r.nonce) {
        return Ok(None);
    }
    let room_matches = m
        .rooms
        .get(&r.room)
        .is_some_and(|room| room.resource_uri == r.resource_uri);
    let event = match (r.op.as_str(), room_matches) {
        ("add", true) => {
            let c = m.plan_add(r.room, r.actor, r.subject)?;
            Some(m.apply(c, now_ms)?)
        }
        ("add", false) => return Err(Error::BadReceipt("no such room for this resource")),
        ("remove", true) => m.complete_removal(r.room, r.subject, r.actor, now_ms)?,
        ("remove", false) => None,
        _ => return Err(Error::BadReceipt("unknown op")),
    };
    m.applied_nonces.insert(r.nonce.clone());
    Ok(event)
}

async fn send_state(s: &AppState, cluster: &str, kind: &'static str, nonce: &str) -> Result<Value> {
    let nonce = nonce.to_owned();
    s.0.hub
        .call(
            cluster,
            |id| json!({"type": kind, "id": id, "nonce": nonce}),
        )
        .await
}

/// The two-part flow for a checked core change and the client's KMS part.
pub async fn two_part(s: &AppState, change: MembershipChange, kms_part: String) -> Result<Value> {
    let resource_uri =
        s.0.db
            .read(|m| Ok(m.room(change.room)?.resource_uri.clone()))?;
    let cluster = cluster_of(&resource_uri)?;
    let answer =
        s.0.hub
            .call(&cluster, |id| {
                json!({"type": "membership.request", "id": id, "room": change.room,
                   "actor": change.actor, "kmsMessage": kms_part})
            })
            .await?;
    if answer["type"] != "membership.response" {
        return Err(Error::BadRealmAnswer("expected membership.response"));
    }
    let kms_response = answer["kmsMessage"]
        .as_str()
        .ok_or(Error::BadRealmAnswer(
            "membership.response without kmsMessage",
        ))?
        .to_owned();
    let Some(receipt_jws) = answer["receipt"].as_str() else {
        return Err(Error::KmsRefused { kms_response });
    };
    // An invalid signature leaves nothing to act on here; reconciliation settles it.
    let receipt = verify_receipt(s, &cluster, receipt_jws)?;
    let matches = receipt.room == change.room
        && receipt.op == op_name(change.op)
        && receipt.subject == change.user
        && receipt.actor == change.actor
        && receipt.resource_uri == resource_uri
        && receipt.state == "applied";
    if !matches {
        // The KMS applied something other than the core part: settle what it did (undo
        // an add, complete a removal) and refuse.
        settle(s, &cluster, &receipt).await;
        return Err(Error::BadReceipt(
            "the receipt does not match the core part",
        ));
    }
    if s.0.abort_after_receipt {
        tracing::error!("fault injection: aborting after a valid receipt, before applying");
        std::process::abort();
    }
    let applied = s.0.db.write(|m, now| {
        // The core's checks again, now under the lock: a concurrent change may have won.
        let c = match change.op {
            MembershipOp::Add => m.plan_add(change.room, change.actor, change.user)?,
            MembershipOp::Remove => m.plan_remove(change.room, change.actor, change.user)?,
        };
        let e = m.apply(c, now)?;
        m.applied_nonces.insert(receipt.nonce.clone());
        Ok(e)
    });
    match applied {
        Ok(event) => {
            if let Err(e) = send_state(s, &cluster, "membership.confirm", &receipt.nonce).await {
                tracing::warn!(error = %e, "confirm not delivered; reconciliation will");
            }
            Ok(json!({"event": event, "kms_response": kms_response, "receipt": receipt_jws}))
        }
        Err(e) => {
            settle(s, &cluster, &receipt).await;
            Err(e)
        }
    }
}

/// Settles a change the realm applied but the core did not take as asked: an add is
/// undone; a removal is final, so the core completes it and confirms.
async fn settle(s: &AppState, cluster: &str, r: &Receipt) {
    if r.op == "add" {
        if let Err(e) = send_state(s, cluster, "membership.undo", &r.nonce).await {
            tracing::warn!(error = %e, "undo not delivered; reconciliation will");
        }
        return;
    }
    match s.0.db.write(|m, now| apply_receipt(m, r, now)) {
        Ok(_) => {
            if let Err(e) = send_state(s, cluster, "membership.confirm", &r.nonce).await {
                tracing::warn!(error = %e, "confirm not delivered; reconciliation will");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not complete a removal"),
    }
}

/// One reconciliation pass with `cluster`: every change the realm holds as `applied` is
/// confirmed if the core applied its nonce, else applied if the core's checks still hold
/// (always for a removal), else undone (adds only). Then pending deprovisionings.
pub async fn reconcile(s: &AppState, cluster: &str) -> Result<usize> {
    let answer =
        s.0.hub
            .call(
                cluster,
                |id| json!({"type": "membership.pending", "id": id}),
            )
            .await?;
    if answer["type"] != "membership.result" {
        return Err(Error::BadRealmAnswer("expected membership.result"));
    }
    let receipts: Vec<String> = serde_json::from_value(answer["receipts"].clone())
        .map_err(|_| Error::BadRealmAnswer("receipts is not a list"))?;
    let mut settled = 0;
    for jws in &receipts {
        let r = match verify_receipt(s, cluster, jws) {
            Ok(r) if r.state == "applied" => r,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an invalid pending receipt");
                continue;
            }
        };
        match s.0.db.write(|m, now| apply_receipt(m, &r, now)) {
            Ok(_) => {
                send_state(s, cluster, "membership.confirm", &r.nonce).await?;
            }
            Err(e) if r.op == "add" => {
                tracing::info!(error = %e, nonce = %r.nonce, "undoing an add the core cannot apply");
                send_state(s, cluster, "membership.undo", &r.nonce).await?;
            }
            Err(e) => tracing::warn!(error = %e, "could not complete a removal"),
        }
        settled += 1;
    }
    deliver_deprovisions(s, cluster).await?;
    Ok(settled)
}

/// Runs [`reconcile`] now and every `reconcile_interval` while `conn_id` is `realm`'s
/// current connection.
pub async fn reconcile_loop(s: AppState, realm: String, conn_id: u64) {
    loop {
        match reconcile(&s, &realm).await {
            Ok(n) => tracing::debug!(realm, settled = n, "membership reconciliation done"),
            Err(e) => tracing::warn!(realm, error = %e, "membership reconciliation failed"),
        }
        tokio::time::sleep(s.0.reconcile_interval).await;
        if !s.0.hub.is_current(&realm, conn_id) {
            return;
        }
    }
}

/// R24: sends each pending deprovisioning for `cluster` as a statement signed by the
/// identity service (audience `kms://<domain>/deprovision`), and forgets it once the
/// realm has dropped the user's authorizations.
pub async fn deliver_deprovisions(s: &AppState, cluster: &str) -> Result<()> {
    let users: Vec<(Uuid, Uuid)> = s.0.db.read(|m| {
        Ok(m.pending_deprovisions
            .get(cluster)
            .into_iter()
            .flatten()
            .filter_map(|u| m.users.get(u).map(|user| (user.id, user.org)))
            .collect())
    })?;
    let aud = strongroom_kms::service::deprovision_audience(cluster);
    for (user, org) in users {
        let statement = s.0.identity.mint(user, org, &aud, None, STATEMENT_TTL_S)?;
        let answer = s
            .0
            .hub
            .call(
                cluster,
                |id| json!({"type": "membership.deprovision", "id": id, "statement": statement}),
            )
            .await?;
        if answer["type"] == "membership.deprovisioned" {
            s.0.db.write(|m, _| {
                if let Some(set) = m.pending_deprovisions.get_mut(cluster) {
                    set.remove(&user);
                    if set.is_empty() {
                        m.pending_deprovisions.remove(cluster);
                    }
                }
                Ok(())
            })?;
        } else {
            tracing::warn!(%user, cluster, answer = %answer["error"], "deprovisioning refused by the realm");
        }
    }
    Ok(())
}
