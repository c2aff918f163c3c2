//! Configuration: `config/paracord.toml` plus `PARACORD_*` environment variables.
//!
//! Every key is flat and top-level, so `PARACORD_<KEY IN UPPER CASE>` overrides it. The first
//! start without a config file writes a commented one (see [`TEMPLATE`]).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Deserializer, Serialize};

/// The server's configuration. See docs/configuration.md for every key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    #[serde(deserialize_with = "string_like")]
    pub server_name: String,
    pub listen: SocketAddr,
    #[serde(deserialize_with = "opt_string_like")]
    pub public_baseurl: Option<String>,
    pub data_dir: PathBuf,
    pub signing_key_path: Option<PathBuf>,
    /// How long other servers may cache this server's signing keys (`valid_until_ts`).
    pub key_validity_period_ms: u64,
    /// Earlier signing keys still published as `old_verify_keys` (besides those the server
    /// recorded itself when its key file changed).
    pub old_verify_keys: std::collections::BTreeMap<String, OldVerifyKey>,
    pub registration_enabled: bool,
    #[serde(deserialize_with = "opt_string_like")]
    pub registration_shared_secret: Option<String>,
    pub rate_limits_enabled: bool,
    pub rate_limit_auth_per_second: f64,
    pub rate_limit_auth_burst: u32,
    pub rate_limit_send_per_second: f64,
    pub rate_limit_send_burst: u32,
    /// Other actions of a user, each kind in its own bucket: creating rooms, membership
    /// changes, profile changes, reports.
    pub rate_limit_action_per_second: f64,
    pub rate_limit_action_burst: u32,
    /// Typing notices, presence and to-device messages of a user (chattier, so higher).
    pub rate_limit_ephemeral_per_second: f64,
    pub rate_limit_ephemeral_burst: u32,
    /// What fetching missing events, state and auth events for one incoming transaction may
    /// cost at most: bytes of answers, and time.
    pub federation_fetch_budget_bytes: usize,
    pub federation_fetch_budget_ms: u64,
    /// Whether the unauthenticated legacy media routes fetch other servers' media (off: they
    /// serve only what is cached here).
    pub legacy_media_fetches_remote: bool,
    /// Whether a write is on disk (fsynced) before the request that made it is answered.
    pub sync_writes: bool,
    /// Reverse proxies (CIDR ranges) whose `X-Forwarded-For` names the client's address.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    #[serde(deserialize_with = "string_like")]
    pub default_room_version: String,
    pub max_request_bytes: usize,
    pub refreshable_access_token_lifetime_ms: u64,
    /// Bytes of another server's media kept in the local cache; past it, that server's least
    /// recently used cached files are evicted.
    pub remote_media_cache_bytes_per_origin: u64,
    /// Widest and tallest image that is decoded for a thumbnail, in pixels.
    pub thumbnail_max_source_side: u32,
    /// Most memory one image decode for a thumbnail may allocate, in bytes.
    pub thumbnail_max_decode_bytes: u64,
    /// How many images are decoded for thumbnails at the same time.
    pub thumbnail_max_concurrent_decodes: usize,
    pub max_upload_bytes: usize,
    /// Address ranges (CIDR) the outbound guard lets the server reach although they are
    /// private or special (loopback, RFC 1918, link-local, …). In the environment, a
    /// comma-separated list or a TOML array.
    #[serde(deserialize_with = "string_list")]
    pub ip_range_allowlist: Vec<String>,
    pub url_preview_enabled: bool,
    /// Deprecated: previews may fetch any address. Use `ip_range_allowlist` or
    /// `url_preview_ip_allowlist` instead.
    pub url_preview_allow_private: bool,
    pub url_preview_ip_allowlist: Vec<String>,
    pub url_preview_ip_denylist: Vec<String>,
    /// A second listener serving the same app over TLS (federation's HTTPS port).
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for `tls_listen`. Unset: a self-signed one under `<data_dir>/tls/`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A PEM file of extra CA certificates trusted for outgoing federation requests.
    pub federation_ca_file: Option<PathBuf>,
    /// Verify other servers' certificates. `false` is for tests only.
    pub federation_verify_tls: bool,
    /// First wait before retrying a destination whose transaction failed; doubled after each
    /// further failure.
    pub federation_retry_base_ms: u64,
    /// Longest wait between retries of a failing destination.
    pub federation_retry_max_ms: u64,
    /// A destination that has failed for this long keeps only the newest queued PDU of each
    /// room; it catches up on the rest through `prev_events` when it is back.
    pub federation_catch_up_after_ms: u64,
    /// An HTTP proxy (`http://host:port`) that every outgoing federation request goes through,
    /// tunnelled with `CONNECT`.
    #[serde(deserialize_with = "opt_string_like")]
    pub federation_proxy: Option<String>,
    /// Served as `{"m.server": ...}` at `/.well-known/matrix/server`.
    #[serde(deserialize_with = "opt_string_like")]
    pub well_known_server: Option<String>,
    /// Localpart of the system user that sends server notices (`/_synapse/admin/v1/
    /// send_server_notice`); nobody can register it.
    #[serde(deserialize_with = "string_like")]
    pub server_notices_localpart: String,
    /// Display name of the server notices user.
    pub server_notices_display_name: String,
    /// Name of each user's server notices room.
    pub server_notices_room_name: String,
    /// Most to-device messages waiting for one device; past it the oldest are dropped.
    pub to_device_max_pending: u64,
    /// To-device messages older than this that their device has not collected are deleted.
    pub to_device_max_age_ms: u64,
    /// The longest delay a delayed event (MSC4140) may be scheduled with.
    pub delayed_events_max_delay_ms: u64,
    /// Most delayed events one user may have scheduled at once; 0 turns delayed events off.
    pub delayed_events_max_scheduled: u64,
    /// How long an application's interaction token answers (spec/applications.md).
    pub interaction_token_ttl_ms: u64,
    /// The LiveKit SFU that voice channels and calls use (spec/voice.md): the URL clients
    /// connect to (`wss://…`, or `ws://` on a private network). With the key and secret, the
    /// server is a MatrixRTC focus; without them the focus routes answer "not configured".
    #[serde(deserialize_with = "opt_string_like")]
    pub livekit_url: Option<String>,
    /// Where the server itself reaches LiveKit's API (RoomService over HTTP); defaults to
    /// `livekit_url` with `ws` turned into `http`.
    #[serde(deserialize_with = "opt_string_like")]
    pub livekit_api_url: Option<String>,
    /// A key of LiveKit's `keys:` section, and its secret (at least 32 characters).
    #[serde(deserialize_with = "opt_string_like")]
    pub livekit_api_key: Option<String>,
    #[serde(deserialize_with = "opt_string_like")]
    pub livekit_api_secret: Option<String>,
    /// How long a LiveKit access token admits its holder to a call (not how long they stay).
    pub livekit_token_ttl_ms: u64,
    /// A directory of application service registrations: every `*.yaml` / `*.yml` file in it
    /// is one (the Complement convention). Unset: no appservices.
    pub appservice_dir: Option<PathBuf>,
    #[serde(deserialize_with = "string_like")]
    pub log: String,
}

