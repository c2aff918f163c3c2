//! Discord-style applications (spec/applications.md): an application is a bot user in the
//! server's bot namespace with a bot token; a guild member with MANAGE_GUILD adds it to a
//! guild, which gives it a managed role and joins it; its slash commands are registered per
//! guild, listed to members, and invoked as interactions delivered to the bot (to-device, and
//! a push to its interactions endpoint), which it answers in the channel as an ordinary
//! message.

pub mod commands;

use std::sync::Arc;

use paracord_core::{time::now_ms, Config, Error, Result};
use paracord_storage::{Batch, Db, KeyReader, Table};
use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use self::commands::{check_options, CommandSpec, GivenOption, OptionType, MAX_COMMANDS};
use super::{
    events::{member_state_key, ChannelContent, ChannelKind, MemberContent, RoleContent},
    members::remove_role,
    permissions::{Guild, Permissions},
    store::{self, channel_ids, host_owner, load_guild, load_member, overwrites, send_state},
};
use crate::{
    accounts::{Accounts, BOT_LOCALPART_PREFIX},
    appservice::Appservices,
    outbound::{GuardedClient, OutboundGuard},
    random::random_string,
    rooms::{
        hooks::{EventObserver, FollowUp},
        notify::Notification,
        NewEvent, Pdu, Rooms,
    },
};

/// At most this many applications per owner.
pub const MAX_APPLICATIONS_PER_OWNER: usize = 25;
/// The device of a bot's token.
pub const BOT_DEVICE: &str = "PARACORD_BOT";
/// A message answering an interaction has at most this many characters, and embeds.
const MAX_CONTENT: usize = 2000;
const MAX_EMBEDS: usize = 10;
/// The EPHEMERAL message flag: the answer goes to the invoker only.
pub const EPHEMERAL: u64 = 64;
/// How long the server waits for an application's interactions endpoint.
const ENDPOINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Delivers a to-device message: sender, event type, transaction id, `{user: {device:
/// content}}`. Wired to the end-to-end service's queue, which the bot's `/sync` reads.
pub type ToDeviceSend = Arc<dyn Fn(&UserId, &str, &str, &Value) -> Result<()> + Send + Sync>;

paracord_storage::key! {
    /// The key of `ownerapp_application`: `owner 0xFF application id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct OwnerAppKey<'a> {
        owner: str => owner_prefix,
        app: last_str,
    }
}

paracord_storage::key! {
    /// The key of `guildapp_install`: `guild 0xFF application id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct InstallKey<'a> {
        guild: str => guild_prefix,
        app: last_str,
    }
}

paracord_storage::key! {
    /// The key of `guildappcmd_command`: `guild 0xFF application id 0xFF command id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct CommandKey<'a> {
        guild: str => guild_prefix,
        app: str => app_prefix,
        command: last_str,
    }
}

/// An application as stored and answered (the bot token is never stored in the clear).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    pub owner: OwnedUserId,
    pub bot_user_id: OwnedUserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactions_endpoint_url: Option<String>,
    pub created_ts: u64,
    /// The application service of a namespaced application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appservice: Option<AppNamespace>,
}

/// A namespaced application's application service (spec/applications.md §3): its id and the
/// regex of its exclusive users namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppNamespace {
    pub id: String,
    pub users: String,
}

/// What a namespaced application asks for: where its application service listens (`None`:
/// nowhere, nothing is pushed).
#[derive(Clone, Debug, Default)]
pub struct Namespaced {
    pub url: Option<String>,
}

/// A new application, with what is shown only now: the bot token, and a namespaced
/// application's `as_token` and `hs_token`.
#[derive(Clone, Debug)]
pub struct Created {
    pub app: Application,
    pub bot_token: String,
    pub as_token: Option<String>,
    pub hs_token: Option<String>,
}

/// What `POST /applications` asks for, checked (spec/applications.md §3).
#[derive(Clone, Debug, Default)]
pub struct NewApplication {
    pub name: String,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub interactions_endpoint_url: Option<String>,
    pub namespaced: Option<Namespaced>,
}

/// What `PATCH /applications/{id}` changes: `Some(None)` clears a field.
#[derive(Clone, Debug, Default)]
pub struct ApplicationChanges {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub interactions_endpoint_url: Option<Option<String>>,
}

/// An application in a guild.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    pub application_id: String,
    pub guild_id: OwnedRoomId,
    pub role_id: String,
    /// The permissions granted (after capping), a u64 as a decimal string.
    pub permissions: String,
    pub added_by: OwnedUserId,
    pub added_ts: u64,
}

/// A slash command as stored and listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub application_id: String,
    pub guild_id: OwnedRoomId,
    #[serde(flatten)]
    pub spec: CommandSpec,
}

/// Where an interaction's answer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Waiting,
    Deferred,
    Answered,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredInteraction {
    token_hash: String,
    application_id: String,
    guild_id: OwnedRoomId,
    channel_id: OwnedRoomId,
    user_id: OwnedUserId,
    command_id: String,
    command_name: String,
    expires_at: u64,
    answer: Answer,
    /// The answer's message in the channel, once there is one.
    #[serde(default)]
    original: Option<OwnedEventId>,
    #[serde(default)]
    ephemeral: bool,
}

/// An invocation: `POST /interactions` (spec/applications.md §7).
#[derive(Clone, Debug)]
pub struct Invocation {
    pub guild_id: OwnedRoomId,
    pub channel_id: OwnedRoomId,
    pub application_id: Option<String>,
    pub command: CommandRef,
    pub options: Value,
}

/// Which command an invocation names.
#[derive(Clone, Debug)]
pub enum CommandRef {
    Id(String),
    Name(String),
}

