//! Creating a guild (spec/rest.md §5 `POST /guilds`): the space, @everyone, a category and
//! #general, each with its projected power levels.

use paracord_core::{time::now_ms, Result};
use ruma::{OwnedRoomId, UserId};
use serde_json::{json, Value};

use super::{
    channels::{self, ChannelInfo},
    events::{ChannelContent, GuildContent, RoleContent},
    permissions::{ChannelOverwrites, Guild, Member, Permissions, Role, EVERYONE},
    projection::power_levels,
    store::{guild_object, roles, RoleEntry},
};
use crate::rooms::{
    create::{CreateRoom, Preset},
    Rooms,
};

/// @everyone's permissions in a new guild (spec/guilds.md §5.1).
pub const DEFAULT_EVERYONE: u64 = 563_330_128_662_081;

/// What `POST /_paracord/v1/guilds` asks for, checked on its own: a name of 1 to 100
/// characters, an `mxc://` icon.
#[derive(Clone, Debug, Default)]
pub struct NewGuild {
    pub name: String,
    pub description: Option<String>,
    pub icon: Option<String>,
}

fn everyone_role() -> RoleContent {
    RoleContent {
        name: "@everyone".to_owned(),
        color: 0,
        position: 0,
        hoist: false,
        mentionable: false,
        permissions: Permissions(DEFAULT_EVERYONE).to_wire(),
        managed_by: None,
    }
}

/// A new guild as `POST /guilds` answers it (spec/rest.md §5): the Guild object, its
/// channels and its roles.
#[derive(Clone, Debug)]
pub struct CreatedGuild {
    pub id: OwnedRoomId,
    pub guild: GuildContent,
    pub channels: Vec<ChannelInfo>,
    pub roles: Vec<RoleEntry>,
}

/// Creates a guild owned by `owner` and returns it (spec/rest.md §5 `POST /guilds`).
pub async fn create_guild(
    rooms: &Rooms,
    owner: &UserId,
    new: NewGuild,
    profile: (Option<String>, Option<String>),
) -> Result<CreatedGuild> {
    let server = owner.server_name().to_string();
    let guild = Guild {
        owner: owner.to_string(),
        roles: [(
            EVERYONE.to_owned(),
            Role {
                position: 0,
                permissions: Permissions(DEFAULT_EVERYONE),
            },
        )]
        .into(),
    };
    let owner_member = Member {
        user_id: owner.to_string(),
        ..Member::default()
    };
    // Room version 12: the owner creates every room and is not listed in power levels.
    let pl = power_levels(
        &guild,
        &[owner_member],
        &ChannelOverwrites::default(),
        now_ms(),
        true,
        false,
    );
    let room = |name: &str,
                preset: Preset,
                creation: Option<Value>,
                state: Vec<(String, String, Value)>| CreateRoom {
        version: Some("12".to_owned()),
        preset: Some(preset),
        public: false,
        name: Some(name.to_owned()),
        topic: None,
        alias: None,
        invite: Vec::new(),
        is_direct: false,
        initial_state: state,
        power_level_override: Some(pl.clone()),
        creation_content: creation,
        profile: profile.clone(),
    };
    let space = rooms
        .create_room(
            owner,
            room(
                &new.name,
                Preset::PrivateChat,
                Some(json!({ "type": "m.space" })),
                vec![(
                    "chat.paracord.role".to_owned(),
                    EVERYONE.to_owned(),
                    serde_json::to_value(everyone_role())?,
                )],
            ),
        )
        .await?;
    let channel_state = |content: &ChannelContent| -> Result<Vec<(String, String, Value)>> {
        Ok(vec![
            (
                "chat.paracord.channel".to_owned(),
                String::new(),
                serde_json::to_value(content)?,
            ),
            (
                "m.space.parent".to_owned(),
                space.to_string(),
                json!({ "via": [server], "canonical": true }),
            ),
            (
                "m.room.join_rules".to_owned(),
                String::new(),
                json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] }),
            ),
        ])
    };
    let category_content = ChannelContent {
        kind: super::events::ChannelKind::Category,
        position: 0,
        parent: None,
        topic: None,
        nsfw: None,
        rate_limit_per_user: None,
    };
    let category = rooms
        .create_room(
            owner,
            room(
                "Text Channels",
                Preset::PrivateChat,
                None,
                channel_state(&category_content)?,
            ),
        )
        .await?;
    let general_content = ChannelContent {
        kind: super::events::ChannelKind::Text,
        position: 0,
        parent: Some(category.to_string()),
        topic: None,
        nsfw: Some(false),
        rate_limit_per_user: Some(0),
    };
    let general = rooms
        .create_room(
            owner,
            room(
                "general",
                Preset::PrivateChat,
                None,
                channel_state(&general_content)?,
            ),
        )
        .await?;
    for (i, child) in [&category, &general].into_iter().enumerate() {
        rooms
            .append(
                &space,
                owner,
                crate::rooms::NewEvent::state(
                    ruma::events::TimelineEventType::SpaceChild,
                    child.as_str(),
                    json!({ "via": [server], "order": format!("{i:04}") }),
                ),
            )
            .await?;
    }
    let content = GuildContent {
        version: "1".to_owned(),
        name: new.name,
        description: new.description,
        icon: new.icon,
        owner: owner.to_string(),
        system_channel: Some(general.to_string()),
    };
    rooms
        .append(
            &space,
            owner,
            crate::rooms::NewEvent::state(
                "chat.paracord.guild".into(),
                "",
                serde_json::to_value(&content)?,
            ),
        )
        .await?;
    Ok(CreatedGuild {
        guild: guild_object(rooms, &space)?,
        channels: channels::list(rooms, &space, owner)?,
        roles: roles(rooms, &space)?,
        id: space,
    })
}