/// A signing key the server no longer signs with, still published for verifying old events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldVerifyKey {
    /// Unpadded base64 ed25519 public key.
    pub key: String,
    /// When the server stopped using it (ms since the epoch).
    pub expired_ts: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            public_baseurl: None,
            data_dir: PathBuf::from("data"),
            signing_key_path: None,
            key_validity_period_ms: 24 * 60 * 60 * 1000,
            old_verify_keys: std::collections::BTreeMap::new(),
            registration_enabled: false,
            registration_shared_secret: None,
            rate_limits_enabled: true,
            rate_limit_auth_per_second: 0.5,
            rate_limit_auth_burst: 10,
            rate_limit_send_per_second: 10.0,
            rate_limit_send_burst: 50,
            rate_limit_action_per_second: 0.5,
            rate_limit_action_burst: 20,
            rate_limit_ephemeral_per_second: 10.0,
            rate_limit_ephemeral_burst: 100,
            trusted_proxies: Vec::new(),
            sync_writes: true,
            legacy_media_fetches_remote: false,
            federation_fetch_budget_bytes: 64 * 1024 * 1024,
            federation_fetch_budget_ms: 30_000,
            default_room_version: "12".to_owned(),
            max_request_bytes: 1024 * 1024,
            refreshable_access_token_lifetime_ms: 5 * 60 * 1000,
            remote_media_cache_bytes_per_origin: 1024 * 1024 * 1024,
            thumbnail_max_source_side: 8192,
            thumbnail_max_decode_bytes: 256 * 1024 * 1024,
            thumbnail_max_concurrent_decodes: 2,
            max_upload_bytes: 50 * 1024 * 1024,
            ip_range_allowlist: Vec::new(),
            url_preview_enabled: true,
            url_preview_allow_private: false,
            url_preview_ip_allowlist: Vec::new(),
            url_preview_ip_denylist: Vec::new(),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            federation_ca_file: None,
            federation_verify_tls: true,
            federation_retry_base_ms: 2_000,
            federation_retry_max_ms: 3_600_000,
            federation_catch_up_after_ms: 24 * 60 * 60 * 1000,
            federation_proxy: None,
            well_known_server: None,
            server_notices_localpart: "_server".to_owned(),
            server_notices_display_name: "Server Notices".to_owned(),
            server_notices_room_name: "Server Notices".to_owned(),
            to_device_max_pending: 10_000,
            to_device_max_age_ms: 30 * 24 * 60 * 60 * 1000,
            delayed_events_max_delay_ms: 24 * 60 * 60 * 1000,
            delayed_events_max_scheduled: 100,
            interaction_token_ttl_ms: 15 * 60 * 1000,
            livekit_url: None,
            livekit_api_url: None,
            livekit_api_key: None,
            livekit_api_secret: None,
            livekit_token_ttl_ms: 10 * 60 * 1000,
            appservice_dir: None,
            log: "info".to_owned(),
        }
    }
}

