//! Calls in a guild (spec/voice.md): only voice channels have them, and the permissions
//! decide — CONNECT to join, SPEAK for the microphone, STREAM for camera and screen share,
//! PRIORITY_SPEAKER shown to the others, and MUTE_MEMBERS / DEAFEN_MEMBERS / MOVE_MEMBERS for
//! moderators. Rooms outside guilds keep plain Matrix's rules ([`JoinedMembers`]).

use paracord_core::{time::now_ms, Error, Result};
use ruma::{RoomId, UserId};

use super::{
    enforce::place,
    events::ChannelKind,
    permissions::Permissions,
    store::{load_guild, load_member, overwrites},
};
use crate::{
    rooms::Rooms,
    rtc::{livekit::Publish, CallAccess, CallGrant, JoinedMembers, Moderation},
};

/// The profile's [`CallAccess`].
pub struct GuildCalls;

/// The permissions of `user` in the voice channel `room_id`; `Err(why)` when it is no voice
/// channel of a guild they are in, `Ok(None)` when the room is no guild's.
fn voice_permissions(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<std::result::Result<Permissions, String>>> {
    let state = rooms.current_state(room_id)?;
    let Some(place) = place(rooms, room_id, &state)? else {
        return Ok(None);
    };
    let Some(channel) = place.channel else {
        return Ok(Some(Err(
            "A guild's calls happen in its voice channels".to_owned()
        )));
    };
    if channel.kind != ChannelKind::Voice {
        return Ok(Some(Err("Only voice channels have calls".to_owned())));
    }
    if user.as_str() == place.owner {
        return Ok(Some(Ok(Permissions::ALL)));
    }
    if !rooms.is_joined(&place.guild_id, user)? {
        return Ok(Some(Err("You are not a member of this guild".to_owned())));
    }
    let guild = load_guild(rooms, &place.guild_id)?;
    let member = load_member(rooms, &place.guild_id, user)?;
    let (ow, _) = overwrites(rooms, room_id)?;
    Ok(Some(Ok(guild.channel_permissions(&member, &ow, now_ms()))))
}

impl CallAccess for GuildCalls {
    fn grant(&self, rooms: &Rooms, room_id: &RoomId, user: &UserId) -> Result<CallGrant> {
        let perms = match voice_permissions(rooms, room_id, user)? {
            None => return JoinedMembers.grant(rooms, room_id, user),
            Some(Err(why)) => return Ok(CallGrant::Refused(why)),
            Some(Ok(p)) => p,
        };
        for (flag, name) in [
            (Permissions::VIEW_CHANNEL, "VIEW_CHANNEL"),
            (Permissions::CONNECT, "CONNECT"),
        ] {
            if !perms.contains(flag) {
                return Ok(CallGrant::Refused(format!("Missing permission: {name}")));
            }
        }
        let mut attributes = Vec::new();
        if perms.contains(Permissions::PRIORITY_SPEAKER) {
            attributes.push(("chat.paracord.priority_speaker", "true"));
        }
        Ok(CallGrant::Allowed {
            publish: Publish {
                audio: perms.contains(Permissions::SPEAK),
                video: perms.contains(Permissions::STREAM),
                listen: true,
            },
            attributes,
        })
    }

    fn moderates(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        actor: &UserId,
        action: Moderation,
    ) -> Result<()> {
        let perms = match voice_permissions(rooms, room_id, actor)? {
            None => return JoinedMembers.moderates(rooms, room_id, actor, action),
            Some(Err(why)) => return Err(Error::forbidden(why)),
            Some(Ok(p)) => p,
        };
        let (flag, name) = match action {
            Moderation::Disconnect => (Permissions::MOVE_MEMBERS, "MOVE_MEMBERS"),
            Moderation::Mute => (Permissions::MUTE_MEMBERS, "MUTE_MEMBERS"),
            Moderation::Deafen => (Permissions::DEAFEN_MEMBERS, "DEAFEN_MEMBERS"),
        };
        if perms.contains(flag) {
            Ok(())
        } else {
            Err(Error::forbidden(format!("Missing permission: {name}")))
        }
    }
}