/// What an invocation answers.
#[derive(Clone, Debug, Serialize)]
pub struct Invoked {
    pub id: String,
    pub application_id: String,
    pub command_id: String,
    pub expires_at: u64,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The permissions an application gets when `held` (the authorizer's guild-wide permissions)
/// adds it asking for `requested`: only what the authorizer has, as Discord does.
pub fn capped_permissions(requested: Permissions, held: Permissions) -> Permissions {
    if held.contains(Permissions::ADMINISTRATOR) {
        return requested;
    }
    Permissions(requested.0 & held.0)
}

/// A bot's localpart for an application name: `_bot_` and the name's letters and digits in
/// lower case (others become `_`), at most 24 of them; `app` when none is left.
pub fn bot_localpart(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('_') && !slug.is_empty() {
            slug.push('_');
        }
        if slug.len() >= 24 {
            break;
        }
    }
    let slug = slug.trim_end_matches('_');
    format!(
        "{BOT_LOCALPART_PREFIX}{}",
        if slug.is_empty() { "app" } else { slug }
    )
}

/// `s` with the characters regexes give a meaning escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether an interactions endpoint URL is one: http or https with a host, at most 2048
/// bytes. (Where it points is the outbound guard's question, asked when it is used.)
pub fn valid_endpoint(url: &str) -> bool {
    url.len() <= 2048
        && reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// The application service behind the `/_paracord/v1/applications` routes.
pub struct Applications {
    db: Arc<Db>,
    config: Arc<Config>,
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    appservices: Arc<Appservices>,
    to_device: ToDeviceSend,
    http: Option<GuardedClient>,
    /// Held by changes that count (applications per owner, commands per guild) and by
    /// interaction answers (one answer per token).
    writes: tokio::sync::Mutex<()>,
}

impl Applications {
    pub fn new(
        db: Arc<Db>,
        config: Arc<Config>,
        accounts: Arc<Accounts>,
        rooms: Arc<Rooms>,
        appservices: Arc<Appservices>,
        to_device: ToDeviceSend,
    ) -> Self {
        let http = GuardedClient::new(OutboundGuard::from_config(&config), 0, ENDPOINT_TIMEOUT)
            .map_err(|e| tracing::warn!("no HTTP client for interactions endpoints: {e}"))
            .ok();
        Self {
            db,
            config,
            accounts,
            rooms,
            appservices,
            to_device,
            http,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    // ----- applications -----

    fn load(&self, id: &str) -> Result<Option<Application>> {
        match self.db.get(Table::AppidApplication, id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// An application, for anyone who may know it exists: 404 otherwise.
    pub fn application(&self, id: &str) -> Result<Application> {
        self.load(id)?
            .ok_or_else(|| Error::not_found("no such application"))
    }

    /// An application its owner (or its own bot) asks about; 404 for anyone else.
    pub fn owned(&self, actor: &UserId, id: &str) -> Result<Application> {
        let app = self.application(id)?;
        if app.owner != actor && app.bot_user_id != actor {
            return Err(Error::not_found("no such application"));
        }
        Ok(app)
    }

    fn put(&self, batch: &mut Batch, app: &Application) -> Result<()> {
        batch.put(
            Table::AppidApplication,
            app.id.as_bytes().to_vec(),
            serde_json::to_vec(app)?,
        );
        batch.put(
            Table::OwnerappApplication,
            OwnerAppKey {
                owner: app.owner.as_str(),
                app: &app.id,
            }
            .encode(),
            Vec::new(),
        );
        Ok(())
    }

    /// `POST /applications`: the application, its bot user and the bot's token.
    pub async fn create(&self, owner: &UserId, new: NewApplication) -> Result<Created> {
        let _writes = self.writes.lock().await;
        if self.list(owner)?.len() >= MAX_APPLICATIONS_PER_OWNER {
            return Err(Error::invalid_param(format!(
                "at most {MAX_APPLICATIONS_PER_OWNER} applications per user"
            )));
        }
        let mut localpart = bot_localpart(&new.name);
        let mut bot = self.accounts.user_id_for(&localpart)?;
        while self.accounts.account(&bot)?.is_some() {
            localpart = format!("{}_{}", bot_localpart(&new.name), random_string(6));
            bot = self.accounts.user_id_for(&localpart)?;
        }
        self.accounts.ensure_system_account(&bot, &new.name).await?;
        if new.avatar_url.is_some() {
            self.accounts
                .set_profile(&bot, None, Some(new.avatar_url.clone()))?;
        }
        let login = self.accounts.login_trusted(
            &bot,
            Some(BOT_DEVICE.to_owned()),
            Some(format!("{} (bot token)", new.name)),
            false,
        )?;
        let id = random_string(18);
        let (appservice, as_token, hs_token) = match &new.namespaced {
            None => (None, None, None),
            Some(ns) => match self.register_namespace(&id, &bot, owner, ns) {
                Ok((n, a, h)) => (Some(n), Some(a), Some(h)),
                Err(e) => {
                    // No application: its bot goes too.
                    self.accounts.deactivate(&bot)?;
                    return Err(e);
                }
            },
        };
        let app = Application {
            id,
            name: new.name,
            description: new.description,
            avatar_url: new.avatar_url,
            owner: owner.to_owned(),
            bot_user_id: bot,
            interactions_endpoint_url: new.interactions_endpoint_url,
            created_ts: now_ms(),
            appservice,
        };
        let mut batch = Batch::new();
        self.put(&mut batch, &app)?;
        self.db.write(batch)?;
        Ok(Created {
            app,
            bot_token: login.access_token,
            as_token,
            hs_token,
        })
    }

    /// Registers a namespaced application's application service: the bot is its sender,
    /// and it holds the users `@<bot localpart>.<anything>:<server>` exclusively.
    fn register_namespace(
        &self,
        app_id: &str,
        bot: &UserId,
        owner: &UserId,
        ns: &Namespaced,
    ) -> Result<(AppNamespace, String, String)> {
        let id = format!("paracord_app_{app_id}");
        let users = format!(
            "@{}\\..+:{}",
            regex_escape(bot.localpart()),
            regex_escape(bot.server_name().as_str())
        );
        let as_token = format!("pca_{}", random_string(40));
        let hs_token = format!("pch_{}", random_string(40));
        let mut registration = json!({
            "id": id,
            "url": ns.url,
            "as_token": as_token,
            "hs_token": hs_token,
            "sender_localpart": bot.localpart(),
            "rate_limited": true,
            "namespaces": {
                "users": [{ "exclusive": true, "regex": users }],
                "aliases": [],
                "rooms": [],
            },
        });
        // The URL is the user's choice: requests to it keep the outbound guard's allowlist
        // (the operator's registrations may reach private addresses).
        registration[crate::appservice::OWNER_FIELD] = owner.as_str().into();
        self.appservices.add(&registration.to_string())?;
        Ok((AppNamespace { id, users }, as_token, hs_token))
    }

    /// `GET /applications`: the owner's applications.
    pub fn list(&self, owner: &UserId) -> Result<Vec<Application>> {
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(
            Table::OwnerappApplication,
            &OwnerAppKey::owner_prefix(owner.as_str()),
        )? {
            let key = OwnerAppKey::decode(&k)?;
            if let Some(app) = self.load(key.app)? {
                out.push(app);
            }
        }
        out.sort_by(|a, b| (a.created_ts, &a.id).cmp(&(b.created_ts, &b.id)));
        Ok(out)
    }

    /// `PATCH /applications/{id}`: the owner only.
    pub async fn update(
        &self,
        actor: &UserId,
        id: &str,
        changes: ApplicationChanges,
    ) -> Result<Application> {
        let _writes = self.writes.lock().await;
        let mut app = self.owned(actor, id)?;
        if app.owner != actor {
            return Err(Error::forbidden("only the application's owner changes it"));
        }
        if let Some(name) = changes.name {
            self.accounts
                .set_profile(&app.bot_user_id, Some(Some(name.clone())), None)?;
            app.name = name;
        }
        if let Some(d) = changes.description {
            app.description = d;
        }
        if let Some(a) = changes.avatar_url {
            self.accounts
                .set_profile(&app.bot_user_id, None, Some(a.clone()))?;
            app.avatar_url = a;
        }
        if let Some(u) = changes.interactions_endpoint_url {
            app.interactions_endpoint_url = u;
        }
        let mut batch = Batch::new();
        self.put(&mut batch, &app)?;
        self.db.write(batch)?;
        Ok(app)
    }

    /// `POST /applications/{id}/bot/reset_token`: a new token; the old one stops working.
    pub fn reset_token(&self, actor: &UserId, id: &str) -> Result<String> {
        let app = self.owned(actor, id)?;
        if app.owner != actor {
            return Err(Error::forbidden(
                "only the application's owner resets its token",
            ));
        }
        let login = self.accounts.login_trusted(
            &app.bot_user_id,
            Some(BOT_DEVICE.to_owned()),
            Some(format!("{} (bot token)", app.name)),
            false,
        )?;
        Ok(login.access_token)
    }

    /// `DELETE /applications/{id}`: the owner only. The application leaves every guild (its
    /// roles and commands go), its bot leaves every room and is deactivated (every token of
    /// it stops working), then the application is forgotten.
    pub async fn delete(&self, actor: &UserId, id: &str) -> Result<()> {
        let app = self.owned(actor, id)?;
        if app.owner != actor {
            return Err(Error::forbidden("only the application's owner deletes it"));
        }
        for install in self.installs_of(id)? {
            self.uninstall(&app, &install).await?;
        }
        self.rooms
            .leave_all(&app.bot_user_id, Some("application deleted"))
            .await?;
        if let Some(ns) = &app.appservice {
            match self.appservices.remove(&ns.id) {
                Ok(()) => {}
                Err(e) if e.classify().0 == http::StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
        }
        if self
            .accounts
            .account(&app.bot_user_id)?
            .is_some_and(|a| !a.deactivated)
        {
            self.accounts.deactivate(&app.bot_user_id)?;
        }
        let mut batch = Batch::new();
        batch.delete(Table::AppidApplication, id.as_bytes().to_vec());
        batch.delete(
            Table::OwnerappApplication,
            OwnerAppKey {
                owner: app.owner.as_str(),
                app: id,
            }
            .encode(),
        );
        self.db.write(batch)?;
        Ok(())
    }

    // ----- guilds -----

    fn install(&self, guild: &RoomId, app: &str) -> Result<Option<Install>> {
        let key = InstallKey {
            guild: guild.as_str(),
            app,
        }
        .encode();
        match self.db.get(Table::GuildappInstall, &key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The applications in a guild.
    pub fn installs(&self, guild: &RoomId) -> Result<Vec<Install>> {
        self.db
            .scan_prefix(
                Table::GuildappInstall,
                &InstallKey::guild_prefix(guild.as_str()),
            )?
            .into_iter()
            .map(|(_, v)| Ok(serde_json::from_slice(&v)?))
            .collect()
    }

    /// The guilds an application is in (a scan: an application is deleted rarely).
    fn installs_of(&self, app: &str) -> Result<Vec<Install>> {
        let mut out = Vec::new();
        for (k, v) in self.db.scan_prefix(Table::GuildappInstall, b"")? {
            let mut r = KeyReader::new(&k);
            let _guild = r.str()?;
            if r.last_str()? == app {
                out.push(serde_json::from_slice(&v)?);
            }
        }
        Ok(out)
    }

    /// The guild-wide permissions of a member of the guild (joined): 404 for anyone else.
    fn member_permissions(&self, guild_id: &RoomId, user: &UserId) -> Result<(Guild, Permissions)> {
        if self.rooms.room(guild_id)?.is_none() || !self.rooms.is_joined(guild_id, user)? {
            return Err(Error::not_found("no such guild"));
        }
        let guild = load_guild(&self.rooms, guild_id)?;
        let held = guild.base_permissions(&load_member(&self.rooms, guild_id, user)?);
        Ok((guild, held))
    }

    /// `POST /guilds/{id}/applications/{appId}`: by a member with MANAGE_GUILD. The
    /// application gets a managed role with the permissions asked for that the authorizer
    /// has; its bot joins the guild and the channels it can see.
    pub async fn authorize(
        &self,
        actor: &UserId,
        guild_id: &RoomId,
        app_id: &str,
        requested: Permissions,
    ) -> Result<Install> {
        let (guild, held) = self.member_permissions(guild_id, actor)?;
        if !held.contains(Permissions::MANAGE_GUILD) {
            return Err(Error::forbidden(
                "Missing permission: adding an application needs MANAGE_GUILD",
            ));
        }
        let app = self.application(app_id)?;
        if let Some(stale) = self.install(guild_id, app_id)? {
            if !self.rooms.is_joined(guild_id, &app.bot_user_id)? {
                // The bot was kicked or left: what is left of the install goes, and the
                // application is added anew.
                self.uninstall(&app, &stale).await?;
            }
        }
        let _writes = self.writes.lock().await;
        if self.install(guild_id, app_id)?.is_some() {
            return Err(Error::invalid_param(
                "the application is in this guild already: remove it first to change it",
            ));
        }
        let owner = host_owner(&self.rooms, &guild)?;
        let bot = app.bot_user_id.clone();
        if self.rooms.membership(guild_id, &bot)? == Some(MembershipState::Ban) {
            return Err(Error::forbidden(
                "the application's bot is banned from this guild",
            ));
        }
        let granted = capped_permissions(requested, held);
        let role_id = random_string(8);
        let role = RoleContent {
            name: app.name.clone(),
            color: 0,
            position: 1,
            hoist: false,
            mentionable: false,
            permissions: granted.to_wire(),
            managed_by: Some(app.id.clone()),
        };
        send_state(
            &self.rooms,
            guild_id,
            &owner,
            "chat.paracord.role",
            &role_id,
            serde_json::to_value(&role)?,
        )
        .await?;
        let install = Install {
            application_id: app.id.clone(),
            guild_id: guild_id.to_owned(),
            role_id: role_id.clone(),
            permissions: granted.to_wire(),
            added_by: actor.to_owned(),
            added_ts: now_ms(),
        };
        // Written now, so that a failure below leaves an install that removing cleans up.
        let mut batch = Batch::new();
        batch.put(
            Table::GuildappInstall,
            InstallKey {
                guild: guild_id.as_str(),
                app: app_id,
            }
            .encode(),
            serde_json::to_vec(&install)?,
        );
        self.db.write(batch)?;
        let profile = self.accounts.profile(&bot).unwrap_or((None, None));
        if !matches!(
            self.rooms.membership(guild_id, &bot)?,
            Some(MembershipState::Join) | Some(MembershipState::Invite)
        ) {
            self.rooms
                .invite(guild_id, &owner, &bot, None, false)
                .await?;
        }
        if !self.rooms.is_joined(guild_id, &bot)? {
            self.rooms
                .join(guild_id, &bot, profile.clone(), None)
                .await?;
        }
        let state = self.rooms.current_state(guild_id)?;
        let key = member_state_key(bot.as_str());
        let mut member: MemberContent = self
            .rooms
            .state_content(&state, "chat.paracord.member", &key)?
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        if !member.roles.contains(&role_id) {
            member.roles.push(role_id.clone());
            send_state(
                &self.rooms,
                guild_id,
                &owner,
                "chat.paracord.member",
                &key,
                serde_json::to_value(&member)?,
            )
            .await?;
        }
        store::reproject(&self.rooms, guild_id).await?;
        join_channels(&self.rooms, guild_id, &owner, &bot, profile).await?;
        Ok(install)
    }

    /// `DELETE /guilds/{id}/applications/{appId}`: by a member with MANAGE_GUILD. The bot
    /// leaves, its managed role and commands go.
    pub async fn deauthorize(&self, actor: &UserId, guild_id: &RoomId, app_id: &str) -> Result<()> {
        let (_, held) = self.member_permissions(guild_id, actor)?;
        if !held.contains(Permissions::MANAGE_GUILD) {
            return Err(Error::forbidden(
                "Missing permission: removing an application needs MANAGE_GUILD",
            ));
        }
        let install = self
            .install(guild_id, app_id)?
            .ok_or_else(|| Error::not_found("the application is not in this guild"))?;
        let app = self.application(app_id)?;
        self.uninstall(&app, &install).await
    }

    async fn uninstall(&self, app: &Application, install: &Install) -> Result<()> {
        let guild_id = &install.guild_id;
        let bot = &app.bot_user_id;
        if self.rooms.room(guild_id)?.is_some() {
            let guild = load_guild(&self.rooms, guild_id)?;
            let owner = host_owner(&self.rooms, &guild)?;
            if guild.roles.contains_key(&install.role_id) {
                remove_role(&self.rooms, guild_id, &owner, &install.role_id).await?;
            }
            for channel in channel_ids(&self.rooms, guild_id)? {
                if matches!(
                    self.rooms.membership(&channel, bot)?,
                    Some(MembershipState::Join) | Some(MembershipState::Invite)
                ) {
                    self.rooms
                        .leave(&channel, bot, Some("application removed"))
                        .await?;
                }
            }
            if matches!(
                self.rooms.membership(guild_id, bot)?,
                Some(MembershipState::Join) | Some(MembershipState::Invite)
            ) {
                self.rooms
                    .leave(guild_id, bot, Some("application removed"))
                    .await?;
            }
        }
        let _writes = self.writes.lock().await;
        let mut batch = Batch::new();
        for (k, _) in self.db.scan_prefix(
            Table::GuildappcmdCommand,
            &CommandKey::app_prefix(guild_id.as_str(), &app.id),
        )? {
            batch.delete(Table::GuildappcmdCommand, k);
        }
        batch.delete(
            Table::GuildappInstall,
            InstallKey {
                guild: guild_id.as_str(),
                app: &app.id,
            }
            .encode(),
        );
        self.db.write(batch)?;
        Ok(())
    }

    // ----- commands -----

    /// An application managing its commands in a guild: its bot or its owner, and it must be
    /// in the guild.
    fn managing(&self, actor: &UserId, app_id: &str, guild_id: &RoomId) -> Result<Application> {
        let app = self.owned(actor, app_id)?;
        if self.install(guild_id, app_id)?.is_none() {
            return Err(Error::not_found("the application is not in this guild"));
        }
        Ok(app)
    }

    fn stored_commands(&self, guild_id: &RoomId, app: Option<&str>) -> Result<Vec<Command>> {
        let prefix = match app {
            Some(app) => CommandKey::app_prefix(guild_id.as_str(), app),
            None => CommandKey::guild_prefix(guild_id.as_str()),
        };
        let mut out: Vec<Command> = self
            .db
            .scan_prefix(Table::GuildappcmdCommand, &prefix)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v))
            .collect::<std::result::Result<_, _>>()?;
        out.sort_by(|a, b| {
            (&a.application_id, &a.spec.name).cmp(&(&b.application_id, &b.spec.name))
        });
        Ok(out)
    }

    fn put_command(batch: &mut Batch, c: &Command) -> Result<()> {
        batch.put(
            Table::GuildappcmdCommand,
            CommandKey {
                guild: c.guild_id.as_str(),
                app: &c.application_id,
                command: &c.id,
            }
            .encode(),
            serde_json::to_vec(c)?,
        );
        Ok(())
    }

    /// `GET /applications/{id}/guilds/{guildId}/commands`.
    pub fn commands(
        &self,
        actor: &UserId,
        app_id: &str,
        guild_id: &RoomId,
    ) -> Result<Vec<Command>> {
        self.managing(actor, app_id, guild_id)?;
        self.stored_commands(guild_id, Some(app_id))
    }

    /// `GET …/commands/{commandId}`.
    pub fn command(
        &self,
        actor: &UserId,
        app_id: &str,
        guild_id: &RoomId,
        command_id: &str,
    ) -> Result<Command> {
        self.managing(actor, app_id, guild_id)?;
        self.stored_commands(guild_id, Some(app_id))?
            .into_iter()
            .find(|c| c.id == command_id)
            .ok_or_else(|| Error::not_found("no such command"))
    }

    /// `POST …/commands`: a new command, or the command of that name replaced (its id kept).
    pub async fn upsert_command(
        &self,
        actor: &UserId,
        app_id: &str,
        guild_id: &RoomId,
        spec: CommandSpec,
    ) -> Result<Command> {
        self.managing(actor, app_id, guild_id)?;
        let _writes = self.writes.lock().await;
        let existing = self.stored_commands(guild_id, Some(app_id))?;
        let id = match existing.iter().find(|c| c.spec.name == spec.name) {
            Some(c) => c.id.clone(),
            None if existing.len() >= MAX_COMMANDS => {
                return Err(Error::invalid_param(format!(
                    "at most {MAX_COMMANDS} commands per application in a guild"
                )))
            }
            None => random_string(18),
        };
        let command = Command {
            id,
            application_id: app_id.to_owned(),
            guild_id: guild_id.to_owned(),
            spec,
        };
        let mut batch = Batch::new();
        Self::put_command(&mut batch, &command)?;
        self.db.write(batch)?;
        Ok(command)
    }

    /// `PATCH …/commands/{commandId}`: the command replaced by `spec` (made by the caller from
    /// the stored command and the changes), its name still unique.
    pub async fn replace_command(
        &self,
        actor: &UserId,
        app_id: &str,
        guild_id: &RoomId,
        command_id: &str,
        change: impl FnOnce(&CommandSpec) -> Result<CommandSpec>,
    ) -> Result<Command> {
        self.managing(actor, app_id, guild_id)?;
        let _writes = self.writes.lock().await;
        let existing = self.stored_commands(guild_id, Some(app_id))?;
        let old = existing
            .iter()
            .find(|c| c.id == command_id)
            .ok_or_else(|| Error::not_found("no such command"))?;
        let spec = change(&old.spec)?;
        if existing
            .iter()
            .any(|c| c.id != command_id && c.spec.name == spec.name)
        {
            return Err(Error::invalid_param(format!(
                "name: the application has a command /{} already",
                spec.name
            )));
        }
        let command = Command {
            spec,
            ..old.clone()
        };
        let mut batch = Batch::new();
        Self::put_command(&mut batch, &command)?;
        self.db.write(batch)?;
        Ok(command)
    }

    /// `PUT …/commands`: the application's commands in the guild become exactly these
    /// (ids kept by name); every one is checked before anything is written.
    pub async fn overwrite_commands(
        &self,
        actor: &UserId,
        app_id: &str,
        guild_id: &RoomId,
        specs: Vec<CommandSpec>,
    ) -> Result<Vec<Command>> {
        self.managing(actor, app_id, guild_id)?;
        if specs.len() > MAX_COMMANDS {
            return Err(Error::invalid_param(format!(
                "at most {MAX_COMMANDS} commands per application in a guild"
            )));
        }
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(Error::invalid_param(format!(
                    "[{i}].name: two commands are named {}",
                    s.name
                )));
            }
        }
        let _writes = self.writes.lock().await;
        let existing = self.stored_commands(guild_id, Some(app_id))?;
        let mut batch = Batch::new();
        for c in &existing {
            batch.delete(
                Table::GuildappcmdCommand,
                CommandKey {
                    guild: guild_id.as_str(),
                    app: app_id,
                    command: &c.id,
                }
                .encode(),
            );
        }
        let mut out = Vec::new();
        for spec in specs {
            let id = existing
                .iter()
                .find(|c| c.spec.name == spec.name)
                .map(|c| c.id.clone())
                .unwrap_or_else(|| random_string(18));
            let command = Command {
                id,
                application_id: app_id.to_owned(),
                guild_id: guild_id.to_owned(),
                spec,
            };
            Self::put_command(&mut batch, &command)?;
            out.push(command);
        }
        self.db.write(batch)?;
        Ok(out)
    }

    /// `DELETE …/commands/{commandId}`.
    pub async fn delete_command(
        &self,
        actor: &UserId,
        app_id: &str,
        guild_id: &RoomId,
        command_id: &str,
    ) -> Result<()> {
        self.command(actor, app_id, guild_id, command_id)?;
        let mut batch = Batch::new();
        batch.delete(
            Table::GuildappcmdCommand,
            CommandKey {
                guild: guild_id.as_str(),
                app: app_id,
                command: command_id,
            }
            .encode(),
        );
        self.db.write(batch)?;
        Ok(())
    }

    /// `GET /guilds/{id}/commands`: every command the member may use in the guild (for
    /// autocomplete): USE_APPLICATION_COMMANDS, and each command's default member permissions.
    pub fn guild_commands(&self, user: &UserId, guild_id: &RoomId) -> Result<Vec<Command>> {
        let (_, held) = self.member_permissions(guild_id, user)?;
        if !held.contains(Permissions::USE_APPLICATION_COMMANDS) {
            return Ok(Vec::new());
        }
        Ok(self
            .stored_commands(guild_id, None)?
            .into_iter()
            .filter(|c| may_use(c, held))
            .collect())
    }

    // ----- interactions -----

    /// `POST /interactions`: a member runs a command in a channel. The options are checked
    /// against the command, the interaction is stored with a token valid for
    /// `interaction_token_ttl_ms` and delivered to the bot.
    pub async fn invoke(self: &Arc<Self>, user: &UserId, inv: Invocation) -> Result<Invoked> {
        let guild_id = &inv.guild_id;
        if self.rooms.room(guild_id)?.is_none() || !self.rooms.is_joined(guild_id, user)? {
            return Err(Error::not_found("no such guild"));
        }
        if !channel_ids(&self.rooms, guild_id)?.contains(&inv.channel_id)
            || !self.rooms.is_joined(&inv.channel_id, user)?
        {
            return Err(Error::not_found("no such channel"));
        }
        let guild = load_guild(&self.rooms, guild_id)?;
        let member = load_member(&self.rooms, guild_id, user)?;
        let (o, _) = overwrites(&self.rooms, &inv.channel_id)?;
        let in_channel = guild.channel_permissions(&member, &o, now_ms());
        if !in_channel.contains(Permissions::USE_APPLICATION_COMMANDS) {
            return Err(Error::forbidden(
                "Missing permission: USE_APPLICATION_COMMANDS in this channel",
            ));
        }
        let candidates: Vec<Command> = self
            .stored_commands(guild_id, inv.application_id.as_deref())?
            .into_iter()
            .filter(|c| match &inv.command {
                CommandRef::Id(id) => &c.id == id,
                CommandRef::Name(n) => &c.spec.name == n,
            })
            .collect();
        let command = match candidates.as_slice() {
            [] => return Err(Error::not_found("no such command in this guild")),
            [one] => one.clone(),
            _ => {
                return Err(Error::invalid_param(
                    "several applications have a command of this name: give application_id",
                ))
            }
        };
        if !may_use(&command, in_channel) {
            return Err(Error::forbidden(
                "Missing permission: this command needs its default_member_permissions",
            ));
        }
        let options = check_options(&command.spec, &inv.options)?;
        self.check_ids(guild_id, &options)?;
        let app = self.application(&command.application_id)?;
        let id = random_string(18);
        let token = format!("pci_{}", random_string(40));
        let now = now_ms();
        let expires_at = now.saturating_add(self.config.interaction_token_ttl_ms);
        let stored = StoredInteraction {
            token_hash: hash(&token),
            application_id: app.id.clone(),
            guild_id: guild_id.clone(),
            channel_id: inv.channel_id.clone(),
            user_id: user.to_owned(),
            command_id: command.id.clone(),
            command_name: command.spec.name.clone(),
            expires_at,
            answer: Answer::Waiting,
            original: None,
            ephemeral: false,
        };
        let mut batch = Batch::new();
        // Kept an hour past its expiry, so a late answer is told it expired.
        crate::expiry::schedule(
            &mut batch,
            Table::InteractionidInteraction,
            id.as_bytes(),
            expires_at.saturating_add(3_600_000),
        );
        batch.put(
            Table::InteractionidInteraction,
            id.as_bytes().to_vec(),
            serde_json::to_vec(&stored)?,
        );
        self.db.write(batch)?;
        let interaction =
            interaction_content(&id, &token, &stored, &member.roles, in_channel, &options);
        (self.to_device)(
            user,
            "chat.paracord.interaction",
            &format!("interaction.{id}"),
            &json!({ app.bot_user_id.as_str(): { "*": interaction } }),
        )?;
        if let (Some(url), Some(http)) = (&app.interactions_endpoint_url, &self.http) {
            self.push(http.clone(), url.clone(), id.clone(), token, interaction);
        }
        Ok(Invoked {
            id,
            application_id: app.id,
            command_id: command.id,
            expires_at,
        })
    }

    /// USER, CHANNEL and ROLE options name a member, a channel and a role of the guild.
    fn check_ids(&self, guild_id: &RoomId, options: &[GivenOption]) -> Result<()> {
        let guild = load_guild(&self.rooms, guild_id)?;
        let channels = channel_ids(&self.rooms, guild_id)?;
        for o in options {
            let v = o.value.as_str().unwrap_or_default();
            let ok = match OptionType::from_number(o.kind) {
                Some(OptionType::User) => UserId::parse(v).is_ok_and(|u| {
                    matches!(
                        self.rooms.membership(guild_id, &u),
                        Ok(Some(MembershipState::Join))
                    )
                }),
                Some(OptionType::Channel) => channels.iter().any(|c| c.as_str() == v),
                Some(OptionType::Role) => guild.roles.contains_key(v),
                _ => true,
            };
            if !ok {
                return Err(Error::invalid_param(format!(
                    "option {}: not a member, channel or role of this guild",
                    o.name
                )));
            }
        }
        Ok(())
    }

    /// Sends the interaction to the application's endpoint, in the background, through the
    /// outbound guard. A JSON answer with a `type` is the interaction's answer (as with
    /// Discord's interactions endpoints).
    fn push(
        self: &Arc<Self>,
        http: GuardedClient,
        url: String,
        id: String,
        token: String,
        body: Value,
    ) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let Ok(url) = reqwest::Url::parse(&url) else {
                return;
            };
            let Ok(req) = http.request(reqwest::Method::POST, url) else {
                tracing::info!("an interactions endpoint was refused by the outbound guard");
                return;
            };
            let answer = match req.json(&body).send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                Ok(r) => {
                    tracing::info!(status = %r.status(), "an interactions endpoint failed");
                    None
                }
                Err(e) => {
                    tracing::info!("an interactions endpoint is unreachable: {e}");
                    None
                }
            };
            if let (Some(answer), Some(me)) =
                (answer.filter(|a| a.get("type").is_some()), me.upgrade())
            {
                if let Err(e) = me.callback(&id, &token, &answer).await {
                    tracing::info!("an interactions endpoint's answer was refused: {e}");
                }
            }
        });
    }

    fn interaction(&self, id: &str, token: &str) -> Result<StoredInteraction> {
        let unknown =
            || Error::not_found("unknown interaction: no interaction has this id and token");
        let raw = self
            .db
            .get(Table::InteractionidInteraction, id.as_bytes())?
            .ok_or_else(unknown)?;
        let stored: StoredInteraction = serde_json::from_slice(&raw)?;
        if stored.token_hash != hash(token) {
            return Err(unknown());
        }
        if stored.expires_at <= now_ms() {
            return Err(Error::not_found("the interaction's token has expired"));
        }
        Ok(stored)
    }

    fn save_interaction(&self, id: &str, stored: &StoredInteraction) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Table::InteractionidInteraction,
            id.as_bytes().to_vec(),
            serde_json::to_vec(stored)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// `POST /interactions/{id}/{token}/callback`: the bot's answer, once. Type 4 posts the
    /// message in the channel as the bot (or, flag 64, to the invoker only); type 5 defers it
    /// to `PATCH …/messages/@original`.
    pub async fn callback(&self, id: &str, token: &str, body: &Value) -> Result<Value> {
        let _writes = self.writes.lock().await;
        let mut stored = self.interaction(id, token)?;
        if stored.answer != Answer::Waiting {
            return Err(Error::invalid_param(
                "this interaction has been answered already",
            ));
        }
        let kind = body
            .get("type")
            .ok_or_else(|| Error::missing_param("type is required"))?;
        match kind.as_u64() {
            Some(4) => {
                let data = body
                    .get("data")
                    .ok_or_else(|| Error::missing_param("data is required with type 4"))?;
                let message = read_message(data)?;
                stored.ephemeral = message.ephemeral;
                stored.original = self.deliver(id, &stored, &message).await?;
                stored.answer = Answer::Answered;
            }
            Some(5) => {
                let flags = body.get("data").and_then(|d| d.get("flags"));
                stored.ephemeral = flags
                    .and_then(Value::as_u64)
                    .is_some_and(|f| f & EPHEMERAL != 0);
                stored.answer = Answer::Deferred;
            }
            _ => return Err(Error::invalid_param(
                "type: 4 (CHANNEL_MESSAGE_WITH_SOURCE) or 5 (DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE)",
            )),
        }
        self.save_interaction(id, &stored)?;
        Ok(json!({ "id": id, "event_id": stored.original }))
    }

    /// `PATCH /interactions/{id}/{token}/messages/@original`: the deferred answer, or an edit
    /// of the answer (an `m.replace`), while the token is valid.
    pub async fn edit_original(&self, id: &str, token: &str, body: &Value) -> Result<Value> {
        let _writes = self.writes.lock().await;
        let mut stored = self.interaction(id, token)?;
        let mut message = read_message(body)?;
        message.ephemeral = stored.ephemeral;
        match (stored.answer, &stored.original) {
            (Answer::Waiting, _) => {
                return Err(Error::invalid_param(
                    "answer the interaction with its callback first",
                ))
            }
            (_, Some(original)) => {
                let bot = self.application(&stored.application_id)?.bot_user_id;
                let content = message_content(&stored, &message);
                let mut edit = content.clone();
                if let Some(b) = edit.get("body").and_then(Value::as_str) {
                    edit["body"] = json!(format!("* {b}"));
                }
                edit["m.new_content"] = content;
                edit["m.relates_to"] = json!({ "rel_type": "m.replace", "event_id": original });
                self.rooms
                    .append(
                        &stored.channel_id,
                        &bot,
                        NewEvent::message("m.room.message".into(), edit),
                    )
                    .await?;
            }
            (_, None) => {
                stored.original = self.deliver(id, &stored, &message).await?;
            }
        }
        stored.answer = Answer::Answered;
        self.save_interaction(id, &stored)?;
        Ok(json!({ "id": id, "event_id": stored.original }))
    }

    /// Posts an answer: in the channel as the bot, or (ephemeral) to the invoker's devices.
    /// Answers the event id of the message in the channel.
    async fn deliver(
        &self,
        id: &str,
        stored: &StoredInteraction,
        message: &Message,
    ) -> Result<Option<OwnedEventId>> {
        let app = self.application(&stored.application_id)?;
        if message.ephemeral {
            let content = json!({
                "interaction_id": id,
                "application_id": app.id,
                "guild_id": stored.guild_id,
                "channel_id": stored.channel_id,
                "content": message.content,
                "embeds": message.embeds,
            });
            (self.to_device)(
                &app.bot_user_id,
                "chat.paracord.interaction_response",
                &format!("{id}.{}", random_string(8)),
                &json!({ stored.user_id.as_str(): { "*": content } }),
            )?;
            return Ok(None);
        }
        if !self.rooms.is_joined(&stored.channel_id, &app.bot_user_id)? {
            return Err(Error::forbidden(
                "the application's bot is not in this channel",
            ));
        }
        let event = self
            .rooms
            .append(
                &stored.channel_id,
                &app.bot_user_id,
                NewEvent::message("m.room.message".into(), message_content(stored, message)),
            )
            .await?;
        Ok(Some(event))
    }
}

/// The content of a `chat.paracord.interaction` to-device event (spec/applications.md §7.1).
fn interaction_content(
    id: &str,
    token: &str,
    stored: &StoredInteraction,
    roles: &[String],
    permissions: Permissions,
    options: &[GivenOption],
) -> Value {
    json!({
        "id": id,
        "application_id": stored.application_id,
        "type": 2,
        "token": token,
        "version": 1,
        "guild_id": stored.guild_id,
        "channel_id": stored.channel_id,
        "member": {
            "user_id": stored.user_id,
            "roles": roles,
            "permissions": permissions.to_wire(),
        },
        "data": {
            "id": stored.command_id,
            "name": stored.command_name,
            "type": 1,
            "options": options,
        },
        "expires_at": stored.expires_at,
    })
}

/// The bot joins every text-like channel of the guild it can see.
async fn join_channels(
    rooms: &Rooms,
    guild_id: &RoomId,
    owner: &UserId,
    bot: &UserId,
    profile: (Option<String>, Option<String>),
) -> Result<()> {
    let guild = load_guild(rooms, guild_id)?;
    let member = load_member(rooms, guild_id, bot)?;
    let now = now_ms();
    for channel in channel_ids(rooms, guild_id)? {
        let state = rooms.current_state(&channel)?;
        let kind = rooms
            .state_content(&state, "chat.paracord.channel", "")?
            .and_then(|c| serde_json::from_value::<ChannelContent>(c).ok())
            .map(|c| c.kind);
        if matches!(kind, None | Some(ChannelKind::Category)) {
            continue;
        }
        let (o, _) = overwrites(rooms, &channel)?;
        if !guild
            .channel_permissions(&member, &o, now)
            .contains(Permissions::VIEW_CHANNEL)
            || rooms.is_joined(&channel, bot)?
        {
            continue;
        }
        let invite_only = rooms
            .state_content(&state, "m.room.join_rules", "")?
            .is_some_and(|j| j["join_rule"] == "invite");
        if invite_only && rooms.membership(&channel, bot)? != Some(MembershipState::Invite) {
            rooms.invite(&channel, owner, bot, None, false).await?;
        }
        rooms.join(&channel, bot, profile.clone(), None).await?;
    }
    Ok(())
}

/// Told of every accepted event: a channel added to a guild hosted here (an `m.space.child`
/// with a `via`, sent by the host) is joined by the bots of the guild's applications that
/// can see it (spec/applications.md §4).
pub struct BotChannels {
    db: Arc<Db>,
    accounts: Arc<Accounts>,
}

impl BotChannels {
    pub fn new(db: Arc<Db>, accounts: Arc<Accounts>) -> Self {
        Self { db, accounts }
    }

