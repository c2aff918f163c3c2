//! The registration file: what the homeserver reads to know the appservice.
//!
//! The type is ruma's [`ruma::api::appservice::Registration`] (the same one Paracord reads
//! the file with), wrapped to add generation with random tokens, loading and saving.

use std::{ops::Deref, path::Path};

use rand::{distributions::Alphanumeric, Rng};
use ruma::api::appservice::{Namespace, Namespaces, RegistrationInit};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// An appservice registration (spec: "Registration"), as YAML.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Registration(ruma::api::appservice::Registration);

/// A random token of 64 alphanumeric characters (about 380 bits).
pub fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

/// An exclusive namespace of users, e.g. `user_namespace("@irc_.*:example\\.org")`.
/// The regex is matched against the whole user id by the homeserver.
pub fn user_namespace(regex: &str) -> NamespaceEntry {
    NamespaceEntry::new(Kind::Users, regex)
}

/// An exclusive namespace of room aliases, e.g. `alias_namespace("#irc_.*:example\\.org")`.
pub fn alias_namespace(regex: &str) -> NamespaceEntry {
    NamespaceEntry::new(Kind::Aliases, regex)
}

/// A namespace of room ids (events of those rooms are sent to the appservice).
pub fn room_namespace(regex: &str) -> NamespaceEntry {
    NamespaceEntry::new(Kind::Rooms, regex)
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
        Registration(
            RegistrationInit {
                id: id.to_owned(),
                url: url.map(str::to_owned),
                as_token: random_token(),
                hs_token: random_token(),
                sender_localpart: sender_localpart.to_owned(),
                namespaces: ns,
                rate_limited: Some(false),
                protocols: None,
            }
            .into(),
        )
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
        self.0.url = url.map(str::to_owned);
    }

    /// The ruma type.
    pub fn into_inner(self) -> ruma::api::appservice::Registration {
        self.0
    }
}

impl Deref for Registration {
    type Target = ruma::api::appservice::Registration;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<ruma::api::appservice::Registration> for Registration {
    fn from(r: ruma::api::appservice::Registration) -> Self {
        Registration(r)
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
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        let r = sample();
        r.save(&path).unwrap();
        assert_eq!(Registration::load(&path).unwrap().as_token, r.as_token);
    }
}
