//! Paracord services: the homeserver's domain logic, free of HTTP.

pub mod account_data;
pub mod accounts;
pub mod backup;
pub mod durability;
pub mod e2ee;
pub mod ephemeral;
pub mod expiry;
pub mod federation;
pub mod fuzzing;
pub mod guilds;
pub mod housekeeping;
pub mod keys;
pub mod media;
pub mod outbound;
pub mod pushers;
pub mod ratelimit;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod server_notices;
pub mod stream;
pub mod sync;

use std::sync::Arc;

use paracord_core::{Config, Error, Result};
use paracord_storage::Db;

/// Percent-encodes everything but RFC 3986 unreserved characters (for ids in query strings
/// and paths of outgoing requests).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A random string of `len` ASCII letters and digits (ids, opaque tokens).
pub fn random_string(len: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Every service, built in dependency order.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Arc<Db>,
    pub keys: Arc<keys::ServerKeys>,
    pub stream: Arc<stream::Stream>,
    pub accounts: Arc<accounts::Accounts>,
    pub rooms: Arc<rooms::Rooms>,
    pub account_data: Arc<account_data::AccountData>,
    pub ephemeral: Arc<ephemeral::Ephemeral>,
    pub sync: Arc<sync::Sync>,
    pub e2ee: Arc<e2ee::E2ee>,
    pub remote_keys: Arc<server_keys::RemoteKeys>,
    pub ratelimit: Arc<ratelimit::RateLimiter>,
    pub reports: Arc<reports::Reports>,
    pub pushers: Arc<pushers::Pushers>,
    pub media: Arc<media::Media>,
    pub search: Arc<search::Search>,
    pub backups: Arc<backup::KeyBackups>,
    pub federation: Arc<federation::client::FederationClient>,
    pub pdus: Arc<federation::pdus::Pdus>,
    pub sender: Arc<federation::sender::Sender>,
    pub server_notices: Arc<server_notices::ServerNotices>,
    pub durability: Arc<durability::Durability>,
}

impl Services {
    /// Opens the database and the signing key (creating both on first start).
    pub fn open(config: Config) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::internal(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let db = Arc::new(Db::open(&config.data_dir.join("db")).map_err(Error::internal)?);
        let (keys, _) = keys::ServerKeys::load_or_generate(&config.signing_key_path())?;
        Self::build(config, db, keys)
    }

    pub fn build(config: Config, db: Arc<Db>, mut keys: keys::ServerKeys) -> Result<Self> {
        keys.track_rotation(&db, &config.old_verify_keys)?;
        let config = Arc::new(config);
        let keys = Arc::new(keys);
        let stream = Arc::new(stream::Stream::load(db.clone())?);
        let accounts = Arc::new(accounts::Accounts::new(db.clone(), config.clone()));
        let account_data = Arc::new(account_data::AccountData::new(db.clone(), stream.clone()));
        let rooms = Arc::new(rooms::Rooms::new(
            db.clone(),
            config.clone(),
            keys.clone(),
            stream.clone(),
            Some(account_data.clone()),
        ));
        let migrated = rooms.migrate_annotation_index()?;
        if migrated > 0 {
            tracing::info!(
                annotations = migrated,
                "indexed existing reactions by key and sender"
            );
        }
        let remote_keys = Arc::new(server_keys::RemoteKeys::new(
            db.clone(),
            config.server_name.clone(),
            keys.clone(),
        ));
        let ephemeral = Arc::new(ephemeral::Ephemeral::new(db.clone(), stream.clone()));
        let e2ee = Arc::new(e2ee::E2ee::new(
            db.clone(),
            stream.clone(),
            accounts.clone(),
            rooms.clone(),
            e2ee::ToDeviceLimits::from_config(&config),
        ));
        let sync = Arc::new(sync::Sync::new(
            rooms.clone(),
            stream.clone(),
            account_data.clone(),
            ephemeral.clone(),
            e2ee.clone(),
        ));
        let ratelimit = Arc::new(ratelimit::RateLimiter::new(&config));
        accounts.set_rate_limiter(ratelimit.clone());
        let reports = Arc::new(reports::Reports::new(db.clone()));
        let pushers = Arc::new(pushers::Pushers::new(
            db.clone(),
            outbound::OutboundGuard::from_config(&config),
        )?);
        {
            // A deleted device takes its keys and the pushers it set with it.
            let (e2ee, pushers) = (e2ee.clone(), pushers.clone());
            accounts.set_device_removal_hook(Box::new(move |user, devices, deactivated| {
                pushers.devices_removed(user, devices, deactivated)?;
                if deactivated {
                    e2ee.user_deactivated(user, devices)
                } else {
                    e2ee.devices_removed(user, devices)
                }
            }));
        }
        let media = Arc::new(media::Media::new(db.clone(), config.clone())?);
        let search = Arc::new(search::Search::open(db.clone())?);
        rooms.set_search(search.clone());
        if search.created {
            // A new (or deleted) index is filled from the database.
            rooms.reindex(&search)?;
        }
        let backups = Arc::new(backup::KeyBackups::new(db.clone()));
        let federation = Arc::new(
            federation::client::FederationClient::from_config(&config).map_err(Error::internal)?,
        );
        remote_keys.set_fetcher(server_keys::fetch_with(federation.clone()));
        let sender = federation::sender::Sender::new(
            db.clone(),
            config.clone(),
            keys.clone(),
            federation.clone(),
            stream.clone(),
        );
        // Like the push sender: background delivery starts with the services when there is a
        // runtime to run it (the server always has one); queued items wait otherwise.
        if tokio::runtime::Handle::try_current().is_ok() {
            sender.start();
            housekeeping::start(db.clone(), e2ee.clone(), stream.clone());
        }
        {
            let sender = sender.clone();
            e2ee.set_edu_out(Arc::new(move |destination, edu| {
                sender.queue_edu(destination, edu)
            }));
        }
        {
            let sender = sender.clone();
            rooms.set_outgoing(Arc::new(move |destinations, event_id, pdu| {
                sender.queue_pdu(destinations, event_id, pdu)
            }));
        }
        let pdus = Arc::new_cyclic(|me| {
            federation::pdus::Pdus::new(
                federation::edus::Edus::new(
                    rooms.clone(),
                    ephemeral.clone(),
                    e2ee.clone(),
                    accounts.clone(),
                ),
                rooms.clone(),
                remote_keys.clone(),
                federation.clone(),
                keys.clone(),
                config.clone(),
                me.clone(),
            )
        });
        if let Some(tx) = pushers.start(rooms.clone(), ephemeral.clone()) {
            rooms.set_push_sender(tx);
        }
        let server_notices = Arc::new(server_notices::ServerNotices::new(
            config.clone(),
            accounts.clone(),
            rooms.clone(),
            account_data.clone(),
        ));
        let durability = Arc::new(durability::Durability::new(db.clone(), config.sync_writes));
        sync.set_durability(durability.clone());
        Ok(Self {
            config,
            db,
            keys,
            stream,
            accounts,
            rooms,
            account_data,
            ephemeral,
            sync,
            e2ee,
            remote_keys,
            ratelimit,
            reports,
            pushers,
            media,
            search,
            backups,
            federation,
            pdus,
            sender,
            server_notices,
            durability,
        })
    }
}
