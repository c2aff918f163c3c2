//! The bridge: IRC channels ↔ rooms (portals), IRC users as ghosts on Matrix, Matrix users
//! as IRC connections (puppets).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use paracord_appservice::{
    ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId},
    Appservice, CreateRoom, Event, Result,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{
    config::Config,
    conn::{IrcEvent, IrcHandle},
    format::{irc_to_matrix, matrix_to_irc, strip_reply_fallback},
    proto::{
        irc_lower, is_ctcp, nick_to_localpart, parse_action, sanitize_nick, valid_channel, Line,
    },
};

/// How long a message from Matrix waits for its new puppet to be in the channel.
const PUPPET_JOIN_WAIT: Duration = Duration::from_secs(20);

/// Store keys.
const PORTALS: &str = "portals";
const GHOSTS: &str = "ghost_nicks";
const GHOST_ROOMS: &str = "ghost_rooms";
const PUPPETS: &str = "puppets";
const DMS: &str = "direct_rooms";

/// A bridged channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct Portal {
    channel: String,
    room_id: OwnedRoomId,
}

/// A room of private messages between an IRC user (their ghost) and a Matrix user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct DirectRoom {
    ghost: String,
    user: OwnedUserId,
}

/// A Matrix user's IRC connection as remembered across restarts.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct PuppetRecord {
    nick: String,
    channels: BTreeSet<String>,
}

