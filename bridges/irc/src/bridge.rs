//! The bridge: IRC channels ↔ rooms (portals), IRC users as ghosts on Matrix, Matrix users
//! as IRC connections (puppets).

mod direct;
mod ghosts;
mod puppets;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use paracord_appservice::{
    ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId},
    Appservice, CreateRoom, Result,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use crate::{
    config::Config,
    conn::{IrcEvent, IrcHandle},
    proto::{irc_lower, valid_channel},
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
