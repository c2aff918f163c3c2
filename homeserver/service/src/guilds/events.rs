//! The profile's state event contents (spec/guilds.md), as the server reads and writes
//! them. Unknown fields are kept out of these types but never rejected: later profile
//! versions may add fields.

use serde::{Deserialize, Serialize};

use super::permissions::{Overwrite, Permissions, Role};

/// `chat.paracord.guild` (state key "") in the guild's space room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuildContent {
    pub version: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_channel: Option<String>,
}

/// What a channel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Text,
    Voice,
    Forum,
    Announcement,
    Category,
}

/// `chat.paracord.channel` (state key "") in a channel room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelContent {
    pub kind: ChannelKind,
    pub position: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsfw: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_user: Option<u64>,
}

/// `chat.paracord.role` (state key = role id) in the guild's space room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleContent {
    pub name: String,
    pub color: u32,
    pub position: i64,
    pub hoist: bool,
    pub mentionable: bool,
    /// A u64 as a decimal string.
    pub permissions: String,
    /// The application whose bot this role belongs to (spec/applications.md): a managed
    /// role, made when the application was added to the guild and deleted with it; nobody
    /// deletes, assigns or unassigns it by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

impl RoleContent {
    /// The role for the permission algorithm; `None` when the content is out of range
    /// (colour above 0xFFFFFF, permissions not a decimal u64).
    pub fn role(&self) -> Option<Role> {
        if self.color > 0xFF_FFFF {
            return None;
        }
        Some(Role {
            position: self.position,
            permissions: Permissions::parse(&self.permissions)?,
        })
    }
}

/// `chat.paracord.member` (state key `user:<user id>`: a state key starting with `@` could
/// only be sent by that user) in the guild's space room.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberContent {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub communication_disabled_until: Option<u64>,
}

/// `chat.paracord.overwrite` (state key `role:<id>` or `user:<id>`) in a channel room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverwriteContent {
    pub allow: String,
    pub deny: String,
}

impl OverwriteContent {
    /// `None` when either side is not a decimal u64.
    pub fn overwrite(&self) -> Option<Overwrite> {
        Some(Overwrite {
            allow: Permissions::parse(&self.allow)?,
            deny: Permissions::parse(&self.deny)?,
        })
    }
}

/// Who an overwrite's state key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverwriteTarget {
    Role(String),
    User(String),
}

impl OverwriteTarget {
    pub fn parse(state_key: &str) -> Option<OverwriteTarget> {
        match state_key.split_once(':') {
            Some(("role", id)) if !id.is_empty() => Some(OverwriteTarget::Role(id.to_owned())),
            Some(("user", id)) if id.starts_with('@') => Some(OverwriteTarget::User(id.to_owned())),
            _ => None,
        }
    }

    pub fn state_key(&self) -> String {
        match self {
            OverwriteTarget::Role(id) => format!("role:{id}"),
            OverwriteTarget::User(id) => format!("user:{id}"),
        }
    }
}

