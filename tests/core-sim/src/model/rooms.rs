//! Rooms (R4, R6, R11, R25) and rotation enforcement (R9).
//!
//! Membership changes are planned (checked) and then applied, two steps, so the two-part
//! flow of R10 can slot the KMS round trip in between: plan, forward the KMS part, verify
//! its receipt, apply.

use serde::Serialize;
use uuid::Uuid;

use super::{Content, ContentKind, Event, EventKind, FirstSeen, Model, Room, Title};
use crate::error::{Error, Missing, Result};

/// A checked membership change, ready to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct MembershipChange {
    pub room: Uuid,
    pub user: Uuid,
    pub actor: Uuid,
    pub op: MembershipOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipOp {
    Add,
    Remove,
}

/// What a member sees of a room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub id: Uuid,
    pub resource_uri: String,
    pub title: Title,
    pub created_at_ms: i64,
    pub members: Vec<Uuid>,
    pub events: Vec<Event>,
    /// The room holds users of more than one organization (R25).
    pub external: bool,
    pub last_seq: u64,
}

impl Model {
    pub fn room(&self, id: Uuid) -> Result<&Room> {
        self.rooms.get(&id).ok_or(Error::NotFound(Missing::Room))
    }

    /// The room, if `user` is a member (a non-member learns nothing, not even existence).
    pub fn room_for_member(&self, id: Uuid, user: Uuid) -> Result<&Room> {
        match self.rooms.get(&id) {
            Some(r) if r.members.contains(&user) => Ok(r),
            _ => Err(Error::NotMember(id)),
        }
    }

    pub fn view(&self, room: &Room) -> RoomView {
        let orgs: std::collections::BTreeSet<Uuid> = room
            .members
            .iter()
            .filter_map(|m| self.users.get(m).map(|u| u.org))
            .collect();
        RoomView {
            id: room.id,
            resource_uri: room.resource_uri.clone(),
            title: room.title.clone(),
            created_at_ms: room.created_at_ms,
            members: room.members.iter().copied().collect(),
            events: room.events.clone(),
            external: orgs.len() > 1,
            last_seq: room.last_seq,
        }
    }

    /// Registers a key URI's first sighting, or checks it against the room's last removal.
    fn check_key(&mut self, room: Uuid, kid: &str, now_ms: i64) -> Result<()> {
        if let Some(seen) = self.key_first_seen.get(kid) {
            let rotation_after = self.room(room)?.rotation_after;
            if rotation_after.is_some_and(|r| seen.gseq <= r) {
                return Err(Error::RotationRequired {
                    kid: kid.to_owned(),
                });
            }
            return Ok(());
        }
        let gseq = self.next_gseq();
        self.key_first_seen.insert(
            kid.to_owned(),
            FirstSeen {
                gseq,
                at_ms: now_ms,
                room,
            },
        );
        Ok(())
    }

    pub fn create_room(
        &mut self,
        creator: Uuid,
        resource_uri: &str,
        title: &str,
        now_ms: i64,
    ) -> Result<Room> {
        if !resource_uri.starts_with("kms://") {
            return Err(Error::InvalidRequest("resource_uri must be a kms:// URI"));
        }
        let kid = super::jwe::content_kid(title)?;
        let id = Uuid::new_v4();
        let room = Room {
            id,
            resource_uri: resource_uri.to_owned(),
            title: Title {
                kid: kid.clone(),
                content: title.to_owned(),
            },
            created_at_ms: now_ms,
            members: [creator].into(),
            events: vec![Event {
                seq: 1,
                at_ms: now_ms,
                kind: EventKind::Join,
                user: creator,
                actor: Some(creator),
                directory_sync: false,
            }],
            last_seq: 1,
            rotation_after: None,
        };
        self.rooms.insert(id, room.clone());
        self.check_key(id, &kid, now_ms)?;
        Ok(room)
    }

    /// Checks `actor` may add `user` to `room` (core-side rules only, for now).
    pub fn plan_add(&self, room: Uuid, actor: Uuid, user: Uuid) -> Result<MembershipChange> {
        let r = self.room_for_member(room, actor)?;
        let u = self.user(user)?;
        if !u.active {
            return Err(Error::UserDeactivated(user));
        }
        if r.members.contains(&user) {
            return Err(Error::AlreadyMember(user));
        }
        Ok(MembershipChange {
            room,
            user,
            actor,
            op: MembershipOp::Add,
        })
    }

    /// Checks `actor` may remove `user` (themself: a leave) from `room`.
    pub fn plan_remove(&self, room: Uuid, actor: Uuid, user: Uuid) -> Result<MembershipChange> {
        let r = self.room_for_member(room, actor)?;
        if !r.members.contains(&user) {
            return Err(Error::NotAMember(user));
        }
        Ok(MembershipChange {
            room,
            user,
            actor,
            op: MembershipOp::Remove,
        })
    }

