//! Paracord services: the homeserver's domain logic, free of HTTP.

pub mod account_data;
pub mod accounts;
pub mod appservice;
pub mod backup;
pub mod delayed_events;
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
mod migrations;
pub mod outbound;
pub mod polls;
pub mod pushers;
pub mod random;
pub mod ratelimit;
pub mod reports;
pub mod rooms;
pub mod rtc;
pub mod search;
pub mod server_keys;
pub mod server_notices;
pub mod stream;
pub mod sync;
pub mod tokens;
pub mod user_directory;

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

/// Every service, built in dependency order.
pub struct Services {
    pub config: Arc<Config>,
    pub db: Arc<Db>,
    pub keys: Arc<keys::ServerKeys>,
    pub stream: Arc<stream::Stream>,
    pub accounts: Arc<accounts::Accounts>,
    pub rooms: Arc<rooms::Rooms>,
    /// The guild invite index, an observer of `rooms`.
    pub invites: Arc<guilds::members::InviteIndex>,
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
    pub queries: Arc<federation::query::Queries>,
    pub joins: Arc<federation::joins::Joins>,
    pub sender: Arc<federation::sender::Sender>,
    pub server_notices: Arc<server_notices::ServerNotices>,
    pub durability: Arc<durability::Durability>,
    pub appservices: Arc<appservice::Appservices>,
    pub applications: Arc<guilds::applications::Applications>,
    pub webhooks: Arc<guilds::webhooks::Webhooks>,
    pub rtc: Arc<rtc::Rtc>,
    pub delayed_events: Arc<delayed_events::DelayedEvents>,
}

impl Services {
    /// Opens the database and the signing key (creating both on first start).
    pub fn open(config: Config) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::internal(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let db = Arc::new(Db::open(&config.data_dir.join("db"))?);
        let (keys, _) = keys::ServerKeys::load_or_generate(&config.signing_key_path())?;
        Self::build(config, db, keys)
    }

