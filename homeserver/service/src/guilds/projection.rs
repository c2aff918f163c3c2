//! The projection of guild roles and channel overwrites onto a channel's
//! `m.room.power_levels` (spec/guilds.md, "Projection onto power levels"), so that every
//! Matrix server enforces the coarse rules through the ordinary auth rules.

use serde_json::{json, Map, Value};

use super::permissions::{ChannelOverwrites, Guild, Member, Permissions};

/// Levels of the projection.
pub const OWNER_LEVEL: i64 = 100;
pub const ADMIN_LEVEL: i64 = 90;
pub const MODERATOR_LEVEL: i64 = 50;
pub const SENDER_LEVEL: i64 = 1;

/// Flags that make a member a moderator of the channel (level 50).
const MODERATION: Permissions = Permissions(
    Permissions::MANAGE_MESSAGES.0
        | Permissions::KICK_MEMBERS.0
        | Permissions::BAN_MEMBERS.0
        | Permissions::MANAGE_CHANNELS.0
        | Permissions::MANAGE_ROLES.0,
);

/// The event types of MatrixRTC call membership (spec/voice.md §1): a member who may send
/// messages, or in a voice channel join calls, may send them on plain Matrix servers too;
/// Paracord servers narrow them to voice channels and CONNECT.
pub const CALL_MEMBER_TYPES: &[&str] = &[
    "org.matrix.msc3401.call.member",
    "m.call.member",
    "m.rtc.member",
    "org.matrix.msc4143.rtc.member",
];

/// Whether these permissions make a sender (level 1): SEND_MESSAGES, or in a voice channel
/// CONNECT, so that its members can write their call membership.
fn sends(p: Permissions, voice: bool) -> bool {
    p.contains(Permissions::SEND_MESSAGES) || (voice && p.contains(Permissions::CONNECT))
}

/// A member's level in a channel (`voice`: a voice channel).
pub fn member_level(
    guild: &Guild,
    member: &Member,
    overwrites: &ChannelOverwrites,
    now: u64,
    voice: bool,
) -> i64 {
    if member.user_id == guild.owner {
        return OWNER_LEVEL;
    }
    if guild
        .base_permissions(member)
        .contains(Permissions::ADMINISTRATOR)
    {
        return ADMIN_LEVEL;
    }
    let p = guild.channel_permissions(member, overwrites, now);
    if p.0 & MODERATION.0 != 0 {
        MODERATOR_LEVEL
    } else if sends(p, voice) {
        SENDER_LEVEL
    } else {
        0
    }
}

