//! Server notices: messages from the server's admins to a user, in a room the user shares with
//! a system user (`server_notices_localpart`), as Synapse's `send_server_notice` admin API
//! delivers them (existing admin tools and Complement use that API).
//!
//! Each local user has at most one notices room, created by the system user on the first
//! notice and tagged `m.server_notice` for them. They are invited and cannot reject the
//! invite (`M_CANNOT_LEAVE_SERVER_NOTICE_ROOM`); once joined they may leave, and the next
//! notice invites them back into the same room. They cannot write in it (`users_default`
//! below `events_default`).

use std::sync::Arc;

use paracord_core::{Config, Error, ErrorKind, Result};
use ruma::{
    events::room::member::MembershipState, events::TimelineEventType, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UserId,
};
use serde_json::{json, Value};

use crate::{
    account_data::AccountData,
    accounts::Accounts,
    rooms::{
        create::{CreateRoom, Preset},
        NewEvent, Rooms,
    },
};

/// One notice to send.
#[derive(Debug, Clone)]
pub struct Notice {
    pub user: OwnedUserId,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
}

pub struct ServerNotices {
    config: Arc<Config>,
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    account_data: Arc<AccountData>,
    /// One notice at a time, so two notices to a new user make one room.
    lock: tokio::sync::Mutex<()>,
}

impl ServerNotices {
    pub fn new(
        config: Arc<Config>,
        accounts: Arc<Accounts>,
        rooms: Arc<Rooms>,
        account_data: Arc<AccountData>,
    ) -> Self {
        Self {
            config,
            accounts,
            rooms,
            account_data,
            lock: tokio::sync::Mutex::default(),
        }
    }

    /// The system user that sends the notices.
    pub fn system_user(&self) -> Result<OwnedUserId> {
        OwnedUserId::try_from(format!(
            "@{}:{}",
            self.config.server_notices_localpart, self.config.server_name
        ))
        .map_err(|e| Error::internal(format!("server_notices_localpart: {e}")))
    }

    /// Whether `room_id` is a server notices room (one the system user created).
    pub fn is_notices_room(&self, room_id: &RoomId) -> Result<bool> {
        let Some(_) = self.rooms.room(room_id)? else {
            return Ok(false);
        };
        let state = self.rooms.current_state(room_id)?;
        let system = self.system_user()?;
        Ok(self
            .rooms
            .state_pdu(&state, "m.room.create", "")?
            .is_some_and(|c| c.sender == system))
    }

    /// Refuses what a user may not do in their notices room: reject its invite.
    pub fn check_leave(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        if self.rooms.membership(room_id, user)? == Some(MembershipState::Invite)
            && self.is_notices_room(room_id)?
        {
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                ErrorKind::CannotLeaveServerNoticeRoom,
                "the invite to a server notices room cannot be rejected; join it, then leave",
            ));
        }
        Ok(())
    }

    /// Sends a notice; `txn` (the requester's transaction) makes a repeated request answer
    /// with the first one's event.
    pub async fn send(
        &self,
        notice: Notice,
        txn: Option<(String, String)>,
    ) -> Result<OwnedEventId> {
        let user = &notice.user;
        if !self.accounts.is_local(user) {
            return Err(Error::invalid_param(
                "server notices can only be sent to local users",
            ));
        }
        let Some(account) = self.accounts.account(user)? else {
            return Err(Error::not_found("no such user"));
        };
        if account.deactivated {
            return Err(Error::invalid_param("the user is deactivated"));
        }
        let system = self.system_user()?;
        if *user == system {
            return Err(Error::invalid_param(
                "the server notices user gets no notices",
            ));
        }
        let _guard = self.lock.lock().await;
        self.accounts
            .ensure_system_account(&system, &self.config.server_notices_display_name)
            .await?;
        let room_id = match self.room_of(user)? {
            Some(room) => room,
            None => self.create_room(&system, user).await?,
        };
        if !matches!(
            self.rooms.membership(&room_id, user)?,
            Some(MembershipState::Join) | Some(MembershipState::Invite)
        ) {
            self.rooms
                .invite(&room_id, &system, user, None, false)
                .await?;
        }
        let new = NewEvent {
            kind: TimelineEventType::from(notice.kind.as_str()),
            state_key: notice.state_key,
            content: notice.content,
            redacts: None,
            txn,
            ts: None,
            delay_id: None,
        };
        self.rooms.append(&room_id, &system, new).await
    }

    /// The user's notices room, if they have one.
    fn room_of(&self, user: &UserId) -> Result<Option<OwnedRoomId>> {
        for (room_id, _) in self.rooms.user_rooms(user)? {
            if self.is_notices_room(&room_id)? {
                return Ok(Some(room_id));
            }
        }
        Ok(None)
    }

    async fn create_room(&self, system: &UserId, user: &UserId) -> Result<OwnedRoomId> {
        let room_id = self
            .rooms
            .create_room(
                system,
                CreateRoom {
                    version: None,
                    preset: Some(Preset::PrivateChat),
                    public: false,
                    name: Some(self.config.server_notices_room_name.clone()),
                    topic: None,
                    alias: None,
                    invite: Vec::new(),
                    is_direct: false,
                    initial_state: Vec::new(),
                    // The user reads; only the server writes.
                    power_level_override: Some(json!({ "users_default": -10 })),
                    creation_content: None,
                    profile: (Some(self.config.server_notices_display_name.clone()), None),
                },
            )
            .await?;
        self.rooms
            .invite(&room_id, system, user, None, false)
            .await?;
        self.account_data.set(
            user,
            Some(&room_id),
            "m.tag",
            json!({ "tags": { "m.server_notice": { "order": 0.5 } } }),
        )?;
        Ok(room_id)
    }
}
