//! Joining and knocking for this server's users: locally when this server is in the room,
//! otherwise through other servers — which ones, in which order, and the fallback of a
//! restricted join no local member can authorise.

use std::{collections::HashSet, sync::Arc};

use paracord_core::{Config, Error, ErrorKind, Result};
use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, RoomOrAliasId, UserId};
use serde_json::Value;

use crate::{
    accounts::Accounts,
    federation::{pdus::Pdus, query::Queries},
    rooms::Rooms,
};

pub struct Joins {
    config: Arc<Config>,
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    pdus: Arc<Pdus>,
    queries: Arc<Queries>,
}

impl Joins {
    pub fn new(
        config: Arc<Config>,
        accounts: Arc<Accounts>,
        rooms: Arc<Rooms>,
        pdus: Arc<Pdus>,
        queries: Arc<Queries>,
    ) -> Self {
        Self {
            config,
            accounts,
            rooms,
            pdus,
            queries,
        }
    }

    fn own_name(&self) -> &str {
        self.config.server_name.as_str()
    }

    /// The room a room id or alias names, and the servers that may be in it: those given, and
    /// for another server's alias, that server and the ones it names.
    pub async fn room_and_servers(
        &self,
        room: &RoomOrAliasId,
        via: &[OwnedServerName],
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let mut via = via.to_vec();
        let room_id = match <&RoomAliasId>::try_from(room) {
            Ok(alias) if alias.server_name().as_str() != self.own_name() => {
                // Another server's alias: it says which room and which servers are in it.
                let (room_id, servers) = self.queries.room_alias(alias).await?;
                via.push(alias.server_name().to_owned());
                via.extend(servers);
                room_id
            }
            Ok(alias) => self
                .rooms
                .resolve_alias(alias)?
                .ok_or_else(|| Error::not_found("room alias not found"))?,
            Err(id) => id.to_owned(),
        };
        Ok((room_id, via))
    }

    /// Whether this server has a member joined to the room (so it can act in it alone).
    pub fn resident(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.rooms.room(room_id)?.is_some()
            && self
                .rooms
                .servers_in_room(room_id)?
                .iter()
                .any(|s| s.as_str() == self.own_name()))
    }

    /// Servers to ask about a room this server is not in: those given (else the room id's
    /// server) and the server of a pending invite, without this one and without repeats.
    pub fn candidates(
        &self,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Result<Vec<OwnedServerName>> {
        let mut candidates: Vec<OwnedServerName> = via.to_vec();
        // The room id's server only when the client named none: the servers it names are the
        // ones it wants the join to go through (a restricted join must fail rather than go to
        // a server it did not name).
        if via.is_empty() {
            if let Some(server) = room_id.server_name() {
                candidates.push(server.to_owned());
            }
        }
        if let Some(inviter) = self.rooms.remote_invite_sender(user, room_id)? {
            candidates.push(inviter.server_name().to_owned());
        }
        candidates.retain(|s| s.as_str() != self.own_name());
        let mut seen = HashSet::new();
        candidates.retain(|s| seen.insert(s.clone()));
        Ok(candidates)
    }

    /// Joins a room: locally when this server is in it, otherwise over federation through the
    /// servers given (`via`), the room id's server and the server of a pending invite. `body`
    /// is the client's request body, whose fields become member event content.
    pub async fn join(
        &self,
        user: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<&str>,
        body: Option<&Value>,
    ) -> Result<()> {
        let resident = self.resident(room_id)?;
        let candidates = self.candidates(user, room_id, via)?;
        let profile = self.accounts.profile(user).unwrap_or((None, None));
        let content = crate::rooms::membership::join_content(profile, reason, body);
        if resident || candidates.is_empty() {
            match self.rooms.join_with(room_id, user, content.clone()).await {
                Ok(_) => return Ok(()),
                // A restricted room no member here may let the user into: another server in
                // the room may have one, so the join goes through it.
                Err(Error::Matrix {
                    kind: ErrorKind::UnableToAuthoriseJoin,
                    ..
                }) if resident => {
                    let others: Vec<OwnedServerName> = self
                        .rooms
                        .servers_in_room(room_id)?
                        .into_iter()
                        .filter(|s| s.as_str() != self.own_name())
                        .collect();
                    if others.is_empty() {
                        return Err(Error::forbidden(
                            "no member of the room can authorise your join",
                        ));
                    }
                    self.pdus
                        .join_remote(user, room_id, &others, Value::Object(content))
                        .await?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.pdus
            .join_remote(user, room_id, &candidates, Value::Object(content))
            .await?;
        Ok(())
    }

    /// Knocks on a room: through other servers when this server is not in it and some may
    /// be, else locally. Returns the room id.
    pub async fn knock(
        &self,
        user: &UserId,
        room: &RoomOrAliasId,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let (room_id, via) = self.room_and_servers(room, via).await?;
        let candidates = self.candidates(user, &room_id, &via)?;
        if !self.resident(&room_id)? && !candidates.is_empty() {
            self.pdus
                .knock_remote(user, &room_id, &candidates, reason)
                .await?;
            return Ok(room_id);
        }
        self.rooms.knock(&room_id, user, reason).await?;
        Ok(room_id)
    }
}
