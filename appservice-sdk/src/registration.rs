//! The registration file: what the homeserver reads to know the appservice.
//!
//! The type is ruma's [`ruma::api::appservice::Registration`] (the same one Paracord reads
//! the file with), wrapped to add generation with random tokens, loading and saving.

use std::{ops::Deref, path::Path};

use rand::{distributions::Alphanumeric, Rng};
use ruma::api::appservice::{Namespace, Namespaces, RegistrationInit};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// An appservice registration (spec: "Registration"), as YAML, with the unstable keys
/// ruma's type does not have.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    #[serde(flatten)]
    inner: ruma::api::appservice::Registration,
    /// `org.matrix.msc3202`: the homeserver sends its users' device list changes, one-time
    /// key counts and to-device messages in transactions (what an encrypted bot needs).
    #[serde(
        rename = "org.matrix.msc3202",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    msc3202: bool,
}

/// A random token of 64 alphanumeric characters (about 380 bits).
pub fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

/// An exclusive namespace of users. Either a regex of whole user ids
/// (`user_namespace("@irc_.*:example\\.org")`), or, without the leading `@`, a regex of
/// localparts on any server (`user_namespace("irc_.*")` is `@irc_.*:.*`); see
/// [`user_namespace_on`] to name the server. The homeserver matches the whole id.
pub fn user_namespace(regex: &str) -> NamespaceEntry {
    NamespaceEntry::new(Kind::Users, &whole_id('@', regex))
}

/// An exclusive namespace of users with localparts matching `localpart_regex` on
/// `server_name` (escaped): `user_namespace_on("irc_.*", "example.org")` is
/// `@irc_.*:example\.org`.
pub fn user_namespace_on(localpart_regex: &str, server_name: &str) -> NamespaceEntry {
    NamespaceEntry::new(
        Kind::Users,
        &format!("@{localpart_regex}:{}", escape(server_name)),
    )
}

/// An exclusive namespace of room aliases: a regex of whole aliases
/// (`#irc_.*:example\\.org`), or without the leading `#`, of their localparts on any server.
pub fn alias_namespace(regex: &str) -> NamespaceEntry {
    NamespaceEntry::new(Kind::Aliases, &whole_id('#', regex))
}

/// An exclusive namespace of room aliases with localparts matching `localpart_regex` on
/// `server_name` (escaped).
pub fn alias_namespace_on(localpart_regex: &str, server_name: &str) -> NamespaceEntry {
    NamespaceEntry::new(
        Kind::Aliases,
        &format!("#{localpart_regex}:{}", escape(server_name)),
    )
}

/// A namespace of room ids (events of those rooms are sent to the appservice).
pub fn room_namespace(regex: &str) -> NamespaceEntry {
    NamespaceEntry::new(Kind::Rooms, regex)
}

fn whole_id(sigil: char, regex: &str) -> String {
    if regex.starts_with(sigil) {
        regex.to_owned()
    } else {
        format!("{sigil}{regex}:.*")
    }
}

/// Escapes the regex metacharacters of a server name (`.` and, in IPv6 literals, `[`, `]`).
fn escape(server_name: &str) -> String {
    let mut out = String::with_capacity(server_name.len() + 4);
    for c in server_name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Users,
    Aliases,
    Rooms,
}

/// One namespace for [`Registration::generate`]: exclusive unless [`NamespaceEntry::shared`].
#[derive(Debug, Clone)]
pub struct NamespaceEntry {
    kind: Kind,
    regex: String,
    exclusive: bool,
}

impl NamespaceEntry {
    fn new(kind: Kind, regex: &str) -> Self {
        Self {
            kind,
            regex: regex.to_owned(),
            exclusive: true,
        }
    }

    /// Not exclusive: others may also create users or aliases that match.
    pub fn shared(mut self) -> Self {
        self.exclusive = false;
        self
    }
}

impl Registration {
    /// A registration with fresh random `as_token` and `hs_token`, not rate limited.
    /// `url` is where the appservice listens (`None`: the homeserver pushes nothing).
    pub fn generate(
        id: &str,
        url: Option<&str>,
        sender_localpart: &str,
        namespaces: impl IntoIterator<Item = NamespaceEntry>,
    ) -> Self {
        let mut ns = Namespaces::new();
        for n in namespaces {
            let entry = Namespace::new(n.exclusive, n.regex);
            match n.kind {
                Kind::Users => ns.users.push(entry),
                Kind::Aliases => ns.aliases.push(entry),
                Kind::Rooms => ns.rooms.push(entry),
            }
        }
        let inner: ruma::api::appservice::Registration = RegistrationInit {
            id: id.to_owned(),
            url: url.map(str::to_owned),
            as_token: random_token(),
            hs_token: random_token(),
            sender_localpart: sender_localpart.to_owned(),
            namespaces: ns,
            rate_limited: Some(false),
            protocols: None,
        }
        .into();
        inner.into()
    }

