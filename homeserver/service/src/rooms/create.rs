//! `createRoom`: the create event and the initial state, in the spec's order.

use ruma::{
    canonical_json::CanonicalJsonObject, events::TimelineEventType, CanonicalJsonValue,
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, UserId,
};
use serde_json::{json, Value};

use paracord_core::{config::SUPPORTED_ROOM_VERSIONS, Error, ErrorKind, Result};

use super::{hooks, rules_for, NewEvent, RoomRecord, Rooms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// What `createRoom` asks for, already parsed.
#[derive(Debug, Clone, Default)]
pub struct CreateRoom {
    pub version: Option<String>,
    pub preset: Option<Preset>,
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias: Option<OwnedRoomAliasId>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    /// `(type, state_key, content)`
    pub initial_state: Vec<(String, String, Value)>,
    pub power_level_override: Option<Value>,
    pub creation_content: Option<Value>,
    /// The creator's displayname and avatar for their join event.
    pub profile: (Option<String>, Option<String>),
}

impl Rooms {
    /// A timestamp for a create event: now, or one past the previous one.
    fn next_create_ts(&self) -> u64 {
        let now = paracord_core::time::now_ms();
        let mut last = self.last_create_ts.lock();
        *last = (*last + 1).max(now);
        *last
    }

    /// Creates a room and returns its id.
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = req
            .version
            .clone()
            .unwrap_or_else(|| self.config.default_room_version.clone());
        if !SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::UnsupportedRoomVersion,
                format!("room version {version} is not supported"),
            ));
        }
        if let Some(alias) = &req.alias {
            if self.resolve_alias(alias)?.is_some() {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ErrorKind::RoomInUse,
                    "room alias already taken",
                ));
            }
        }
        let rules = rules_for(&version)?;
        let v12 = rules.authorization.room_create_event_id_as_room_id;

        // m.room.create
        let mut create_content = match req.creation_content.clone() {
            Some(Value::Object(o)) => o,
            Some(_) => return Err(Error::bad_json("creation_content must be an object")),
            None => serde_json::Map::new(),
        };
        create_content.insert("room_version".into(), json!(version));
        // Room version 12 (MSC4289): creators besides the sender are named in the create
        // event; in a trusted private chat the invitees are creators too. Creators hold
        // their power through the create event and may not be listed in power levels.
        let mut creators: Vec<OwnedUserId> = vec![creator.to_owned()];
        if rules.authorization.additional_room_creators {
            let mut additional = additional_creators(create_content.get("additional_creators"))?;
            if req.preset == Some(Preset::TrustedPrivateChat) {
                for u in &req.invite {
                    if !additional.contains(u) && u != creator {
                        additional.push(u.clone());
                    }
                }
            }
            if additional.is_empty() {
                create_content.remove("additional_creators");
            } else {
                create_content.insert("additional_creators".into(), json!(additional));
            }
            creators.extend(additional);
        }
        if rules.authorization.explicitly_privilege_room_creators {
            if let Some(users) = req
                .power_level_override
                .as_ref()
                .and_then(|o| o.get("users"))
                .and_then(Value::as_object)
            {
                if let Some(c) = creators.iter().find(|c| users.contains_key(c.as_str())) {
                    return Err(Error::bad_json(format!(
                        "{c} is a creator of the room: creators are not listed in power levels"
                    )));
                }
            }
        }
        if rules.authorization.use_room_create_sender {
            create_content.remove("creator");
        } else {
            create_content.insert("creator".into(), json!(creator));
        }
        let new = NewEvent::state(
            TimelineEventType::RoomCreate,
            "",
            Value::Object(create_content),
        );
        let mut obj = CanonicalJsonObject::new();
        let room_id = if v12 {
            None
        } else {
            let local: String = crate::random::random_string(18);
            let id = OwnedRoomId::try_from(format!("!{local}:{}", self.config.server_name))
                .map_err(Error::internal)?;
            obj.insert("room_id".into(), CanonicalJsonValue::String(id.to_string()));
            Some(id)
        };
        self.fill_common(&mut obj, creator, &new, vec![], vec![], 1, &rules)?;
        // In v12 the room id is the create event's hash: two identical create events (same
        // creator and content in the same millisecond) would be the same room. Create events
        // of this server get strictly increasing timestamps.
        obj.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(self.next_create_ts()).map_err(Error::internal)?,
            ),
        );
        let (event_id, pdu, bytes) = self.sign(obj, &rules, room_id.as_deref())?;
        let room_id = match room_id {
            Some(r) => r,
            None => {
                OwnedRoomId::try_from(format!("!{}", event_id.as_str().trim_start_matches('$')))
                    .map_err(Error::internal)?
            }
        };
        if self.room(&room_id)?.is_some() {
            return Err(Error::internal(format!("room id {room_id} already exists")));
        }
        let empty = super::StateMap::new();
        self.authorize(&rules, &pdu, &empty)?;
        let record = RoomRecord {
            version: version.clone(),
            extremities: vec![],
            state: 0,
            depth: 0,
            last_pos: 0,
            holes: Vec::new(),
            gaps: Vec::new(),
            backfill_next: 0,
            backfill_floor: 0,
        };
        let (_, follow_ups) = self.commit_event(
            &room_id,
            record,
            &empty,
            pdu,
            bytes,
            event_id,
            super::Local::default(),
            None,
            vec![],
        )?;
        hooks::run(follow_ups).await;

        // The creator joins.
        let mut member = json!({ "membership": "join" });
        if let Some(d) = &req.profile.0 {
            member["displayname"] = json!(d);
        }
        if let Some(a) = &req.profile.1 {
            member["avatar_url"] = json!(a);
        }
        self.append(
            &room_id,
            creator,
            NewEvent::state(TimelineEventType::RoomMember, creator.as_str(), member),
        )
        .await?;

        // Power levels.
        let preset = req.preset.unwrap_or(if req.public {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        });
        let mut users = serde_json::Map::new();
        if !v12 {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == Preset::TrustedPrivateChat && !v12 {
            for u in &req.invite {
                users.insert(u.to_string(), json!(100));
            }
        }
        let mut pl = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": if v12 { 150 } else { 100 },
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            // Anyone invited to a private room may invite others; in a public room that
            // takes a moderator (as other servers' presets do).
            "invite": if preset == Preset::PublicChat { 50 } else { 0 },
            "notifications": { "room": 50 },
        });
        if let Some(over) = &req.power_level_override {
            let Some(over) = over.as_object() else {
                return Err(Error::bad_json(
                    "power_level_content_override must be an object",
                ));
            };
            for (k, v) in over {
                pl[k] = v.clone();
            }
        }
        self.append(
            &room_id,
            creator,
            NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl),
        )
        .await?;

        if let Some(alias) = &req.alias {
            self.set_alias(alias, &room_id, creator)?;
            self.append(
                &room_id,
                creator,
                NewEvent::state(
                    TimelineEventType::RoomCanonicalAlias,
                    "",
                    json!({ "alias": alias }),
                ),
            )
            .await?;
        }

        let join_rule = match preset {
            Preset::PublicChat => "public",
            _ => "invite",
        };
        let mut preset_state = vec![
            (
                "m.room.join_rules".to_owned(),
                String::new(),
                json!({ "join_rule": join_rule }),
            ),
            (
                "m.room.history_visibility".to_owned(),
                String::new(),
                json!({ "history_visibility": "shared" }),
            ),
        ];
        // Guests may join private chats; a public room has no guest access event (its
        // absence means `forbidden`), as with other servers' presets.
        if preset != Preset::PublicChat {
            preset_state.push((
                "m.room.guest_access".to_owned(),
                String::new(),
                json!({ "guest_access": "can_join" }),
            ));
        }
        // initial_state overrides the preset for the same (type, state_key).
        preset_state.retain(|(t, k, _)| {
            !req.initial_state
                .iter()
                .any(|(it, ik, _)| it == t && ik == k)
        });
        for (t, k, c) in preset_state.into_iter().chain(req.initial_state.clone()) {
            if t == "m.room.create" || t == "m.room.member" || t == "m.room.power_levels" {
                return Err(Error::bad_json(format!(
                    "initial_state may not contain {t}"
                )));
            }
            self.append(&room_id, creator, NewEvent::state(t.as_str().into(), &k, c))
                .await?;
        }
        if let Some(name) = &req.name {
            self.append(
                &room_id,
                creator,
                NewEvent::state(TimelineEventType::RoomName, "", json!({ "name": name })),
            )
            .await?;
        }
        if let Some(topic) = &req.topic {
            self.append(
                &room_id,
                creator,
                // The plain topic and its rich form (`m.topic`, spec v1.15).
                NewEvent::state(
                    TimelineEventType::RoomTopic,
                    "",
                    json!({
                        "topic": topic,
                        "m.topic": { "m.text": [{ "body": topic, "mimetype": "text/plain" }] },
                    }),
                ),
            )
            .await?;
        }
        // Users of other servers are invited over federation by the caller, once the room
        // exists.
        for u in req
            .invite
            .iter()
            .filter(|u| u.server_name() == self.config.server_name.as_str())
        {
            self.invite(&room_id, creator, u, None, req.is_direct)
                .await?;
        }
        if req.public {
            self.set_published(&room_id, true)?;
        }
        Ok(room_id)
    }
}

/// The `additional_creators` of a create event's content (room version 12): user ids, else a
/// 400 naming what is wrong.
pub(crate) fn additional_creators(v: Option<&Value>) -> Result<Vec<OwnedUserId>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| Error::bad_json("additional_creators must be an array of user ids"))?;
    let mut out: Vec<OwnedUserId> = Vec::new();
    for item in list {
        let id = item
            .as_str()
            .and_then(|s| OwnedUserId::try_from(s).ok())
            .ok_or_else(|| {
                Error::bad_json(format!("additional_creators: {item} is not a user id"))
            })?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}
