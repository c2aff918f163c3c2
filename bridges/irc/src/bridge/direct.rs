//! Private messages: an IRC user and a Matrix user in a direct room.

use std::{collections::BTreeMap, sync::Arc};

use paracord_appservice::{
    ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId},
    CreateRoom, Event, Result,
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    ghosts::matrix_content,
    load, lock,
    puppets::{irc_text, send_as},
    Bridge, DirectRoom, DMS, GHOSTS,
};
use crate::{conn::IrcEvent, proto::sanitize_nick};

impl Bridge {
    /// Handles the events of the Matrix users' IRC connections, in order.
    pub(super) async fn run_puppet_events(
        self: Arc<Self>,
        mut events: mpsc::UnboundedReceiver<(OwnedUserId, IrcEvent)>,
    ) {
        while let Some((user, event)) = events.recv().await {
            let IrcEvent::Line(line) = event else {
                continue;
            };
            if !matches!(line.command.as_str(), "PRIVMSG" | "NOTICE") {
                continue;
            }
            let nick = line.nick().unwrap_or_default().to_owned();
            let target = line.param(0);
            // Channel messages come through the bot's connection; server notices have a
            // dot in the sender.
            if target.starts_with(['#', '&', '+', '!'])
                || nick.is_empty()
                || nick.contains('.')
                || self.is_own_nick(&nick)
            {
                continue;
            }
            if let Err(e) = self
                .relay_private(&user, &nick, &line.command, line.param(1))
                .await
            {
                tracing::warn!("relaying a private message from {nick} to {user}: {e}");
            }
        }
    }

    /// An IRC user wrote to a Matrix user's connection: into their direct room, made (by
    /// the ghost, inviting the Matrix user) the first time.
    pub(super) async fn relay_private(
        &self,
        user: &UserId,
        nick: &str,
        command: &str,
        text: &str,
    ) -> Result<()> {
        let Some(content) = matrix_content(command, text) else {
            return Ok(());
        };
        let ghost = self.ghost_localpart(nick)?;
        let intent = self.app.intent(&ghost)?;
        if lock(&self.named).insert(ghost.clone()) {
            if let Err(e) = intent.set_display_name(nick).await {
                lock(&self.named).remove(&ghost);
                return Err(e);
            }
        }
        let rooms: BTreeMap<OwnedRoomId, DirectRoom> = load(&self.app, DMS)?;
        let existing = rooms
            .iter()
            .find(|(_, d)| d.ghost == ghost && d.user == user)
            .map(|(r, _)| r.clone());
        let room_id = match existing {
            Some(room_id) => room_id,
            None => {
                let room_id = intent
                    .create_room(&CreateRoom {
                        invite: vec![user.to_owned()],
                        preset: Some("trusted_private_chat".into()),
                        is_direct: true,
                        ..CreateRoom::default()
                    })
                    .await?;
                let _guard = lock(&self.ghost_records);
                let mut rooms: BTreeMap<OwnedRoomId, DirectRoom> = load(&self.app, DMS)?;
                rooms.insert(
                    room_id.clone(),
                    DirectRoom {
                        ghost: ghost.clone(),
                        user: user.to_owned(),
                    },
                );
                self.app.store().set(DMS, serde_json::to_value(&rooms)?)?;
                room_id
            }
        };
        intent
            .send_event(&room_id, "m.room.message", &content)
            .await?;
        Ok(())
    }

    /// A Matrix user wrote in a direct room with a ghost: to the IRC user, from the Matrix
    /// user's connection.
    pub(super) async fn on_direct_room_event(
        &self,
        event: &Event,
        sender: &UserId,
        room_id: &RoomId,
    ) -> Result<()> {
        if event.event_type().as_deref() != Some("m.room.message") {
            return Ok(());
        }
        let rooms: BTreeMap<OwnedRoomId, DirectRoom> = load(&self.app, DMS)?;
        let Some(direct) = rooms.get(room_id) else {
            return Ok(());
        };
        if direct.user != sender {
            return Ok(());
        }
        let content: Value = event
            .raw()
            .get_field("content")
            .ok()
            .flatten()
            .unwrap_or_default();
        let Some((msgtype, text)) = irc_text(&content) else {
            return Ok(());
        };
        // The IRC user's nick now: the one that maps to the ghost.
        let nicks: BTreeMap<String, String> = load(&self.app, GHOSTS)?;
        let Some(nick) = nicks
            .iter()
            .find(|(_, g)| **g == direct.ghost)
            .map(|(n, _)| n.clone())
        else {
            return Ok(());
        };
        let _creating = self.creating_puppet.lock().await;
        let existing = lock(&self.puppets).get(sender).cloned();
        let puppet = match existing {
            Some(p) => p,
            None => {
                let name = self.display_name(sender, room_id).await;
                let irc = &self.config.irc;
                let nick = sanitize_nick(
                    &name,
                    &irc.puppet_prefix,
                    &irc.puppet_suffix,
                    irc.max_nick_length,
                );
                self.spawn_puppet(sender, &nick, [])
            }
        };
        send_as(&puppet, &nick, msgtype, &text);
        Ok(())
    }
}
