//! A real `paracord` process on a loopback port with its own data directory.

use std::{
    fs::{File, OpenOptions},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rand::{distributions::Alphanumeric, Rng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::{
    client::{Client, User},
    hmac_sha1::hmac_sha1_hex,
    random_localpart,
};

/// How long a server gets to answer `/versions` after being spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Environment a test can rewrite before the server starts.
pub type Env = Vec<(String, String)>;

/// The outbound guard's allowlist of test servers: every server, gateway and page of a test
/// is on loopback. Tests of the guard itself remove it ([`TestServer::unset_env`]).
pub const LOOPBACK_ALLOWLIST: &str = "127.0.0.0/8,::1/128";

/// One homeserver process. The data directory lives as long as this value;
/// the process is killed when it is dropped, and if the test is failing the
/// tail of the server log is printed first.
pub struct TestServer {
    dir: TempDir,
    port: u16,
    env: Env,
    child: Option<Child>,
    shared_secret: String,
}

impl TestServer {
    /// Starts a server with the default test environment.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting `configure` edit the environment
    /// (`set_env` replaces a key).
    pub async fn start_with(configure: impl FnOnce(&mut Env)) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("paracord-complement-")
            .tempdir()
            .unwrap_or_else(|e| panic!("expected a temporary directory: {e}"));
        let port = free_port();
        let shared_secret: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let data_dir = dir.path().join("data");
        let mut env: Env = vec![
            ("PARACORD_SERVER_NAME".into(), format!("localhost:{port}")),
            ("PARACORD_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("PARACORD_DATA_DIR".into(), data_dir.display().to_string()),
            ("PARACORD_REGISTRATION_ENABLED".into(), "true".into()),
            (
                "PARACORD_REGISTRATION_SHARED_SECRET".into(),
                shared_secret.clone(),
            ),
            ("PARACORD_RATE_LIMITS_ENABLED".into(), "false".into()),
            (
                "PARACORD_IP_RANGE_ALLOWLIST".into(),
                LOOPBACK_ALLOWLIST.into(),
            ),
            (
                "PARACORD_LOG".into(),
                std::env::var("PARACORD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        configure(&mut env);
        let mut server = TestServer {
            dir,
            port,
            env,
            child: None,
            shared_secret,
        };
        // The port was free when chosen, but another process (a server of a parallel test)
        // can take it before this one binds: then start again, on a new port, from an
        // empty directory.
        for _ in 0..5 {
            match server.try_spawn().await {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => server.move_to_new_port(),
                Err(log) => {
                    panic!("expected the server to keep running, it exited; log tail:\n{log}")
                }
            }
        }
        panic!(
            "expected the server to find a free port in 5 tries; log tail:\n{}",
            server.log_tail(60)
        );
    }

    /// After a start lost its port to another process: a new port for the listener and the
    /// server name (unless the test set them), and a fresh data directory and config.
    fn move_to_new_port(&mut self) {
        let (old, new) = (self.port, free_port());
        for (key, value) in &mut self.env {
            if key == "PARACORD_LISTEN" && *value == format!("127.0.0.1:{old}") {
                *value = format!("127.0.0.1:{new}");
            }
            if key == "PARACORD_SERVER_NAME" && *value == format!("localhost:{old}") {
                *value = format!("localhost:{new}");
            }
        }
        self.port = new;
        for sub in ["data", "config"] {
            let _ = std::fs::remove_dir_all(self.dir.path().join(sub));
        }
    }

    /// Starts a server that is expected not to come up: waits (with a deadline) for the
    /// process to exit and returns its exit status and log. Panics if it answers instead.
    pub async fn start_expecting_failure(
        configure: impl FnOnce(&mut Env),
    ) -> (std::process::ExitStatus, String) {
        let dir = tempfile::Builder::new()
            .prefix("paracord-complement-")
            .tempdir()
            .unwrap_or_else(|e| panic!("expected a temporary directory: {e}"));
        let port = free_port();
        let mut env: Env = vec![
            ("PARACORD_SERVER_NAME".into(), format!("localhost:{port}")),
            ("PARACORD_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "PARACORD_DATA_DIR".into(),
                dir.path().join("data").display().to_string(),
            ),
            (
                "PARACORD_LOG".into(),
                std::env::var("PARACORD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        configure(&mut env);
        let mut server = TestServer {
            dir,
            port,
            env,
            child: None,
            shared_secret: String::new(),
        };
        let mut child = server
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn {}: {e}", Self::binary().display()));
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "expected the server to exit at start, it kept running; log tail:\n{}",
                    server.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        server.child = None;
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        (status, log)
    }

    /// Replaces (or adds) `key` in an environment being configured.
    pub fn set_env(env: &mut Env, key: &str, value: &str) {
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    /// Removes `key` from an environment being configured (the server gets its default).
    pub fn unset_env(env: &mut Env, key: &str) {
        env.retain(|(k, _)| k != key);
    }

    /// Starts a server with the outbound guard's defaults: no allowlist, so nothing on
    /// loopback (other test servers, gateways, pages) may be reached.
    pub async fn start_guarded(configure: impl FnOnce(&mut Env)) -> TestServer {
        Self::start_with(|env| {
            Self::unset_env(env, "PARACORD_IP_RANGE_ALLOWLIST");
            configure(env);
        })
        .await
    }

    /// Whether the server's log has a line containing `text`, waiting for it (with a deadline).
    pub async fn wait_for_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::fs::read_to_string(self.log_path())
                .unwrap_or_default()
                .contains(text)
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn binary() -> PathBuf {
        if let Some(bin) = std::env::var_os("PARACORD_BIN") {
            return PathBuf::from(bin);
        }
        // target/debug/deps/it-xxxx -> target/debug/paracord
        let exe = std::env::current_exe()
            .unwrap_or_else(|e| panic!("expected the test executable path: {e}"));
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap_or_else(|| {
                panic!(
                    "expected {} to be under target/<profile>/deps",
                    exe.display()
                )
            });
        profile_dir.join(format!("paracord{}", std::env::consts::EXE_SUFFIX))
    }

    /// The file that receives the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("paracord.log")
    }

    /// The server's data directory (`PARACORD_DATA_DIR`: RocksDB, media, search index,
    /// signing key). Tests that prove what the server never stores walk it.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server command with this server's environment, output going to the log.
    fn command(&self) -> Command {
        let bin = Self::binary();
        assert!(
            bin.exists(),
            "expected the server binary at {} (build it with `cargo build -p paracord` \
             using the same CARGO_TARGET_DIR, or set PARACORD_BIN)",
            bin.display()
        );
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("expected to open the server log: {e}"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("expected to clone the log handle: {e}"));
        let mut cmd = Command::new(&bin);
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // Hermetic: nothing from the developer's shell leaks into the server.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PARACORD_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    async fn spawn(&mut self) {
        if let Err(log) = self.try_spawn().await {
            panic!("expected the server to keep running, it exited; log tail:\n{log}");
        }
    }

    /// Starts the process and waits until it answers; `Err(log tail)` if it exits first.
    async fn try_spawn(&mut self) -> Result<(), String> {
        let bin = Self::binary();
        let started_before = self.times_started();
        let child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn {}: {e}", bin.display()));
        self.child = Some(child);
        self.wait_ready(started_before).await
    }

    /// How many times the log says a server started listening on this port.
    fn times_started(&self) -> usize {
        let line = format!("(listening on 127.0.0.1:{})", self.port);
        std::fs::read_to_string(self.log_path())
            .map(|log| log.matches(&line).count())
            .unwrap_or(0)
    }

    /// Waits until this process listens and answers. An answer alone is not enough: another
    /// process may have the port, so the log must also say this start is listening.
    async fn wait_ready(&mut self, started_before: usize) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|e| panic!("expected an HTTP client: {e}"));
        let url = format!("{}/_matrix/client/versions", self.base_url());
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return Err(self.log_tail(60));
                }
            }
            if self.times_started() > started_before {
                if let Ok(resp) = http.get(&url).send().await {
                    if resp.status() == StatusCode::OK {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "expected GET /_matrix/client/versions to answer 200 within {STARTUP_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILLs the process (no graceful shutdown) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` is SIGKILL on unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (a graceful shutdown) and waits, with a deadline, for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("expected a running server to terminate"));
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("expected to run kill: {e}"));
        assert!(sent.success(), "expected kill -TERM to succeed");
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "expected the server to stop after SIGTERM within {STARTUP_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts the server again on the same data directory and port.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The last `lines` lines of the server's stdout+stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Matrix server name (`localhost:<port>`).
    pub fn server_name(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name())
    }

    /// An unauthenticated client.
    pub fn client(&self) -> Client {
        Client::new(&self.base_url(), None)
    }

    /// A client that sends `token` as its access token.
    pub fn client_with_token(&self, token: &str) -> Client {
        Client::new(&self.base_url(), Some(token.to_owned()))
    }

    /// Runs `/register` with `body`; if the server answers 401 with a UIA
    /// session, completes the `m.login.dummy` stage. Returns the final answer.
    pub async fn register_raw(&self, body: Value) -> (StatusCode, Value) {
        let client = self.client();
        let first = client.post("/register", &body).await;
        if first.0 != StatusCode::UNAUTHORIZED {
            return first;
        }
        let session = first.1["session"].as_str().unwrap_or_else(|| {
            panic!(
                "expected a UIA `session` string in the 401 from /register, got {}",
                first.1
            )
        });
        let mut body = body;
        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        client.post("/register", &body).await
    }

    /// Registers `localpart` with a password derived from it.
    pub async fn register(&self, localpart: &str) -> User {
        let password = format!("pw-{localpart}-correct-horse");
        let resp = self
            .register_raw(json!({ "username": localpart, "password": password }))
            .await;
        self.user_from_login(localpart, &password, resp, "registration")
    }

    /// Registers a user with a random localpart.
    pub async fn register_random(&self) -> User {
        self.register(&random_localpart()).await
    }

    /// Logs in again as `localpart` with `m.login.password` (a new device).
    pub async fn login(&self, localpart: &str, password: &str) -> User {
        let resp = self
            .client()
            .post(
                "/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": localpart },
                    "password": password,
                }),
            )
            .await;
        self.user_from_login(localpart, password, resp, "login")
    }

    fn user_from_login(
        &self,
        localpart: &str,
        password: &str,
        resp: (StatusCode, Value),
        what: &str,
    ) -> User {
        let (status, body) = resp;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected {what} of {localpart} to succeed, got {status}: {body}"
        );
        let field = |name: &str| -> String {
            body[name]
                .as_str()
                .unwrap_or_else(|| {
                    panic!("expected string `{name}` in the {what} response, got {body}")
                })
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

    /// Asks for a shared-secret registration nonce.
    pub async fn admin_nonce(&self) -> String {
        let (status, body) = self.client().get("/_synapse/admin/v1/register").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "expected a nonce from GET /_synapse/admin/v1/register, got {status}: {body}"
        );
        body["nonce"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a string `nonce`, got {body}"))
            .to_owned()
    }

    /// The MAC the shared-secret registration API expects.
    pub fn admin_mac(&self, nonce: &str, user: &str, password: &str, admin: bool) -> String {
        let role = if admin { "admin" } else { "notadmin" };
        let msg = format!("{nonce}\0{user}\0{password}\0{role}");
        hmac_sha1_hex(self.shared_secret.as_bytes(), msg.as_bytes())
    }

    /// Registers through the shared-secret admin API.
    pub async fn admin_register(&self, localpart: &str, admin: bool) -> User {
        let password = format!("pw-{localpart}-admin");
        let nonce = self.admin_nonce().await;
        let mac = self.admin_mac(&nonce, localpart, &password, admin);
        let resp = self
            .client()
            .post(
                "/_synapse/admin/v1/register",
                &json!({
                    "nonce": nonce,
                    "username": localpart,
                    "password": password,
                    "admin": admin,
                    "mac": mac,
                }),
            )
            .await;
        self.user_from_login(localpart, &password, resp, "shared-secret registration")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- paracord log tail ({}) ----\n{}\n---- end of log ----",
                self.log_path().display(),
                self.log_tail(80)
            );
        }
        self.kill9();
    }
}

/// A loopback port that was free a moment ago (for a second listener of a server, say).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("expected to bind a loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("expected a local address: {e}"))
        .port()
}