/// The file written on first start: every key, commented, with its default.
pub const TEMPLATE: &str = r#"# Paracord homeserver configuration.
#
# Every key below is shown with its default value, commented out. Uncomment to change it.
# Every key can also be set from the environment as PARACORD_<KEY IN UPPER CASE>,
# e.g. PARACORD_SERVER_NAME=example.org. The environment wins over this file.

# The name in your users' ids (@alice:<server_name>) and room aliases. Choose it before the
# first user registers: it cannot change afterwards.
#server_name = "localhost"

# Where the client API listens (plain HTTP; put a TLS reverse proxy in front for the internet).
#listen = "127.0.0.1:8008"

# The URL clients use to reach this server, advertised in /.well-known/matrix/client.
# Default: http://<listen> with 0.0.0.0 shown as localhost.
#public_baseurl = "https://matrix.example.org"

# The RocksDB database and the signing key live here.
#data_dir = "data"

# The server's ed25519 signing key, generated on first start. Default: <data_dir>/signing.key
#signing_key_path = "data/signing.key"

# How long other servers may cache the signing key before asking again, in milliseconds.
#key_validity_period_ms = 86400000

# Key rotation: point signing_key_path at a new key (or replace the file) and restart; the
# server keeps publishing the previous key as an old verify key, expired at the restart.
# Older keys from elsewhere (another install, say) can be listed here:
#old_verify_keys = { "ed25519:abc123" = { key = "<unpadded base64 public key>", expired_ts = 1700000000000 } }

# Anyone may register an account through /register (m.login.dummy). Off by default: until the
# server has an admin, a one-time registration token printed at start registers one; after
# that, accounts come from the admin (shared-secret registration) unless this is turned on.
#registration_enabled = false

# Shared secret for Synapse-compatible admin registration at /_synapse/admin/v1/register.
# Unset disables that endpoint.
#registration_shared_secret = "change me"

# Rate limits. Load tests switch them off.
#rate_limits_enabled = true
# Registration and login attempts, per client IP.
#rate_limit_auth_per_second = 0.5
#rate_limit_auth_burst = 10
# Events sent, per user.
#rate_limit_send_per_second = 10.0
#rate_limit_send_burst = 50
# Per user, each kind apart: creating rooms, joins/invites/leaves/kicks/bans, profile
# changes, reports.
#rate_limit_action_per_second = 0.5
#rate_limit_action_burst = 20
# Per user: typing notices, presence and to-device messages.
#rate_limit_ephemeral_per_second = 10.0
#rate_limit_ephemeral_burst = 100

# Let the unauthenticated legacy media routes (/_matrix/media/v3/download, /thumbnail) fetch
# other servers' media, as before Matrix 1.11. Off, they serve only what is cached here, so
# nobody without an account can make this server fetch and store remote media.
#legacy_media_fetches_remote = false

# What fetching the missing events, state and auth events of one incoming federation
# transaction may cost at most: bytes of the answers, and milliseconds. Past either, the PDUs
# still waiting are answered with an error (their sender's later events bring them again).
#federation_fetch_budget_bytes = 67108864
#federation_fetch_budget_ms = 30000

# An acknowledged write is on disk: requests that change something are answered after the
# database's log is fsynced (many requests share one fsync). false answers as soon as the
# write is in the log: it still survives the server being killed, but not a power loss or an
# operating-system crash, which can lose the last second or so of acknowledged writes.
#sync_writes = true

# Reverse proxies in front of the server (CIDR ranges, e.g. ["127.0.0.1/32"]; from the
# environment also comma-separated). Only from these is X-Forwarded-For believed, for rate
# limits and the addresses shown with devices; from anyone else it is ignored.
#trusted_proxies = []