    pub fn apply(&mut self, change: MembershipChange, now_ms: i64) -> Result<Event> {
        match change.op {
            MembershipOp::Add => {
                let r = self
                    .rooms
                    .get_mut(&change.room)
                    .ok_or(Error::NotFound(Missing::Room))?;
                if !r.members.insert(change.user) {
                    return Err(Error::AlreadyMember(change.user));
                }
                r.last_seq += 1;
                let e = Event {
                    seq: r.last_seq,
                    at_ms: now_ms,
                    kind: EventKind::Join,
                    user: change.user,
                    actor: Some(change.actor),
                    directory_sync: false,
                };
                r.events.push(e.clone());
                Ok(e)
            }
            MembershipOp::Remove => {
                let kind = if change.actor == change.user {
                    EventKind::Leave
                } else {
                    EventKind::Removed
                };
                self.remove_member_now(change.room, change.user, Some(change.actor), kind, now_ms)
            }
        }
    }

    /// Completes a removal the KMS already applied (R10: a removal is final): removes
    /// `user` if still a member. `None` if they were not.
    pub fn complete_removal(
        &mut self,
        room: Uuid,
        user: Uuid,
        actor: Uuid,
        now_ms: i64,
    ) -> Result<Option<Event>> {
        if !self.room(room)?.members.contains(&user) {
            return Ok(None);
        }
        let kind = if actor == user {
            EventKind::Leave
        } else {
            EventKind::Removed
        };
        self.remove_member_now(room, user, Some(actor), kind, now_ms)
            .map(Some)
    }

    /// Removes `user`, records the event, and marks the rotation point (R9).
    pub(super) fn remove_member_now(
        &mut self,
        room: Uuid,
        user: Uuid,
        actor: Option<Uuid>,
        kind: EventKind,
        now_ms: i64,
    ) -> Result<Event> {
        let gseq = self.next_gseq();
        let r = self
            .rooms
            .get_mut(&room)
            .ok_or(Error::NotFound(Missing::Room))?;
        if !r.members.remove(&user) {
            return Err(Error::NotAMember(user));
        }
        r.last_seq += 1;
        r.rotation_after = Some(gseq);
        let e = Event {
            seq: r.last_seq,
            at_ms: now_ms,
            kind,
            user,
            actor,
            directory_sync: actor.is_none(),
        };
        r.events.push(e.clone());
        Ok(e)
    }

    /// Checks and sequences a message or file from `sender`: member, JWE, key not older
    /// than the last removal.
    pub fn accept_content(
        &mut self,
        room: Uuid,
        sender: Uuid,
        kind: ContentKind,
        content: &str,
        now_ms: i64,
    ) -> Result<Content> {
        self.room_for_member(room, sender)?;
        let kid = super::jwe::content_kid(content)?;
        self.check_key(room, &kid, now_ms)?;
        let r = self
            .rooms
            .get_mut(&room)
            .ok_or(Error::NotFound(Missing::Room))?;
        r.last_seq += 1;
        Ok(Content {
            room,
            seq: r.last_seq,
            at_ms: now_ms,
            kind,
            sender,
            kid,
            content: content.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::jwe::fake_jwe;

    fn kid(d: &str) -> String {
        format!("kms://{d}/keys/{}", Uuid::new_v4())
    }

    #[test]
    fn removal_forces_rotation_and_external_flag_follows_orgs() {
        let mut m = Model::default();
        let a = m.create_org("A", "a.test").unwrap();
        let b = m.create_org("B", "b.test").unwrap();
        let alice = m.create_user(a.id, "Alice", "alice@a.test").unwrap().id;
        let anne = m.create_user(a.id, "Anne", "anne@a.test").unwrap().id;
        let bob = m.create_user(b.id, "Bob", "bob@b.test").unwrap().id;
        let k1 = kid("a.test");
        let room = m
            .create_room(alice, "kms://a.test/resources/r1", &fake_jwe(&k1, b"t"), 1)
            .unwrap()
            .id;
        let c = m.plan_add(room, alice, anne).unwrap();
        m.apply(c, 2).unwrap();
        assert!(!m.view(m.room(room).unwrap()).external);
        let c = m.plan_add(room, alice, bob).unwrap();
        m.apply(c, 3).unwrap();
        assert!(m.view(m.room(room).unwrap()).external);
        m.accept_content(room, alice, ContentKind::Message, &fake_jwe(&k1, b"x"), 4)
            .unwrap();
        let c = m.plan_remove(room, alice, bob).unwrap();
        let e = m.apply(c, 5).unwrap();
        assert_eq!(e.kind, EventKind::Removed);
        assert!(!m.view(m.room(room).unwrap()).external);
        let err = m
            .accept_content(room, anne, ContentKind::Message, &fake_jwe(&k1, b"y"), 6)
            .unwrap_err();
        assert!(matches!(err, Error::RotationRequired { .. }));
        let k2 = kid("a.test");
        m.accept_content(room, anne, ContentKind::File, &fake_jwe(&k2, b"z"), 7)
            .unwrap();
        assert!(matches!(
            m.accept_content(room, bob, ContentKind::Message, &fake_jwe(&k2, b"w"), 8),
            Err(Error::NotMember(_))
        ));
    }
}
