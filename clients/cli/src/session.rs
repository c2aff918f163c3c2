//! The `--store` directory: `session.json` (homeserver URL and the login session) next
//! to matrix-sdk's SQLite state and crypto stores, so every run is the same device.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use matrix_sdk::{
    authentication::matrix::MatrixSession,
    config::{RequestConfig, SyncSettings},
    encryption::EncryptionSettings,
    ruma::api::client::uiaa,
    Client,
};
use serde_json::{json, Value};

const SESSION_FILE: &str = "session.json";
const SQLITE_DIR: &str = "sqlite";

/// Timeout of one HTTP request (a long-polling `/sync` adds its own timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn session_path(store: &Path) -> PathBuf {
    store.join(SESSION_FILE)
}

/// A client on the SQLite stores of `store`, not yet logged in.
async fn build_client(store: &Path, homeserver: &str) -> Result<Client> {
    Client::builder()
        .homeserver_url(homeserver)
        .sqlite_store(store.join(SQLITE_DIR), None)
        .request_config(RequestConfig::new().timeout(REQUEST_TIMEOUT))
        .with_encryption_settings(EncryptionSettings {
            // Cross-signing needs the password for UIA; `login` and `verify` do it.
            auto_enable_cross_signing: false,
            auto_enable_backups: false,
            ..Default::default()
        })
        .build()
        .await
        .with_context(|| format!("cannot set up a client for {homeserver}"))
}

/// Logs in with a password as a new device and saves the session in `store`.
pub(crate) async fn login(
    store: &Path,
    homeserver: &str,
    user: &str,
    password: &str,
    device_name: &str,
) -> Result<Client> {
    if session_path(store).exists() {
        bail!(
            "{} already holds a session; use another --store for another device",
            store.display()
        );
    }
    fs::create_dir_all(store).with_context(|| format!("cannot create {}", store.display()))?;
    let client = build_client(store, homeserver).await?;
    client
        .matrix_auth()
        .login_username(user, password)
        .initial_device_display_name(device_name)
        .send()
        .await
        .with_context(|| format!("login as {user} failed"))?;
    let session = client
        .matrix_auth()
        .session()
        .context("the login gave no session")?;
    // The login response may name the server's canonical URL (`well_known`), which the
    // SDK then uses: keep that one.
    save_session(store, client.homeserver().as_str(), &session)?;
    Ok(client)
}

fn save_session(store: &Path, homeserver: &str, session: &MatrixSession) -> Result<()> {
    let body = json!({ "homeserver": homeserver, "session": session });
    let path = session_path(store);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The access token is a credential: readable by the owner only.
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
    Ok(())
}

/// Opens the session saved by `login` in `store`.
pub(crate) async fn open(store: &Path) -> Result<Client> {
    let path = session_path(store);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "no session in {} (run `paracord-cli --store {} login …` first)",
            store.display(),
            store.display()
        )
    })?;
    let saved: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let homeserver = saved["homeserver"]
        .as_str()
        .with_context(|| format!("{} has no homeserver", path.display()))?;
    let session: MatrixSession = serde_json::from_value(saved["session"].clone())
        .with_context(|| format!("{} has no valid session", path.display()))?;
    let client = build_client(store, homeserver).await?;
    client
        .restore_session(session)
        .await
        .context("cannot restore the saved session")?;
    // Restoring starts a background task that reads the backup and recovery state; wait
    // for it, or a command right after start-up sees them as `Unknown`.
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    Ok(client)
}

/// One `/sync` from the stored token (a full one the first time). Also sends the
/// pending end-to-end encryption requests (key uploads, key queries, to-device).
pub(crate) async fn sync(client: &Client, timeout: Duration) -> Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(timeout))
        .await
        .context("/sync failed")?;
    Ok(())
}

/// Sets up cross-signing when the account has no cross-signing identity yet, answering
/// the user-interactive auth with the password when the server asks for one.
pub(crate) async fn ensure_cross_signing(client: &Client, password: Option<&str>) -> Result<()> {
    let encryption = client.encryption();
    match encryption.bootstrap_cross_signing_if_needed(None).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let Some(uiaa_info) = e.as_uiaa_response() else {
                return Err(e).context("cannot set up cross-signing");
            };
            let Some(password) = password else {
                bail!("setting up cross-signing needs the account password (--password)");
            };
            let user_id = client.user_id().context("not logged in")?;
            let mut auth = uiaa::Password::new(
                uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(user_id.to_string())),
                password.to_owned(),
            );
            auth.session = uiaa_info.session.clone();
            encryption
                .bootstrap_cross_signing(Some(uiaa::AuthData::Password(auth)))
                .await
                .context("cannot set up cross-signing")
        }
    }
}