# Room version of new rooms: any stable version, "1" to "12".
#default_room_version = "12"

# Largest request body accepted, in bytes.
#max_request_bytes = 1048576

# Lifetime of access tokens issued together with a refresh token, in milliseconds.
#refreshable_access_token_lifetime_ms = 300000

# Media of other servers is fetched (through authenticated media only) and cached here. Each
# origin server gets this many bytes of cache; past it, its least recently used files are
# evicted and fetched again when next asked for.
#remote_media_cache_bytes_per_origin = 1073741824
# Thumbnails: images wider or taller than this many pixels, or whose decoding would allocate
# more than thumbnail_max_decode_bytes, are refused (M_TOO_LARGE) instead of decoded; at most
# thumbnail_max_concurrent_decodes images are decoded at the same time.
#thumbnail_max_source_side = 8192
#thumbnail_max_decode_bytes = 268435456
#thumbnail_max_concurrent_decodes = 2

# Largest media upload, in bytes (M_TOO_LARGE above it).
#max_upload_bytes = 52428800

# Everything the server fetches (federation, signing keys, push gateways, remote media, URL
# previews) is refused when the address a name resolves to is loopback, private (RFC 1918,
# unique-local), link-local, CGNAT, NAT64, 6to4, Teredo, multicast, documentation or otherwise
# reserved. Address ranges (CIDR, e.g. "10.1.0.0/16" or "::1/128") listed here may be reached
# anyway, e.g. a push gateway or a federating server on your internal network. From the
# environment: PARACORD_IP_RANGE_ALLOWLIST="10.1.0.0/16,::1/128".
#ip_range_allowlist = []

# URL previews (/media/preview_url): the server fetches the page for the client.
#url_preview_enabled = true
# Deprecated: let previews fetch any address, private ones included. Keep this off on a server
# reachable from the internet: it would let users probe your internal network. Prefer
# ip_range_allowlist or url_preview_ip_allowlist with the ranges you need.
#url_preview_allow_private = false
# Ranges previews (only) may fetch even though they are private, and ranges previews must
# never fetch even though they are public or allowed by ip_range_allowlist.
#url_preview_ip_allowlist = []
#url_preview_ip_denylist = []

# Federation over TLS. Other servers reach this one over HTTPS (port 8448 unless delegated).
# Set tls_listen to serve the same API over TLS as well, e.g. "0.0.0.0:8448".
#tls_listen = "0.0.0.0:8448"
# PEM certificate chain and private key for tls_listen. Unset: a self-signed certificate for
# the server name is generated under <data_dir>/tls/ and reused (fine for tests, not for
# federating with the internet).
#tls_cert = "/etc/letsencrypt/live/example.org/fullchain.pem"
#tls_key = "/etc/letsencrypt/live/example.org/privkey.pem"
# An extra CA (PEM) trusted for outgoing federation requests, besides the system roots.
#federation_ca_file = "ca.pem"
# Check other servers' certificates. Turn off for tests on loopback only.
#federation_verify_tls = true
# Outgoing transactions that fail (unreachable server, error answer) stay queued and are
# retried after federation_retry_base_ms, doubling after each further failure up to
# federation_retry_max_ms. A request from that server retries at once. Milliseconds.
#federation_retry_base_ms = 2000
#federation_retry_max_ms = 3600000
# A destination that has been failing for this long (milliseconds; default a day) stops
# accumulating: its queue keeps only the newest PDU of each room, which lets it fetch the rest
# (through prev_events) once it is back. Up to 10000 PDUs and 10000 EDUs stay queued per
# destination in any case; past that the oldest are dropped.
#federation_catch_up_after_ms = 86400000
# Send every outgoing federation request (and .well-known lookup) through this HTTP proxy,
# tunnelled with CONNECT (TLS stays end to end). The proxy resolves host names itself, so an
# SRV record pointing elsewhere is not followed through it. Unset: direct connections
# (HTTPS_PROXY and similar environment variables are not used).
#federation_proxy = "http://127.0.0.1:3128"
# Delegation: served as {"m.server": "<value>"} at /.well-known/matrix/server, e.g.
# "matrix.example.org:443". Unset: that endpoint answers 404.
#well_known_server = "matrix.example.org:443"

# Server notices: admins send them to users with /_synapse/admin/v1/send_server_notice; each
# user gets a room with the system user below, which they cannot refuse (they may leave it
# once joined). Nobody can register the localpart.
#server_notices_localpart = "_server"
#server_notices_display_name = "Server Notices"
#server_notices_room_name = "Server Notices"