/// The power levels content of a channel for these members at time `now` (ms). The guild
/// space's own power levels are the same projection with no overwrites. In room versions
/// whose creators have unlimited power (12), the owner (the creator) must not be listed.
/// `voice`: the channel is a voice channel.
pub fn power_levels(
    guild: &Guild,
    members: &[Member],
    overwrites: &ChannelOverwrites,
    now: u64,
    owner_is_creator: bool,
    voice: bool,
) -> Value {
    // What a member with no role and no overwrite of their own gets.
    let nobody = Member {
        user_id: String::new(),
        roles: Vec::new(),
        communication_disabled_until: None,
    };
    let everyone = guild.channel_permissions(&nobody, overwrites, now);
    let users_default = if sends(everyone, voice) {
        SENDER_LEVEL
    } else {
        0
    };
    let mut users = Map::new();
    for m in members {
        if owner_is_creator && m.user_id == guild.owner {
            continue;
        }
        let level = member_level(guild, m, overwrites, now, voice);
        if level != users_default {
            users.insert(m.user_id.clone(), json!(level));
        }
    }
    let invite = if everyone.contains(Permissions::CREATE_INSTANT_INVITE) {
        0
    } else {
        MODERATOR_LEVEL
    };
    let mut events = json!({
        "m.room.power_levels": ADMIN_LEVEL,
        "m.room.name": MODERATOR_LEVEL,
        "m.room.topic": MODERATOR_LEVEL,
        "m.room.avatar": MODERATOR_LEVEL,
        "m.room.join_rules": OWNER_LEVEL,
        "m.room.history_visibility": OWNER_LEVEL,
        "m.room.server_acl": OWNER_LEVEL,
        "m.room.tombstone": OWNER_LEVEL,
        "m.room.encryption": OWNER_LEVEL,
        "m.space.child": OWNER_LEVEL,
        "m.space.parent": OWNER_LEVEL,
        "chat.paracord.guild": OWNER_LEVEL,
        "chat.paracord.channel": OWNER_LEVEL,
        "chat.paracord.role": OWNER_LEVEL,
        "chat.paracord.member": OWNER_LEVEL,
        "chat.paracord.overwrite": OWNER_LEVEL,
        "chat.paracord.invite": OWNER_LEVEL,
        "chat.paracord.webhook": OWNER_LEVEL,
        "m.reaction": SENDER_LEVEL,
    });
    for kind in CALL_MEMBER_TYPES {
        events[*kind] = json!(SENDER_LEVEL);
    }
    json!({
        "users": users,
        "users_default": users_default,
        "events_default": SENDER_LEVEL,
        "state_default": MODERATOR_LEVEL,
        "redact": MODERATOR_LEVEL,
        "kick": MODERATOR_LEVEL,
        "ban": MODERATOR_LEVEL,
        "invite": invite,
        // What the guild host alone manages is at the owner's level, so that plain Matrix
        // servers refuse it from anyone else too (spec/guilds.md §8.1, §9).
        "events": events,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::guilds::permissions::{Overwrite, Role, EVERYONE};

    fn guild() -> Guild {
        let everyone = Permissions::VIEW_CHANNEL
            | Permissions::SEND_MESSAGES
            | Permissions::READ_MESSAGE_HISTORY
            | Permissions::CREATE_INSTANT_INVITE;
        let mut roles = BTreeMap::new();
        roles.insert(
            EVERYONE.to_owned(),
            Role {
                position: 0,
                permissions: everyone,
            },
        );
        roles.insert(
            "mod".to_owned(),
            Role {
                position: 5,
                permissions: Permissions::MANAGE_MESSAGES | Permissions::KICK_MEMBERS,
            },
        );
        roles.insert(
            "admin".to_owned(),
            Role {
                position: 9,
                permissions: Permissions::ADMINISTRATOR,
            },
        );
        roles.insert(
            "speaker".to_owned(),
            Role {
                position: 1,
                permissions: Permissions::NONE,
            },
        );
        Guild {
            owner: "@owner:x".to_owned(),
            roles,
        }
    }

    fn member(id: &str, roles: &[&str]) -> Member {
        Member {
            user_id: id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            communication_disabled_until: None,
        }
    }

    fn members() -> Vec<Member> {
        vec![
            member("@owner:x", &[]),
            member("@admin:x", &["admin"]),
            member("@mod:x", &["mod"]),
            member("@speaker:x", &["speaker"]),
            member("@plain:x", &[]),
        ]
    }

    /// An open channel: everyone sends; moderators and admins stand out.
    #[test]
    fn an_open_channel() {
        let pl = power_levels(
            &guild(),
            &members(),
            &ChannelOverwrites::default(),
            0,
            false,
            false,
        );
        assert_eq!(
            pl,
            json!({
                "users": { "@owner:x": 100, "@admin:x": 90, "@mod:x": 50 },
                "users_default": 1,
                "events_default": 1,
                "state_default": 50,
                "redact": 50, "kick": 50, "ban": 50,
                "invite": 0,
                "events": {
                    "m.room.power_levels": 90, "m.room.name": 50, "m.room.topic": 50,
                    "m.room.avatar": 50, "m.room.join_rules": 100,
                    "m.room.history_visibility": 100, "m.room.server_acl": 100,
                    "m.room.tombstone": 100, "m.room.encryption": 100,
                    "m.space.child": 100, "m.space.parent": 100,
                    "chat.paracord.guild": 100, "chat.paracord.channel": 100,
                    "chat.paracord.role": 100, "chat.paracord.member": 100,
                    "chat.paracord.overwrite": 100, "chat.paracord.invite": 100,
                    "chat.paracord.webhook": 100,
                    "m.reaction": 1,
                    "org.matrix.msc3401.call.member": 1, "m.call.member": 1,
                    "m.rtc.member": 1, "org.matrix.msc4143.rtc.member": 1,
                },
            })
        );
    }

    /// A voice channel where @everyone may connect but not write: members are senders, so
    /// that plain Matrix servers accept their call membership; in a text channel with the
    /// same overwrites they are not.
    #[test]
    fn connecting_makes_a_sender_in_voice_channels_only() {
        let mut o = ChannelOverwrites::default();
        o.roles.insert(
            EVERYONE.into(),
            Overwrite {
                allow: Permissions::CONNECT,
                deny: Permissions::SEND_MESSAGES,
            },
        );
        let voice = power_levels(&guild(), &members(), &o, 0, false, true);
        assert_eq!(voice["users_default"], 1);
        let text = power_levels(&guild(), &members(), &o, 0, false, false);
        assert_eq!(text["users_default"], 0);
        o.roles.get_mut(EVERYONE).unwrap().deny = Permissions::SEND_MESSAGES | Permissions::CONNECT;
        o.roles.get_mut(EVERYONE).unwrap().allow = Permissions::NONE;
        let silent = power_levels(&guild(), &members(), &o, 0, false, true);
        assert_eq!(silent["users_default"], 0);
    }

    /// An announcement channel: @everyone may not send or invite, the speaker role may
    /// send, and one timed-out moderator is held at 0 until the timeout ends.
    #[test]
    fn an_announcement_channel_with_a_timeout() {
        let mut o = ChannelOverwrites::default();
        o.roles.insert(
            EVERYONE.into(),
            Overwrite {
                allow: Permissions::NONE,
                deny: Permissions::SEND_MESSAGES | Permissions::CREATE_INSTANT_INVITE,
            },
        );
        o.roles.insert(
            "speaker".into(),
            Overwrite {
                allow: Permissions::SEND_MESSAGES,
                deny: Permissions::NONE,
            },
        );
        let mut ms = members();
        ms[2].communication_disabled_until = Some(500);
        let pl = power_levels(&guild(), &ms, &o, 100, false, false);
        assert_eq!(pl["users_default"], 0);
        assert_eq!(pl["invite"], 50);
        assert_eq!(
            pl["users"],
            json!({ "@owner:x": 100, "@admin:x": 90, "@speaker:x": 1 }),
            "the timed-out moderator is at the default 0"
        );
        let after = power_levels(&guild(), &ms, &o, 500, false, false);
        assert_eq!(after["users"]["@mod:x"], 50);
    }

    #[test]
    fn a_hidden_channel_leaves_its_members_at_zero() {
        let mut o = ChannelOverwrites::default();
        o.roles.insert(
            EVERYONE.into(),
            Overwrite {
                allow: Permissions::NONE,
                deny: Permissions::VIEW_CHANNEL,
            },
        );
        let pl = power_levels(&guild(), &members(), &o, 0, false, false);
        assert_eq!(pl["users_default"], 0);
        assert_eq!(pl["users"], json!({ "@owner:x": 100, "@admin:x": 90 }));
        // Room version 12: the owner created the room and is not listed.
        let v12 = power_levels(&guild(), &members(), &o, 0, true, false);
        assert_eq!(v12["users"], json!({ "@admin:x": 90 }));
    }
}
