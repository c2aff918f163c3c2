//! Accounts, devices, access and refresh tokens, and user-interactive authentication.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, SaltString},
    Argon2,
};
use hmac::{Hmac, Mac};
use paracord_core::{time::now_ms, Config, Error, ErrorKind, Result};
use paracord_storage::{Batch, Db, KeyReader, Table};
use parking_lot::Mutex;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::instrument;

use crate::{random::random_string, user_directory};

/// An account as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Account {
    pub password_hash: Option<String>,
    pub admin: bool,
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub created_ts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    refresh: bool,
    expires_at: Option<u64>,
}

/// A device as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<u64>,
    access_hash: String,
    refresh_hash: Option<String>,
}

/// An authenticated request's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub admin: bool,
    /// The application service whose `as_token` made the request (acting as its sender or
    /// as the user its `?user_id=` names).
    pub appservice: Option<String>,
}

/// What a successful registration or login hands out.
#[derive(Debug, Clone)]
pub struct LoginResult {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

/// A user-interactive authentication flow.
#[derive(Debug, Clone)]
pub enum UiaFlow {
    /// Registration: `m.login.dummy` when registration is open, and
    /// `m.login.registration_token` while the one-time token that creates the first admin
    /// is waiting to be used.
    Register { open: bool },
    /// Sensitive account actions: `m.login.password` for this user.
    Password(OwnedUserId),
}

/// How long a user-interactive authentication session lives after it is handed out.
pub const UIA_SESSION_TTL_MS: u64 = 30 * 60 * 1000;
/// Most user-interactive authentication sessions alive at once; one more forgets the oldest.
pub const MAX_UIA_SESSIONS: usize = 10_000;
/// How long a shared-secret registration nonce may be used (a minute, as Synapse).
pub const NONCE_TTL_MS: u64 = 60 * 1000;
/// Most shared-secret registration nonces alive at once; one more forgets the oldest.
pub const MAX_NONCES: usize = 1_000;

/// Short-lived random ids kept in memory (UIA sessions, registration nonces): each is valid
/// for `ttl_ms` from its creation and at most `cap` are kept, so neither time nor a flood of
/// requests makes the set grow; one more than `cap` forgets the oldest.
#[derive(Debug)]
struct ExpiringSet {
    ttl_ms: u64,
    cap: usize,
    created: HashMap<String, u64>,
    /// Ids in creation order, including some already taken; never longer than `cap`.
    order: VecDeque<(u64, String)>,
}

impl ExpiringSet {
    fn new(ttl_ms: u64, cap: usize) -> Self {
        Self {
            ttl_ms,
            cap: cap.max(1),
            created: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn live(&self, created: u64, now: u64) -> bool {
        now.saturating_sub(created) < self.ttl_ms
    }

    /// Forgets the ids that have expired.
    fn prune(&mut self, now: u64) {
        while let Some((created, _)) = self.order.front() {
            if self.live(*created, now) {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.created.remove(&id);
            }
        }
    }

    fn insert(&mut self, id: String, now: u64) {
        self.prune(now);
        while self.order.len() >= self.cap {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.created.remove(&oldest);
            }
        }
        self.created.insert(id.clone(), now);
        self.order.push_back((now, id));
    }

    fn contains(&self, id: &str, now: u64) -> bool {
        self.created.get(id).is_some_and(|c| self.live(*c, now))
    }

    /// Removes the id; whether it was there and still valid.
    fn take(&mut self, id: &str, now: u64) -> bool {
        self.created.remove(id).is_some_and(|c| self.live(c, now))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.created.len()
    }
}

pub struct Accounts {
    db: Arc<Db>,
    config: Arc<Config>,
    uia_sessions: Mutex<ExpiringSet>,
    register_lock: tokio::sync::Mutex<()>,
    /// Held while a device's tokens are replaced or deleted (login, refresh, logout): two
    /// refreshes of one token, or a refresh racing a logout, would otherwise both write, and
    /// leave a token that no device names or bring a deleted device back.
    session_lock: Mutex<()>,
    /// The one-time admin registration token while it waits (a copy of the stored one).
    admin_token: Mutex<Option<String>>,
    admin_token_lock: Mutex<()>,
    hasher: Hasher,
    dummy_hash: tokio::sync::OnceCell<String>,
    /// Password checks made (the unit tests count them).
    hashes_checked: std::sync::atomic::AtomicU64,
    /// Per-user limits on password checks of user-interactive auth and login.
    limiter: Option<Arc<crate::ratelimit::RateLimiter>>,
    nonces: Mutex<ExpiringSet>,
    /// Told about devices after they are deleted (their encryption keys go with them).
    removal_hook: std::sync::OnceLock<DeviceRemovalHook>,
}

/// Called with a user and the ids of devices just deleted, and whether the whole account was
/// deactivated.
pub type DeviceRemovalHook = Box<dyn Fn(&UserId, &[String], bool) -> Result<()> + Send + Sync>;

paracord_storage::key! {
    /// The key of `userdevice_device` (a user's devices): `user_id 0xFF device_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct DeviceKey<'a> {
        user_id: str => prefix,
        device_id: last_str,
    }
}

/// What [`Accounts::register`] is asked for.
struct NewAccount<'a> {
    localpart: Option<&'a str>,
    password: Option<String>,
    device_id: Option<String>,
    display_name: Option<String>,
    inhibit_login: bool,
    refresh: bool,
    admin: Option<bool>,
}

/// The localparts of application bots begin with this (spec/applications.md): nobody
/// registers one; the server makes them for applications.
pub const BOT_LOCALPART_PREFIX: &str = "_bot_";

/// Whether a localpart is in the application bots' namespace (case does not matter: localparts
/// are registered in lower case).
pub fn is_bot_localpart(localpart: &str) -> bool {
    localpart
        .get(..BOT_LOCALPART_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(BOT_LOCALPART_PREFIX))
}

/// Whether a user id is an application bot's (any server: the namespace is the profile's).
pub fn is_bot_user(user: &UserId) -> bool {
    is_bot_localpart(user.localpart())
}

fn bot_namespace() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ErrorKind::Exclusive,
        "user ids beginning with _bot_ are reserved for application bots",
    )
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Argon2id with m=7 MiB, t=5, p=1: one of OWASP's equivalent recommended settings, chosen
/// over m=19 MiB, t=2 because it costs the same time with a third of the memory.
fn argon2() -> Argon2<'static> {
    // The parameters are constants within argon2's limits, so `new` cannot fail; fall back to
    // the crate's default (also an OWASP setting) rather than panic.
    match argon2::Params::new(7 * 1024, 5, 1, None) {
        Ok(params) => Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params),
        Err(_) => Argon2::default(),
    }
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Password hashes waiting for the hashing thread at most; past that a login or registration
/// is answered 503 `M_LIMIT_EXCEEDED` at once instead of queueing without bound (a flood of
/// logins would otherwise hold every request and its memory for as long as the queue is).
const HASH_QUEUE_CAPACITY: usize = 64;