    /// Builds every service in dependency order: each gets what it uses when it is made.
    pub fn build(config: Config, db: Arc<Db>, mut keys: keys::ServerKeys) -> Result<Self> {
        keys.track_rotation(&db, &config.old_verify_keys)?;
        let config = Arc::new(config);
        let keys = Arc::new(keys);
        let stream = Arc::new(stream::Stream::load(db.clone())?);
        let appservices = Arc::new(appservice::Appservices::from_config(db.clone(), &config)?);
        // Users of appservices registered `rate_limited: false` are not limited; registrations
        // may be added at run time (admin API), so it is asked each time.
        let ratelimit = Arc::new(ratelimit::RateLimiter::new(&config, {
            let appservices = appservices.clone();
            Some(Box::new(move |user| {
                appservices.exempt_from_rate_limits(user)
            }))
        }));
        let accounts = Arc::new(accounts::Accounts::new(
            db.clone(),
            config.clone(),
            Some(ratelimit.clone()),
        ));
        let account_data = Arc::new(account_data::AccountData::new(db.clone(), stream.clone()));
        let search = Arc::new(search::Search::open(db.clone())?);
        let federation = Arc::new(
            federation::client::FederationClient::from_config(&config).map_err(Error::internal)?,
        );
        let sender = federation::sender::Sender::new(
            db.clone(),
            config.clone(),
            keys.clone(),
            federation.clone(),
            stream.clone(),
        );
        // The Matrix pipeline, with the guild rules as its policy and, told of every accepted
        // event, the guild invite index, the guild departures, the applications' bots joining
        // new channels, the private channels' access (which needs the PDU service, made
        // later: given to it then), the push sender, the appservice queue and the record of
        // delayed events sent.
        // Local events go to the federation sender.
        let (push_observer, push_jobs, pusher_users) = pushers::PushObserver::new();
        let outgoing: rooms::OutgoingPdu = {
            let sender = sender.clone();
            Arc::new(move |destinations, event_id, pdu| {
                sender.queue_pdu(destinations, event_id, pdu)
            })
        };
        let invites = Arc::new(guilds::members::InviteIndex::new(db.clone()));
        let channel_access = Arc::new(guilds::channels::ChannelAccess::new());
        let rtc_observer = Arc::new(rtc::RtcObserver::new());
        // Polls of this server's users are ended at their closing time by the poll timer,
        // woken by the observer that schedules them.
        let poll_wake = Arc::new(tokio::sync::Notify::new());
        let rooms = Arc::new_cyclic(|me| {
            rooms::Rooms::new(
                rooms::RoomsParts {
                    db: db.clone(),
                    config: config.clone(),
                    keys: keys.clone(),
                    stream: stream.clone(),
                    account_data: Some(account_data.clone()),
                    search: Some(search.clone()),
                    outgoing: Some(outgoing),
                    policy: Arc::new(guilds::enforce::GuildRules),
                    observers: vec![
                        invites.clone(),
                        Arc::new(guilds::members::GuildDeparture),
                        Arc::new(guilds::applications::BotChannels::new(
                            db.clone(),
                            accounts.clone(),
                        )),
                        channel_access.clone(),
                        rtc_observer.clone(),
                        Arc::new(push_observer),
                        Arc::new(appservice::AppserviceObserver::new(
                            appservices.clone(),
                            me.clone(),
                        )),
                        Arc::new(delayed_events::SentRecorder::new(db.clone())),
                        Arc::new(polls::PollCloser::new(
                            config.server_name.clone(),
                            me.clone(),
                            poll_wake.clone(),
                        )),
                        Arc::new(guilds::slowmode::SlowModeIndex::new(db.clone())),
                    ],
                },
                me.clone(),
            )
        });
        if search.created {
            // A new (or deleted) index is filled from the database.
            rooms.reindex(&search)?;
        }
        let migrated = guilds::slowmode::fill(&rooms)?;
        if migrated > 0 {
            tracing::info!(
                messages = migrated,
                "indexed the latest messages of the last 6 hours for slow mode"
            );
        }
        let migrated = rooms.migrate_annotation_index()?;
        if migrated > 0 {
            tracing::info!(
                annotations = migrated,
                "indexed existing reactions by key and sender"
            );
        }
        let migrated = accounts.migrate_user_directory()? + rooms.migrate_user_directory()?;
        if migrated > 0 {
            tracing::info!(users = migrated, "filled the user directory");
        }
        let migrated = rooms.migrate_thread_counts()?;
        if migrated > 0 {
            tracing::info!(
                threads = migrated,
                "counted the replies of existing threads"
            );
        }
        let migrated = rooms.migrate_timestamp_index()?;
        if migrated > 0 {
            tracing::info!(events = migrated, "indexed existing events by timestamp");
        }
        let remote_keys = Arc::new(server_keys::RemoteKeys::new(
            db.clone(),
            config.server_name.clone(),
            keys.clone(),
            Some(server_keys::fetch_with(federation.clone())),
        ));
        let ephemeral = Arc::new(ephemeral::Ephemeral::new(
            db.clone(),
            stream.clone(),
            vec![Arc::new(appservice::AppserviceObserver::new(
                appservices.clone(),
                Arc::downgrade(&rooms),
            ))],
        ));
        let edu_out: e2ee::OutgoingEdu = {
            let sender = sender.clone();
            Arc::new(move |destination, edu| sender.queue_edu(destination, edu))
        };
        let e2ee = Arc::new(e2ee::E2ee::new(
            db.clone(),
            stream.clone(),
            accounts.clone(),
            rooms.clone(),
            e2ee::ToDeviceLimits::from_config(&config),
            Some(edu_out),
            Some(Arc::new(appservice::AppserviceObserver::new(
                appservices.clone(),
                Arc::downgrade(&rooms),
            ))),
        ));
        let durability = Arc::new(durability::Durability::new(db.clone(), config.sync_writes));
        let sync = Arc::new(sync::Sync::new(
            rooms.clone(),
            stream.clone(),
            account_data.clone(),
            ephemeral.clone(),
            e2ee.clone(),
            durability.clone(),
        ));
        let reports = Arc::new(reports::Reports::new(db.clone()));
        let pushers = Arc::new(pushers::Pushers::new(
            db.clone(),
            outbound::OutboundGuard::from_config(&config),
            pusher_users,
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
        let backups = Arc::new(backup::KeyBackups::new(db.clone()));
        let webhooks = Arc::new(guilds::webhooks::Webhooks::new(
            db.clone(),
            rooms.clone(),
            accounts.clone(),
            media.clone(),
            ratelimit.clone(),
        ));
        // Delayed events (MSC4140) go through the pipeline like a user's sends.
        let delayed_events = Arc::new(delayed_events::DelayedEvents::new(
            db.clone(),
            &config,
            rooms.clone(),
            ratelimit.clone(),
        ));
        // Background delivery (federation, push), the delayed events' timer and housekeeping
        // start with the services when there is a runtime to run them (the server always has
        // one); queued items wait otherwise.
        if tokio::runtime::Handle::try_current().is_ok() {
            sender.start();
            appservices.start(rooms.clone(), stream.clone());
            delayed_events.start(stream.clone());
            Arc::new(polls::PollTimer::new(db.clone(), rooms.clone(), poll_wake))
                .start(stream.clone());
            housekeeping::start(db.clone(), e2ee.clone(), stream.clone());
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
                db.clone(),
                me.clone(),
            )
        });
        channel_access.set_pdus(Arc::downgrade(&pdus));
        let queries = Arc::new(federation::query::Queries::new(
            federation.clone(),
            keys.clone(),
            config.clone(),
            media.clone(),
        ));
        let joins = Arc::new(federation::joins::Joins::new(
            config.clone(),
            accounts.clone(),
            rooms.clone(),
            pdus.clone(),
            queries.clone(),
        ));
        pushers.start(rooms.clone(), ephemeral.clone(), push_jobs);
        let server_notices = Arc::new(server_notices::ServerNotices::new(
            config.clone(),
            accounts.clone(),
            rooms.clone(),
            account_data.clone(),
        ));
        // Applications deliver interactions to their bots as to-device messages.
        let rtc = Arc::new(rtc::Rtc::new(
            config.clone(),
            db.clone(),
            rooms.clone(),
            accounts.clone(),
            federation.clone(),
            keys.clone(),
            delayed_events.clone(),
            ratelimit.clone(),
            Arc::new(guilds::voice::GuildCalls),
        )?);
        rtc_observer.set_rtc(Arc::downgrade(&rtc));
        if tokio::runtime::Handle::try_current().is_ok() {
            rtc.start();
        }
        let applications = Arc::new(guilds::applications::Applications::new(
            db.clone(),
            config.clone(),
            accounts.clone(),
            rooms.clone(),
            appservices.clone(),
            {
                let e2ee = e2ee.clone();
                Arc::new(move |sender, kind, txn, messages| {
                    e2ee.send_to_device(sender, "PARACORD", kind, txn, messages)
                })
            },
        ));
        Ok(Self {
            config,
            db,
            keys,
            stream,
            accounts,
            rooms,
            invites,
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
            queries,
            joins,
            sender,
            server_notices,
            durability,
            appservices,
            applications,
            webhooks,
            rtc,
            delayed_events,
        })
    }
}
