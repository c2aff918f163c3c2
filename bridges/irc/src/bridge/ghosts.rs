//! IRC → Matrix: what the bot's connection hears, relayed by ghosts.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
};

use paracord_appservice::{
    ruma::{OwnedRoomId, RoomId},
    Result,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{load, lock, Bridge, Portal, GHOSTS, GHOST_ROOMS};
use crate::{
    conn::IrcEvent,
    format::irc_to_matrix,
    proto::{irc_lower, is_ctcp, nick_to_localpart, parse_action, Line},
};

impl Bridge {
    /// Handles the bot connection's events, in order, until the connection task ends.
    pub(crate) async fn run_irc(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<IrcEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                IrcEvent::Connected { nick } => tracing::info!("bot connected to IRC as {nick}"),
                IrcEvent::Disconnected { reason } => {
                    tracing::warn!("bot disconnected from IRC: {reason}")
                }
                IrcEvent::Line(line) => {
                    if let Err(e) = self.on_irc_line(&line).await {
                        tracing::warn!("relaying IRC {}: {e}", line.command);
                    }
                }
            }
        }
    }

    pub(super) async fn on_irc_line(self: &Arc<Self>, line: &Line) -> Result<()> {
        let nick = line.nick().unwrap_or_default().to_owned();
        match line.command.as_str() {
            "PRIVMSG" | "NOTICE" => {
                let Some(portal) = self.portal_for_channel(line.param(0)) else {
                    // Private messages to the bot are not bridged.
                    return Ok(());
                };
                if nick.is_empty() || nick.contains('.') || self.is_own_nick(&nick) {
                    return Ok(());
                }
                self.relay_to_matrix(&portal, &nick, &line.command, line.param(1))
                    .await
            }
            "JOIN" => {
                let Some(portal) = self.portal_for_channel(line.param(0)) else {
                    return Ok(());
                };
                if self.is_own_nick(&nick) {
                    return Ok(());
                }
                self.ghost_join(&nick, &portal.room_id).await.map(drop)
            }
            "PART" => {
                let Some(portal) = self.portal_for_channel(line.param(0)) else {
                    return Ok(());
                };
                if self.is_own_nick(&nick) {
                    return Ok(());
                }
                self.ghost_leave(&nick, Some(&portal.room_id)).await
            }
            "KICK" => {
                let kicked = line.param(1).to_owned();
                let Some(portal) = self.portal_for_channel(line.param(0)) else {
                    return Ok(());
                };
                if self.is_own_nick(&kicked) {
                    return Ok(());
                }
                self.ghost_leave(&kicked, Some(&portal.room_id)).await
            }
            "QUIT" => {
                if self.is_own_nick(&nick) {
                    return Ok(());
                }
                self.ghost_leave(&nick, None).await
            }
            "NICK" => {
                let new = line.param(0).to_owned();
                if self.is_own_nick(&nick) || self.is_own_nick(&new) {
                    return Ok(());
                }
                self.ghost_renamed(&nick, &new).await
            }
            // RPL_NAMREPLY: who is in a channel the bot just joined.
            "353" => {
                let Some(portal) = self.portal_for_channel(line.param(2)) else {
                    return Ok(());
                };
                let nicks: Vec<String> = line
                    .param(3)
                    .split(' ')
                    .map(|n| n.trim_start_matches(['@', '+', '%', '&', '~']).to_owned())
                    .filter(|n| !n.is_empty() && !self.is_own_nick(n))
                    .collect();
                let bridge = self.clone();
                tokio::spawn(async move {
                    for nick in nicks {
                        if let Err(e) = bridge.ghost_join(&nick, &portal.room_id).await {
                            tracing::warn!("ghost of {nick} joining: {e}");
                        }
                    }
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn relay_to_matrix(
        &self,
        portal: &Portal,
        nick: &str,
        command: &str,
        text: &str,
    ) -> Result<()> {
        let Some(content) = matrix_content(command, text) else {
            return Ok(());
        };
        let ghost = self.ghost_join(nick, &portal.room_id).await?;
        let intent = self.app.intent(&ghost)?;
        match intent
            .send_event(&portal.room_id, "m.room.message", &content)
            .await
        {
            Err(e) if e.errcode() == Some("M_FORBIDDEN") => {
                // Kicked on the Matrix side since it joined: join again, then send.
                self.update_ghost_rooms(&ghost, |rooms| {
                    rooms.remove(&portal.room_id);
                })?;
                self.ghost_join(nick, &portal.room_id).await?;
                intent
                    .send_event(&portal.room_id, "m.room.message", &content)
                    .await?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }

    /// The ghost localpart of `nick`: remembered (a ghost keeps its id across nick
    /// changes), else made from the nick.
    pub(super) fn ghost_localpart(&self, nick: &str) -> Result<String> {
        let _guard = lock(&self.ghost_records);
        let mut map: BTreeMap<String, String> = load(&self.app, GHOSTS)?;
        if let Some(localpart) = map.get(&irc_lower(nick)) {
            return Ok(localpart.clone());
        }
        let base = format!("{}{}", self.config.prefix, nick_to_localpart(nick));
        // A renamed ghost may still hold the id this nick would get: then a numbered one
        // (`.` never appears in a nick's own encoding).
        let taken: HashSet<&String> = map.values().collect();
        let mut localpart = base.clone();
        let mut n = 2;
        while taken.contains(&localpart) {
            localpart = format!("{base}.{n}");
            n += 1;
        }
        map.insert(irc_lower(nick), localpart.clone());
        self.app.store().set(GHOSTS, serde_json::to_value(&map)?)?;
        Ok(localpart)
    }

    /// Makes sure `nick`'s ghost exists, is named after the nick and is in the room.
    pub(super) async fn ghost_join(&self, nick: &str, room_id: &RoomId) -> Result<String> {
        let localpart = self.ghost_localpart(nick)?;
        let intent = self.app.intent(&localpart)?;
        if lock(&self.named).insert(localpart.clone()) {
            if let Err(e) = intent.set_display_name(nick).await {
                lock(&self.named).remove(&localpart);
                return Err(e);
            }
        }
        if self.ghost_rooms(&localpart)?.contains(room_id) {
            return Ok(localpart);
        }
        if let Err(first) = intent.join(room_id.as_str()).await {
            // A private room: the bot invites the ghost first.
            tracing::debug!("ghost {localpart} joining directly: {first}");
            self.app
                .bot()?
                .invite(room_id, intent.user_id())
                .await
                .or_else(|e| {
                    // Already invited (a previous attempt) is fine.
                    if e.errcode() == Some("M_FORBIDDEN") {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            intent.join(room_id.as_str()).await?;
        }
        self.update_ghost_rooms(&localpart, |rooms| {
            rooms.insert(room_id.to_owned());
        })?;
        Ok(localpart)
    }

    /// The rooms the ghost was last seen joining.
    pub(super) fn ghost_rooms(&self, localpart: &str) -> Result<BTreeSet<OwnedRoomId>> {
        let _guard = lock(&self.ghost_records);
        let mut rooms: BTreeMap<String, BTreeSet<OwnedRoomId>> = load(&self.app, GHOST_ROOMS)?;
        Ok(rooms.remove(localpart).unwrap_or_default())
    }

    /// Changes the ghost's recorded rooms.
    pub(super) fn update_ghost_rooms(
        &self,
        localpart: &str,
        change: impl FnOnce(&mut BTreeSet<OwnedRoomId>),
    ) -> Result<()> {
        let _guard = lock(&self.ghost_records);
        let mut rooms: BTreeMap<String, BTreeSet<OwnedRoomId>> = load(&self.app, GHOST_ROOMS)?;
        let entry = rooms.entry(localpart.to_owned()).or_default();
        change(entry);
        if entry.is_empty() {
            rooms.remove(localpart);
        }
        self.app
            .store()
            .set(GHOST_ROOMS, serde_json::to_value(&rooms)?)
    }

    /// The ghost of `nick` leaves `room_id`, or every room (a QUIT).
    pub(super) async fn ghost_leave(&self, nick: &str, room_id: Option<&RoomId>) -> Result<()> {
        let localpart = self.ghost_localpart(nick)?;
        let mut leave = Vec::new();
        self.update_ghost_rooms(&localpart, |rooms| {
            rooms.retain(|r| {
                let gone = room_id.is_none_or(|only| only == r);
                if gone {
                    leave.push(r.clone());
                }
                !gone
            })
        })?;
        let intent = self.app.intent(&localpart)?;
        for room in &leave {
            if let Err(e) = intent.leave(room).await {
                tracing::warn!("ghost {localpart} leaving {room}: {e}");
            }
        }
        Ok(())
    }

    /// `old` is now `new`: the same ghost, renamed.
    pub(super) async fn ghost_renamed(&self, old: &str, new: &str) -> Result<()> {
        let localpart = self.ghost_localpart(old)?;
        {
            let _guard = lock(&self.ghost_records);
            let mut map: BTreeMap<String, String> = load(&self.app, GHOSTS)?;
            map.remove(&irc_lower(old));
            map.insert(irc_lower(new), localpart.clone());
            self.app.store().set(GHOSTS, serde_json::to_value(&map)?)?;
        }
        lock(&self.named).insert(localpart.clone());
        self.app.intent(&localpart)?.set_display_name(new).await
    }
}

/// The Matrix content of an IRC `PRIVMSG` or `NOTICE`; `None` for CTCP requests and empty
/// text.
pub(super) fn matrix_content(command: &str, text: &str) -> Option<Value> {
    let (msgtype, text) = match parse_action(text) {
        Some(action) => ("m.emote", action),
        None if is_ctcp(text) => return None,
        None if command == "NOTICE" => ("m.notice", text),
        None => ("m.text", text),
    };
    let (plain, html) = irc_to_matrix(text);
    if plain.trim().is_empty() {
        return None;
    }
    let mut content = json!({"msgtype": msgtype, "body": plain});
    if let Some(html) = html {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(html);
    }
    Some(content)
}
