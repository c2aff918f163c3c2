//! A real Synapse (PyPI `matrix-synapse`) on loopback ports, for interoperability tests.
//!
//! Synapse lives in a virtualenv at `$HOME/.cache/paracord/synapse-venv` (the one
//! `scripts/bench` uses; `PARACORD_SYNAPSE_VENV` points elsewhere), installed there first
//! when it is missing ([`crate::venv`]).
//!
//! Each [`SynapseServer`] gets a temporary directory with a generated config: the server name
//! is `127.0.0.1:<tls port>` (an IP literal with a port, so other servers reach it without
//! DNS), federation over TLS on that port with a self-signed certificate, the client API over
//! plain HTTP on another port, SQLite, shared-secret registration, every rate limit off,
//! certificate checks off for outgoing federation, loopback addresses allowed as federation
//! destinations, the public room directory open to every user and to other servers, and
//! quick give-up and retry for unreachable servers (two retries of a request a second apart,
//! then a first back-off of 1 s instead of 10 minutes). The process is killed on drop;
//! when a test fails its directory (config, SQLite database, whole log) is kept, and with
//! `PARACORD_TEST_KEEP_SYNAPSE` set it always is.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use rand::{distributions::Alphanumeric, Rng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::{
    client::{Client, User},
    free_port,
    hmac_sha1::hmac_sha1_hex,
    random_localpart,
    venv::{self, Venv},
};

/// How long Synapse gets to answer `/versions` once spawned (it imports a lot of Python and
/// creates its SQLite schema on first start).
const STARTUP_DEADLINE: Duration = Duration::from_secs(180);

/// The virtualenv holding Synapse.
pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PARACORD_SYNAPSE_VENV") {
        return PathBuf::from(dir);
    }
    venv::cache_dir("synapse-venv")
}

/// Installs Synapse into [`venv_dir`] unless it is already importable there; returns the
/// venv's Python.
pub fn ensure_installed() -> PathBuf {
    Venv {
        dir: venv_dir(),
        packages: &["matrix-synapse"],
        probe: "import synapse",
    }
    .ensure()
}

