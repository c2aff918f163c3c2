//! One function per subcommand.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use matrix_sdk::{
    deserialized_responses::{TimelineEvent, TimelineEventKind},
    encryption::{backups::BackupState, recovery::RecoveryState},
    room::MessagesOptions,
    ruma::{
        events::room::message::RoomMessageEventContent, OwnedDeviceId, OwnedRoomAliasId,
        OwnedRoomId, OwnedUserId, UInt,
    },
    Client, Room, RoomState,
};
use serde_json::{json, Value};

use crate::{session, Cli, Command};

/// Long-poll timeout of the catch-up `/sync` each command starts with: none, so a
/// command returns as soon as the server has answered.
const CATCH_UP: Duration = Duration::ZERO;

/// Long-poll timeout of each `/sync` while `tail --timeout` waits.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// `/messages` page size for `tail`, and how many pages it reads at most.
const PAGE: u32 = 50;
const MAX_PAGES: usize = 20;

pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    let store = cli.store.as_path();
    let out = Output { json: cli.json };
    match cli.command {
        Command::Login {
            homeserver,
            user,
            password,
            device_name,
            no_cross_signing,
        } => {
            let client = session::login(store, &homeserver, &user, &password, &device_name).await?;
            // The first sync uploads this device's identity and one-time keys.
            session::sync(&client, CATCH_UP).await?;
            // The login itself has succeeded (and is saved): a cross-signing failure is a
            // warning, and `verify` or `backup` try again later.
            let cross_signing = if no_cross_signing {
                false
            } else {
                match session::ensure_cross_signing(&client, Some(&password)).await {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("paracord-cli: warning: {e:#}");
                        false
                    }
                }
            };
            let user_id = client.user_id().context("not logged in")?;
            let device_id = client.device_id().context("no device id")?;
            out.object(
                json!({
                    "user_id": user_id,
                    "device_id": device_id,
                    "cross_signing": cross_signing,
                }),
                format!("logged in as {user_id}, device {device_id}"),
            );
        }
        Command::Rooms => {
            let client = open_synced(store).await?;
            for room in client.rooms() {
                let state = match room.state() {
                    RoomState::Joined => "joined",
                    RoomState::Invited => "invited",
                    _ => continue,
                };
                // An invite shows only the stripped state the server chose to include,
                // which may leave the encryption state unknown.
                let encryption = room.encryption_state();
                let encrypted = (!encryption.is_unknown()).then(|| encryption.is_encrypted());
                let direct = room.is_direct().await.unwrap_or(false);
                let name = room.cached_display_name().map(|n| n.to_string());
                out.object(
                    json!({
                        "room_id": room.room_id(),
                        "state": state,
                        "name": name,
                        "encrypted": encrypted,
                        "is_direct": direct,
                    }),
                    format!(
                        "{}\t{state}\t{}{}\t{}",
                        room.room_id(),
                        match encrypted {
                            Some(true) => "encrypted",
                            Some(false) => "plain",
                            None => "encryption-unknown",
                        },
                        if direct { ",direct" } else { "" },
                        name.unwrap_or_default()
                    ),
                );
            }
        }
        Command::Join { room } => {
            let client = open_synced(store).await?;
            let joined = join(&client, &room).await?;
            session::sync(&client, CATCH_UP).await?;
            out.object(
                json!({ "room_id": joined.room_id() }),
                joined.room_id().to_string(),
            );
        }
        Command::Send { room, text } => {
            let client = open_synced(store).await?;
            let room = find_room(&client, &room).await?;
            let response = room
                .send(RoomMessageEventContent::text_plain(text))
                .await
                .with_context(|| format!("cannot send to {}", room.room_id()))?;
            settle(&client).await;
            let event_id = response.response.event_id;
            out.object(
                json!({
                    "room_id": room.room_id(),
                    "event_id": event_id,
                    "encrypted": room.encryption_state().is_encrypted(),
                }),
                event_id.to_string(),
            );
        }
        Command::Tail {
            room,
            count,
            timeout,
        } => {
            let client = open_synced(store).await?;
            let room = find_room(&client, &room).await?;
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let messages = loop {
                let messages = last_messages(&room, count).await?;
                let complete = messages.len() >= count && messages.iter().all(|m| m.body.is_some());
                if complete || Instant::now() >= deadline {
                    break messages;
                }
                // Room keys come as to-device events: sync, then read the room again.
                session::sync(&client, WAIT_POLL).await?;
            };
            for message in &messages {
                out.object(message.to_json(), message.to_line());
            }
            let readable = messages.iter().filter(|m| m.body.is_some()).count();
            if timeout > 0 && (messages.len() < count || readable < messages.len()) {
                eprintln!(
                    "paracord-cli: {} of {count} messages after {timeout}s, {} not decrypted",
                    messages.len(),
                    messages.len() - readable
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Dm { user } => {
            let client = open_synced(store).await?;
            let user: OwnedUserId = user
                .parse()
                .with_context(|| format!("{user} is not a user id (@name:server)"))?;
            let (room, how) = open_dm(&client, &user).await?;
            session::sync(&client, CATCH_UP).await?;
            out.object(
                json!({
                    "room_id": room.room_id(),
                    "user_id": user,
                    "action": how,
                    "encrypted": room.encryption_state().is_encrypted(),
                }),
                room.room_id().to_string(),
            );
        }
        Command::Verify {
            user,
            device,
            password,
        } => {
            let client = open_synced(store).await?;
            let user: OwnedUserId = user
                .parse()
                .with_context(|| format!("{user} is not a user id (@name:server)"))?;
            let device: OwnedDeviceId = device.as_str().into();
            let verified = verify(&client, &user, &device, password.as_deref()).await?;
            out.object(
                json!({ "user_id": user, "device_id": device, "verified": verified }),
                format!(
                    "{user} {device}: {}",
                    if verified { "verified" } else { "not verified" }
                ),
            );
            if !verified {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Backup {
            password,
            reset_key,
        } => {
            let client = open_synced(store).await?;
            session::ensure_cross_signing(&client, password.as_deref()).await?;
            let recovery = client.encryption().recovery();
            let key = match recovery.state() {
                RecoveryState::Enabled if reset_key => recovery
                    .reset_key()
                    .await
                    .context("cannot replace the recovery key")?,
                RecoveryState::Enabled => {
                    bail!(
                        "key backup is already enabled for this account; \
                         `backup --reset-key` replaces the recovery key"
                    )
                }
                _ => recovery
                    .enable()
                    .wait_for_backups_to_upload()
                    .await
                    .context("cannot enable key backup")?,
            };
            settle(&client).await;
            out.object(json!({ "recovery_key": key }), key.clone());
        }
        Command::Restore { recovery_key } => {
            let client = open_synced(store).await?;
            client
                .encryption()
                .recovery()
                .recover(recovery_key.trim())
                .await
                .context("cannot open secret storage with this recovery key")?;
            let backups = client.encryption().backups();
            let mut rooms = 0;
            for room in client.joined_rooms() {
                backups
                    .download_room_keys_for_room(room.room_id())
                    .await
                    .with_context(|| {
                        format!("cannot download the room keys of {}", room.room_id())
                    })?;
                rooms += 1;
            }
            session::sync(&client, CATCH_UP).await?;
            out.object(
                json!({ "restored": true, "rooms": rooms }),
                format!("restored secrets and the room keys of {rooms} rooms"),
            );
        }
        Command::Whoami => {
            let client = open_synced(store).await?;
            let encryption = client.encryption();
            let user_id = client.user_id().context("not logged in")?;
            let device_id = client.device_id().context("no device id")?;
            let status = encryption.cross_signing_status().await;
            // Our own device is always trusted locally; what others can check is whether
            // our cross-signing identity signed it.
            let own_verified = encryption
                .get_own_device()
                .await?
                .map(|d| d.is_verified_with_cross_signing())
                .unwrap_or(false);
            let backup = format!("{:?}", encryption.backups().state());
            let recovery = format!("{:?}", encryption.recovery().state());
            let has_master = status.as_ref().is_some_and(|s| s.has_master);
            out.object(
                json!({
                    "user_id": user_id,
                    "device_id": device_id,
                    "ed25519": encryption.ed25519_key().await,
                    "cross_signing_master_key": has_master,
                    "device_verified": own_verified,
                    "backup": backup,
                    "recovery": recovery,
                }),
                format!(
                    "{user_id} device {device_id}; cross-signing {}; this device {}; \
                     backup {backup}; recovery {recovery}",
                    if has_master { "set up" } else { "absent" },
                    if own_verified {
                        "verified"
                    } else {
                        "unverified"
                    }
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Text or JSON on stdout.
struct Output {
    json: bool,
}

impl Output {
    fn object(&self, value: Value, text: String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }
}

/// Opens the stored session and catches up with one `/sync`.
async fn open_synced(store: &std::path::Path) -> Result<Client> {
    let client = session::open(store).await?;
    session::sync(&client, CATCH_UP).await?;
    Ok(client)
}

/// Lets the background work a command started finish before the process exits: room
/// keys go up to the key backup, to-device requests go out.
async fn settle(client: &Client) {
    let backups = client.encryption().backups();
    if backups.state() == BackupState::Enabled {
        if let Err(e) = backups.wait_for_steady_state().await {
            eprintln!("paracord-cli: warning: room keys not all backed up yet: {e}");
        }
    }
    if let Err(e) = session::sync(client, CATCH_UP).await {
        eprintln!("paracord-cli: warning: {e:#}");
    }
}

/// `!room:server`, `#alias:server`, or `@user:server` for the direct chat with them.
async fn find_room(client: &Client, spec: &str) -> Result<Room> {
    let room = if spec.starts_with('@') {
        let user: OwnedUserId = spec
            .parse()
            .with_context(|| format!("{spec} is not a user id"))?;
        client
            .get_dm_room(&user)
            .with_context(|| format!("no direct chat with {user} (see `dm`)"))?
    } else {
        let room_id = resolve(client, spec).await?;
        client
            .get_room(&room_id)
            .with_context(|| format!("{spec} is not one of this account's rooms"))?
    };
    if room.state() != RoomState::Joined {
        bail!(
            "not joined to {} (it is {:?}; see `join`)",
            room.room_id(),
            room.state()
        );
    }
    Ok(room)
}

async fn resolve(client: &Client, spec: &str) -> Result<OwnedRoomId> {
    if spec.starts_with('#') {
        let alias: OwnedRoomAliasId = spec
            .parse()
            .with_context(|| format!("{spec} is not a room alias"))?;
        Ok(client
            .resolve_room_alias(&alias)
            .await
            .with_context(|| format!("cannot resolve {alias}"))?
            .room_id)
    } else {
        spec.parse()
            .with_context(|| format!("{spec} is not a room id, alias or user id"))
    }
}

async fn join(client: &Client, spec: &str) -> Result<Room> {
    let room_id = resolve(client, spec).await?;
    if let Some(room) = client.get_room(&room_id) {
        if room.state() == RoomState::Joined {
            return Ok(room);
        }
    }
    client
        .join_room_by_id(&room_id)
        .await
        .with_context(|| format!("cannot join {room_id}"))
}

/// The joined direct room with `user`, else their pending direct invite (joined), else
/// a new encrypted direct room. Returns the room and which of the three it was.
async fn open_dm(client: &Client, user: &OwnedUserId) -> Result<(Room, &'static str)> {
    if let Some(room) = client.get_dm_room(user) {
        return Ok((room, "reused"));
    }
    for room in client.invited_rooms() {
        let Ok(invite) = room.invite_details().await else {
            continue;
        };
        if invite.inviter_id == *user && room.is_direct().await.unwrap_or(false) {
            room.join()
                .await
                .with_context(|| format!("cannot join the invite to {}", room.room_id()))?;
            let room = client
                .get_room(room.room_id())
                .context("the joined room disappeared")?;
            return Ok((room, "joined"));
        }
    }
    // `create_dm` marks the room `is_direct` and, with end-to-end encryption built in,
    // adds `m.room.encryption` with the recommended `m.megolm.v1.aes-sha2`.
    let room = client
        .create_dm(user)
        .await
        .with_context(|| format!("cannot create a direct chat with {user}"))?;
    Ok((room, "created"))
}

/// Verifies `device` of `user` through cross-signing; returns whether it is verified.
async fn verify(
    client: &Client,
    user: &OwnedUserId,
    device: &OwnedDeviceId,
    password: Option<&str>,
) -> Result<bool> {
    session::ensure_cross_signing(client, password).await?;
    let encryption = client.encryption();
    let own = client.user_id() == Some(user.as_ref());
    // Fetch the device and identity from the server if they are not tracked yet.
    if encryption.get_user_identity(user).await?.is_none() {
        encryption.request_user_identity(user).await?;
    }
    let found = encryption.get_device(user, device).await?;
    if found.is_none() {
        // An untracked user: one more sync sends the key query.
        session::sync(client, CATCH_UP).await?;
    }
    let Some(found) = encryption.get_device(user, device).await? else {
        bail!("{user} has no device {device} with published keys");
    };
    if own {
        // Sign our own device with our self-signing key.
        found
            .verify()
            .await
            .with_context(|| format!("cannot sign {device} with the self-signing key"))?;
    } else {
        let identity = encryption
            .get_user_identity(user)
            .await?
            .with_context(|| format!("{user} has not set up cross-signing"))?;
        // Sign their master key with our user-signing key: every device they
        // cross-signed becomes verified.
        identity
            .verify()
            .await
            .with_context(|| format!("cannot sign the identity of {user}"))?;
        if !found.is_cross_signed_by_owner() {
            bail!("{user} trusts no longer or never signed device {device} with their cross-signing key");
        }
    }
    // Our store learns of the new signature from the server: query the keys again.
    for _ in 0..VERIFY_QUERIES {
        encryption.request_user_identity(user).await?;
        let refreshed = encryption
            .get_device(user, device)
            .await?
            .with_context(|| format!("{user} device {device} vanished"))?;
        if refreshed.is_verified() {
            return Ok(true);
        }
        session::sync(client, CATCH_UP).await?;
    }
    Ok(false)
}

/// How many times `verify` reads the keys back before it says "not verified".
const VERIFY_QUERIES: usize = 5;

/// One `m.room.message` as read (decrypted where the keys are there).
struct Message {
    event_id: String,
    sender: String,
    ts: Option<u64>,
    /// `None` when the event could not be decrypted.
    body: Option<String>,
    encrypted: bool,
    session_id: Option<String>,
}

impl Message {
    fn from_event(event: &TimelineEvent) -> Option<Message> {
        let raw: Value = serde_json::from_str(event.raw().json().get()).ok()?;
        let field = |name: &str| raw[name].as_str().unwrap_or_default().to_owned();
        let ts = raw["origin_server_ts"].as_u64();
        match &event.kind {
            TimelineEventKind::UnableToDecrypt { utd_info, .. } => Some(Message {
                event_id: field("event_id"),
                sender: field("sender"),
                ts,
                body: None,
                encrypted: true,
                session_id: utd_info.session_id.clone(),
            }),
            _ if raw["type"] == "m.room.message" => {
                let info = event.encryption_info();
                Some(Message {
                    event_id: field("event_id"),
                    sender: field("sender"),
                    ts,
                    body: Some(
                        raw["content"]["body"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                    encrypted: info.is_some(),
                    session_id: info.and_then(|i| i.session_id().map(str::to_owned)),
                })
            }
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "event_id": self.event_id,
            "sender": self.sender,
            "origin_server_ts": self.ts,
            "body": self.body,
            "encrypted": self.encrypted,
            "decrypted": self.encrypted && self.body.is_some(),
            "session_id": self.session_id,
        })
    }

    fn to_line(&self) -> String {
        let lock = if self.encrypted { "🔒 " } else { "" };
        match &self.body {
            Some(body) => format!("{lock}{}: {body}", self.sender),
            None => format!("{lock}{}: <unable to decrypt>", self.sender),
        }
    }
}

/// The last `count` messages of `room`, oldest first, read with `/messages`.
async fn last_messages(room: &Room, count: usize) -> Result<Vec<Message>> {
    let mut newest_first = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = UInt::from(PAGE);
        let page = room
            .messages(options)
            .await
            .with_context(|| format!("cannot read the messages of {}", room.room_id()))?;
        newest_first.extend(page.chunk.iter().filter_map(Message::from_event));
        if newest_first.len() >= count || page.chunk.is_empty() {
            break;
        }
        match page.end {
            Some(end) => from = Some(end),
            None => break,
        }
    }
    newest_first.truncate(count);
    newest_first.reverse();
    Ok(newest_first)
}
