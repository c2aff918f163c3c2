//! EDUs: the ephemeral part of a transaction — typing, read receipts, presence, device-list
//! and cross-signing key updates, to-device messages. Each is taken only from the server of
//! the user it speaks for, and only for rooms that user is in.
//!
//! Spec: https://spec.matrix.org/v1.19/server-server-api/#edus

use std::sync::Arc;

use ruma::{events::room::member::MembershipState, OwnedRoomId, OwnedUserId, ServerName, UserId};
use serde_json::Value;
use tracing::debug;

use crate::{accounts::Accounts, e2ee::E2ee, ephemeral::Ephemeral, rooms::Rooms};

/// How long a typing notification from another server lasts unless renewed (the spec's
/// suggested 30 s).
const REMOTE_TYPING_MS: u64 = 30_000;

pub struct Edus {
    rooms: Arc<Rooms>,
    ephemeral: Arc<Ephemeral>,
    e2ee: Arc<E2ee>,
    accounts: Arc<Accounts>,
}

/// A user id of `origin`, or `None`.
pub(crate) fn user_of(origin: &ServerName, v: &Value) -> Option<OwnedUserId> {
    v.as_str()
        .and_then(|u| OwnedUserId::try_from(u).ok())
        .filter(|u| u.server_name() == origin)
}

impl Edus {
    pub fn new(
        rooms: Arc<Rooms>,
        ephemeral: Arc<Ephemeral>,
        e2ee: Arc<E2ee>,
        accounts: Arc<Accounts>,
    ) -> Self {
        Self {
            rooms,
            ephemeral,
            e2ee,
            accounts,
        }
    }

    /// Takes in one EDU of a transaction from `origin`. EDUs are best effort: one that does
    /// not check out is dropped (and logged), never failing the transaction.
    pub fn handle(&self, origin: &ServerName, edu: &Value) {
        let kind = edu["edu_type"].as_str().unwrap_or_default();
        let content = &edu["content"];
        let outcome = match kind {
            "m.typing" => self.typing(origin, content),
            "m.receipt" => self.receipts(origin, content),
            "m.presence" => self.presence(origin, content),
            "m.device_list_update" | "m.signing_key_update" => self.keys_changed(origin, content),
            "m.direct_to_device" => self.to_device(origin, content),
            other => Err(format!("unknown EDU type {other:?}")),
        };
        if let Err(e) = outcome {
            debug!(%origin, edu_type = kind, "EDU dropped: {e}");
        }
    }

    /// The room, if `user` is joined to it and its server ACL admits the user's server.
    fn joined(&self, room: &str, user: &UserId) -> Result<OwnedRoomId, String> {
        let room = OwnedRoomId::try_from(room).map_err(|e| format!("bad room id: {e}"))?;
        if !self
            .rooms
            .is_joined(&room, user)
            .map_err(|e| e.to_string())?
        {
            return Err(format!("{user} is not in {room}"));
        }
        // The room's server ACL applies to EDUs about it too.
        self.rooms
            .check_server_acl(&room, user.server_name())
            .map_err(|e| e.to_string())?;
        Ok(room)
    }

    fn typing(&self, origin: &ServerName, c: &Value) -> Result<(), String> {
        let user = user_of(origin, &c["user_id"]).ok_or("user_id is not of the origin")?;
        let room = self.joined(c["room_id"].as_str().unwrap_or_default(), &user)?;
        let typing = c["typing"].as_bool().unwrap_or(false);
        let members = self
            .rooms
            .joined_members(&room)
            .map_err(|e| e.to_string())?;
        self.ephemeral
            .set_typing(&room, &user, typing, REMOTE_TYPING_MS, members)
            .map_err(|e| e.to_string())
    }

    fn receipts(&self, origin: &ServerName, c: &Value) -> Result<(), String> {
        let rooms = c.as_object().ok_or("receipts must be an object")?;
        for (room, by_type) in rooms {
            for (receipt_type, by_user) in by_type.as_object().into_iter().flatten() {
                if receipt_type != "m.read" {
                    continue;
                }
                for (user, receipt) in by_user.as_object().into_iter().flatten() {
                    let Some(user) = user_of(origin, &Value::String(user.clone())) else {
                        continue;
                    };
                    let Ok(room) = self.joined(room, &user) else {
                        continue;
                    };
                    let Some(event_id) = receipt["event_ids"]
                        .as_array()
                        .and_then(|ids| ids.first())
                        .and_then(Value::as_str)
                    else {
                        continue;
                    };
                    let thread = receipt["data"]["thread_id"].as_str();
                    let members = self
                        .rooms
                        .joined_members(&room)
                        .map_err(|e| e.to_string())?;
                    self.ephemeral
                        .set_receipt(&room, &user, "m.read", event_id, thread, members)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn presence(&self, origin: &ServerName, c: &Value) -> Result<(), String> {
        for p in c["push"].as_array().into_iter().flatten() {
            let Some(user) = user_of(origin, &p["user_id"]) else {
                continue;
            };
            let presence = p["presence"].as_str().unwrap_or("offline");
            let wake = self.sharing_rooms(&user)?;
            if wake.is_empty() {
                continue;
            }
            let status = p["status_msg"].as_str().map(str::to_owned);
            if let Err(e) = self.ephemeral.set_presence(&user, presence, status, wake) {
                debug!(%user, "presence update dropped: {e}");
            }
        }
        Ok(())
    }

    /// Local users who share a room with `user`.
    fn sharing_rooms(&self, user: &UserId) -> Result<Vec<OwnedUserId>, String> {
        let mut out = Vec::new();
        for (room, rec) in self.rooms.user_rooms(user).map_err(|e| e.to_string())? {
            if rec.membership != MembershipState::Join {
                continue;
            }
            for m in self
                .rooms
                .joined_members(&room)
                .map_err(|e| e.to_string())?
            {
                if self.accounts.is_local(&m) {
                    out.push(m);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn keys_changed(&self, origin: &ServerName, c: &Value) -> Result<(), String> {
        let user = user_of(origin, &c["user_id"]).ok_or("user_id is not of the origin")?;
        self.e2ee
            .remote_keys_changed(&user)
            .map_err(|e| e.to_string())
    }

    fn to_device(&self, origin: &ServerName, c: &Value) -> Result<(), String> {
        let sender = user_of(origin, &c["sender"]).ok_or("sender is not of the origin")?;
        let kind = c["type"].as_str().ok_or("no type")?;
        let message_id = c["message_id"].as_str().ok_or("no message_id")?;
        let mut local = serde_json::Map::new();
        for (user, devices) in c["messages"].as_object().ok_or("no messages")? {
            if OwnedUserId::try_from(user.as_str()).is_ok_and(|u| self.accounts.is_local(&u)) {
                local.insert(user.clone(), devices.clone());
            }
        }
        // The message id makes a retried EDU a no-op, like a client's transaction id.
        self.e2ee
            .send_to_device(
                &sender,
                &format!("federation:{origin}"),
                kind,
                message_id,
                &Value::Object(local),
            )
            .map_err(|e| e.to_string())
    }
}
