//! Guild permissions (spec/guilds.md): Discord's permission bits, the effective-permission
//! algorithm (owner, @everyone and roles, ADMINISTRATOR, channel overwrites in their fixed
//! order, hidden channels, implicit denials, timeouts) and the role hierarchy rules.
//!
//! Pure functions over plain data, so they are the same wherever they are used: the REST
//! extension, the projection onto power levels, and the checks of submitted events.

use std::collections::BTreeMap;

/// A set of permission bits, with Discord's numbering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Permissions(pub u64);

macro_rules! flags {
    ($($name:ident = $bit:expr;)*) => {
        impl Permissions {
            $(pub const $name: Permissions = Permissions(1 << $bit);)*
            /// Every flag this profile names, with its name.
            pub const NAMED: &'static [(&'static str, Permissions)] =
                &[$((stringify!($name), Permissions::$name)),*];
        }
    };
}

flags! {
    CREATE_INSTANT_INVITE = 0;
    KICK_MEMBERS = 1;
    BAN_MEMBERS = 2;
    ADMINISTRATOR = 3;
    MANAGE_CHANNELS = 4;
    MANAGE_GUILD = 5;
    ADD_REACTIONS = 6;
    VIEW_AUDIT_LOG = 7;
    PRIORITY_SPEAKER = 8;
    STREAM = 9;
    VIEW_CHANNEL = 10;
    SEND_MESSAGES = 11;
    SEND_TTS_MESSAGES = 12;
    MANAGE_MESSAGES = 13;
    EMBED_LINKS = 14;
    ATTACH_FILES = 15;
    READ_MESSAGE_HISTORY = 16;
    MENTION_EVERYONE = 17;
    USE_EXTERNAL_EMOJIS = 18;
    CONNECT = 20;
    SPEAK = 21;
    MUTE_MEMBERS = 22;
    DEAFEN_MEMBERS = 23;
    MOVE_MEMBERS = 24;
    CHANGE_NICKNAME = 26;
    MANAGE_NICKNAMES = 27;
    MANAGE_ROLES = 28;
    MANAGE_WEBHOOKS = 29;
    MANAGE_GUILD_EXPRESSIONS = 30;
    USE_APPLICATION_COMMANDS = 31;
    MANAGE_EVENTS = 33;
    MANAGE_THREADS = 34;
    CREATE_PUBLIC_THREADS = 35;
    CREATE_PRIVATE_THREADS = 36;
    SEND_MESSAGES_IN_THREADS = 38;
    MODERATE_MEMBERS = 40;
    SEND_POLLS = 49;
}

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    pub const ALL: Permissions = Permissions(u64::MAX);

    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    pub fn without(self, other: Permissions) -> Permissions {
        Permissions(self.0 & !other.0)
    }

    /// Parses the profile's wire form, a decimal string of a u64.
    pub fn parse(s: &str) -> Option<Permissions> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().map(Permissions)
    }

    /// The wire form: a decimal string.
    pub fn to_wire(self) -> String {
        self.0.to_string()
    }

    /// What sending needs to carry with it: without SEND_MESSAGES these go too.
    const NEEDS_SEND: Permissions = Permissions(
        Self::SEND_TTS_MESSAGES.0
            | Self::MENTION_EVERYONE.0
            | Self::ATTACH_FILES.0
            | Self::EMBED_LINKS.0,
    );

    /// What a timed-out member keeps.
    const DURING_TIMEOUT: Permissions =
        Permissions(Self::VIEW_CHANNEL.0 | Self::READ_MESSAGE_HISTORY.0);
}

impl std::ops::BitOr for Permissions {
    type Output = Permissions;

    fn bitor(self, other: Permissions) -> Permissions {
        self.union(other)
    }
}

/// A channel permission overwrite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overwrite {
    pub allow: Permissions,
    pub deny: Permissions,
}

impl Overwrite {
    fn apply(self, p: Permissions) -> Permissions {
        p.without(self.deny).union(self.allow)
    }
}

/// A role as the algorithm needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub position: i64,
    pub permissions: Permissions,
}

/// The id of the @everyone role.
pub const EVERYONE: &str = "everyone";

/// A guild's roles and owner.
#[derive(Clone, Debug, Default)]
pub struct Guild {
    pub owner: String,
    /// Role id → role; the @everyone role is [`EVERYONE`].
    pub roles: BTreeMap<String, Role>,
}

/// A member as the algorithm needs it.
#[derive(Clone, Debug, Default)]
pub struct Member {
    pub user_id: String,
    pub roles: Vec<String>,
    /// Timed out until then (ms since the epoch).
    pub communication_disabled_until: Option<u64>,
}

