//! The bridge's configuration file (YAML).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use paracord_appservice::{alias_namespace_on, user_namespace_on, Error, Registration, Result};
use serde::Deserialize;

use crate::conn::{ConnConfig, Tls};

/// A TLS client that trusts the system's CAs and `tls_ca_file`, for `host`.
fn tls_client(irc: &IrcConfig) -> Result<Tls> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = &irc.tls_ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| Error::Invalid(format!("irc.tls_ca_file {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                Error::Invalid(format!(
                    "irc.tls_ca_file {} is not PEM: {e}",
                    path.display()
                ))
            })?;
            roots
                .add(cert)
                .map_err(|e| Error::Invalid(format!("irc.tls_ca_file {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Invalid(format!(
                "irc.tls_ca_file {} holds no certificate",
                path.display()
            )));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = ServerName::try_from(irc.host.clone())
        .map_err(|e| Error::Invalid(format!("irc.host `{}` for TLS: {e}", irc.host)))?;
    Ok(Tls {
        connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        server_name,
    })
}

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
    /// Whether to speak TLS (the port is then the server's TLS port, often 6697).
    #[serde(default)]
    pub(crate) tls: bool,
    /// Certificates (PEM) to trust besides the system's CAs, e.g. a self-signed server's.
    #[serde(default)]
    pub(crate) tls_ca_file: Option<PathBuf>,
    /// Built from `tls` and `tls_ca_file` when the file is loaded.
    #[serde(skip)]
    pub(crate) tls_client: Option<Tls>,
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
        let mut config: Config = serde_yaml::from_str(&text)?;
        config.check()?;
        if config.irc.tls {
            config.irc.tls_client = Some(tls_client(&config.irc)?);
        }
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        if self.irc.tls_ca_file.is_some() && !self.irc.tls {
            return Err(Error::Invalid(
                "irc.tls_ca_file is set but irc.tls is false".into(),
            ));
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
            tls: self.irc.tls_client.clone(),
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
    fn tls_settings_and_bad_channels() {
        let mut config: Config = serde_yaml::from_str(EXAMPLE).unwrap();
        config.irc.tls_ca_file = Some("ca.pem".into());
        assert!(config.check().is_err(), "a CA file without tls");
        config.irc.tls = true;
        config.check().unwrap();
        assert!(
            tls_client(&config.irc).is_err(),
            "a CA file that does not exist"
        );
        config.irc.tls_ca_file = None;
        tls_client(&config.irc).unwrap();
        let mut config: Config = serde_yaml::from_str(EXAMPLE).unwrap();
        config.channels.insert("general".into(), "!r:x".into());
        assert!(config.check().is_err());
        assert!(serde_yaml::from_str::<Config>(&format!("{EXAMPLE}typo: 1\n")).is_err());
    }
}