    /// The bots of the applications in a guild.
    fn bots(&self, guild_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        let mut out = Vec::new();
        for (_, v) in self.db.scan_prefix(
            Table::GuildappInstall,
            &InstallKey::guild_prefix(guild_id.as_str()),
        )? {
            let install: Install = serde_json::from_slice(&v)?;
            if let Some(app) = self
                .db
                .get(Table::AppidApplication, install.application_id.as_bytes())?
            {
                out.push(serde_json::from_slice::<Application>(&app)?.bot_user_id);
            }
        }
        Ok(out)
    }
}

impl EventObserver for BotChannels {
    fn committed(
        &self,
        rooms: &Arc<Rooms>,
        room_id: &RoomId,
        pdu: &Pdu,
        _: &[Notification],
    ) -> Option<FollowUp> {
        if pdu.kind != TimelineEventType::SpaceChild
            || pdu.sender.server_name().as_str() != rooms.config.server_name
        {
            return None;
        }
        OwnedRoomId::try_from(pdu.state_key.as_deref()?).ok()?;
        let linked = pdu
            .content_value()
            .get("via")
            .and_then(Value::as_array)
            .is_some_and(|v| !v.is_empty());
        let bots = self.bots(room_id).ok()?;
        if !linked || bots.is_empty() {
            return None;
        }
        let (rooms, accounts, guild_id) =
            (rooms.clone(), self.accounts.clone(), room_id.to_owned());
        Some(Box::pin(async move {
            let owner = match load_guild(&rooms, &guild_id).and_then(|g| host_owner(&rooms, &g)) {
                Ok(o) => o,
                Err(_) => return,
            };
            for bot in bots {
                if !rooms.is_joined(&guild_id, &bot).unwrap_or(false) {
                    continue;
                }
                let profile = accounts.profile(&bot).unwrap_or((None, None));
                if let Err(e) = join_channels(&rooms, &guild_id, &owner, &bot, profile).await {
                    tracing::warn!(%guild_id, %bot, "a bot did not join a new channel: {e}");
                }
            }
        }))
    }
}

/// Whether holders of `held` may use a command (its default member permissions).
fn may_use(c: &Command, held: Permissions) -> bool {
    c.spec
        .default_member_permissions
        .as_deref()
        .and_then(Permissions::parse)
        .is_none_or(|need| held.contains(need))
}

/// An answer's message (spec/applications.md §8).
#[derive(Clone, Debug, Default)]
struct Message {
    content: String,
    embeds: Vec<Value>,
    ephemeral: bool,
}

fn read_message(data: &Value) -> Result<Message> {
    let o = data
        .as_object()
        .ok_or_else(|| Error::bad_json("data must be an object"))?;
    let content = match o.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Error::bad_json("content must be a string")),
    };
    if content.chars().count() > MAX_CONTENT {
        return Err(Error::invalid_param("content: at most 2000 characters"));
    }
    let embeds = match o.get("embeds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.iter().all(Value::is_object) => list.clone(),
        Some(_) => return Err(Error::bad_json("embeds must be an array of objects")),
    };
    if embeds.len() > MAX_EMBEDS {
        return Err(Error::invalid_param("embeds: at most 10"));
    }
    if content.trim().is_empty() && embeds.is_empty() {
        return Err(Error::invalid_param(
            "content: a message needs content or embeds",
        ));
    }
    let ephemeral = match o.get("flags") {
        None | Some(Value::Null) => false,
        Some(v) => {
            v.as_u64()
                .ok_or_else(|| Error::bad_json("flags must be a non-negative integer"))?
                & EPHEMERAL
                != 0
        }
    };
    Ok(Message {
        content,
        embeds,
        ephemeral,
    })
}

