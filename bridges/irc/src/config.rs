//! The bridge's configuration file (YAML).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use paracord_appservice::{alias_namespace_on, user_namespace_on, Error, Registration, Result};
use serde::Deserialize;

use crate::conn::ConnConfig;

/// The whole file. See `bridges/README.md` for an example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Where the homeserver's client-server API is (`http://127.0.0.1:8008`).
    pub(crate) homeserver_url: String,
    /// The homeserver's server name (the part after `:` in user ids).
    pub(crate) server_name: String,
    /// The registration file: written by `--generate`, read at start.
    pub(crate) registration: PathBuf,
    /// Where the appservice listens for the homeserver's transactions.
    pub(crate) listen: SocketAddr,
    /// The URL the homeserver reaches `listen` at (default `http://<listen>`).
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// The state file (portals, ghost nicks, puppets): JSON, rewritten atomically.
    pub(crate) state: PathBuf,
    /// The bridge bot's localpart.
    #[serde(default = "default_bot")]
    pub(crate) bot_localpart: String,
    /// Localpart prefix of IRC users' ghosts (`@irc_<nick>:server`) and of dynamic aliases
    /// (`#irc_<channel>:server`).
    #[serde(default = "default_prefix")]
    pub(crate) prefix: String,
    /// Whether joining `#<prefix><channel>:server` bridges IRC channel `#<channel>`.
    #[serde(default)]
    pub(crate) dynamic_aliases: bool,
    /// Fixed mappings: IRC channel → room id or alias the bot has been invited to.
    #[serde(default)]
    pub(crate) channels: BTreeMap<String, String>,
    /// The IRC network.
    pub(crate) irc: IrcConfig,
}

/// The IRC side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IrcConfig {
    pub(crate) host: String,
    #[serde(default = "default_port")]
    pub(crate) port: u16,
    /// TLS is not supported yet: `true` is refused at start.
    #[serde(default)]
    pub(crate) tls: bool,
    /// The server password (`PASS`), if the network needs one.
    #[serde(default)]
    pub(crate) password: Option<String>,
    /// The bridge bot's nick (it relays IRC to Matrix).
    #[serde(default = "default_bot_nick")]
    pub(crate) bot_nick: String,
    /// Put around Matrix users' nicks on IRC (`alice` → `alice[m]`).
    #[serde(default)]
    pub(crate) puppet_prefix: String,
    #[serde(default = "default_suffix")]
    pub(crate) puppet_suffix: String,
    /// The network's longest nick (`NICKLEN`).
    #[serde(default = "default_nick_len")]
    pub(crate) max_nick_length: usize,
    /// The first wait before reconnecting; doubled after each failed attempt…
    #[serde(default = "default_reconnect_initial")]
    pub(crate) reconnect_initial_ms: u64,
    /// …up to this.
    #[serde(default = "default_reconnect_max")]
    pub(crate) reconnect_max_ms: u64,
}

fn default_bot() -> String {
    "ircbot".into()
}
fn default_prefix() -> String {
    "irc_".into()
}
fn default_port() -> u16 {
    6667
}
fn default_bot_nick() -> String {
    "matrixbridge".into()
}
fn default_suffix() -> String {
    "[m]".into()
}
fn default_nick_len() -> usize {
    30
}
fn default_reconnect_initial() -> u64 {
    1_000
}
fn default_reconnect_max() -> u64 {
    300_000
}

impl Config {
    /// Reads and checks the file.
    pub(crate) fn load(path: &std::path::Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)?;
        let config: Config = serde_yaml::from_str(&text)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.irc.tls {
            return Err(Error::Invalid(String::from(
                "irc.tls: TLS connections are not supported yet; use a plain port (or a local \
                 TLS tunnel such as stunnel)",
            )));
        }
        if self.prefix.is_empty() {
            return Err(Error::Invalid("prefix must not be empty".into()));
        }
        for channel in self.channels.keys() {
            if !crate::proto::valid_channel(channel) {
                return Err(Error::Invalid(format!(
                    "channels: `{channel}` is not an IRC channel name (`#name`)"
                )));
            }
        }
        if self.irc.max_nick_length < 3 {
            return Err(Error::Invalid(
                "irc.max_nick_length must be at least 3".into(),
            ));
        }
        Ok(())
    }

    /// The URL in the registration.
    pub(crate) fn url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }

    /// A new registration: the bot, the ghosts' namespace, and (with dynamic aliases) the
    /// aliases' namespace, all exclusive.
    pub(crate) fn registration(&self) -> Registration {
        let escaped_prefix: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c.to_string()
                } else {
                    format!("\\{c}")
                }
            })
            .collect();
        let mut namespaces = vec![user_namespace_on(
            &format!("{escaped_prefix}.*"),
            &self.server_name,
        )];
        if self.dynamic_aliases {
            namespaces.push(alias_namespace_on(
                &format!("{escaped_prefix}.*"),
                &self.server_name,
            ));
        }
        Registration::generate("irc", Some(&self.url()), &self.bot_localpart, namespaces)
    }

    /// How a connection of the bridge reaches the IRC server as `nick`.
    pub(crate) fn conn(&self, nick: &str, username: &str, realname: &str) -> ConnConfig {
        ConnConfig {
            host: self.irc.host.clone(),
            port: self.irc.port,
            password: self.irc.password.clone(),
            nick: nick.to_owned(),
            username: username.to_owned(),
            realname: realname.to_owned(),
            max_nick_len: self.irc.max_nick_length,
            reconnect_initial: Duration::from_millis(self.irc.reconnect_initial_ms.max(1)),
            reconnect_max: Duration::from_millis(
                self.irc
                    .reconnect_max_ms
                    .max(self.irc.reconnect_initial_ms.max(1)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "
homeserver_url: http://127.0.0.1:8008
server_name: example.org
registration: irc.yaml
listen: 127.0.0.1:29320
state: irc-state.json
dynamic_aliases: true
channels:
  '#general': '!room:example.org'
irc:
  host: 127.0.0.1
  port: 6667
";

    #[test]
    fn reads_an_example_and_generates_its_registration() {
        let config: Config = serde_yaml::from_str(EXAMPLE).unwrap();
        config.check().unwrap();
        assert_eq!(config.irc.puppet_suffix, "[m]");
        assert_eq!(config.url(), "http://127.0.0.1:29320");
        let yaml = config.registration().to_yaml().unwrap();
        assert!(yaml.contains("sender_localpart: ircbot"), "{yaml}");
        assert!(yaml.contains("@irc_.*:example\\.org"), "{yaml}");
        assert!(yaml.contains("#irc_.*:example\\.org"), "{yaml}");
    }

    #[test]
    fn refuses_tls_and_bad_channels() {
        let mut config: Config = serde_yaml::from_str(EXAMPLE).unwrap();
        config.irc.tls = true;
        assert!(config.check().is_err());
        let mut config: Config = serde_yaml::from_str(EXAMPLE).unwrap();
        config.channels.insert("general".into(), "!r:x".into());
        assert!(config.check().is_err());
        assert!(serde_yaml::from_str::<Config>(&format!("{EXAMPLE}typo: 1\n")).is_err());
    }
}