    /// Parses a registration from YAML (JSON is YAML too).
    pub fn from_yaml(text: &str) -> Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }

    /// Reads a registration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_yaml(&std::fs::read_to_string(path)?)
    }

    /// The registration as YAML, for the homeserver's appservice directory.
    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Writes [`Registration::to_yaml`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        std::fs::write(path, self.to_yaml()?)?;
        Ok(())
    }

    /// Sets where the appservice listens.
    pub fn set_url(&mut self, url: Option<&str>) {
        self.inner.url = url.map(str::to_owned);
    }

    /// The ruma type.
    pub fn into_inner(self) -> ruma::api::appservice::Registration {
        self.inner
    }

    /// Whether the registration asks for MSC3202's device data in transactions
    /// (`org.matrix.msc3202`).
    pub fn msc3202(&self) -> bool {
        self.msc3202
    }

    /// Asks for (or stops asking for) MSC3202's device data in transactions: device list
    /// changes, one-time key counts and to-device messages, which the `e2ee` feature needs.
    pub fn set_msc3202(&mut self, on: bool) {
        self.msc3202 = on;
    }
}

impl Deref for Registration {
    type Target = ruma::api::appservice::Registration;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl From<ruma::api::appservice::Registration> for Registration {
    fn from(r: ruma::api::appservice::Registration) -> Self {
        Registration {
            inner: r,
            msc3202: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Registration {
        Registration::generate(
            "irc",
            Some("http://127.0.0.1:29318"),
            "ircbot",
            [
                user_namespace("@irc_.*:example\\.org"),
                alias_namespace("#irc_.*:example\\.org").shared(),
            ],
        )
    }

    #[test]
    fn generated_tokens_are_random_and_distinct() {
        let (a, b) = (sample(), sample());
        assert_eq!(a.as_token.len(), 64);
        assert_ne!(a.as_token, a.hs_token);
        assert_ne!(a.as_token, b.as_token);
        assert_ne!(a.hs_token, b.hs_token);
    }

    #[test]
    fn yaml_round_trip_keeps_every_field() {
        let r = sample();
        let yaml = r.to_yaml().unwrap();
        let back = Registration::from_yaml(&yaml).unwrap();
        assert_eq!(back.id, "irc");
        assert_eq!(back.url.as_deref(), Some("http://127.0.0.1:29318"));
        assert_eq!(back.as_token, r.as_token);
        assert_eq!(back.hs_token, r.hs_token);
        assert_eq!(back.sender_localpart, "ircbot");
        assert_eq!(back.rate_limited, Some(false));
        assert_eq!(back.namespaces.users.len(), 1);
        assert_eq!(back.namespaces.users[0].regex, "@irc_.*:example\\.org");
        assert!(back.namespaces.users[0].exclusive);
        assert!(!back.namespaces.aliases[0].exclusive);
        assert!(back.namespaces.rooms.is_empty());
        assert_eq!(back.to_yaml().unwrap(), yaml);
    }

    /// `org.matrix.msc3202` (not in ruma's type) is read, written only when set, and kept
    /// through a round trip, as Paracord reads it.
    #[test]
    fn the_msc3202_key_round_trips() {
        let mut r = sample();
        assert!(!r.msc3202());
        assert!(!r.to_yaml().unwrap().contains("msc3202"));
        r.set_msc3202(true);
        let yaml = r.to_yaml().unwrap();
        assert!(yaml.contains("org.matrix.msc3202: true"), "{yaml}");
        let back = Registration::from_yaml(&yaml).unwrap();
        assert!(back.msc3202());
        assert_eq!(back.as_token, r.as_token);
        let plain = Registration::from_yaml(
            "id: x\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: b\n\
             namespaces: {}\norg.matrix.msc3202: true\n",
        )
        .unwrap();
        assert!(plain.msc3202());
    }

    #[test]
    fn reads_a_hand_written_file_with_a_null_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        std::fs::write(
            &path,
            "id: hook\nurl: null\nas_token: a\nhs_token: h\nsender_localpart: hookbot\nnamespaces:\n  users: []\n",
        )
        .unwrap();
        let r = Registration::load(&path).unwrap();
        assert_eq!(r.url, None);
        assert_eq!(r.sender_localpart, "hookbot");
        // `url` must be present (null or a string): a file without it is refused.
        assert!(Registration::from_yaml(
            "id: x\nas_token: a\nhs_token: h\nsender_localpart: b\nnamespaces: {}\n"
        )
        .is_err());
    }

    #[test]
    fn namespace_helpers_make_whole_id_regexes() {
        let r = Registration::generate(
            "n",
            None,
            "nbot",
            [
                user_namespace("irc_.*"),
                user_namespace("@x_.*:a\\.b"),
                user_namespace_on("tg_.*", "chat.example.org:8448"),
                alias_namespace("irc_.*"),
                alias_namespace_on("tg_.*", "[::1]:8448"),
                room_namespace("!abc:example\\.org"),
            ],
        );
        let users: Vec<_> = r
            .namespaces
            .users
            .iter()
            .map(|n| n.regex.as_str())
            .collect();
        assert_eq!(
            users,
            [
                "@irc_.*:.*",
                "@x_.*:a\\.b",
                "@tg_.*:chat\\.example\\.org:8448"
            ]
        );
        let aliases: Vec<_> = r
            .namespaces
            .aliases
            .iter()
            .map(|n| n.regex.as_str())
            .collect();
        assert_eq!(aliases, ["#irc_.*:.*", "#tg_.*:\\[::1\\]:8448"]);
        assert_eq!(r.namespaces.rooms[0].regex, "!abc:example\\.org");
        assert_eq!(r.url, None);
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        let r = sample();
        r.save(&path).unwrap();
        assert_eq!(Registration::load(&path).unwrap().as_token, r.as_token);
    }
}