/// A channel's overwrites: by role id and by user id.
#[derive(Clone, Debug, Default)]
pub struct ChannelOverwrites {
    pub roles: BTreeMap<String, Overwrite>,
    pub users: BTreeMap<String, Overwrite>,
}

impl Guild {
    fn role_permissions(&self, id: &str) -> Permissions {
        self.roles
            .get(id)
            .map(|r| r.permissions)
            .unwrap_or_default()
    }

    /// Guild-wide permissions: the owner has all; otherwise @everyone and every assigned
    /// role, and ADMINISTRATOR means all.
    pub fn base_permissions(&self, member: &Member) -> Permissions {
        if member.user_id == self.owner {
            return Permissions::ALL;
        }
        let mut p = self.role_permissions(EVERYONE);
        for r in &member.roles {
            p = p.union(self.role_permissions(r));
        }
        if p.contains(Permissions::ADMINISTRATOR) {
            return Permissions::ALL;
        }
        p
    }

    /// The member's permissions in a channel at time `now` (ms): the guild-wide ones, then the
    /// channel's overwrites in their fixed order (@everyone, the member's roles together, the
    /// member), then the implicit rules (a hidden channel grants nothing; no sending, no
    /// sending extras) and a timeout.
    pub fn channel_permissions(
        &self,
        member: &Member,
        overwrites: &ChannelOverwrites,
        now: u64,
    ) -> Permissions {
        let base = self.base_permissions(member);
        if base == Permissions::ALL {
            return Permissions::ALL;
        }
        let mut p = base;
        if let Some(o) = overwrites.roles.get(EVERYONE) {
            p = o.apply(p);
        }
        let mut roles = Overwrite::default();
        for r in member.roles.iter().filter(|r| r.as_str() != EVERYONE) {
            if let Some(o) = overwrites.roles.get(r) {
                roles.allow = roles.allow.union(o.allow);
                roles.deny = roles.deny.union(o.deny);
            }
        }
        p = roles.apply(p);
        if let Some(o) = overwrites.users.get(&member.user_id) {
            p = o.apply(p);
        }
        if !p.contains(Permissions::VIEW_CHANNEL) {
            return Permissions::NONE;
        }
        if !p.contains(Permissions::SEND_MESSAGES) {
            p = p.without(Permissions::NEEDS_SEND);
        }
        if member.communication_disabled_until.is_some_and(|t| t > now) {
            p = Permissions(p.0 & Permissions::DURING_TIMEOUT.0);
        }
        p
    }

    /// The position of the member's highest role (@everyone's, 0, when none); the owner is
    /// above every role.
    pub fn highest_position(&self, member: &Member) -> i64 {
        if member.user_id == self.owner {
            return i64::MAX;
        }
        member
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .map(|r| r.position)
            .chain(self.roles.get(EVERYONE).map(|r| r.position))
            .max()
            .unwrap_or(0)
    }

    /// Whether `actor` may create, edit, delete, assign or unassign a role at `position`
    /// granting `permissions`: the owner may; others need MANAGE_ROLES, a highest role
    /// strictly above it, and every permission they would grant.
    pub fn may_manage_role(&self, actor: &Member, position: i64, permissions: Permissions) -> bool {
        if actor.user_id == self.owner {
            return true;
        }
        let base = self.base_permissions(actor);
        base.contains(Permissions::MANAGE_ROLES)
            && self.highest_position(actor) > position
            && base.contains(permissions)
    }