/// The installed Synapse's version (`synapse.__version__`).
pub fn version() -> String {
    let out = Command::new(ensure_installed())
        .args(["-c", "import synapse; print(synapse.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("expected to ask Synapse its version: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One Synapse process.
pub struct SynapseServer {
    dir: TempDir,
    child: Option<Child>,
    tls_port: u16,
    client_port: u16,
    shared_secret: String,
}

impl SynapseServer {
    /// Installs Synapse if needed, configures and starts one, and waits until it answers.
    pub async fn start() -> SynapseServer {
        let python = tokio::task::spawn_blocking(ensure_installed)
            .await
            .unwrap_or_else(|e| panic!("expected the Synapse install to finish: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("paracord-synapse-")
            .tempdir()
            .unwrap_or_else(|e| panic!("expected a temporary directory: {e}"));
        let tls_port = free_port();
        let mut client_port = free_port();
        while client_port == tls_port {
            client_port = free_port();
        }
        let shared_secret: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let mut server = SynapseServer {
            dir,
            child: None,
            tls_port,
            client_port,
            shared_secret,
        };
        server.write_files();
        server.spawn(&python).await;
        server
    }

    /// Kills the process (SIGKILL, so nothing is flushed or handed over) and starts Synapse
    /// again on the same directory, database and ports.
    pub async fn restart(&mut self) {
        self.restart_with_config("").await;
    }

    /// [`Self::restart`] with `extra` top-level settings added to the configuration (until
    /// the next restart), e.g. `federation_domain_whitelist: [...]` to cut it off.
    pub async fn restart_with_config(&mut self, extra: &str) {
        self.kill();
        self.write_config(extra);
        self.spawn(&venv::python(&venv_dir())).await;
    }

    /// Kills the process (SIGKILL); [`Self::restart`] starts it again.
    pub fn stop(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn spawn(&mut self, python: &Path) {
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("expected to open the Synapse log: {e}"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("expected to clone the log handle: {e}"));
        let child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn Synapse: {e}"));
        self.child = Some(child);
        self.wait_ready().await;
    }

    fn write_files(&self) {
        let dir = self.dir.path();
        let write = |name: &str, contents: &[u8]| {
            std::fs::write(dir.join(name), contents)
                .unwrap_or_else(|e| panic!("expected to write {name}: {e}"));
        };
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .unwrap_or_else(|e| panic!("expected a self-signed certificate: {e}"));
        write("tls.crt", cert.cert.pem().as_bytes());
        write("tls.key", cert.signing_key.serialize_pem().as_bytes());
        // Synapse's key file: `ed25519 <version> <unpadded base64 seed>`.
        let seed: [u8; 32] = rand::random();
        let seed = base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed);
        write("signing.key", format!("ed25519 a_test {seed}\n").as_bytes());
        write("log.yaml", LOG_CONFIG.as_bytes());
        self.write_config("");
    }

    /// Writes `homeserver.yaml`: the settings described above, then `extra` (more top-level
    /// keys).
    fn write_config(&self, extra: &str) {
        let dir = self.dir.path();
        let d = dir.display();
        let big = "{per_second: 1000000, burst_count: 1000000}";
        let config = format!(
            r#"server_name: "127.0.0.1:{tls}"
pid_file: {d}/homeserver.pid
public_baseurl: http://127.0.0.1:{client}/
listeners:
  - port: {tls}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    x_forwarded: false
    resources:
      - names: [federation]
        compress: false
  - port: {client}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
tls_certificate_path: {d}/tls.crt
tls_private_key_path: {d}/tls.key
database:
  name: sqlite3
  args:
    database: {d}/homeserver.db
log_config: {d}/log.yaml
media_store_path: {d}/media
signing_key_path: {d}/signing.key
report_stats: false
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "{secret}"
suppress_key_server_warning: true
trusted_key_servers: []
federation_verify_certificates: false
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.0/8']
allow_public_rooms_over_federation: true
room_list_publication_rules: [{{action: allow}}]
federation:
  max_long_retries: 2
  max_long_retry_delay: 1s
  destination_min_retry_interval: 1s
presence:
  enabled: true
rc_message: {big}
rc_registration: {big}
rc_login:
  address: {big}
  account: {big}
  failed_attempts: {big}
rc_joins:
  local: {big}
  remote: {big}
rc_joins_per_room: {big}
rc_invites:
  per_room: {big}
  per_user: {big}
  per_issuer: {big}
rc_presence:
  per_user: {big}
rc_room_creation: {big}
rc_federation:
  window_size: 1000
  sleep_limit: 100000
  sleep_delay: 0
  reject_limit: 100000
  concurrent: 100000
"#,
            tls = self.tls_port,
            client = self.client_port,
            secret = self.shared_secret,
        );
        std::fs::write(dir.join("homeserver.yaml"), format!("{config}{extra}"))
            .unwrap_or_else(|e| panic!("expected to write homeserver.yaml: {e}"));
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|e| panic!("expected an HTTP client: {e}"));
        let url = format!("{}/_matrix/client/versions", self.base_url());
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "expected Synapse to keep running, it exited with {status}; log tail:\n{}",
                        self.log_tail(60)
                    );
                }
            }
            let up = matches!(http.get(&url).send().await, Ok(r) if r.status() == StatusCode::OK);
            if up && std::net::TcpStream::connect(("127.0.0.1", self.tls_port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected Synapse to answer {url} within {STARTUP_DEADLINE:?}; log tail:\n{}",
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Matrix server name, `127.0.0.1:<federation TLS port>`.
    pub fn server_name(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// The client API (plain HTTP).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// An unauthenticated client of the client API.
    pub fn client(&self) -> Client {
        Client::new(&self.base_url(), None)
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name())
    }

    /// The file that receives Synapse's log (level INFO).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("synapse.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Registers `localpart` through the shared-secret admin API and returns it logged in.
    pub async fn register(&self, localpart: &str) -> User {
        self.register_as(localpart, false).await
    }

    /// Registers a server admin (for Synapse's admin API) with a random localpart.
    pub async fn register_admin(&self) -> User {
        self.register_as(&random_localpart(), true).await
    }

    async fn register_as(&self, localpart: &str, admin: bool) -> User {
        let client = self.client();
        let (status, body) = client.get("/_synapse/admin/v1/register").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected a registration nonce from Synapse, got {status}: {body}"
        );
        let nonce = body["nonce"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a string `nonce`, got {body}"));
        let password = format!("pw-{localpart}-synapse");
        let mac = hmac_sha1_hex(
            self.shared_secret.as_bytes(),
            format!(
                "{nonce}\0{localpart}\0{password}\0{}",
                if admin { "admin" } else { "notadmin" }
            )
            .as_bytes(),
        );
        let (status, body) = client
            .post(
                "/_synapse/admin/v1/register",
                &json!({
                    "nonce": nonce, "username": localpart, "password": password,
                    "admin": admin, "mac": mac,
                }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected Synapse to register {localpart}, got {status}: {body}"
        );
        self.user_from(localpart, &password, &body)
    }

    fn user_from(&self, localpart: &str, password: &str, body: &Value) -> User {
        let field = |name: &str| -> String {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("expected string `{name}` from Synapse, got {body}"))
                .to_owned()
        };
        let access_token = field("access_token");
        User {
            user_id: field("user_id"),
            device_id: field("device_id"),
            localpart: localpart.to_owned(),
            password: password.to_owned(),
            client: Client::new(&self.base_url(), Some(access_token.clone())),
            access_token,
        }
    }

    /// Logs `user` in again (`m.login.password`): a new device.
    pub async fn login(&self, user: &User) -> User {
        let (status, body) = self
            .client()
            .post(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": user.localpart },
                    "password": user.password,
                }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected Synapse to log {} in, got {status}: {body}",
            user.user_id
        );
        self.user_from(&user.localpart, &user.password, &body)
    }

    /// Registers a user with a random localpart.
    pub async fn register_random(&self) -> User {
        self.register(&random_localpart()).await
    }
}

impl Drop for SynapseServer {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("PARACORD_TEST_KEEP_SYNAPSE").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("synapse directory kept in {}", self.dir.path().display());
        } else if std::thread::panicking() {
            // The test failed: keep the directory (config, database, whole log) for a look.
            self.dir.disable_cleanup(true);
            eprintln!(
                "---- synapse log tail (whole log kept in {}) ----\n{}\n---- end of log ----",
                self.dir.path().display(),
                self.log_tail(80)
            );
        }
    }
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Synapse's logging: INFO to stderr (the log file), without the per-SQL-statement noise.
const LOG_CONFIG: &str = r#"version: 1
formatters:
  plain:
    format: '%(asctime)s %(name)s %(levelname)s %(request)s %(message)s'
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
handlers:
  console:
    class: logging.StreamHandler
    formatter: plain
    filters: [context]
loggers:
  synapse.storage.SQL:
    level: WARNING
  synapse.storage.background_updates:
    level: WARNING
  synapse.util.caches.lrucache:
    level: WARNING
  synapse.access.http:
    level: INFO
root:
  level: INFO
  handlers: [console]
disable_existing_loggers: false
"#;
