//! Identity endpoints: login, the JWK set, identity look-up, and the admin directory.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Admin, AppState, CoreUser, parse};
use crate::error::{AuthError, Error, Result};
use crate::identity::{CORE_AUDIENCE, TOKEN_TTL_S};

pub async fn jwks(State(s): State<AppState>) -> Json<Value> {
    Json(s.0.identity.jwks())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    #[serde(default)]
    client_id: Option<String>,
}

/// `POST /identity/login {"email"}`: a simulator, so no password. Unknown e-mail: 401.
pub async fn login(State(s): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    let req: Login = parse(&body)?;
    let (user, org) = s.0.db.read(|m| {
        let u = m
            .user_by_email(&req.email)
            .ok_or(Error::Unauthenticated(AuthError::UserInactive))?;
        if !u.active {
            return Err(Error::UserDeactivated(u.id));
        }
        Ok((u.clone(), m.org_of(u.id)?.clone()))
    })?;
    let id = &s.0.identity;
    let client = req.client_id.as_deref();
    let core_token = id.mint(user.id, org.id, CORE_AUDIENCE, client, TOKEN_TTL_S)?;
    let kms_token = id.mint(user.id, org.id, &org.kms_cluster(), client, TOKEN_TTL_S)?;
    Ok(Json(json!({
        "user_id": user.id,
        "org_id": org.id,
        "core_token": core_token,
        "kms_token": kms_token,
        "kms_cluster": org.kms_cluster(),
        "expires_in": TOKEN_TTL_S,
    })))
}

/// Real name and e-mail, only to the same organization or someone sharing a room.
pub async fn user(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>> {
    s.0.db.read(|m| {
        if !m.may_see_identity(me.user, id) {
            return Err(Error::IdentityNotShared);
        }
        let u = m.user(id)?;
        Ok(Json(json!({
            "id": u.id, "org": u.org, "name": u.name, "email": u.email, "active": u.active
        })))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    name: String,
    kms_domain: String,
}

pub async fn create_org(State(s): State<AppState>, _: Admin, body: Bytes) -> Result<Json<Value>> {
    let req: NewOrg = parse(&body)?;
    let org =
        s.0.db
            .write(|m, _| m.create_org(&req.name, &req.kms_domain))?;
    Ok(Json(json!({
        "id": org.id, "name": org.name, "kms_domain": org.kms_domain,
        "kms_cluster": org.kms_cluster()
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    org: Uuid,
    name: String,
    email: String,
}

pub async fn create_user(State(s): State<AppState>, _: Admin, body: Bytes) -> Result<Json<Value>> {
    let req: NewUser = parse(&body)?;
    let u =
        s.0.db
            .write(|m, _| m.create_user(req.org, &req.name, &req.email))?;
    Ok(Json(json!(u)))
}

/// Directory sync (R24): deactivate a user, removing them from every room at once.
pub async fn deactivate(
    State(s): State<AppState>,
    _: Admin,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>> {
    // R24: the realms that may hold the user's authorizations (their org's KMS and every
    // room's) must drop them too: queued durably with the deactivation, delivered now if
    // the realm is connected, else by the next reconciliation.
    let (rooms, realms) = s.0.db.write(|m, now| {
        let mut realms = std::collections::BTreeSet::new();
        realms.insert(m.org_of(id)?.kms_cluster());
        for r in m.rooms.values().filter(|r| r.members.contains(&id)) {
            realms.insert(super::membership::cluster_of(&r.resource_uri)?);
        }
        let rooms = m.deactivate_user(id, now)?;
        for realm in &realms {
            m.pending_deprovisions
                .entry(realm.clone())
                .or_default()
                .insert(id);
        }
        Ok((rooms, realms))
    })?;
    let mut delivered = Vec::new();
    for realm in &realms {
        if s.0.hub.is_connected(realm) {
            if let Err(e) = super::membership::deliver_deprovisions(&s, realm).await {
                tracing::warn!(realm, error = %e, "deprovisioning not delivered yet");
            }
            let still_pending = s.0.db.read(|m| {
                Ok(m.pending_deprovisions
                    .get(realm)
                    .is_some_and(|users| users.contains(&id)))
            })?;
            if !still_pending {
                delivered.push(realm.clone());
            }
        }
    }
    Ok(Json(
        json!({"user_id": id, "removed_from": rooms, "kms_deprovisioned": delivered}),
    ))
}