# To-device messages (encryption keys, verification) wait for their device's next sync. At
# most to_device_max_pending wait per device (past that the oldest are dropped), and those
# older than to_device_max_age_ms (default 30 days) are deleted.
#to_device_max_pending = 10000
#to_device_max_age_ms = 2592000000

# Delayed events (MSC4140): a client schedules an event for later (a call's "hang up" that
# fires if the client stops restarting its timer). The longest delay allowed (default 24 h),
# and how many one user may have scheduled at once (0 turns the feature off).
#delayed_events_max_delay_ms = 86400000
#delayed_events_max_scheduled = 100

# An application's bot answers a slash command with the interaction's token, valid this long
# (default 15 minutes). See spec/applications.md.
#interaction_token_ttl_ms = 900000

# Voice channels, streams and calls (spec/voice.md, docs/operating.md): a LiveKit SFU next to
# the server. The server checks who may join, speak and stream and hands out LiveKit tokens;
# LiveKit's webhook goes to <public_baseurl>/_paracord/livekit/webhook with the same key.
# livekit_api_url is where the server reaches LiveKit itself (default: livekit_url as http).
#livekit_url = "wss://livekit.example.org"
#livekit_api_url = "http://127.0.0.1:7880"
#livekit_api_key = "paracord"
#livekit_api_secret = "a secret of at least 32 characters"
#livekit_token_ttl_ms = 600000

# Application services (bridges, bots): every *.yaml / *.yml file in this directory is a
# registration (id, url, as_token, hs_token, sender_localpart, namespaces). A file that does
# not parse, or clashes with another, is logged and skipped. See docs/appservices.md.
#appservice_dir = "/etc/paracord/appservices"

# Log filter (tracing EnvFilter syntax), e.g. "info,paracord_service=debug".
#log = "info"
"#;

/// Room versions this server can create and join: every stable version of the spec.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &[
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

/// `PARACORD_*` variables of the project's own tools, not of the server (a name ending in `_`
/// covers every variable it starts): the test harness's server binary and logs, the CLI's.
const TOOL_ENV: &[&str] = &[
    "PARACORD_BIN",
    "PARACORD_CLI_",
    "PARACORD_TEST_",
    "PARACORD_SYNAPSE_VENV",
];