/// The `m.room.message` of an answer: what any Matrix client shows (a "used /cmd" line
/// quoting the invoker, then the content), and the interaction it answers.
fn message_content(stored: &StoredInteraction, message: &Message) -> Value {
    let mut text = message.content.clone();
    if text.trim().is_empty() {
        text = message
            .embeds
            .iter()
            .filter_map(|e| e.get("title").or_else(|| e.get("description")))
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut content = json!({
        "msgtype": "m.text",
        "body": format!("> {} used /{}\n\n{}", stored.user_id, stored.command_name, text),
        "chat.paracord.interaction": {
            "type": 2,
            "name": stored.command_name,
            "command_id": stored.command_id,
            "user_id": stored.user_id,
            "application_id": stored.application_id,
        },
        "m.mentions": {},
    });
    if !message.embeds.is_empty() {
        content["chat.paracord.embeds"] = json!(message.embeds);
    }
    content
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_their_prefixes_hold_their_rows() {
        let k = CommandKey {
            guild: "!g:x",
            app: "app1",
            command: "c1",
        };
        let bytes = k.encode();
        assert_eq!(CommandKey::decode(&bytes).unwrap(), k);
        assert!(bytes.starts_with(&CommandKey::app_prefix("!g:x", "app1")));
        assert!(bytes.starts_with(&CommandKey::guild_prefix("!g:x")));
        // An application whose id extends another's is not under its prefix.
        let longer = CommandKey { app: "app10", ..k }.encode();
        assert!(!longer.starts_with(&CommandKey::app_prefix("!g:x", "app1")));
        let i = InstallKey {
            guild: "!g:x",
            app: "app1",
        };
        assert_eq!(InstallKey::decode(&i.encode()).unwrap(), i);
        assert!(i.encode().starts_with(&InstallKey::guild_prefix("!g:x")));
        let o = OwnerAppKey {
            owner: "@a:x",
            app: "app1",
        };
        assert_eq!(OwnerAppKey::decode(&o.encode()).unwrap(), o);
        assert!(!OwnerAppKey {
            owner: "@ab:x",
            app: "z"
        }
        .encode()
        .starts_with(&OwnerAppKey::owner_prefix("@a:x")));
    }

    /// The to-device interaction and the answer's message of spec/applications.md §7 are
    /// what the server makes from the same inputs: the spec's examples are golden files.
    #[test]
    fn the_spec_examples_of_an_interaction_and_its_answer_are_what_is_sent() {
        let text = include_str!("../../../../spec/applications.md");
        let examples: Vec<Value> = text
            .split("```json")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        let find = |kind: &str| {
            examples
                .iter()
                .find(|e| e["type"] == kind)
                .cloned()
                .unwrap_or_else(|| panic!("no example of {kind}"))
        };
        let spec = find("chat.paracord.interaction")["content"].clone();
        let stored = StoredInteraction {
            token_hash: String::new(),
            application_id: spec["application_id"].as_str().unwrap().into(),
            guild_id: serde_json::from_value(spec["guild_id"].clone()).unwrap(),
            channel_id: serde_json::from_value(spec["channel_id"].clone()).unwrap(),
            user_id: serde_json::from_value(spec["member"]["user_id"].clone()).unwrap(),
            command_id: spec["data"]["id"].as_str().unwrap().into(),
            command_name: spec["data"]["name"].as_str().unwrap().into(),
            expires_at: spec["expires_at"].as_u64().unwrap(),
            answer: Answer::Waiting,
            original: None,
            ephemeral: false,
        };
        let options: Vec<GivenOption> = spec["data"]["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| GivenOption {
                name: o["name"].as_str().unwrap().into(),
                kind: o["type"].as_u64().unwrap(),
                value: o["value"].clone(),
            })
            .collect();
        let made = interaction_content(
            spec["id"].as_str().unwrap(),
            spec["token"].as_str().unwrap(),
            &stored,
            &[],
            Permissions::parse(spec["member"]["permissions"].as_str().unwrap()).unwrap(),
            &options,
        );
        assert_eq!(made, spec);
        let message = find("m.room.message")["content"].clone();
        let answer = read_message(&json!({
            "content": "You rolled 17",
            "embeds": message["chat.paracord.embeds"],
        }))
        .unwrap();
        assert_eq!(message_content(&stored, &answer), message);
    }

    #[test]
    fn permissions_are_capped_at_the_authorizers() {
        let asked =
            Permissions::SEND_MESSAGES | Permissions::BAN_MEMBERS | Permissions::KICK_MEMBERS;
        let held =
            Permissions::SEND_MESSAGES | Permissions::KICK_MEMBERS | Permissions::MANAGE_GUILD;
        assert_eq!(
            capped_permissions(asked, held),
            Permissions::SEND_MESSAGES | Permissions::KICK_MEMBERS
        );
        // The owner and administrators hold every permission.
        assert_eq!(capped_permissions(asked, Permissions::ALL), asked);
        assert_eq!(
            capped_permissions(Permissions::ALL, Permissions::NONE),
            Permissions::NONE
        );
    }

    #[test]
    fn bot_localparts_are_in_the_namespace() {
        assert_eq!(bot_localpart("Dice Roller!"), "_bot_dice_roller");
        assert_eq!(bot_localpart("  ***  "), "_bot_app");
        assert_eq!(bot_localpart("Ünïcode"), "_bot_n_code");
        assert!(bot_localpart(&"x".repeat(100)).len() <= 5 + 24);
        assert!(crate::accounts::is_bot_localpart(&bot_localpart(
            "anything"
        )));
    }

    #[test]
    fn answers_need_content_and_know_the_ephemeral_flag() {
        assert!(read_message(&json!({})).is_err());
        assert!(read_message(&json!({ "content": "x".repeat(2001) })).is_err());
        assert!(read_message(&json!({ "content": 5 })).is_err());
        let m = read_message(&json!({ "content": "hi", "flags": 64 })).unwrap();
        assert!(m.ephemeral);
        let m = read_message(&json!({ "embeds": [{ "title": "T" }] })).unwrap();
        assert!(!m.ephemeral);
        let stored = StoredInteraction {
            token_hash: String::new(),
            application_id: "app".into(),
            guild_id: ruma::owned_room_id!("!g:x"),
            channel_id: ruma::owned_room_id!("!c:x"),
            user_id: ruma::owned_user_id!("@alice:x"),
            command_id: "cmd".into(),
            command_name: "roll".into(),
            expires_at: 0,
            answer: Answer::Waiting,
            original: None,
            ephemeral: false,
        };
        let c = message_content(&stored, &m);
        assert_eq!(c["body"], "> @alice:x used /roll\n\nT");
        assert_eq!(c["chat.paracord.interaction"]["user_id"], "@alice:x");
        assert_eq!(c["chat.paracord.embeds"][0]["title"], "T");
    }
}
