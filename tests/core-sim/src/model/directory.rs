//! Organizations and users (R22): real names and e-mail live here only; everywhere else
//! users are random UUIDs. Directory sync deactivates a user and removes them from every
//! room at once (R24).

use uuid::Uuid;

use super::{EventKind, Model, Org, User};
use crate::error::{Error, Missing, Result};

impl Model {
    pub fn create_org(&mut self, name: &str, kms_domain: &str) -> Result<Org> {
        let domain = kms_domain.strip_prefix("kms://").unwrap_or(kms_domain);
        if domain.is_empty() || domain.contains('/') {
            return Err(Error::InvalidRequest("kms_domain must be a bare domain"));
        }
        let org = Org {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            kms_domain: domain.to_owned(),
        };
        self.orgs.insert(org.id, org.clone());
        Ok(org)
    }

    pub fn create_user(&mut self, org: Uuid, name: &str, email: &str) -> Result<User> {
        if !self.orgs.contains_key(&org) {
            return Err(Error::NotFound(Missing::Org));
        }
        if !email.contains('@') {
            return Err(Error::InvalidRequest("email must contain @"));
        }
        if self.user_by_email(email).is_some() {
            return Err(Error::EmailTaken);
        }
        let user = User {
            id: Uuid::new_v4(),
            org,
            name: name.to_owned(),
            email: email.to_owned(),
            active: true,
        };
        self.users.insert(user.id, user.clone());
        Ok(user)
    }

    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        self.users
            .values()
            .find(|u| u.email.eq_ignore_ascii_case(email))
    }

    pub fn user(&self, id: Uuid) -> Result<&User> {
        self.users.get(&id).ok_or(Error::NotFound(Missing::User))
    }

    pub fn org_of(&self, user: Uuid) -> Result<&Org> {
        let u = self.user(user)?;
        self.orgs.get(&u.org).ok_or(Error::NotFound(Missing::Org))
    }

    /// May `requester` see `target`'s name and e-mail? Only the same organization or
    /// someone sharing a room.
    pub fn may_see_identity(&self, requester: Uuid, target: Uuid) -> bool {
        let (Some(r), Some(t)) = (self.users.get(&requester), self.users.get(&target)) else {
            return false;
        };
        r.org == t.org
            || self
                .rooms
                .values()
                .any(|room| room.members.contains(&requester) && room.members.contains(&target))
    }

    /// Directory sync (R24): deactivates `user` and removes them from every room, each
    /// removal an event and a rotation point. Returns the rooms they were removed from.
    pub fn deactivate_user(&mut self, user: Uuid, now_ms: i64) -> Result<Vec<Uuid>> {
        let u = self
            .users
            .get_mut(&user)
            .ok_or(Error::NotFound(Missing::User))?;
        u.active = false;
        let rooms: Vec<Uuid> = self
            .rooms
            .values()
            .filter(|r| r.members.contains(&user))
            .map(|r| r.id)
            .collect();
        for id in &rooms {
            self.remove_member_now(*id, user, None, EventKind::Removed, now_ms)?;
        }
        Ok(rooms)
    }
}
