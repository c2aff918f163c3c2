//! Matrix → IRC: what Matrix users say, sent by their own IRC connections.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use paracord_appservice::{
    ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId},
    Event, Result,
};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{enc, load, lock, Bridge, Portal, PuppetRecord, PUPPETS, PUPPET_JOIN_WAIT};
use crate::{
    conn::IrcHandle,
    format::{matrix_to_irc, strip_reply_fallback},
    proto::{irc_lower, sanitize_nick},
};

impl Bridge {
    /// Handles the appservice's events: in order within a room, rooms side by side (a room
    /// whose sender's IRC connection is still joining does not hold up the others).
    pub(crate) async fn run_matrix(self: Arc<Self>, mut events: paracord_appservice::Events) {
        let mut rooms: HashMap<OwnedRoomId, mpsc::UnboundedSender<Event>> = HashMap::new();
        while let Some(event) = events.recv().await {
            let Some(room_id) = event.room_id() else {
                continue;
            };
            // One worker per room the appservice hears from (its portals and direct rooms),
            // for as long as the bridge runs.
            let tx = rooms.entry(room_id).or_insert_with(|| {
                let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
                let bridge = self.clone();
                tokio::spawn(async move {
                    while let Some(event) = rx.recv().await {
                        if let Err(e) = bridge.on_matrix_event(&event).await {
                            tracing::warn!("relaying a Matrix event: {e}");
                        }
                    }
                });
                tx
            });
            // The worker only ends with the bridge.
            let _ = tx.send(event);
        }
    }

