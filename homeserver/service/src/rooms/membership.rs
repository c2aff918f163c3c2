//! Membership changes: join, invite, leave, kick, ban, unban, forget and profile updates.

use ruma::{
    events::room::member::MembershipState, events::TimelineEventType, OwnedEventId, RoomId, UserId,
};
use serde_json::{json, Value};

use paracord_core::{Error, Result};
use paracord_storage::{Batch, Table};

use super::{keys::UserRoomKey, NewEvent, Rooms};

/// The membership a member event's content names: `None` when it names none (or not as a
/// string). Every reader of a member event's `membership` goes through this.
pub fn membership_of(content: &Value) -> Option<MembershipState> {
    content
        .get("membership")
        .and_then(Value::as_str)
        .map(MembershipState::from)
}

fn with_reason(mut content: Value, reason: Option<&str>) -> Value {
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    content
}

/// The content of a join: the client's own fields (spec: "POST /join ... can join a room with
/// custom content"; `third_party_signed` is not content), the profile where the client gave
/// none, and the reason.
pub fn join_content(
    profile: (Option<String>, Option<String>),
    reason: Option<&str>,
    body: Option<&Value>,
) -> serde_json::Map<String, Value> {
    let mut content = body.and_then(Value::as_object).cloned().unwrap_or_default();
    content.remove("third_party_signed");
    if let Some(d) = profile.0 {
        content.entry("displayname").or_insert_with(|| json!(d));
    }
    if let Some(a) = profile.1 {
        content.entry("avatar_url").or_insert_with(|| json!(a));
    }
    if let Some(r) = reason {
        content.insert("reason".into(), json!(r));
    }
    content
}

impl Rooms {
    fn member_event(&self, target: &UserId, content: Value) -> NewEvent {
        NewEvent::state(TimelineEventType::RoomMember, target.as_str(), content)
    }

    /// Joins a local room.
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        profile: (Option<String>, Option<String>),
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.join_with(room_id, user, join_content(profile, reason, None))
            .await
    }

    /// Joins a local room with the given member event content (`membership` and the restricted
    /// join's authoriser are filled in).
    pub async fn join_with(
        &self,
        room_id: &RoomId,
        user: &UserId,
        mut content: serde_json::Map<String, Value>,
    ) -> Result<OwnedEventId> {
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("room not known to this server"));
        }
        content.insert("membership".into(), json!("join"));
        content.remove("join_authorised_via_users_server");
        if let Some(authoriser) = self.join_authoriser(room_id, user)? {
            content.insert("join_authorised_via_users_server".into(), json!(authoriser));
        }
        self.append(
            room_id,
            user,
            self.member_event(user, Value::Object(content)),
        )
        .await
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<OwnedEventId> {
        if target.server_name() != self.config.server_name.as_str() {
            return Err(Error::internal(
                "invites of users of other servers go through federation::pdus",
            ));
        }
        let mut content = json!({ "membership": "invite" });
        if is_direct {
            content["is_direct"] = json!(true);
        }
        self.append(
            room_id,
            sender,
            self.member_event(target, with_reason(content, reason)),
        )
        .await
    }

    /// Leaves every room `user` is joined to or invited to (a deactivation's first step,
    /// while the account can still send). A room that cannot be left is logged and skipped.
    pub async fn leave_all(&self, user: &UserId, reason: Option<&str>) -> Result<()> {
        for (room_id, rec) in self.user_rooms(user)? {
            if rec.membership == MembershipState::Join || rec.membership == MembershipState::Invite
            {
                if let Err(e) = self.leave(&room_id, user, reason).await {
                    tracing::warn!(%room_id, "leave on deactivation failed: {}", e);
                }
            }
        }
        Ok(())
    }

    /// Leaves a room, or rejects an invite.
    pub async fn leave(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        match self.membership(room_id, user)? {
            Some(MembershipState::Join)
            | Some(MembershipState::Invite)
            | Some(MembershipState::Knock) => {}
            _ => return Err(Error::forbidden("you are not a member of this room")),
        }
        self.append(
            room_id,
            user,
            self.member_event(user, with_reason(json!({ "membership": "leave" }), reason)),
        )
        .await
    }

    pub async fn kick(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        match self.membership(room_id, target)? {
            Some(MembershipState::Join)
            | Some(MembershipState::Invite)
            | Some(MembershipState::Knock) => {}
            _ => return Err(Error::forbidden("that user is not in the room")),
        }
        self.append(
            room_id,
            sender,
            self.member_event(
                target,
                with_reason(json!({ "membership": "leave" }), reason),
            ),
        )
        .await
    }

    pub async fn ban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.room_or_404(room_id)?;
        self.append(
            room_id,
            sender,
            self.member_event(target, with_reason(json!({ "membership": "ban" }), reason)),
        )
        .await
    }

    pub async fn unban(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        if self.membership(room_id, target)? != Some(MembershipState::Ban) {
            return Err(Error::forbidden("that user is not banned"));
        }
        self.append(
            room_id,
            sender,
            self.member_event(
                target,
                with_reason(json!({ "membership": "leave" }), reason),
            ),
        )
        .await
    }

    /// Forgets a room the user has left: it disappears from their sync.
    pub fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let Some(mut rec) = self.user_room(user, room_id)? else {
            return Err(Error::not_found("you have never been in this room"));
        };
        if rec.membership == MembershipState::Join || rec.membership == MembershipState::Invite {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                paracord_core::ErrorKind::Unknown,
                "leave the room before forgetting it",
            ));
        }
        rec.forgotten = true;
        let mut batch = Batch::new();
        batch.put(
            Table::UserroomMembership,
            UserRoomKey {
                user_id: user.as_str(),
                room_id: room_id.as_str(),
            }
            .encode(),
            serde_json::to_vec(&rec)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// Sends a new join event with the user's profile into every room they are joined to.
    pub async fn update_profile(
        &self,
        user: &UserId,
        displayname: Option<&str>,
        avatar_url: Option<&str>,
    ) -> Result<()> {
        for (room_id, rec) in self.user_rooms(user)? {
            if rec.membership != MembershipState::Join {
                continue;
            }
            let state = self.current_state(&room_id)?;
            let mut content = self
                .state_content(&state, "m.room.member", user.as_str())?
                .unwrap_or_else(|| json!({ "membership": "join" }));
            match displayname {
                Some(d) => content["displayname"] = json!(d),
                None => {
                    if let Some(o) = content.as_object_mut() {
                        o.remove("displayname");
                    }
                }
            }
            match avatar_url {
                Some(a) => content["avatar_url"] = json!(a),
                None => {
                    if let Some(o) = content.as_object_mut() {
                        o.remove("avatar_url");
                    }
                }
            }
            if let Err(e) = self
                .append(&room_id, user, self.member_event(user, content))
                .await
            {
                tracing::warn!(%room_id, "profile update not sent: {e}");
            }
        }
        Ok(())
    }
}