/// Password hashing runs on one dedicated thread per server. On tokio's blocking pool every
/// thread that ever hashed kept its own multi-megabyte malloc arena: ten sequential
/// registrations grew RSS from 19 MB to 195 MB. One thread bounds that to one arena, and a
/// burst of logins queues, up to [`HASH_QUEUE_CAPACITY`].
struct Hasher {
    tx: std::sync::mpsc::SyncSender<HashJob>,
}

impl Hasher {
    fn new(capacity: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(capacity);
        let spawned = std::thread::Builder::new()
            .name("password-hashing".into())
            .spawn(move || loop {
                match rx.try_recv() {
                    Ok(job) => job(),
                    // Nothing queued: give Argon2's working memory back before waiting, so
                    // it is only held while hashes come back to back.
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        ARGON2_MEMORY.with(|m| *m.borrow_mut() = Vec::new());
                        match rx.recv() {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                }
            });
        if let Err(e) = spawned {
            // Jobs then fail with "the hashing thread is gone" rather than the start.
            tracing::error!("cannot start the password hashing thread: {e}");
        }
        Self { tx }
    }

    /// Queues `f` for the hashing thread, or refuses at once when the queue is full.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.tx.try_send(Box::new(move || {
            let _ = tx.send(f());
        })) {
            Ok(()) => Ok(rx),
            Err(std::sync::mpsc::TrySendError::Full(_)) => Err(Error::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::LimitExceeded {
                    retry_after_ms: 1000,
                },
                "the server is busy checking passwords; try again in a moment",
            )),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                Err(Error::internal("password hashing thread is gone"))
            }
        }
    }

    /// Runs `f` on the hashing thread (see [`Hasher::submit`]).
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let rx = self.submit(f)?;
        rx.await
            .map_err(|_| Error::internal("password hashing thread dropped a job"))
    }
}

thread_local! {
    /// Argon2's working memory, allocated once per hashing thread and reused while hashes
    /// come in (allocating it per hash left a new aligned block behind in the arena each time,
    /// 7 MB per login); freed as soon as no hash is queued.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Computes the Argon2 output for `password` with `salt` under `hasher`'s parameters, in the
/// thread's reused working memory.
fn argon2_output(
    hasher: &Argon2<'_>,
    params: &argon2::Params,
    password: &[u8],
    salt: &argon2::password_hash::Salt<'_>,
) -> Result<argon2::password_hash::Output> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| Error::internal(format!("salt: {e}")))?;
    let len = params
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < params.block_count() {
            memory.resize(params.block_count(), argon2::Block::new());
        }
        let blocks = &mut memory[..params.block_count()];
        argon2::password_hash::Output::init_with(len, |out| {
            hasher
                .hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks)
                .map_err(|_| argon2::password_hash::Error::Password)
        })
        .map_err(|e| Error::internal(format!("password hashing: {e}")))
    })
}