impl Config {
    /// Loads the configuration from `path` (written from [`TEMPLATE`] if it does not exist yet)
    /// and the environment. Returns the config and whether the file was created.
    pub fn load(path: &Path) -> Result<(Self, bool), String> {
        let mut created = false;
        if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(path, TEMPLATE)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            created = true;
        }
        Self::check_env(std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()))?;
        let config = Self::figment(path)
            .extract::<Config>()
            .map_err(|e| e.to_string())?;
        config.validate()?;
        Ok((config, created))
    }

    fn figment(path: &Path) -> Figment {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            .merge(Self::env())
    }

    /// `PARACORD_<KEY>` variables that name config keys.
    fn env() -> Env {
        Env::prefixed("PARACORD_").filter(|key| Self::is_key(&key.as_str().to_ascii_lowercase()))
    }

    /// Refuses a `PARACORD_*` variable that is neither a config key nor one of the project's
    /// own tools' variables ([`TOOL_ENV`]): a typo is reported, not silently ignored.
    fn check_env(names: impl Iterator<Item = String>) -> Result<(), String> {
        for name in names {
            let Some(key) = name.strip_prefix("PARACORD_") else {
                continue;
            };
            let tool = TOOL_ENV
                .iter()
                .any(|t| name == *t || (t.ends_with('_') && name.starts_with(t)));
            if !tool && !Self::is_key(&key.to_ascii_lowercase()) {
                return Err(format!(
                    "unknown environment variable {name}: no configuration key \
                     {:?} (docs/configuration.md lists them)",
                    key.to_ascii_lowercase()
                ));
            }
        }
        Ok(())
    }

    /// Whether `key` names a config key. Other `PARACORD_*` variables (a test harness's
    /// `PARACORD_BIN`, say) are not configuration and are ignored.
    fn is_key(key: &str) -> bool {
        serde_json::to_value(Config::default())
            .ok()
            .and_then(|v| v.as_object().map(|o| o.contains_key(key)))
            .unwrap_or(false)
    }

    /// Checks values that deserialize but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(format!(
                "server_name {:?} is not a valid server name",
                self.server_name
            ));
        }
        if !SUPPORTED_ROOM_VERSIONS.contains(&self.default_room_version.as_str()) {
            return Err(format!(
                "default_room_version {:?} is not one of {SUPPORTED_ROOM_VERSIONS:?}",
                self.default_room_version
            ));
        }
        for cidr in self
            .url_preview_ip_allowlist
            .iter()
            .chain(&self.url_preview_ip_denylist)
            .chain(&self.trusted_proxies)
            .chain(&self.ip_range_allowlist)
        {
            if parse_cidr(cidr).is_none() {
                return Err(format!("{cidr:?} is not an address range (CIDR)"));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key must be set together".to_owned());
        }
        if let Some(name) = &self.well_known_server {
            if ruma::ServerName::parse(name).is_err() {
                return Err(format!(
                    "well_known_server {name:?} is not a server name (host[:port])"
                ));
            }
        }
        if self.federation_retry_base_ms == 0
            || self.federation_retry_max_ms < self.federation_retry_base_ms
        {
            return Err(
                "federation_retry_base_ms must be positive and at most federation_retry_max_ms"
                    .to_owned(),
            );
        }
        if let Some(proxy) = &self.federation_proxy {
            check_proxy_url(proxy)?;
        }
        if self.federation_catch_up_after_ms == 0
            || self.to_device_max_pending == 0
            || self.to_device_max_age_ms == 0
            || self.interaction_token_ttl_ms == 0
            || self.delayed_events_max_delay_ms == 0
        {
            return Err(
                "federation_catch_up_after_ms, to_device_max_pending, to_device_max_age_ms, \
                 interaction_token_ttl_ms and delayed_events_max_delay_ms must be positive"
                    .to_owned(),
            );
        }
        self.check_livekit()?;
        if self.remote_media_cache_bytes_per_origin == 0
            || self.thumbnail_max_source_side == 0
            || self.thumbnail_max_decode_bytes == 0
            || self.thumbnail_max_concurrent_decodes == 0
        {
            return Err(
                "remote_media_cache_bytes_per_origin and the thumbnail_max_* limits must be positive"
                    .to_owned(),
            );
        }
        if [
            self.rate_limit_auth_per_second,
            self.rate_limit_send_per_second,
            self.rate_limit_action_per_second,
            self.rate_limit_ephemeral_per_second,
        ]
        .iter()
        .any(|r| *r <= 0.0 || !r.is_finite())
        {
            return Err("rate limits per second must be positive".to_owned());
        }
        Ok(())
    }

    /// The LiveKit keys: all of url, key and secret or none; URLs with a scheme LiveKit
    /// speaks; a secret LiveKit accepts.
    fn check_livekit(&self) -> Result<(), String> {
        let set = [
            self.livekit_url.is_some(),
            self.livekit_api_key.is_some(),
            self.livekit_api_secret.is_some(),
        ];
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return Err(
                "livekit_url, livekit_api_key and livekit_api_secret must be set together"
                    .to_owned(),
            );
        }
        for (name, url, schemes) in [
            (
                "livekit_url",
                &self.livekit_url,
                ["ws://", "wss://", "http://", "https://"],
            ),
            (
                "livekit_api_url",
                &self.livekit_api_url,
                ["http://", "https://", "ws://", "wss://"],
            ),
        ] {
            if let Some(url) = url {
                if !schemes.iter().any(|s| url.starts_with(s)) || url.contains(char::is_whitespace)
                {
                    return Err(format!(
                        "{name} {url:?} is not a ws(s):// or http(s):// URL"
                    ));
                }
            }
        }
        if let Some(secret) = &self.livekit_api_secret {
            if secret.len() < 32 {
                return Err("livekit_api_secret must be at least 32 characters".to_owned());
            }
        }
        if self.livekit_api_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err("livekit_api_key must not be empty".to_owned());
        }
        if self.livekit_token_ttl_ms < 1000 {
            return Err("livekit_token_ttl_ms must be at least 1000".to_owned());
        }
        Ok(())
    }

    /// The LiveKit focus, when configured: (client URL, API base URL, key, secret).
    pub fn livekit(&self) -> Option<(String, String, String, String)> {
        let url = self.livekit_url.clone()?;
        let api = self.livekit_api_url.clone().unwrap_or_else(|| {
            if let Some(rest) = url.strip_prefix("ws://") {
                format!("http://{rest}")
            } else if let Some(rest) = url.strip_prefix("wss://") {
                format!("https://{rest}")
            } else {
                url.clone()
            }
        });
        Some((
            url,
            api.trim_end_matches('/').to_owned(),
            self.livekit_api_key.clone()?,
            self.livekit_api_secret.clone()?,
        ))
    }

    /// Where the signing key lives.
    pub fn signing_key_path(&self) -> PathBuf {
        self.signing_key_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("signing.key"))
    }

    /// The base URL clients should use.
    pub fn public_baseurl(&self) -> String {
        if let Some(url) = &self.public_baseurl {
            return url.trim_end_matches('/').to_owned();
        }
        let host = if self.listen.ip().is_unspecified() {
            "localhost".to_owned()
        } else if self.listen.is_ipv6() {
            format!("[{}]", self.listen.ip())
        } else {
            self.listen.ip().to_string()
        };
        format!("http://{host}:{}", self.listen.port())
    }
}

