//! Room endpoints (core token). Membership changes are two-part (R10): the core checks its
//! part (`plan_*`), then [`super::membership::two_part`] runs the KMS round trip, checks
//! the receipt and applies.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{AppState, CoreUser, membership, parse};
use crate::error::{Error, Result};
use crate::model::ContentKind;

pub async fn list(State(s): State<AppState>, CoreUser(me): CoreUser) -> Result<Json<Value>> {
    s.0.db.read(|m| {
        let rooms: Vec<Uuid> = m
            .rooms
            .values()
            .filter(|r| r.members.contains(&me.user))
            .map(|r| r.id)
            .collect();
        Ok(Json(json!({"rooms": rooms})))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoom {
    resource_uri: String,
    title: String,
}

pub async fn create(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    body: Bytes,
) -> Result<Json<Value>> {
    let req: NewRoom = parse(&body)?;
    let room = s.0.db.write(|m, now| {
        let r = m.create_room(me.user, &req.resource_uri, &req.title, now)?;
        Ok(m.view(&r))
    })?;
    s.0.recorder
        .record("store", &room.id.to_string(), req.title.as_bytes());
    Ok(Json(json!(room)))
}

pub async fn show(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>> {
    s.0.db
        .read(|m| Ok(Json(json!(m.view(m.room_for_member(id, me.user)?)))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    user_id: Uuid,
    /// Required; optional here only so the core part is checked (403/409) first.
    #[serde(default)]
    kms_part: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveMember {
    #[serde(default)]
    kms_part: Option<String>,
}

/// `POST /rooms/{id}/members {"user_id","kms_part"}` (R10).
pub async fn add_member(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<Value>> {
    let req: AddMember = parse(&body)?;
    let change = s.0.db.read(|m| m.plan_add(id, me.user, req.user_id))?;
    let kms_part = req.kms_part.ok_or(Error::KmsPartRequired)?;
    Ok(Json(membership::two_part(&s, change, kms_part).await?))
}

/// `DELETE /rooms/{id}/members/{user} {"kms_part"}` (R10).
pub async fn remove_member(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path((id, user)): Path<(Uuid, Uuid)>,
    body: Bytes,
) -> Result<Json<Value>> {
    let change = s.0.db.read(|m| m.plan_remove(id, me.user, user))?;
    let req: RemoveMember = if body.is_empty() {
        RemoveMember::default()
    } else {
        parse(&body)?
    };
    let kms_part = req.kms_part.ok_or(Error::KmsPartRequired)?;
    Ok(Json(membership::two_part(&s, change, kms_part).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewContent {
    content: String,
}

fn post_content(
    s: &AppState,
    me: Uuid,
    room: Uuid,
    kind: ContentKind,
    body: &Bytes,
) -> Result<Json<Value>> {
    let req: NewContent = parse(body)?;
    let item = s.0.db.append_content(room, |m, now| {
        m.accept_content(room, me, kind, &req.content, now)
    })?;
    s.0.recorder
        .record("store", &room.to_string(), item.content.as_bytes());
    Ok(Json(
        json!({"seq": item.seq, "kid": item.kid, "at_ms": item.at_ms}),
    ))
}

pub async fn post_message(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<Value>> {
    post_content(&s, me.user, id, ContentKind::Message, &body)
}

pub async fn post_file(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<Value>> {
    post_content(&s, me.user, id, ContentKind::File, &body)
}

#[derive(Deserialize)]
pub struct After {
    #[serde(default)]
    after: u64,
}

/// Messages and files, and membership events, with a sequence number above `after`.
pub async fn messages(
    State(s): State<AppState>,
    CoreUser(me): CoreUser,
    Path(id): Path<Uuid>,
    Query(q): Query<After>,
) -> Result<Json<Value>> {
    let events = s.0.db.read(|m| {
        let r = m.room_for_member(id, me.user)?;
        Ok(r.events
            .iter()
            .filter(|e| e.seq > q.after)
            .cloned()
            .collect::<Vec<_>>())
    })?;
    let contents = s.0.db.contents_after(id, q.after)?;
    let last_seq = contents
        .iter()
        .map(|c| c.seq)
        .chain(events.iter().map(|e| e.seq))
        .max()
        .unwrap_or(q.after);
    let messages: Vec<Value> = contents
        .into_iter()
        .map(|c| {
            json!({"seq": c.seq, "at_ms": c.at_ms, "kind": c.kind, "sender": c.sender,
                   "kid": c.kid, "content": c.content})
        })
        .collect();
    Ok(Json(
        json!({"messages": messages, "events": events, "last_seq": last_seq}),
    ))
}