fn hash_blocking(password: &[u8]) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hasher = argon2();
    let params = hasher.params().clone();
    let output = argon2_output(&hasher, &params, password, &salt.as_salt())?;
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(&params)
            .map_err(|e| Error::internal(format!("params: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

fn verify_blocking(password: &[u8], stored: &str) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(phc.algorithm) else {
        return false;
    };
    let version = match phc.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&phc) else {
        return false;
    };
    // Refuse absurd stored parameters rather than allocate for them.
    if params.block_count() > 64 * 1024 {
        return false;
    }
    let hasher = Argon2::new(algorithm, version, params.clone());
    // `Output`'s equality is constant-time.
    argon2_output(&hasher, &params, password, &salt).is_ok_and(|out| out == expected)
}

const MAX_PASSWORD_BYTES: usize = 512;
/// `GlobalValue` key of the one-time admin registration token.
const ADMIN_TOKEN_KEY: &[u8] = b"admin_registration_token";

impl Accounts {
    /// `limiter` bounds password guesses per user (`None`: unbounded, for tests).
    pub fn new(
        db: Arc<Db>,
        config: Arc<Config>,
        limiter: Option<Arc<crate::ratelimit::RateLimiter>>,
    ) -> Self {
        Self {
            db,
            config,
            uia_sessions: Mutex::new(ExpiringSet::new(UIA_SESSION_TTL_MS, MAX_UIA_SESSIONS)),
            register_lock: tokio::sync::Mutex::new(()),
            session_lock: Mutex::new(()),
            admin_token: Mutex::new(None),
            admin_token_lock: Mutex::new(()),
            hasher: Hasher::new(HASH_QUEUE_CAPACITY),
            dummy_hash: tokio::sync::OnceCell::new(),
            hashes_checked: std::sync::atomic::AtomicU64::new(0),
            limiter,
            nonces: Mutex::new(ExpiringSet::new(NONCE_TTL_MS, MAX_NONCES)),
            removal_hook: std::sync::OnceLock::new(),
        }
    }

    /// One password guess against `user`'s account: refused once they come too fast,
    /// whichever addresses they come from.
    fn password_guess(&self, user: &UserId) -> Result<()> {
        match &self.limiter {
            Some(l) => l.check(crate::ratelimit::Limit::Auth, &format!("user {user}")),
            None => Ok(()),
        }
    }

    /// Sets what happens after devices are deleted (once, at start-up).
    pub fn set_device_removal_hook(&self, hook: DeviceRemovalHook) {
        let _ = self.removal_hook.set(hook);
    }

    fn devices_removed(&self, user: &UserId, devices: &[String], deactivated: bool) -> Result<()> {
        match self.removal_hook.get() {
            Some(hook) if !devices.is_empty() || deactivated => hook(user, devices, deactivated),
            _ => Ok(()),
        }
    }

    /// Adds a device that has no access token (a dehydrated device, MSC3814), replacing any
    /// device of that id.
    pub fn create_tokenless_device(
        &self,
        user: &UserId,
        device_id: &str,
        display_name: Option<String>,
    ) -> Result<()> {
        let mut batch = Batch::new();
        if let Some(old) = self.device(user, device_id)? {
            self.delete_device_into(&mut batch, user, &old);
        }
        let device = Device {
            device_id: device_id.into(),
            display_name,
            last_seen_ip: None,
            last_seen_ts: None,
            // The hash of a token nobody was given: no request authenticates as this device.
            access_hash: hex::encode(token_hash(&random_string(40))),
            refresh_hash: None,
        };
        batch.put(
            Table::UserdeviceDevice,
            DeviceKey {
                user_id: user.as_str(),
                device_id,
            }
            .encode(),
            serde_json::to_vec(&device)?,
        );
        Ok(self.db.write(batch)?)
    }

    pub fn account(&self, user: &UserId) -> Result<Option<Account>> {
        match self.db.get(Table::UseridAccount, user.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes an account and its user directory row (its global profile; none once it is
    /// deactivated).
    fn put_account(&self, batch: &mut Batch, user: &UserId, account: &Account) -> Result<()> {
        batch.put(
            Table::UseridAccount,
            user.as_bytes().to_vec(),
            serde_json::to_vec(account)?,
        );
        if account.deactivated {
            user_directory::remove(batch, user);
        } else {
            user_directory::put(
                batch,
                user,
                &user_directory::Entry {
                    displayname: account.displayname.clone(),
                    avatar_url: account.avatar_url.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// Writes the directory rows of the accounts made before the user directory had rows,
    /// once. Returns how many it wrote.
    pub fn migrate_user_directory(&self) -> Result<usize> {
        crate::migrations::once(&self.db, b"user_directory_local_v1", || {
            let mut batch = Batch::new();
            let mut count = 0;
            for (k, v) in self.db.scan_prefix(Table::UseridAccount, b"")? {
                let (Ok(user), Ok(account)) = (
                    OwnedUserId::try_from(String::from_utf8_lossy(&k).into_owned()),
                    serde_json::from_slice::<Account>(&v),
                ) else {
                    continue;
                };
                self.put_account(&mut batch, &user, &account)?;
                count += 1;
            }
            self.db.write(batch)?;
            Ok(count)
        })
    }

    pub fn is_local(&self, user: &UserId) -> bool {
        self.is_local_server(user.server_name())
    }

    pub fn is_local_server(&self, server: &ruma::ServerName) -> bool {
        server == self.config.server_name.as_str()
    }

    /// Validates a localpart and makes the user id.
    pub fn user_id_for(&self, localpart: &str) -> Result<OwnedUserId> {
        let localpart = localpart.to_lowercase();
        let ok = !localpart.is_empty()
            && localpart
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'));
        let user = OwnedUserId::try_from(format!("@{localpart}:{}", self.config.server_name))
            .ok()
            .filter(|u| ok && u.as_str().len() <= 255)
            .ok_or_else(|| {
                Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ErrorKind::InvalidUsername,
                    "invalid username",
                )
            })?;
        Ok(user)
    }

    /// Resolves a login identifier (localpart or full user id) to a local user id.
    pub fn resolve_login_user(&self, user: &str) -> Result<OwnedUserId> {
        if user.starts_with('@') {
            let id = OwnedUserId::try_from(user)
                .map_err(|_| Error::forbidden("invalid username or password"))?;
            if !self.is_local(&id) {
                return Err(Error::forbidden("invalid username or password"));
            }
            if self.account(&id)?.is_some() {
                return Ok(id);
            }
            // Localparts are registered in lower case: `@Alice:server` logs in as `@alice`.
            self.user_id_for(id.localpart())
                .map_err(|_| Error::forbidden("invalid username or password"))
        } else {
            self.user_id_for(user)
                .map_err(|_| Error::forbidden("invalid username or password"))
        }
    }

    pub fn is_available(&self, localpart: &str) -> Result<bool> {
        if is_bot_localpart(localpart) {
            return Err(bot_namespace());
        }
        if localpart.eq_ignore_ascii_case(&self.config.server_notices_localpart) {
            return Ok(false);
        }
        let user = self.user_id_for(localpart)?;
        Ok(self.account(&user)?.is_none())
    }

    /// Registers a local account (an admin only when `admin` says so).
    #[instrument(skip_all)]
    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &self,
        localpart: Option<&str>,
        password: Option<String>,
        device_id: Option<String>,
        display_name: Option<String>,
        inhibit_login: bool,
        refresh: bool,
        admin: Option<bool>,
    ) -> Result<LoginResult> {
        let new = NewAccount {
            localpart,
            password,
            device_id,
            display_name,
            inhibit_login,
            refresh,
            admin,
        };
        self.register_account(new, false).await
    }

    /// Registers a user of an application's namespace in the bots' namespace
    /// (spec/applications.md §3): for the application service that holds that namespace
    /// exclusively, which the caller has checked. No password, no admin.
    #[instrument(skip_all)]
    pub async fn register_namespaced_bot(
        &self,
        localpart: &str,
        device_id: Option<String>,
        display_name: Option<String>,
        inhibit_login: bool,
        refresh: bool,
    ) -> Result<LoginResult> {
        let new = NewAccount {
            localpart: Some(localpart),
            password: None,
            device_id,
            display_name,
            inhibit_login,
            refresh,
            admin: None,
        };
        self.register_account(new, true).await
    }

    async fn register_account(
        &self,
        new: NewAccount<'_>,
        bot_namespace: bool,
    ) -> Result<LoginResult> {
        let NewAccount {
            localpart,
            password,
            device_id,
            display_name,
            inhibit_login,
            refresh,
            admin,
        } = new;
        if password
            .as_ref()
            .is_some_and(|p| p.len() > MAX_PASSWORD_BYTES)
        {
            return Err(Error::invalid_param("password too long"));
        }
        let password_hash = match password {
            Some(p) if !p.is_empty() => Some(self.hash_password(p).await?),
            _ => None,
        };
        let _guard = self.register_lock.lock().await;
        let user = match localpart {
            Some(l) if l.eq_ignore_ascii_case(&self.config.server_notices_localpart) => {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ErrorKind::UserInUse,
                    "this user id is reserved for the server",
                ))
            }
            Some(l) if is_bot_localpart(l) && !bot_namespace => return Err(self::bot_namespace()),
            Some(l) => self.user_id_for(l)?,
            None => loop {
                let candidate =
                    self.user_id_for(&format!("u{}", random_string(10).to_lowercase()))?;
                if self.account(&candidate)?.is_none() {
                    break candidate;
                }
            },
        };
        if self.account(&user)?.is_some() {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::UserInUse,
                "user id already taken",
            ));
        }
        let account = Account {
            password_hash,
            // Admin only when asked for (the shared-secret API, the one-time admin token):
            // never because the account happens to be the first.
            admin: admin.unwrap_or(false),
            deactivated: false,
            displayname: Some(user.localpart().to_owned()),
            avatar_url: None,
            created_ts: now_ms(),
        };
        let mut batch = Batch::new();
        self.put_account(&mut batch, &user, &account)?;
        if account.admin {
            // However the server got its admin, the one-time token has done its work.
            batch.delete(Table::GlobalValue, ADMIN_TOKEN_KEY.to_vec());
            *self.admin_token.lock() = None;
        }
        if inhibit_login {
            self.db.write(batch)?;
            return Ok(LoginResult {
                user_id: user,
                device_id: OwnedDeviceId::from(""),
                access_token: String::new(),
                refresh_token: None,
                expires_in_ms: None,
            });
        }
        let _sessions = self.session_lock.lock();
        let result = self.new_session(&mut batch, &user, device_id, display_name, refresh)?;
        self.db.write(batch)?;
        Ok(result)
    }

    /// Creates a system account (no password, no device: nobody logs in as it) unless it
    /// exists.
    pub async fn ensure_system_account(&self, user: &UserId, displayname: &str) -> Result<()> {
        let _guard = self.register_lock.lock().await;
        if self.account(user)?.is_some() {
            return Ok(());
        }
        let account = Account {
            password_hash: None,
            admin: false,
            deactivated: false,
            displayname: Some(displayname.to_owned()),
            avatar_url: None,
            created_ts: now_ms(),
        };
        let mut batch = Batch::new();
        self.put_account(&mut batch, user, &account)?;
        Ok(self.db.write(batch)?)
    }

    /// Adds a device (or replaces the tokens of an existing one) to `batch`.
    fn new_session(
        &self,
        batch: &mut Batch,
        user: &UserId,
        device_id: Option<String>,
        display_name: Option<String>,
        refresh: bool,
    ) -> Result<LoginResult> {
        let device_id: OwnedDeviceId = device_id
            .unwrap_or_else(|| random_string(10).to_uppercase())
            .into();
        let old = self.device(user, device_id.as_str())?;
        if let Some(old) = &old {
            batch.delete(
                Table::TokenhashSession,
                hex::decode(&old.access_hash).unwrap_or_default(),
            );
            if let Some(r) = &old.refresh_hash {
                batch.delete(Table::TokenhashSession, hex::decode(r).unwrap_or_default());
            }
        }
        let access = format!("pc_{}", random_string(40));
        let refresh_token = refresh.then(|| format!("pcr_{}", random_string(40)));
        let expires_in_ms = refresh.then_some(self.config.refreshable_access_token_lifetime_ms);
        let session = Session {
            user_id: user.to_owned(),
            device_id: device_id.clone(),
            refresh: false,
            expires_at: expires_in_ms.map(|ms| now_ms().saturating_add(ms)),
        };
        batch.put(
            Table::TokenhashSession,
            token_hash(&access),
            serde_json::to_vec(&session)?,
        );
        if let Some(r) = &refresh_token {
            let s = Session {
                refresh: true,
                expires_at: None,
                ..session.clone()
            };
            batch.put(
                Table::TokenhashSession,
                token_hash(r),
                serde_json::to_vec(&s)?,
            );
        }
        let device = Device {
            device_id: device_id.clone(),
            display_name: display_name
                .or_else(|| old.as_ref().and_then(|o| o.display_name.clone())),
            last_seen_ip: None,
            last_seen_ts: Some(now_ms()),
            access_hash: hex::encode(token_hash(&access)),
            refresh_hash: refresh_token.as_deref().map(|r| hex::encode(token_hash(r))),
        };
        batch.put(
            Table::UserdeviceDevice,
            DeviceKey {
                user_id: user.as_str(),
                device_id: device_id.as_str(),
            }
            .encode(),
            serde_json::to_vec(&device)?,
        );
        Ok(LoginResult {
            user_id: user.to_owned(),
            device_id,
            access_token: access,
            refresh_token,
            expires_in_ms,
        })
    }

    /// Checks a user's password; `Ok(false)` for wrong password, unknown or deactivated users.
    pub async fn check_password(&self, user: &UserId, password: &str) -> Result<bool> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let stored = self
            .account(user)?
            .and_then(|a| a.password_hash.filter(|_| !a.deactivated));
        match stored {
            Some(hash) => self.verify_password(password.to_owned(), hash).await,
            None => {
                // No account, or none that logs in by password: the same work as a wrong
                // password, so the answer's timing does not tell which users exist.
                let dummy = self.dummy_hash().await?;
                self.verify_password(password.to_owned(), dummy).await?;
                Ok(false)
            }
        }
    }

    async fn hash_password(&self, password: String) -> Result<String> {
        self.hasher
            .run(move || hash_blocking(password.as_bytes()))
            .await?
    }

    /// Whether `password` matches `hash`; `Err` only when the hashing queue is full.
    async fn verify_password(&self, password: String, hash: String) -> Result<bool> {
        let result = self
            .hasher
            .run(move || verify_blocking(password.as_bytes(), &hash))
            .await;
        self.hashes_checked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// A hash of a random password, made once, that unknown users' passwords are checked
    /// against.
    async fn dummy_hash(&self) -> Result<String> {
        self.dummy_hash
            .get_or_try_init(|| self.hash_password(random_string(32)))
            .await
            .cloned()
    }

    /// `m.login.password`.
    pub async fn login_password(
        &self,
        user: &UserId,
        password: &str,
        device_id: Option<String>,
        display_name: Option<String>,
        refresh: bool,
    ) -> Result<LoginResult> {
        if let Some(a) = self.account(user)? {
            if a.deactivated {
                return Err(Error::new(
                    http::StatusCode::FORBIDDEN,
                    ErrorKind::UserDeactivated,
                    "account deactivated",
                ));
            }
        }
        self.password_guess(user)?;
        if !self.check_password(user, password).await? {
            return Err(Error::forbidden("invalid username or password"));
        }
        let mut batch = Batch::new();
        let _sessions = self.session_lock.lock();
        let result = self.new_session(&mut batch, user, device_id, display_name, refresh)?;
        self.db.write(batch)?;
        Ok(result)
    }

    /// A login without a password, for a caller that vouches for the user (an application
    /// service logging in one of its users with `m.login.application_service`).
    pub fn login_trusted(
        &self,
        user: &UserId,
        device_id: Option<String>,
        display_name: Option<String>,
        refresh: bool,
    ) -> Result<LoginResult> {
        match self.account(user)? {
            None => return Err(Error::forbidden("no such user")),
            Some(a) if a.deactivated => {
                return Err(Error::new(
                    http::StatusCode::FORBIDDEN,
                    ErrorKind::UserDeactivated,
                    "account deactivated",
                ))
            }
            Some(_) => {}
        }
        let mut batch = Batch::new();
        let _sessions = self.session_lock.lock();
        let result = self.new_session(&mut batch, user, device_id, display_name, refresh)?;
        self.db.write(batch)?;
        Ok(result)
    }

    /// Resolves an access token.
    pub fn authenticate(&self, token: &str) -> Result<Identity> {
        let Some(raw) = self.db.get(Table::TokenhashSession, &token_hash(token))? else {
            return Err(Error::unknown_token(false));
        };
        let session: Session = serde_json::from_slice(&raw)?;
        if session.refresh {
            return Err(Error::unknown_token(false));
        }
        if session.expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(Error::unknown_token(true));
        }
        // Only the device's current token: whatever a race may have left behind, a token
        // its device does not name is dead.
        let current = self
            .device(&session.user_id, session.device_id.as_str())?
            .is_some_and(|d| d.access_hash == hex::encode(token_hash(token)));
        if !current {
            return Err(Error::unknown_token(false));
        }
        let account = self
            .account(&session.user_id)?
            .ok_or_else(|| Error::unknown_token(false))?;
        if account.deactivated {
            return Err(Error::unknown_token(false));
        }
        Ok(Identity {
            user_id: session.user_id,
            device_id: session.device_id,
            admin: account.admin,
            appservice: None,
        })
    }

    /// Exchanges a refresh token for a new access and refresh token; the old ones stop working.
    pub fn refresh(&self, refresh_token: &str) -> Result<LoginResult> {
        let _sessions = self.session_lock.lock();
        let raw = self
            .db
            .get(Table::TokenhashSession, &token_hash(refresh_token))?
            .ok_or_else(|| Error::unknown_token(false))?;
        let session: Session = serde_json::from_slice(&raw)?;
        let current = self
            .device(&session.user_id, session.device_id.as_str())?
            .is_some_and(|d| d.refresh_hash == Some(hex::encode(token_hash(refresh_token))));
        if !session.refresh || !current {
            return Err(Error::unknown_token(false));
        }
        let mut batch = Batch::new();
        let result = self.new_session(
            &mut batch,
            &session.user_id,
            Some(session.device_id.to_string()),
            None,
            true,
        )?;
        self.db.write(batch)?;
        Ok(result)
    }

    pub fn device(&self, user: &UserId, device_id: &str) -> Result<Option<Device>> {
        let key = DeviceKey {
            user_id: user.as_str(),
            device_id,
        }
        .encode();
        match self.db.get(Table::UserdeviceDevice, &key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn devices(&self, user: &UserId) -> Result<Vec<Device>> {
        let prefix = DeviceKey::prefix(user.as_str());
        self.db
            .scan_prefix(Table::UserdeviceDevice, &prefix)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(Error::from))
            .collect()
    }

    pub fn update_device(
        &self,
        user: &UserId,
        device_id: &str,
        display_name: Option<String>,
    ) -> Result<()> {
        let mut device = self
            .device(user, device_id)?
            .ok_or_else(|| Error::not_found("device not found"))?;
        device.display_name = display_name;
        let mut batch = Batch::new();
        batch.put(
            Table::UserdeviceDevice,
            DeviceKey {
                user_id: user.as_str(),
                device_id,
            }
            .encode(),
            serde_json::to_vec(&device)?,
        );
        Ok(self.db.write(batch)?)
    }

    /// Records where and when a device was last seen (best effort).
    pub fn touch_device(&self, user: &UserId, device_id: &str, ip: Option<String>) {
        let Ok(Some(mut device)) = self.device(user, device_id) else {
            return;
        };
        let now = now_ms();
        if device
            .last_seen_ts
            .is_some_and(|t| now.saturating_sub(t) < 60_000)
            && device.last_seen_ip == ip
        {
            return;
        }
        device.last_seen_ts = Some(now);
        device.last_seen_ip = ip;
        let mut batch = Batch::new();
        if let Ok(v) = serde_json::to_vec(&device) {
            batch.put(
                Table::UserdeviceDevice,
                DeviceKey {
                    user_id: user.as_str(),
                    device_id,
                }
                .encode(),
                v,
            );
            let _ = self.db.write(batch);
        }
    }

    fn delete_device_into(&self, batch: &mut Batch, user: &UserId, device: &Device) {
        batch.delete(
            Table::TokenhashSession,
            hex::decode(&device.access_hash).unwrap_or_default(),
        );
        if let Some(r) = &device.refresh_hash {
            batch.delete(Table::TokenhashSession, hex::decode(r).unwrap_or_default());
        }
        batch.delete(
            Table::UserdeviceDevice,
            DeviceKey {
                user_id: user.as_str(),
                device_id: device.device_id.as_str(),
            }
            .encode(),
        );
    }

    /// Deletes devices and their tokens (logout).
    pub fn delete_devices(&self, user: &UserId, device_ids: &[String]) -> Result<()> {
        let sessions = self.session_lock.lock();
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for d in device_ids {
            if let Some(device) = self.device(user, d)? {
                self.delete_device_into(&mut batch, user, &device);
                removed.push(device.device_id.to_string());
            }
        }
        self.db.write(batch)?;
        drop(sessions);
        self.devices_removed(user, &removed, false)
    }

    /// Deletes every device of the user except `keep`.
    pub fn delete_all_devices(&self, user: &UserId, keep: Option<&str>) -> Result<()> {
        let sessions = self.session_lock.lock();
        let mut batch = Batch::new();
        let mut removed = Vec::new();
        for device in self.devices(user)? {
            if keep != Some(device.device_id.as_str()) {
                self.delete_device_into(&mut batch, user, &device);
                removed.push(device.device_id.to_string());
            }
        }
        self.db.write(batch)?;
        drop(sessions);
        self.devices_removed(user, &removed, false)
    }

    pub async fn set_password(&self, user: &UserId, password: String) -> Result<()> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::invalid_param("password too long"));
        }
        let hash = self.hash_password(password).await?;
        let mut account = self
            .account(user)?
            .ok_or_else(|| Error::not_found("no such user"))?;
        account.password_hash = Some(hash);
        let mut batch = Batch::new();
        self.put_account(&mut batch, user, &account)?;
        Ok(self.db.write(batch)?)
    }

    /// Deactivates an account: no password, no devices, no tokens.
    pub fn deactivate(&self, user: &UserId) -> Result<()> {
        let mut account = self
            .account(user)?
            .ok_or_else(|| Error::not_found("no such user"))?;
        account.deactivated = true;
        account.password_hash = None;
        account.displayname = None;
        account.avatar_url = None;
        let sessions = self.session_lock.lock();
        let mut batch = Batch::new();
        self.put_account(&mut batch, user, &account)?;
        let mut removed = Vec::new();
        for device in self.devices(user)? {
            self.delete_device_into(&mut batch, user, &device);
            removed.push(device.device_id.to_string());
        }
        self.db.write(batch)?;
        drop(sessions);
        self.devices_removed(user, &removed, true)
    }

    pub fn set_profile(
        &self,
        user: &UserId,
        displayname: Option<Option<String>>,
        avatar_url: Option<Option<String>>,
    ) -> Result<Account> {
        let mut account = self
            .account(user)?
            .ok_or_else(|| Error::not_found("no such user"))?;
        if let Some(d) = displayname {
            account.displayname = d;
        }
        if let Some(a) = avatar_url {
            account.avatar_url = a;
        }
        let mut batch = Batch::new();
        self.put_account(&mut batch, user, &account)?;
        self.db.write(batch)?;
        Ok(account)
    }

    pub fn profile(&self, user: &UserId) -> Result<(Option<String>, Option<String>)> {
        let account = self
            .account(user)?
            .filter(|a| !a.deactivated)
            .ok_or_else(|| Error::not_found("profile not found"))?;
        Ok((account.displayname, account.avatar_url))
    }

    pub fn all_users(&self) -> Result<Vec<OwnedUserId>> {
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Table::UseridAccount, b"")? {
            let s = KeyReader::new(&k).last_str()?;
            if let Ok(u) = OwnedUserId::try_from(s) {
                out.push(u);
            }
        }
        Ok(out)
    }

    // ----- user-interactive authentication -----

    fn uia_body(&self, flow: &UiaFlow, session: &str, error: Option<(&str, &str)>) -> Value {
        let mut stages = Vec::new();
        match flow {
            UiaFlow::Register { open } => {
                if *open {
                    stages.push("m.login.dummy");
                }
                if self.admin_token_waiting() {
                    stages.push("m.login.registration_token");
                }
            }
            UiaFlow::Password(_) => stages.push("m.login.password"),
        }
        let flows: Vec<Value> = stages.iter().map(|s| json!({ "stages": [s] })).collect();
        let mut body = json!({ "flows": flows, "params": {}, "session": session, "completed": [] });
        if let Some((code, msg)) = error {
            body["errcode"] = json!(code);
            body["error"] = json!(msg);
        }
        body
    }

    fn new_uia_session(&self) -> String {
        let id = random_string(24);
        self.uia_sessions.lock().insert(id.clone(), now_ms());
        id
    }

    /// Runs one step of user-interactive auth. `Ok` once the flow is complete, with the
    /// registration token when that was the stage; otherwise an [`Error::Uia`] with the flows
    /// and the session to continue with.
    pub async fn uia(&self, auth: Option<&Value>, flow: UiaFlow) -> Result<Option<String>> {
        let Some(auth) = auth.filter(|a| a.get("type").is_some()) else {
            let session = auth
                .and_then(|a| a["session"].as_str())
                .filter(|s| self.uia_sessions.lock().contains(s, now_ms()))
                .map(str::to_owned)
                .unwrap_or_else(|| self.new_uia_session());
            return Err(Error::Uia(self.uia_body(&flow, &session, None)));
        };
        let session = auth["session"]
            .as_str()
            .filter(|s| self.uia_sessions.lock().contains(s, now_ms()))
            .map(str::to_owned)
            .unwrap_or_else(|| self.new_uia_session());
        let kind = auth["type"].as_str().unwrap_or_default();
        let mut token = None;
        match (&flow, kind) {
            (UiaFlow::Register { open: true }, "m.login.dummy") => {}
            (UiaFlow::Register { .. }, "m.login.registration_token") => {
                let given = auth["token"].as_str().unwrap_or_default();
                if !self.admin_token_matches(given) {
                    return Err(Error::Uia(self.uia_body(
                        &flow,
                        &session,
                        Some(("M_FORBIDDEN", "invalid registration token")),
                    )));
                }
                token = Some(given.to_owned());
            }
            (UiaFlow::Password(user), "m.login.password") => {
                self.password_guess(user)?;
                let given = auth["identifier"]["user"]
                    .as_str()
                    .or_else(|| auth["user"].as_str())
                    .unwrap_or_default();
                let given_user = self.resolve_login_user(given).ok();
                let password = auth["password"].as_str().unwrap_or_default();
                if let Some(other) = given_user.as_ref().filter(|g| *g != user) {
                    // Someone else's valid credentials do not authorize this user's request.
                    if self.check_password(other, password).await? {
                        return Err(Error::forbidden(
                            "the credentials given are not those of the requesting user",
                        ));
                    }
                }
                if given_user.as_ref() != Some(user) || !self.check_password(user, password).await?
                {
                    return Err(Error::Uia(self.uia_body(
                        &flow,
                        &session,
                        Some(("M_FORBIDDEN", "invalid password")),
                    )));
                }
            }
            _ => {
                return Err(Error::Uia(self.uia_body(
                    &flow,
                    &session,
                    Some(("M_UNRECOGNIZED", "unsupported authentication type")),
                )))
            }
        }
        self.uia_sessions.lock().take(&session, now_ms());
        Ok(token)
    }

    // ----- The one-time token that creates the first admin -----

    /// The token that registers the server's first admin, made (and kept across restarts)
    /// while no account is an admin; `None` once one is. Read at start-up, which prints it.
    pub fn admin_registration_token(&self) -> Result<Option<String>> {
        let _guard = self.admin_token_lock.lock();
        let any_admin = self
            .db
            .scan_prefix(Table::UseridAccount, b"")?
            .into_iter()
            .any(|(_, v)| {
                serde_json::from_slice::<Account>(&v).is_ok_and(|a| a.admin && !a.deactivated)
            });
        if any_admin {
            let mut batch = Batch::new();
            batch.delete(Table::GlobalValue, ADMIN_TOKEN_KEY.to_vec());
            self.db.write(batch)?;
            *self.admin_token.lock() = None;
            return Ok(None);
        }
        let token = match self.db.get(Table::GlobalValue, ADMIN_TOKEN_KEY)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let token = random_string(32);
                let mut batch = Batch::new();
                batch.put(
                    Table::GlobalValue,
                    ADMIN_TOKEN_KEY.to_vec(),
                    token.as_bytes().to_vec(),
                );
                self.db.write(batch)?;
                token
            }
        };
        *self.admin_token.lock() = Some(token.clone());
        Ok(Some(token))
    }

    /// Whether the admin token is waiting to be used.
    pub fn admin_token_waiting(&self) -> bool {
        self.admin_token.lock().is_some()
    }

    /// Whether `given` is the waiting admin token (compared in constant time).
    pub fn admin_token_matches(&self, given: &str) -> bool {
        self.admin_token.lock().as_deref().is_some_and(|t| {
            t.len() == given.len()
                && t.bytes()
                    .zip(given.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    /// Uses up the admin token: `false` when it is not (or no longer) `given`.
    pub fn take_admin_token(&self, given: &str) -> Result<bool> {
        let _guard = self.admin_token_lock.lock();
        if !self.admin_token_matches(given) {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete(Table::GlobalValue, ADMIN_TOKEN_KEY.to_vec());
        self.db.write(batch)?;
        *self.admin_token.lock() = None;
        Ok(true)
    }

    /// Puts back a token taken for a registration that then failed.
    pub fn restore_admin_token(&self, token: &str) -> Result<()> {
        let _guard = self.admin_token_lock.lock();
        let mut batch = Batch::new();
        batch.put(
            Table::GlobalValue,
            ADMIN_TOKEN_KEY.to_vec(),
            token.as_bytes().to_vec(),
        );
        self.db.write(batch)?;
        *self.admin_token.lock() = Some(token.to_owned());
        Ok(())
    }

    // ----- OpenID tokens (for third parties to verify a user's identity) -----

    /// Issues an OpenID token for `user`, valid for an hour.
    pub fn request_openid_token(&self, user: &UserId) -> Result<(String, u64)> {
        const LIFETIME_MS: u64 = 60 * 60 * 1000;
        let token = random_string(40);
        let record = json!({ "user_id": user, "expires_at": now_ms().saturating_add(LIFETIME_MS) });
        let mut batch = Batch::new();
        batch.put(
            Table::OpenidtokenSession,
            token_hash(&token),
            serde_json::to_vec(&record)?,
        );
        self.db.write(batch)?;
        Ok((token, LIFETIME_MS / 1000))
    }

    /// The user an unexpired OpenID token was issued to.
    pub fn openid_user(&self, token: &str) -> Result<Option<OwnedUserId>> {
        let Some(raw) = self.db.get(Table::OpenidtokenSession, &token_hash(token))? else {
            return Ok(None);
        };
        let record: Value = serde_json::from_slice(&raw)?;
        if record["expires_at"].as_u64().is_none_or(|t| t <= now_ms()) {
            return Ok(None);
        }
        Ok(record["user_id"]
            .as_str()
            .and_then(|u| OwnedUserId::try_from(u).ok()))
    }

    // ----- Synapse-compatible shared-secret registration -----

    pub fn new_nonce(&self) -> String {
        let nonce = random_string(32);
        self.nonces.lock().insert(nonce.clone(), now_ms());
        nonce
    }

    /// Checks the HMAC-SHA1 of `nonce\0user\0password\0admin|notadmin` and consumes the nonce.
    pub fn check_shared_secret_mac(
        &self,
        nonce: &str,
        user: &str,
        password: &str,
        admin: bool,
        mac: &str,
    ) -> Result<()> {
        let Some(secret) = self.config.registration_shared_secret.as_deref() else {
            return Err(Error::forbidden(
                "shared-secret registration is not enabled",
            ));
        };
        if !self.nonces.lock().take(nonce, now_ms()) {
            return Err(Error::forbidden("unrecognised nonce"));
        }
        let mut m =
            Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).map_err(Error::internal)?;
        m.update(nonce.as_bytes());
        m.update(b"\0");
        m.update(user.as_bytes());
        m.update(b"\0");
        m.update(password.as_bytes());
        m.update(b"\0");
        m.update(if admin {
            b"admin".as_slice()
        } else {
            b"notadmin".as_slice()
        });
        let given = hex::decode(mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
        m.verify_slice(&given)
            .map_err(|_| Error::forbidden("HMAC incorrect"))
    }
}

#[cfg(test)]
mod tests {
    use paracord_storage::KeyBuf;

    use super::*;

    #[test]
    fn device_key_round_trips_and_layout_is_stable() {
        let key = DeviceKey {
            user_id: "@u:x",
            device_id: "DEV",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFFDEV");
        assert_eq!(bytes, KeyBuf::new().str("@u:x").last_str("DEV").into_vec());
        assert_eq!(DeviceKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&DeviceKey::prefix("@u:x")));
        assert!(!DeviceKey {
            user_id: "@u:xy",
            device_id: "DEV"
        }
        .encode()
        .starts_with(&DeviceKey::prefix("@u:x")));
        assert!(DeviceKey::decode(b"no separator").is_err());
    }

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let config = Config {
            registration_shared_secret: Some("s3cret".into()),
            ..Config::default()
        };
        (dir, Accounts::new(db, Arc::new(config), None))
    }

    /// A new account `name` (password "pw") logged in with a refresh token.
    async fn refreshable(a: &Accounts, name: &str) -> LoginResult {
        a.register(Some(name), Some("pw".into()), None, None, false, true, None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_an_asked_for_account_is_admin_and_tokens_work() {
        let (_d, a) = accounts();
        let first = a
            .register(
                Some("alice"),
                Some("pw".into()),
                None,
                None,
                false,
                false,
                None,
            )
            .await
            .unwrap();
        let second = a
            .register(
                Some("bob"),
                Some("pw".into()),
                None,
                None,
                false,
                false,
                None,
            )
            .await
            .unwrap();
        // Issue 15 item 12: the first account is not an admin for being first.
        assert!(!a.authenticate(&first.access_token).unwrap().admin);
        assert!(!a.authenticate(&second.access_token).unwrap().admin);
        let err = a
            .register(Some("alice"), None, None, None, false, false, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(&ErrorKind::UserInUse));
    }

    // Issue 15 item 10: of refreshes of one token at the same moment, one wins, and no
    // access token handed out but the device's current one works.
    #[tokio::test]
    async fn simultaneous_refreshes_leave_one_live_token() {
        let (_d, a) = accounts();
        let a = Arc::new(a);
        let r = refreshable(&a, "dave").await;
        let mut refresh = r.refresh_token.clone().unwrap();
        let mut issued = vec![r.access_token.clone()];
        for round in 0..200 {
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (a, barrier, token) = (a.clone(), barrier.clone(), refresh.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        a.refresh(&token)
                    })
                })
                .collect();
            let won: Vec<LoginResult> = handles
                .into_iter()
                .filter_map(|h| h.join().unwrap().ok())
                .collect();
            assert_eq!(won.len(), 1, "round {round}: one refresh wins");
            issued.extend(won.iter().map(|w| w.access_token.clone()));
            refresh = won[0].refresh_token.clone().unwrap();
        }
        let live = issued.iter().filter(|t| a.authenticate(t).is_ok()).count();
        assert_eq!(live, 1, "only the device's current token works");
        a.delete_devices(&r.user_id, &[r.device_id.to_string()])
            .unwrap();
        assert!(issued.iter().all(|t| a.authenticate(t).is_err()));
    }

    #[tokio::test]
    async fn refresh_rotates_tokens() {
        let (_d, a) = accounts();
        let r = refreshable(&a, "carol").await;
        let refresh = r.refresh_token.clone().unwrap();
        let next = a.refresh(&refresh).unwrap();
        assert!(a.authenticate(&r.access_token).is_err());
        assert!(a.authenticate(&next.access_token).is_ok());
        assert!(a.refresh(&refresh).is_err());
        assert!(
            a.authenticate(&refresh).is_err(),
            "a refresh token is not an access token"
        );
    }

    #[tokio::test]
    async fn login_checks_password() {
        let (_d, a) = accounts();
        let u = a
            .register(
                Some("dave"),
                Some("right".into()),
                None,
                None,
                false,
                false,
                None,
            )
            .await
            .unwrap();
        assert!(a
            .login_password(&u.user_id, "wrong", None, None, false)
            .await
            .is_err());
        assert!(a
            .login_password(&u.user_id, "right", None, None, false)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn password_hashes_use_the_owasp_parameters() {
        let (_d, a) = accounts();
        let hash = a.hash_password("pw".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{hash}");
        assert!(a.verify_password("pw".into(), hash.clone()).await.unwrap());
        assert!(!a
            .verify_password("wrong".into(), hash.clone())
            .await
            .unwrap());
        // Hashes made by the argon2 crate's own hasher (other parameters) still verify.
        use argon2::PasswordHasher;
        let salt = SaltString::generate(&mut OsRng);
        let other = Argon2::default()
            .hash_password(b"old", &salt)
            .unwrap()
            .to_string();
        assert!(a
            .verify_password("old".into(), other.clone())
            .await
            .unwrap());
        assert!(!a.verify_password("new".into(), other).await.unwrap());
        assert!(!a
            .verify_password("pw".into(), "not a hash".into())
            .await
            .unwrap());
    }

    // Issue 15 item 8: an unknown user's password is checked against a hash all the same,
    // so the answer takes as long as for a known user with a wrong password.
    #[tokio::test]
    async fn unknown_users_cost_a_password_check_too() {
        let (_d, a) = accounts();
        let checked = || a.hashes_checked.load(std::sync::atomic::Ordering::Relaxed);
        let before = checked();
        let nobody = a.user_id_for("nobody").unwrap();
        assert!(!a.check_password(&nobody, "guess").await.unwrap());
        assert_eq!(
            checked(),
            before + 1,
            "one hash checked for an unknown user"
        );
        let u = a
            .register(
                Some("erin"),
                Some("right".into()),
                None,
                None,
                true,
                false,
                None,
            )
            .await
            .unwrap();
        let before = checked();
        assert!(!a.check_password(&u.user_id, "wrong").await.unwrap());
        assert_eq!(checked(), before + 1, "and one for a known user");
    }

    // Issue 15 item 8: the hashing queue is bounded; when it is full the answer is an
    // immediate 503 M_LIMIT_EXCEEDED, not a wait behind every queued hash.
    #[tokio::test]
    async fn a_full_hashing_queue_refuses_at_once() {
        let hasher = Hasher::new(2);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = hasher
            .submit(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .unwrap();
        started_rx.recv().unwrap();
        let queued: Vec<_> = (0..2).map(|_| hasher.submit(|| ()).unwrap()).collect();
        let err = hasher.run(|| ()).await.unwrap_err();
        assert_eq!(err.classify().0, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(err.kind(), Some(ErrorKind::LimitExceeded { .. })));
        release_tx.send(()).unwrap();
        busy.await.unwrap();
        for q in queued {
            q.await.unwrap();
        }
    }

    #[test]
    fn usernames_are_validated() {
        let (_d, a) = accounts();
        assert!(a.user_id_for("Bad Name!").is_err());
        assert!(a.user_id_for("").is_err());
        assert_eq!(
            a.user_id_for("Good.Name").unwrap().as_str(),
            "@good.name:localhost"
        );
    }

    #[test]
    fn shared_secret_mac() {
        let (_d, a) = accounts();
        let nonce = a.new_nonce();
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        m.update(format!("{nonce}\0eve\0pw\0notadmin").as_bytes());
        let mac = hex::encode(m.finalize().into_bytes());
        assert!(a
            .check_shared_secret_mac(&nonce, "eve", "pw", true, &mac)
            .is_err());
        let nonce = a.new_nonce();
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
        m.update(format!("{nonce}\0eve\0pw\0notadmin").as_bytes());
        let mac = hex::encode(m.finalize().into_bytes());
        assert!(a
            .check_shared_secret_mac(&nonce, "eve", "pw", false, &mac)
            .is_ok());
        assert!(
            a.check_shared_secret_mac(&nonce, "eve", "pw", false, &mac)
                .is_err(),
            "nonce is single-use"
        );
    }

    // Issue 15: UIA sessions and nonces expire and are bounded in number.
    #[test]
    fn expiring_sets_forget_by_age_and_by_count() {
        let mut set = ExpiringSet::new(1_000, 3);
        set.insert("a".into(), 10);
        set.insert("b".into(), 20);
        assert!(set.contains("a", 1_009));
        assert!(!set.contains("a", 1_010), "valid after its lifetime");
        assert!(set.contains("b", 1_010));
        // Expired ids are dropped when another comes.
        set.insert("c".into(), 1_015);
        assert_eq!(set.len(), 2);
        assert!(!set.take("b", 1_020), "taken after its lifetime");
        // Taking is single-use.
        assert!(set.take("c", 1_020));
        assert!(!set.take("c", 1_020));
        // At most three at once, the oldest forgotten first.
        for (n, id) in ["d", "e", "f", "g"].into_iter().enumerate() {
            set.insert(id.into(), 1_100 + n as u64);
        }
        assert!(set.len() <= 3);
        assert!(!set.contains("d", 1_200));
        assert!(["e", "f", "g"].iter().all(|id| set.contains(id, 1_200)));
        // A flood of ids keeps the bound.
        for n in 0..10_000u64 {
            set.insert(format!("x{n}"), 2_000 + n / 100);
        }
        assert!(set.len() <= 3 && set.order.len() <= 3);
    }

    // Issue 15: a registration nonce is refused after a minute, and a flood of nonces keeps
    // at most MAX_NONCES, forgetting the oldest.
    #[test]
    fn nonces_expire_and_are_bounded() {
        let (_d, a) = accounts();
        let mac_for = |nonce: &str| {
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
            m.update(format!("{nonce}\0eve\0pw\0notadmin").as_bytes());
            hex::encode(m.finalize().into_bytes())
        };
        a.nonces
            .lock()
            .insert("stale".into(), now_ms().saturating_sub(NONCE_TTL_MS + 1));
        assert!(a
            .check_shared_secret_mac("stale", "eve", "pw", false, &mac_for("stale"))
            .is_err());
        let first = a.new_nonce();
        for _ in 0..MAX_NONCES {
            a.new_nonce();
        }
        assert!(a.nonces.lock().len() <= MAX_NONCES);
        assert!(a
            .check_shared_secret_mac(&first, "eve", "pw", false, &mac_for(&first))
            .is_err());
        let fresh = a.new_nonce();
        assert!(a
            .check_shared_secret_mac(&fresh, "eve", "pw", false, &mac_for(&fresh))
            .is_ok());
    }

    // Issue 15: an expired UIA session is not continued, and sessions are bounded in number.
    #[tokio::test]
    async fn uia_sessions_expire_and_are_bounded() {
        let (_d, a) = accounts();
        a.uia_sessions.lock().insert(
            "old".into(),
            now_ms().saturating_sub(UIA_SESSION_TTL_MS + 1),
        );
        let flow = UiaFlow::Register { open: true };
        let auth = json!({ "session": "old" });
        let Err(Error::Uia(body)) = a.uia(Some(&auth), flow.clone()).await else {
            panic!("no UIA answer");
        };
        assert_ne!(body["session"], "old", "an expired session was continued");
        for _ in 0..MAX_UIA_SESSIONS + 10 {
            let _ = a.uia(None, flow.clone()).await;
        }
        assert!(a.uia_sessions.lock().len() <= MAX_UIA_SESSIONS);
    }
}