/// Checks a `federation_proxy` value: `http://host:port`, nothing after the authority.
fn check_proxy_url(url: &str) -> Result<(), String> {
    // The value is not repeated: it may carry the proxy's password.
    let bad = |why: &str| format!("federation_proxy {why} (expected http://host:port)");
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("is not an http:// URL"));
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.host().is_empty() || authority.port_u16().is_none() {
        return Err(bad("names no host and port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path"));
    }
    Ok(())
}

/// Parses `a.b.c.d/n`, `x::y/n` or a single address into `(network, prefix length)`.
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Whether `ip` lies in the range `(network, prefix length)`.
pub fn cidr_contains((net, len): (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Environment values are parsed as TOML-ish values, so `PARACORD_DEFAULT_ROOM_VERSION=12` is an
/// integer; accept numbers and booleans where a string is expected.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringLike {
    S(String),
    I(i64),
    U(u64),
    F(f64),
    B(bool),
}

impl From<StringLike> for String {
    fn from(s: StringLike) -> Self {
        match s {
            StringLike::S(s) => s,
            StringLike::I(i) => i.to_string(),
            StringLike::U(u) => u.to_string(),
            StringLike::F(f) => f.to_string(),
            StringLike::B(b) => b.to_string(),
        }
    }
}

fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    StringLike::deserialize(d).map(String::from)
}

/// A list of strings given as a list (TOML, or a TOML array in the environment) or as one
/// comma-separated string (`PARACORD_IP_RANGE_ALLOWLIST=10.0.0.0/8,::1/128`).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        One(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn opt_string_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<StringLike>::deserialize(d)?.map(String::from))
}