    /// Whether `actor` may act on `target` (kick, ban, timeout, change nickname): never on
    /// the owner, and only from a highest role strictly above the target's.
    pub fn outranks(&self, actor: &Member, target: &Member) -> bool {
        target.user_id != self.owner
            && (actor.user_id == self.owner
                || self.highest_position(actor) > self.highest_position(target))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const P: fn(&[Permissions]) -> Permissions =
        |ps| ps.iter().fold(Permissions::NONE, |a, b| a.union(*b));

    fn guild() -> Guild {
        let mut roles = BTreeMap::new();
        roles.insert(
            EVERYONE.to_owned(),
            Role {
                position: 0,
                permissions: P(&[
                    Permissions::VIEW_CHANNEL,
                    Permissions::SEND_MESSAGES,
                    Permissions::READ_MESSAGE_HISTORY,
                    Permissions::ADD_REACTIONS,
                    Permissions::EMBED_LINKS,
                    Permissions::ATTACH_FILES,
                ]),
            },
        );
        roles.insert(
            "mod".to_owned(),
            Role {
                position: 5,
                permissions: P(&[
                    Permissions::MANAGE_MESSAGES,
                    Permissions::KICK_MEMBERS,
                    Permissions::MANAGE_ROLES,
                    Permissions::MODERATE_MEMBERS,
                ]),
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
            "muted".to_owned(),
            Role {
                position: 1,
                permissions: Permissions::NONE,
            },
        );
        roles.insert(
            "helper".to_owned(),
            Role {
                position: 2,
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

    fn ow(allow: &[Permissions], deny: &[Permissions]) -> Overwrite {
        Overwrite {
            allow: P(allow),
            deny: P(deny),
        }
    }

    const SEND: Permissions = Permissions::SEND_MESSAGES;
    const VIEW: Permissions = Permissions::VIEW_CHANNEL;

    #[test]
    fn permissions_parse_and_print_as_decimal_strings() {
        assert_eq!(Permissions::parse("2048"), Some(SEND));
        assert_eq!(
            Permissions::parse("18446744073709551615"),
            Some(Permissions::ALL)
        );
        for bad in ["", "-1", "1e3", " 1", "18446744073709551616", "0x10"] {
            assert_eq!(Permissions::parse(bad), None, "{bad:?}");
        }
        assert_eq!(SEND.to_wire(), "2048");
        assert_eq!(Permissions::ADMINISTRATOR.0, 8);
        assert_eq!(Permissions::VIEW_CHANNEL.0, 1024);
        assert_eq!(Permissions::SEND_POLLS.0, 1 << 49);
    }

    #[test]
    fn the_owner_and_administrators_have_everything_whatever_the_overwrites() {
        let g = guild();
        let mut o = ChannelOverwrites::default();
        o.roles.insert(EVERYONE.into(), ow(&[], &[VIEW, SEND]));
        o.users.insert("@owner:x".into(), ow(&[], &[VIEW]));
        o.users.insert("@admin:x".into(), ow(&[], &[VIEW]));
        let owner = member("@owner:x", &[]);
        let admin = member("@admin:x", &["admin"]);
        assert_eq!(g.base_permissions(&owner), Permissions::ALL);
        assert_eq!(g.channel_permissions(&owner, &o, 0), Permissions::ALL);
        assert_eq!(g.base_permissions(&admin), Permissions::ALL);
        assert_eq!(g.channel_permissions(&admin, &o, 0), Permissions::ALL);
        // A timeout does not bind the owner or an administrator either.
        let mut timed = admin.clone();
        timed.communication_disabled_until = Some(100);
        assert_eq!(g.channel_permissions(&timed, &o, 50), Permissions::ALL);
    }

    #[test]
    fn base_permissions_are_everyone_and_every_assigned_role() {
        let g = guild();
        let plain = member("@a:x", &[]);
        let m = member("@m:x", &["mod", "unknown-role"]);
        assert!(g.base_permissions(&plain).contains(SEND));
        assert!(!g
            .base_permissions(&plain)
            .contains(Permissions::KICK_MEMBERS));
        let mp = g.base_permissions(&m);
        assert!(mp.contains(SEND) && mp.contains(Permissions::KICK_MEMBERS));
        assert!(!mp.contains(Permissions::ADMINISTRATOR));
    }

    /// Every order case of the three overwrite layers: for each of @everyone, the roles and
    /// the member allowing, denying or leaving SEND_MESSAGES, the last layer that says
    /// something wins (roles combined: an allow by any role beats a deny by another).
    #[test]
    fn overwrites_apply_everyone_then_roles_then_the_member() {
        let g = guild();
        #[derive(Clone, Copy, Debug)]
        enum Say {
            Nothing,
            Allow,
            Deny,
        }
        let says = [Say::Nothing, Say::Allow, Say::Deny];
        let to_ow = |s: Say| match s {
            Say::Nothing => None,
            Say::Allow => Some(ow(&[SEND], &[])),
            Say::Deny => Some(ow(&[], &[SEND])),
        };
        for base_has_send in [true, false] {
            let mut g = g.clone();
            if !base_has_send {
                let e = g.roles.get_mut(EVERYONE).unwrap();
                e.permissions = e.permissions.without(SEND);
            }
            for e in says {
                for r in says {
                    for u in says {
                        let mut o = ChannelOverwrites::default();
                        if let Some(x) = to_ow(e) {
                            o.roles.insert(EVERYONE.into(), x);
                        }
                        if let Some(x) = to_ow(r) {
                            o.roles.insert("helper".into(), x);
                        }
                        if let Some(x) = to_ow(u) {
                            o.users.insert("@a:x".into(), x);
                        }
                        let got = g
                            .channel_permissions(&member("@a:x", &["helper"]), &o, 0)
                            .contains(SEND);
                        let expected = [u, r, e]
                            .iter()
                            .find_map(|s| match s {
                                Say::Nothing => None,
                                Say::Allow => Some(true),
                                Say::Deny => Some(false),
                            })
                            .unwrap_or(base_has_send);
                        assert_eq!(
                            got, expected,
                            "base send {base_has_send}, @everyone {e:?}, role {r:?}, user {u:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn role_overwrites_combine_with_allow_beating_deny() {
        let g = guild();
        let mut o = ChannelOverwrites::default();
        o.roles.insert("muted".into(), ow(&[], &[SEND]));
        o.roles.insert("helper".into(), ow(&[SEND], &[]));
        let both = member("@a:x", &["muted", "helper"]);
        assert!(g.channel_permissions(&both, &o, 0).contains(SEND));
        let muted = member("@b:x", &["muted"]);
        assert!(!g.channel_permissions(&muted, &o, 0).contains(SEND));
    }

    #[test]
    fn a_channel_without_view_channel_grants_nothing() {
        let g = guild();
        let mut o = ChannelOverwrites::default();
        o.roles.insert(EVERYONE.into(), ow(&[], &[VIEW]));
        o.roles
            .insert("mod".into(), ow(&[SEND, Permissions::MANAGE_MESSAGES], &[]));
        let m = member("@m:x", &["mod"]);
        assert_eq!(g.channel_permissions(&m, &o, 0), Permissions::NONE);
        // Seen again through a role overwrite.
        o.roles.insert("helper".into(), ow(&[VIEW], &[]));
        let h = member("@h:x", &["helper"]);
        assert!(g.channel_permissions(&h, &o, 0).contains(VIEW | SEND));
    }

    #[test]
    fn without_send_messages_the_sending_extras_go_too() {
        let g = guild();
        let mut o = ChannelOverwrites::default();
        o.roles.insert(
            EVERYONE.into(),
            ow(&[Permissions::MENTION_EVERYONE], &[SEND]),
        );
        let p = g.channel_permissions(&member("@a:x", &[]), &o, 0);
        assert!(p.contains(VIEW) && p.contains(Permissions::ADD_REACTIONS));
        for gone in [
            SEND,
            Permissions::ATTACH_FILES,
            Permissions::EMBED_LINKS,
            Permissions::MENTION_EVERYONE,
            Permissions::SEND_TTS_MESSAGES,
        ] {
            assert!(
                !p.contains(gone),
                "{gone:?} should be gone without SEND_MESSAGES"
            );
        }
    }

    #[test]
    fn a_timed_out_member_reads_but_does_not_send_until_the_timeout_ends() {
        let g = guild();
        let o = ChannelOverwrites::default();
        let mut m = member("@m:x", &["mod"]);
        m.communication_disabled_until = Some(1_000);
        let during = g.channel_permissions(&m, &o, 999);
        assert_eq!(during, VIEW | Permissions::READ_MESSAGE_HISTORY);
        let after = g.channel_permissions(&m, &o, 1_000);
        assert!(after.contains(SEND) && after.contains(Permissions::KICK_MEMBERS));
    }

    #[test]
    fn roles_are_managed_only_from_above_and_never_beyond_ones_own_permissions() {
        let g = guild();
        let owner = member("@owner:x", &[]);
        let m = member("@m:x", &["mod"]);
        let plain = member("@a:x", &[]);
        assert!(g.may_manage_role(&owner, 100, Permissions::ALL));
        // Below their own position, permissions they hold.
        assert!(g.may_manage_role(&m, 4, Permissions::KICK_MEMBERS));
        // At or above their own position.
        assert!(!g.may_manage_role(&m, 5, Permissions::NONE));
        assert!(!g.may_manage_role(&m, 9, Permissions::NONE));
        // A permission they do not hold.
        assert!(!g.may_manage_role(&m, 1, Permissions::BAN_MEMBERS));
        // Without MANAGE_ROLES.
        assert!(!g.may_manage_role(&plain, -1, Permissions::NONE));
    }

    #[test]
    fn members_act_only_on_those_ranked_below_them_and_never_on_the_owner() {
        let g = guild();
        let owner = member("@owner:x", &[]);
        let admin = member("@ad:x", &["admin"]);
        let m = member("@m:x", &["mod"]);
        let m2 = member("@m2:x", &["mod", "helper"]);
        let plain = member("@a:x", &[]);
        assert!(g.outranks(&m, &plain));
        assert!(!g.outranks(&m, &m2), "same highest role");
        assert!(!g.outranks(&m, &admin));
        assert!(g.outranks(&admin, &m));
        assert!(!g.outranks(&admin, &owner));
        assert!(g.outranks(&owner, &admin));
        assert_eq!(g.highest_position(&m2), 5);
        assert_eq!(g.highest_position(&plain), 0);
    }
}