pub(crate) struct Bridge {
    app: Appservice,
    config: Config,
    bot_irc: IrcHandle,
    /// Lower-cased channel → portal.
    portals: Mutex<BTreeMap<String, Portal>>,
    puppets: Mutex<HashMap<OwnedUserId, IrcHandle>>,
    /// Ghosts whose display name was set by this process.
    named: Mutex<HashSet<String>>,
    /// Held while the ghosts' records in the store are read and rewritten (never across an
    /// await), so that concurrent updates do not lose each other.
    ghost_records: Mutex<()>,
    /// What the Matrix users' IRC connections receive (private messages), by user.
    puppet_events: mpsc::UnboundedSender<(OwnedUserId, IrcEvent)>,
    /// Held while a Matrix user's connection is looked up and possibly started.
    creating_puppet: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bridge {
    /// Loads the portals, connects the bot to IRC and returns the bridge with the stream of
    /// the bot connection's events.
    pub(crate) async fn start(
        app: Appservice,
        config: Config,
    ) -> Result<(Arc<Bridge>, mpsc::UnboundedReceiver<IrcEvent>)> {
        let bot = app.bot()?;
        bot.ensure_registered().await?;
        let mut portals: BTreeMap<String, Portal> = load(&app, PORTALS)?;
        for (channel, room) in &config.channels {
            let room_id = match bot.join(room).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!("joining {room} for {channel}: {e}");
                    continue;
                }
            };
            portals.insert(
                irc_lower(channel),
                Portal {
                    channel: channel.clone(),
                    room_id,
                },
            );
        }
        app.store().set(PORTALS, serde_json::to_value(&portals)?)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (puppet_events, puppet_rx) = mpsc::unbounded_channel();
        let nick = config.irc.bot_nick.clone();
        let bot_irc = IrcHandle::spawn(
            config.conn(&nick, "paracord", "Paracord IRC bridge"),
            portals.values().map(|p| p.channel.clone()),
            Some(tx),
        );
        let bridge = Arc::new(Bridge {
            app,
            config,
            bot_irc,
            portals: Mutex::new(portals),
            puppets: Mutex::new(HashMap::new()),
            named: Mutex::new(HashSet::new()),
            ghost_records: Mutex::new(()),
            puppet_events,
            creating_puppet: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(bridge.clone().run_puppet_events(puppet_rx));
        // Matrix users who had an IRC connection before a restart get it back.
        let records: BTreeMap<OwnedUserId, PuppetRecord> = load(&bridge.app, PUPPETS)?;
        for (user, record) in records {
            if !record.channels.is_empty() {
                bridge.spawn_puppet(&user, &record.nick, record.channels.iter().cloned());
            }
        }
        Ok((bridge, rx))
    }

    fn portal_for_room(&self, room_id: &RoomId) -> Option<Portal> {
        lock(&self.portals)
            .values()
            .find(|p| p.room_id == room_id)
            .cloned()
    }

    fn portal_for_channel(&self, channel: &str) -> Option<Portal> {
        lock(&self.portals).get(&irc_lower(channel)).cloned()
    }

    /// Whether `nick` is one of the bridge's own IRC connections.
    fn is_own_nick(&self, nick: &str) -> bool {
        let nick = irc_lower(nick);
        if irc_lower(&self.bot_irc.nick()) == nick {
            return true;
        }
        lock(&self.puppets)
            .values()
            .any(|p| irc_lower(&p.nick()) == nick)
    }

    /// Whether `user` is the bot or one of the ghosts (events from them are not relayed).
    fn is_own_user(&self, user: &UserId) -> bool {
        user.server_name() == self.app.server_name()
            && (user.localpart() == self.config.bot_localpart
                || user.localpart().starts_with(&self.config.prefix))
    }

    // ---- IRC → Matrix ----

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

    async fn on_irc_line(self: &Arc<Self>, line: &Line) -> Result<()> {
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

    async fn relay_to_matrix(
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
        self.app
            .intent(&ghost)?
            .send_event(&portal.room_id, "m.room.message", &content)
            .await?;
        Ok(())
    }

    /// The ghost localpart of `nick`: remembered (a ghost keeps its id across nick
    /// changes), else made from the nick.
    fn ghost_localpart(&self, nick: &str) -> Result<String> {
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
    async fn ghost_join(&self, nick: &str, room_id: &RoomId) -> Result<String> {
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
    fn ghost_rooms(&self, localpart: &str) -> Result<BTreeSet<OwnedRoomId>> {
        let _guard = lock(&self.ghost_records);
        let mut rooms: BTreeMap<String, BTreeSet<OwnedRoomId>> = load(&self.app, GHOST_ROOMS)?;
        Ok(rooms.remove(localpart).unwrap_or_default())
    }

    /// Changes the ghost's recorded rooms.
    fn update_ghost_rooms(
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
    async fn ghost_leave(&self, nick: &str, room_id: Option<&RoomId>) -> Result<()> {
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
    async fn ghost_renamed(&self, old: &str, new: &str) -> Result<()> {
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

    // ---- Matrix → IRC ----

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

    async fn on_matrix_event(self: &Arc<Self>, event: &Event) -> Result<()> {
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

    async fn relay_to_irc(&self, portal: &Portal, sender: &UserId, content: &Value) -> Result<()> {
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
}

/// The Matrix content of an IRC `PRIVMSG` or `NOTICE`; `None` for CTCP requests and empty
/// text.
fn matrix_content(command: &str, text: &str) -> Option<Value> {
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

/// Sends `text` to `target` as the Matrix `msgtype` maps to IRC.
fn send_as(puppet: &IrcHandle, target: &str, msgtype: &str, text: &str) {
    match msgtype {
        "m.emote" => puppet.action(target, text),
        "m.notice" => puppet.notice(target, text),
        _ => puppet.privmsg(target, text),
    }
}

/// The IRC text of a Matrix message's content, with its `msgtype`; `None` when there is
/// nothing to send.
fn irc_text(content: &Value) -> Option<(&str, String)> {
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

impl Bridge {
    /// The IRC connection of a Matrix user, started (and joined to `channel`) if needed.
    async fn puppet(&self, user: &UserId, room_id: &RoomId, channel: &str) -> Result<IrcHandle> {
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

    fn spawn_puppet(
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

    fn save_puppet(&self, user: &UserId, handle: &IrcHandle) -> Result<()> {
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
    async fn display_name(&self, user: &UserId, room_id: &RoomId) -> String {
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
    async fn puppet_joined(&self, user: &UserId, portal: &Portal, content: &Value) -> Result<()> {
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
    fn puppet_left(&self, user: &UserId, portal: &Portal) {
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

    // ---- private messages ----

    /// Handles the events of the Matrix users' IRC connections, in order.
    async fn run_puppet_events(
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
    async fn relay_private(
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
    async fn on_direct_room_event(
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

    // ---- dynamic portals ----

    /// `#<prefix><channel>:server` was asked for: creates a public room with that alias
    /// for IRC channel `#<channel>`; whether it did.
    pub(crate) async fn on_alias_query(&self, localpart: &str) -> bool {
        let Some(name) = localpart.strip_prefix(&self.config.prefix) else {
            return false;
        };
        let channel = format!("#{name}");
        if !self.config.dynamic_aliases || !valid_channel(&channel) {
            return false;
        }
        match self.create_portal(localpart, &channel).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("creating the room for {channel}: {e}");
                false
            }
        }
    }

    async fn create_portal(&self, alias_localpart: &str, channel: &str) -> Result<()> {
        let bot = self.app.bot()?;
        let room_id = bot
            .create_room(&CreateRoom {
                name: Some(channel.to_owned()),
                topic: Some(format!("{channel} on {}", self.config.irc.host)),
                room_alias_name: Some(alias_localpart.to_owned()),
                preset: Some("public_chat".into()),
                ..CreateRoom::default()
            })
            .await?;
        let portals = {
            let mut portals = lock(&self.portals);
            portals.insert(
                irc_lower(channel),
                Portal {
                    channel: channel.to_owned(),
                    room_id,
                },
            );
            portals.clone()
        };
        self.app
            .store()
            .set(PORTALS, serde_json::to_value(&portals)?)?;
        self.bot_irc.join(channel);
        Ok(())
    }
}

/// A value of the store, or the type's default.
fn load<T: DeserializeOwned + Default>(app: &Appservice, key: &str) -> Result<T> {
    match app.store().get(key)? {
        Some(v) => Ok(serde_json::from_value(v)?),
        None => Ok(T::default()),
    }
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