#[cfg(test)]
// figment::Jail's closures return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paracord_variables_are_refused_with_their_name() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(Config::check_env(
            names(&[
                "PARACORD_SERVER_NAME",
                "PARACORD_BIN",
                "PARACORD_CLI_STORE",
                "PATH"
            ])
            .into_iter()
        )
        .is_ok());
        let err = Config::check_env(names(&["PARACORD_SERVR_NAME"]).into_iter()).unwrap_err();
        assert!(err.contains("PARACORD_SERVR_NAME"), "{err}");
        // A tool prefix covers only its own names.
        assert!(Config::check_env(names(&["PARACORD_CLIX"]).into_iter()).is_err());
    }

    #[test]
    fn template_parses_to_defaults() {
        let dir = std::env::temp_dir().join(format!("paracord-config-test-{}", std::process::id()));
        let path = dir.join("config/paracord.toml");
        let _ = std::fs::remove_dir_all(&dir);
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(TEMPLATE));
        let config: Config = figment.extract().unwrap();
        assert_eq!(config.listen.port(), 8008);
        assert_eq!(config.default_room_version, "12");
        assert!(!path.exists());
    }

    #[test]
    fn every_key_is_in_the_template() {
        let json = serde_json::to_value(Config::default()).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(
                TEMPLATE.contains(&format!("#{key} = ")),
                "template misses key {key}"
            );
        }
    }

    #[test]
    fn numbers_are_accepted_for_string_keys() {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(
            "default_room_version = 11\nregistration_shared_secret = 1234",
        ));
        let config: Config = figment.extract().unwrap();
        assert_eq!(config.default_room_version, "11");
        assert_eq!(config.registration_shared_secret.as_deref(), Some("1234"));
    }

    #[test]
    fn lists_come_from_the_environment_as_toml_arrays() {
        let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(
            "url_preview_ip_allowlist = [\"127.0.0.1/32\"]",
        ));
        let config: Config = figment.extract().unwrap();
        assert_eq!(
            config.url_preview_ip_allowlist,
            vec!["127.0.0.1/32".to_owned()]
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "PARACORD_URL_PREVIEW_IP_DENYLIST",
                r#"["8.8.8.0/24", "::1/128"]"#,
            );
            let config: Config = Figment::from(Serialized::defaults(Config::default()))
                .merge(Config::env())
                .extract()
                .map_err(|e| e.to_string())?;
            assert_eq!(
                config.url_preview_ip_denylist,
                vec!["8.8.8.0/24".to_owned(), "::1/128".to_owned()]
            );
            Ok(())
        });
    }

    #[test]
    fn ip_range_allowlist_comes_from_the_environment_as_a_list_or_commas() {
        for value in ["127.0.0.0/8, ::1/128", r#"["127.0.0.0/8", "::1/128"]"#] {
            figment::Jail::expect_with(|jail| {
                jail.set_env("PARACORD_IP_RANGE_ALLOWLIST", value);
                let config: Config = Figment::from(Serialized::defaults(Config::default()))
                    .merge(Config::env())
                    .extract()
                    .map_err(|e| e.to_string())?;
                assert_eq!(
                    config.ip_range_allowlist,
                    vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()]
                );
                config.validate()?;
                Ok(())
            });
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("PARACORD_IP_RANGE_ALLOWLIST", "10.0.0.0/8");
            let config: Config = Figment::from(Serialized::defaults(Config::default()))
                .merge(Config::env())
                .extract()
                .map_err(|e| e.to_string())?;
            assert_eq!(config.ip_range_allowlist, vec!["10.0.0.0/8".to_owned()]);
            Ok(())
        });
        let bad = Config {
            ip_range_allowlist: vec!["10.0.0.0/33".to_owned()],
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        assert!(Config::default().ip_range_allowlist.is_empty());
    }

    #[test]
    fn federation_tls_keys_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PARACORD_TLS_LISTEN", "127.0.0.1:8448");
            jail.set_env("PARACORD_TLS_CERT", "/c.pem");
            jail.set_env("PARACORD_TLS_KEY", "/k.pem");
            jail.set_env("PARACORD_FEDERATION_CA_FILE", "/ca.pem");
            jail.set_env("PARACORD_FEDERATION_VERIFY_TLS", "false");
            jail.set_env("PARACORD_WELL_KNOWN_SERVER", "matrix.example.org:443");
            jail.set_env("PARACORD_FEDERATION_RETRY_BASE_MS", "50");
            jail.set_env("PARACORD_FEDERATION_RETRY_MAX_MS", "1000");
            jail.set_env("PARACORD_FEDERATION_PROXY", "http://127.0.0.1:3128");
            let config: Config = Figment::from(Serialized::defaults(Config::default()))
                .merge(Config::env())
                .extract()
                .map_err(|e| e.to_string())?;
            assert_eq!(config.tls_listen, "127.0.0.1:8448".parse().ok());
            assert_eq!(config.tls_cert, Some(PathBuf::from("/c.pem")));
            assert_eq!(config.tls_key, Some(PathBuf::from("/k.pem")));
            assert_eq!(config.federation_ca_file, Some(PathBuf::from("/ca.pem")));
            assert!(!config.federation_verify_tls);
            assert_eq!(config.federation_retry_base_ms, 50);
            assert_eq!(config.federation_retry_max_ms, 1000);
            assert_eq!(
                config.federation_proxy.as_deref(),
                Some("http://127.0.0.1:3128")
            );
            assert_eq!(
                config.well_known_server.as_deref(),
                Some("matrix.example.org:443")
            );
            config.validate()?;
            Ok(())
        });
        assert!(Config::default().federation_verify_tls);
        let half = Config {
            tls_cert: Some(PathBuf::from("/c.pem")),
            ..Config::default()
        };
        assert!(half.validate().is_err());
        let no_wait = Config {
            federation_retry_base_ms: 0,
            ..Config::default()
        };
        assert!(no_wait.validate().is_err());
        let max_below_base = Config {
            federation_retry_base_ms: 10_000,
            federation_retry_max_ms: 1_000,
            ..Config::default()
        };
        assert!(max_below_base.validate().is_err());
        for bad in [
            "127.0.0.1:3128",
            "https://proxy.example:3128",
            "http://proxy.example",
            "http://proxy.example:3128/path",
            "socks5://proxy.example:1080",
        ] {
            let config = Config {
                federation_proxy: Some(bad.to_owned()),
                ..Config::default()
            };
            assert!(config.validate().is_err(), "{bad} passed");
        }
        let user_pass = Config {
            federation_proxy: Some("http://user:secret@proxy.example:3128".to_owned()),
            ..Config::default()
        };
        assert!(user_pass.validate().is_ok());
        let defaults = Config::default();
        assert_eq!(
            (
                defaults.federation_retry_base_ms,
                defaults.federation_retry_max_ms
            ),
            (2_000, 3_600_000)
        );
    }

    #[test]
    fn public_baseurl_hides_unspecified_address() {
        let everywhere = Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8008)),
            ..Config::default()
        };
        assert_eq!(everywhere.public_baseurl(), "http://localhost:8008");
        assert_eq!(Config::default().public_baseurl(), "http://127.0.0.1:8008");
    }
}