/// The state key of a member's `chat.paracord.member` event.
pub fn member_state_key(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// `chat.paracord.invite` (state key = invite code) in the guild's space room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteContent {
    pub channel: String,
    pub inviter: String,
    pub created_at: u64,
    /// Seconds; 0 = never expires.
    pub max_age: u64,
    /// 0 = unlimited.
    pub max_uses: u64,
    pub uses: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl InviteContent {
    /// Whether the invite can still be used at `now` (ms).
    pub fn usable(&self, now: u64) -> bool {
        !self.revoked
            && (self.max_uses == 0 || self.uses < self.max_uses)
            && (self.max_age == 0
                || now
                    < self
                        .created_at
                        .saturating_add(self.max_age.saturating_mul(1000)))
    }
}

/// `chat.paracord.webhook` (spec/webhooks.md §1.1), keyed by the webhook's id in its
/// channel; a deleted webhook's content is `{}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookContent {
    pub id: String,
    pub user_id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    pub creator: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every `chat.paracord.*` example in spec/guilds.md reads into its type, checks out,
    /// and prints back as the same JSON: the spec's examples are the golden files.
    #[test]
    fn the_spec_examples_are_read_and_written_unchanged() {
        // Compiled in, so a test binary reused from another checkout still reads this one's
        // spec (and an edit to the spec rebuilds the test).
        let text = include_str!("../../../../spec/guilds.md");
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for block in text.split("```json").skip(1) {
            let json = block.split("```").next().unwrap();
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let Some(kind) = v["type"]
                .as_str()
                .filter(|t| t.starts_with("chat.paracord."))
            else {
                continue;
            };
            let key = v["state_key"].as_str().unwrap();
            let content = v["content"].clone();
            fn round<T: serde::de::DeserializeOwned + Serialize>(c: &serde_json::Value) -> T {
                let t: T = serde_json::from_value(c.clone()).unwrap();
                assert_eq!(&serde_json::to_value(&t).unwrap(), c, "round trip of {c}");
                t
            }
            match kind {
                "chat.paracord.guild" => {
                    assert_eq!(key, "");
                    let g: GuildContent = round(&content);
                    assert_eq!(g.version, "1");
                }
                "chat.paracord.channel" => {
                    assert_eq!(key, "");
                    round::<ChannelContent>(&content);
                }
                "chat.paracord.role" => {
                    assert!(round::<RoleContent>(&content).role().is_some(), "{content}");
                }
                "chat.paracord.member" => {
                    assert!(key.starts_with("user:@"), "{key}");
                    round::<MemberContent>(&content);
                }
                "chat.paracord.overwrite" => {
                    assert!(OverwriteTarget::parse(key).is_some(), "{key}");
                    assert!(round::<OverwriteContent>(&content).overwrite().is_some());
                }
                "chat.paracord.invite" => {
                    round::<InviteContent>(&content);
                }
                other => panic!("an example of an event type this server does not know: {other}"),
            }
            *seen.entry(kind.to_owned()).or_default() += 1;
        }
        for kind in ["guild", "channel", "role", "member", "overwrite", "invite"] {
            assert!(
                seen.contains_key(&format!("chat.paracord.{kind}")),
                "no example of chat.paracord.{kind} in spec/guilds.md: {seen:?}"
            );
        }
    }

    #[test]
    fn overwrite_state_keys_name_a_role_or_a_user() {
        assert_eq!(
            OverwriteTarget::parse("role:mods"),
            Some(OverwriteTarget::Role("mods".into()))
        );
        assert_eq!(
            OverwriteTarget::parse("user:@a:x"),
            Some(OverwriteTarget::User("@a:x".into()))
        );
        for bad in ["", "role:", "user:a", "mods", "group:x"] {
            assert_eq!(OverwriteTarget::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            OverwriteTarget::User("@a:x".into()).state_key(),
            "user:@a:x"
        );
    }

    #[test]
    fn out_of_range_roles_and_overwrites_are_refused() {
        let role: RoleContent = serde_json::from_value(json!({
            "name": "x", "color": 0x1000000, "position": 1, "hoist": false,
            "mentionable": false, "permissions": "8",
        }))
        .unwrap();
        assert!(role.role().is_none());
        let ow = OverwriteContent {
            allow: "1".into(),
            deny: "-1".into(),
        };
        assert!(ow.overwrite().is_none());
        assert!(serde_json::from_value::<ChannelContent>(
            json!({ "kind": "stage", "position": 0 })
        )
        .is_err());
    }

    #[test]
    fn invites_expire_by_age_and_by_uses() {
        let inv = InviteContent {
            channel: "!c:x".into(),
            inviter: "@a:x".into(),
            created_at: 1_000,
            max_age: 60,
            max_uses: 2,
            uses: 1,
            revoked: false,
        };
        assert!(inv.usable(60_999));
        assert!(!inv.usable(61_000));
        assert!(!InviteContent {
            uses: 2,
            ..inv.clone()
        }
        .usable(2_000));
        assert!(!InviteContent {
            revoked: true,
            ..inv.clone()
        }
        .usable(2_000));
        assert!(InviteContent {
            max_age: 0,
            max_uses: 0,
            uses: 99,
            ..inv
        }
        .usable(u64::MAX));
    }
}