    pub(super) async fn on_matrix_event(self: &Arc<Self>, event: &Event) -> Result<()> {
        let (Some(sender), Some(room_id)) = (event.sender(), event.room_id()) else {
            return Ok(());
        };
        if self.is_own_user(&sender) {
            return Ok(());
        }
        let Some(portal) = self.portal_for_room(&room_id) else {
            return self.on_direct_room_event(event, &sender, &room_id).await;
        };
        let content: Value = event
            .raw()
            .get_field("content")
            .ok()
            .flatten()
            .unwrap_or_default();
        match event.event_type().as_deref() {
            Some("m.room.message") => self.relay_to_irc(&portal, &sender, &content).await,
            Some("m.room.member") => {
                let state_key: Option<String> = event.raw().get_field("state_key").ok().flatten();
                if state_key.as_deref() != Some(sender.as_str()) {
                    // Kicks and bans of Matrix users: their puppet leaves too.
                    if let Some(target) = state_key.and_then(|s| UserId::parse(s).ok()) {
                        if content["membership"] != "join" && content["membership"] != "invite" {
                            self.puppet_left(&target, &portal);
                        }
                    }
                    return Ok(());
                }
                match content["membership"].as_str() {
                    Some("join") => self.puppet_joined(&sender, &portal, &content).await,
                    Some("leave" | "ban") => {
                        self.puppet_left(&sender, &portal);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn relay_to_irc(
        &self,
        portal: &Portal,
        sender: &UserId,
        content: &Value,
    ) -> Result<()> {
        let Some((msgtype, text)) = irc_text(content) else {
            return Ok(());
        };
        let puppet = self
            .puppet(sender, &portal.room_id, &portal.channel)
            .await?;
        if !puppet
            .wait_in_channel(&portal.channel, PUPPET_JOIN_WAIT)
            .await
        {
            tracing::warn!(
                "{sender}'s IRC connection is not in {} yet; the message waits",
                portal.channel
            );
        }
        send_as(&puppet, &portal.channel, msgtype, &text);
        Ok(())
    }

    /// The IRC connection of a Matrix user, started (and joined to `channel`) if needed.
    pub(super) async fn puppet(
        &self,
        user: &UserId,
        room_id: &RoomId,
        channel: &str,
    ) -> Result<IrcHandle> {
        // Rooms are handled side by side: one connection per user all the same.
        let _creating = self.creating_puppet.lock().await;
        if let Some(p) = lock(&self.puppets).get(user).cloned() {
            if !p
                .wanted_channels()
                .iter()
                .any(|c| irc_lower(c) == irc_lower(channel))
            {
                p.join(channel);
                self.save_puppet(user, &p)?;
            }
            return Ok(p);
        }
        let name = self.display_name(user, room_id).await;
        let irc = &self.config.irc;
        let nick = sanitize_nick(
            &name,
            &irc.puppet_prefix,
            &irc.puppet_suffix,
            irc.max_nick_length,
        );
        let handle = self.spawn_puppet(user, &nick, [channel.to_owned()]);
        self.save_puppet(user, &handle)?;
        Ok(handle)
    }

    pub(super) fn spawn_puppet(
        &self,
        user: &UserId,
        nick: &str,
        channels: impl IntoIterator<Item = String>,
    ) -> IrcHandle {
        let username = sanitize_nick(user.localpart(), "", "", 10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let forward = self.puppet_events.clone();
        let owner = user.to_owned();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if forward.send((owner.clone(), event)).is_err() {
                    return;
                }
            }
        });
        let handle = IrcHandle::spawn(
            self.config.conn(nick, &username, user.as_str()),
            channels,
            Some(tx),
        );
        lock(&self.puppets).insert(user.to_owned(), handle.clone());
        handle
    }

    pub(super) fn save_puppet(&self, user: &UserId, handle: &IrcHandle) -> Result<()> {
        let mut records: BTreeMap<OwnedUserId, PuppetRecord> = load(&self.app, PUPPETS)?;
        let channels: BTreeSet<String> = handle.wanted_channels().into_iter().collect();
        if channels.is_empty() {
            records.remove(user);
        } else {
            records.insert(
                user.to_owned(),
                PuppetRecord {
                    nick: handle.nick(),
                    channels,
                },
            );
        }
        self.app
            .store()
            .set(PUPPETS, serde_json::to_value(&records)?)
    }

    /// The user's display name in the room, else their localpart.
    pub(super) async fn display_name(&self, user: &UserId, room_id: &RoomId) -> String {
        let path = format!(
            "/client/v3/rooms/{}/state/m.room.member/{}",
            enc(room_id.as_str()),
            enc(user.as_str())
        );
        let bot = match self.app.bot() {
            Ok(bot) => bot,
            Err(_) => return user.localpart().to_owned(),
        };
        match bot.call(reqwest::Method::GET, &path, None).await {
            Ok(v) => v["displayname"]
                .as_str()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or(user.localpart())
                .to_owned(),
            Err(_) => user.localpart().to_owned(),
        }
    }

    /// A Matrix user joined (or changed their profile in) a portal: their IRC connection,
    /// if they have one, joins the channel too and follows a display name change.
    pub(super) async fn puppet_joined(
        &self,
        user: &UserId,
        portal: &Portal,
        content: &Value,
    ) -> Result<()> {
        let Some(p) = lock(&self.puppets).get(user).cloned() else {
            return Ok(());
        };
        if !p
            .wanted_channels()
            .iter()
            .any(|c| irc_lower(c) == irc_lower(&portal.channel))
        {
            p.join(&portal.channel);
        }
        if let Some(name) = content["displayname"].as_str() {
            let irc = &self.config.irc;
            let nick = sanitize_nick(
                name,
                &irc.puppet_prefix,
                &irc.puppet_suffix,
                irc.max_nick_length,
            );
            if irc_lower(&nick) != irc_lower(&p.nick()) {
                p.change_nick(&nick);
            }
        }
        self.save_puppet(user, &p)
    }

    /// A Matrix user left a portal: their IRC connection parts the channel, and quits when
    /// it is in no channel any more.
    pub(super) fn puppet_left(&self, user: &UserId, portal: &Portal) {
        let Some(p) = lock(&self.puppets).get(user).cloned() else {
            return;
        };
        p.part(&portal.channel, "left the Matrix room");
        if p.wanted_channels().is_empty() {
            p.quit("left Matrix");
            lock(&self.puppets).remove(user);
        }
        if let Err(e) = self.save_puppet(user, &p) {
            tracing::warn!("saving {user}'s IRC connection: {e}");
        }
    }
}

/// Sends `text` to `target` as the Matrix `msgtype` maps to IRC.
pub(super) fn send_as(puppet: &IrcHandle, target: &str, msgtype: &str, text: &str) {
    match msgtype {
        "m.emote" => puppet.action(target, text),
        "m.notice" => puppet.notice(target, text),
        _ => puppet.privmsg(target, text),
    }
}

/// The IRC text of a Matrix message's content, with its `msgtype`; `None` when there is
/// nothing to send.
pub(super) fn irc_text(content: &Value) -> Option<(&str, String)> {
    let body = content["body"].as_str().unwrap_or_default();
    let html = (content["format"] == "org.matrix.custom.html")
        .then(|| content["formatted_body"].as_str())
        .flatten();
    let is_edit = content["m.relates_to"]["rel_type"] == "m.replace";
    let (body, html) = if is_edit {
        let new = &content["m.new_content"];
        let html = (new["format"] == "org.matrix.custom.html")
            .then(|| new["formatted_body"].as_str())
            .flatten();
        (new["body"].as_str().unwrap_or(body), html)
    } else {
        (body, html)
    };
    let is_reply = content["m.relates_to"]["m.in_reply_to"].is_object();
    let body = if is_reply && html.is_none() {
        strip_reply_fallback(body)
    } else {
        body
    };
    let mut text = matrix_to_irc(body, html);
    let msgtype = content["msgtype"].as_str().unwrap_or("m.text");
    if let Some(url) = content["url"].as_str() {
        // Files are sent as their name and `mxc://` address.
        text = format!("{text} ({url})");
    }
    if is_edit {
        text = format!("* {text}");
    }
    (!text.trim().is_empty()).then_some((msgtype, text))
}
