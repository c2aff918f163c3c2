//! A real LiveKit SFU and real LiveKit participants, for the MatrixRTC (MSC4195) tests.
//!
//! - [`ensure_livekit_server`]: the `livekit-server` binary (v1.13.5), built once with
//!   `go install` into `$HOME/.cache/paracord/livekit/bin-1.13.5` (minutes; `LIVEKIT_SERVER_BIN`
//!   names another binary).
//! - [`LiveKit`]: one server on free loopback ports (HTTP/WebSocket on TCP, WebRTC media on
//!   one UDP port, no ICE/TCP, no TURN) with a generated API key and secret, optional webhook
//!   URLs, its log in a temporary directory (the tail printed when a test fails), killed on
//!   drop. [`LiveKit::remove_participant`] and [`LiveKit::list_participants`] call its
//!   RoomService with the real `livekit-api` client.
//! - [`Peer`]: one participant, the Python binding of LiveKit's Rust SDK (PyPI `livekit`)
//!   driven over stdin/stdout JSON lines (complement-tests/support/livekit_peer.py) from a
//!   virtualenv at `$HOME/.cache/paracord/livekit-venv` (`PARACORD_LIVEKIT_VENV` points
//!   elsewhere): connect with a token, publish a sine wave or a synthetic screen share,
//!   count what arrives from another participant, see the server remove it.
//! - [`WebhookRecorder`]: an HTTP listener that records what LiveKit posts, and
//!   [`WebhookCall::verify`], which checks a webhook's `Authorization` JWT and body hash.
//! - [`sign_hs256`], [`jwt_claims`], [`verify_hs256`]: LiveKit access tokens (HS256 JWTs)
//!   made and read in the test itself.
//!
//! ```no_run
//! # async fn f() {
//! use paracord_complement::livekit::{LiveKit, LiveKitOptions, Peer};
//! use serde_json::json;
//! let lk = LiveKit::start(LiveKitOptions::default()).await;
//! let token = lk.token("alice", "room", json!({ "canPublish": true }));
//! let mut alice = Peer::connect(&lk.url(), &token).await.unwrap();
//! alice.publish_audio().await.unwrap();
//! # }
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    fs::{File, OpenOptions},
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};
use hmac::{Hmac, Mac};
use rand::{distributions::Alphanumeric, Rng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    net::{TcpListener, TcpStream},
    process::{ChildStdin, ChildStdout},
    sync::Notify,
    task::JoinHandle,
};

use crate::{
    free_port,
    venv::{self, Venv},
};

/// The livekit-server release the tests run. Newer 1.13.x releases do not build with
/// `go install` (their go.mod has replace directives).
pub const LIVEKIT_SERVER_VERSION: &str = "1.13.5";

/// The module `go install` builds.
const LIVEKIT_MODULE: &str = "github.com/livekit/livekit-server/cmd/server";

/// The PyPI packages of the participant driver, pinned to the versions checked here.
const PEER_PACKAGES: &[&str] = &[
    "livekit==1.2.1",
    "livekit-api==1.2.2",
    "livekit-protocol==1.1.29",
];

/// How long livekit-server gets to answer on its HTTP port once spawned.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// What a driver command may take beyond its own timeout (Python start, the SDK's threads on
/// a loaded machine) before the harness gives up on the driver.
const DRIVER_GRACE: Duration = Duration::from_secs(30);

/// Serialises installs of the server within this process; across processes the rename of
/// the finished directory decides.
static INSTALL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// Installing livekit-server
// ---------------------------------------------------------------------------------------

/// `$HOME/.cache/paracord/livekit/bin-<version>`: the GOBIN of the cached install.
pub fn livekit_bin_dir() -> PathBuf {
    venv::cache_dir("livekit").join(format!("bin-{LIVEKIT_SERVER_VERSION}"))
}

/// The `livekit-server` binary: `LIVEKIT_SERVER_BIN`, or the cached build in
/// [`livekit_bin_dir`], built first with `go install …@v1.13.5` when missing (minutes, once;
/// `scripts/install-deps` does it ahead of `scripts/test`). The build goes into a temporary
/// GOBIN next to its place and the directory is renamed into place, so a concurrent test
/// process never runs half a binary.
pub fn ensure_livekit_server() -> PathBuf {
    if let Some(bin) = std::env::var_os("LIVEKIT_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let dir = livekit_bin_dir();
    let bin = dir.join("server");
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if bin.is_file() {
        return bin;
    }
    let go = find_go().unwrap_or_else(|| {
        panic!(
            "livekit-server {LIVEKIT_SERVER_VERSION} is not installed at {} and `go` is not on \
             the PATH (nor /usr/local/go/bin/go): install Go ≥ 1.26 from https://go.dev/dl/ \
             (Debian's golang-go is too old), or set LIVEKIT_SERVER_BIN to a livekit-server \
             {LIVEKIT_SERVER_VERSION} binary",
            bin.display()
        )
    });
    let parent = dir
        .parent()
        .unwrap_or_else(|| panic!("expected {} to have a parent", dir.display()));
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("expected to create {}: {e}", parent.display()));
    let staging = tempfile::Builder::new()
        .prefix(&format!("bin-{LIVEKIT_SERVER_VERSION}.partial-"))
        .tempdir_in(parent)
        .unwrap_or_else(|e| panic!("expected a staging directory in {}: {e}", parent.display()));
    eprintln!(
        "building livekit-server {LIVEKIT_SERVER_VERSION} with `go install` into {} \
         (once; takes minutes)",
        dir.display()
    );
    let out = Command::new(&go)
        .arg("install")
        .arg(format!("{LIVEKIT_MODULE}@v{LIVEKIT_SERVER_VERSION}"))
        .env("GOBIN", staging.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("expected to run {} install: {e}", go.display()));
    assert!(
        out.status.success() && staging.path().join("server").is_file(),
        "`go install {LIVEKIT_MODULE}@v{LIVEKIT_SERVER_VERSION}` failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let staged = staging.keep();
    if std::fs::rename(&staged, &dir).is_err() {
        // Another process finished first; use its build.
        let _ = std::fs::remove_dir_all(&staged);
    }
    assert!(
        bin.is_file(),
        "expected {} after `go install`",
        bin.display()
    );
    bin
}

fn find_go() -> Option<PathBuf> {
    let works = |go: &Path| {
        Command::new(go)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")]
        .into_iter()
        .find(|go| works(go))
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// How a [`LiveKit`] is configured beyond its ports and keys.
#[derive(Clone, Debug, Default)]
pub struct LiveKitOptions {
    /// Where LiveKit posts its webhooks (signed with the server's API key).
    pub webhook_urls: Vec<String>,
    /// Further top-level YAML appended to the generated config (e.g. a `room:` section).
    pub extra_config: String,
}

/// One livekit-server process on loopback.
pub struct LiveKit {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    udp_port: u16,
    api_key: String,
    api_secret: String,
    options: LiveKitOptions,
    child: Option<Child>,
}

impl LiveKit {
    /// Builds the server if needed, configures it on free loopback ports and waits until it
    /// answers HTTP.
    pub async fn start(options: LiveKitOptions) -> LiveKit {
        let bin = tokio::task::spawn_blocking(ensure_livekit_server)
            .await
            .unwrap_or_else(|e| panic!("expected the livekit-server install to finish: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("paracord-livekit-")
            .tempdir()
            .unwrap_or_else(|e| panic!("expected a temporary directory: {e}"));
        let mut lk = LiveKit {
            dir,
            bin,
            port: 0,
            udp_port: 0,
            api_key: format!("API{}", random_string(12)),
            api_secret: random_string(40),
            options,
            child: None,
        };
        // The ports were free when chosen; another process may take one first: try again.
        for _ in 0..5 {
            lk.port = free_port();
            lk.udp_port = free_udp_port();
            lk.write_config();
            if lk.spawn().await {
                return lk;
            }
        }
        panic!(
            "expected livekit-server to start on free ports in 5 tries; log:\n{}",
            lk.log_tail(60)
        );
    }

    /// Kills the server and starts it again with `options`, on the same ports and keys (the
    /// rooms are gone): how a test gives LiveKit a webhook URL known only after it started.
    pub async fn restart_with(&mut self, options: LiveKitOptions) {
        self.kill();
        self.options = options;
        self.write_config();
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "expected livekit-server to start again on port {}; log:\n{}",
                self.port,
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The signalling URL participants connect to: `ws://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The same port over HTTP, where the RoomService (Twirp) answers: `http://127.0.0.1:<port>`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port of signalling and the server APIs.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The one UDP port WebRTC media uses.
    pub fn udp_port(&self) -> u16 {
        self.udp_port
    }

    /// The API key (the `iss` of the tokens it accepts, the key its webhooks are signed with).
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The API secret (HS256 key of tokens and webhooks).
    pub fn api_secret(&self) -> &str {
        &self.api_secret
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("livekit.yaml")
    }

    /// The file that receives the server's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("livekit.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// A participant token for `identity` in `room`, valid from a minute ago for an hour:
    /// `grants` (LiveKit's camelCase `video` grant fields, e.g. `{"canPublish": false}`) are
    /// merged over `{"room": room, "roomJoin": true}`.
    pub fn token(&self, identity: &str, room: &str, grants: Value) -> String {
        let now = unix_now();
        let mut video = json!({ "room": room, "roomJoin": true });
        if let (Some(video), Value::Object(extra)) = (video.as_object_mut(), grants) {
            video.extend(extra);
        }
        self.sign(json!({
            "iss": self.api_key,
            "sub": identity,
            "nbf": now - 60,
            "exp": now + 3600,
            "video": video,
        }))
    }

    /// Signs arbitrary claims with this server's secret (an expired `exp`, a missing grant…).
    pub fn sign(&self, claims: Value) -> String {
        sign_hs256(&self.api_secret, &claims)
    }

    /// RoomService `RemoveParticipant`, through PyPI `livekit-api`. An error carries the
    /// server's answer (`not_found` for a participant who is not there).
    pub async fn remove_participant(&self, room: &str, identity: &str) -> Result<(), PeerError> {
        self.admin(json!({ "cmd": "remove_participant", "room": room, "identity": identity }))
            .await
            .map(|_| ())
    }

    /// RoomService `ListParticipants`: the identities in `room` and their published tracks.
    pub async fn list_participants(
        &self,
        room: &str,
    ) -> Result<BTreeMap<String, Vec<TrackInfo>>, PeerError> {
        let answer = self
            .admin(json!({ "cmd": "list_participants", "room": room }))
            .await?;
        Ok(answer["participants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let tracks = p["tracks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(TrackInfo::from_json)
                    .collect();
                (str_field(p, "identity"), tracks)
            })
            .collect())
    }

    /// RoomService `ListRooms`: the names of the rooms that exist on the SFU.
    pub async fn list_rooms(&self) -> Result<Vec<String>, PeerError> {
        let answer = self.admin(json!({ "cmd": "list_rooms" })).await?;
        Ok(answer["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect())
    }

    async fn admin(&self, mut cmd: Value) -> Result<Value, PeerError> {
        cmd["url"] = json!(self.http_url());
        cmd["api_key"] = json!(self.api_key);
        cmd["api_secret"] = json!(self.api_secret);
        cmd["timeout"] = json!(10);
        let python = tokio::task::spawn_blocking(ensure_peer_venv)
            .await
            .unwrap_or_else(|e| panic!("expected the livekit venv install to finish: {e}"));
        let mut child = tokio::process::Command::new(python)
            .arg(driver_script())
            .arg("admin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn the livekit admin driver: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(cmd.to_string().as_bytes())
                .await
                .unwrap_or_else(|e| panic!("expected to write to the livekit admin driver: {e}"));
        }
        let out = tokio::time::timeout(
            Duration::from_secs(10) + DRIVER_GRACE,
            child.wait_with_output(),
        )
        .await
        .unwrap_or_else(|_| panic!("the livekit admin driver did not answer {}", cmd["cmd"]))
        .unwrap_or_else(|e| panic!("expected the livekit admin driver to run: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let answer: Value = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "expected a JSON answer from the livekit admin driver ({}), got {stdout:?}; \
                     stderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        PeerError::check(answer)
    }

    /// The config: everything on 127.0.0.1 (HTTP, the UDP mux, the ICE candidates), ICE/TCP
    /// off (its listener would bind every address), no external IP discovery, info logs.
    fn write_config(&self) {
        let webhook = if self.options.webhook_urls.is_empty() {
            String::new()
        } else {
            let urls: String = self
                .options
                .webhook_urls
                .iter()
                .map(|u| format!("    - {}\n", json!(u)))
                .collect();
            format!(
                "webhook:\n  api_key: {}\n  urls:\n{urls}",
                json!(self.api_key)
            )
        };
        let config = format!(
            "port: {port}\n\
             bind_addresses: [\"127.0.0.1\"]\n\
             rtc:\n  \
               udp_port: {udp}\n  \
               tcp_port: 0\n  \
               use_external_ip: false\n  \
               node_ip: 127.0.0.1\n  \
               enable_loopback_candidate: true\n  \
               interfaces:\n    includes: [lo]\n  \
               ips:\n    includes: [127.0.0.1/32]\n\
             keys:\n  {key}: {secret}\n\
             logging:\n  level: info\n\
             {webhook}{extra}\n",
            port = self.port,
            udp = self.udp_port,
            key = json!(self.api_key),
            secret = json!(self.api_secret),
            extra = self.options.extra_config,
        );
        std::fs::write(self.config_path(), config)
            .unwrap_or_else(|e| panic!("expected to write the livekit config: {e}"));
    }

    /// Spawns the server and waits until `GET /` answers; `false` if it exited first (a port
    /// was taken).
    async fn spawn(&mut self) -> bool {
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("expected to open the livekit log: {e}"));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("expected to clone the log handle: {e}"));
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|e| panic!("expected an HTTP client: {e}"));
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if let Ok(resp) = http.get(self.http_url()).send().await {
                if resp.status().is_success() {
                    return true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "expected livekit-server to answer on {} within {STARTUP_DEADLINE:?}; log:\n{}",
                self.http_url(),
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process (SIGKILL: a first SIGTERM would wait for the participants to leave).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LiveKit {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "---- livekit-server log tail (whole log and config kept in {}) ----\n{}\n\
                 ---- end of log ----",
                self.dir.path().display(),
                self.log_tail(80)
            );
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("expected to bind a loopback UDP port: {e}"))
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

/// An HS256 JWT of `claims` (LiveKit's access-token and webhook format).
pub fn sign_hs256(secret: &str, claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(hmac_sha256(secret.as_bytes(), input.as_bytes()));
    format!("{input}.{signature}")
}

/// The claims of a JWT, unverified (to look at what a server minted). Panics unless
/// `token` is three dot-separated base64url parts with a JSON payload.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("expected a JWT (header.payload.signature), got {token:?}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("expected a base64url JWT payload in {token:?}: {e}"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("expected a JSON JWT payload in {token:?}: {e}"))
}

/// Checks an HS256 JWT against `secret` and its `nbf`/`exp` (a minute of leeway, as LiveKit
/// allows); returns its claims.
pub fn verify_hs256(token: &str, secret: &str) -> Result<Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        return Err(format!("not a JWT: {} parts", parts.len()));
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("the JWT header is not base64url JSON")?;
    if header["alg"] != "HS256" {
        return Err(format!("alg is {}, not HS256", header["alg"]));
    }
    let given = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|e| format!("the signature is not base64url: {e}"))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .map_err(|e| format!("bad HMAC key: {e}"))?;
    mac.update(format!("{header_b64}.{payload_b64}").as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| "the signature does not match the secret".to_owned())?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or("the JWT payload is not base64url JSON")?;
    let now = unix_now();
    if claims["exp"].as_i64().is_none_or(|exp| exp + 60 < now) {
        return Err(format!("expired or no exp: {}", claims["exp"]));
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| nbf - 60 > now) {
        return Err(format!("not valid before {}", claims["nbf"]));
    }
    Ok(claims)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|e| panic!("expected an HMAC key: {e}"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------
// Participants
// ---------------------------------------------------------------------------------------

/// The virtualenv holding PyPI `livekit` and `livekit-api`.
pub fn peer_venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PARACORD_LIVEKIT_VENV") {
        return PathBuf::from(dir);
    }
    venv::cache_dir("livekit-venv")
}

/// Installs the participant driver's packages unless they are there; returns the venv's
/// Python.
pub fn ensure_peer_venv() -> PathBuf {
    Venv {
        dir: peer_venv_dir(),
        packages: PEER_PACKAGES,
        probe: "from livekit import api, rtc; \
                assert rtc.__version__ == '1.2.1' and api.__version__ == '1.2.2'",
    }
    .ensure()
}

/// complement-tests/support/livekit_peer.py, from the checkout cargo runs the tests in.
fn driver_script() -> PathBuf {
    let crate_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    Path::new(&crate_dir).join("support/livekit_peer.py")
}

/// What the driver (or LiveKit through it) refused: a short code and the SDK's or server's
/// words. Codes: `connect_failed` (the server refused the token…), `publish_failed`,
/// `timeout`, `server_error` (a RoomService error), `not_connected`, `bad_command`,
/// `failed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerError {
    pub code: String,
    pub message: String,
}

impl PeerError {
    fn check(answer: Value) -> Result<Value, PeerError> {
        if answer["ok"] == true {
            Ok(answer)
        } else {
            Err(PeerError {
                code: str_field(&answer, "error"),
                message: str_field(&answer, "message"),
            })
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for PeerError {}

/// What a participant's SDK says the server granted it (from the join response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub can_subscribe: bool,
    pub can_publish: bool,
    pub can_publish_data: bool,
    /// `microphone`, `camera`, `screenshare`, `screenshare_audio`; empty means every source
    /// (when `can_publish`).
    pub can_publish_sources: Vec<String>,
}

/// One published track as another participant (or the RoomService) sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackInfo {
    pub sid: String,
    /// `audio` or `video` (empty from the RoomService).
    pub kind: String,
    /// `microphone`, `camera`, `screenshare`, `screenshare_audio`, `unknown`.
    pub source: String,
}

impl TrackInfo {
    fn from_json(v: &Value) -> TrackInfo {
        TrackInfo {
            sid: str_field(v, "sid"),
            kind: str_field(v, "kind"),
            source: str_field(v, "source"),
        }
    }
}

/// Who is in the room, seen by one participant.
#[derive(Clone, Debug)]
pub struct Participants {
    /// Its own identity.
    pub identity: String,
    /// The other participants' identities, sorted.
    pub remote: Vec<String>,
    /// Their published tracks.
    pub tracks: BTreeMap<String, Vec<TrackInfo>>,
}

/// Audio frames received from one participant.
#[derive(Clone, Debug)]
pub struct AudioReport {
    /// 10 ms frames counted (fewer than asked when the timeout passed first).
    pub frames: u64,
    pub sample_rate: u64,
    pub channels: u64,
    /// Root mean square of the samples, full scale 1.0 (the sine wave is sent at ~0.35).
    pub rms: f64,
    /// Largest sample magnitude, full scale 1.0.
    pub peak: f64,
    /// `rms` below 0.01.
    pub silent: bool,
}

/// Video frames received from one participant.
#[derive(Clone, Debug)]
pub struct VideoReport {
    pub frames: u64,
    pub width: u64,
    pub height: u64,
}

/// One LiveKit participant: a `livekit_peer.py` process, killed on drop. Its stderr (the
/// SDK's log) goes to a file printed when a test fails.
pub struct Peer {
    child: tokio::process::Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    dir: TempDir,
    identity: String,
    permissions: Permissions,
}

impl Peer {
    /// Joins the room of `token` at `url` (within 15 s). A refusal (bad signature, expired,
    /// no `roomJoin`) comes back as `Err` with code `connect_failed` and the server's words
    /// (`401 Unauthorized - invalid token…`).
    pub async fn connect(url: &str, token: &str) -> Result<Peer, PeerError> {
        let python = tokio::task::spawn_blocking(ensure_peer_venv)
            .await
            .unwrap_or_else(|e| panic!("expected the livekit venv install to finish: {e}"));
        let dir = tempfile::Builder::new()
            .prefix("paracord-livekit-peer-")
            .tempdir()
            .unwrap_or_else(|e| panic!("expected a temporary directory: {e}"));
        let log = File::create(dir.path().join("peer.log"))
            .unwrap_or_else(|e| panic!("expected to create the peer log: {e}"));
        let mut child = tokio::process::Command::new(python)
            .arg(driver_script())
            .arg("peer")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("expected to spawn the livekit peer driver: {e}"));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("expected the peer driver's stdin and stdout to be piped");
        };
        let mut peer = Peer {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            dir,
            identity: String::new(),
            permissions: Permissions {
                can_subscribe: false,
                can_publish: false,
                can_publish_data: false,
                can_publish_sources: Vec::new(),
            },
        };
        let answer = peer
            .command(json!({ "cmd": "connect", "url": url, "token": token, "timeout": 15 }))
            .await?;
        peer.identity = str_field(&answer, "identity");
        let p = &answer["permissions"];
        peer.permissions = Permissions {
            can_subscribe: p["can_subscribe"] == true,
            can_publish: p["can_publish"] == true,
            can_publish_data: p["can_publish_data"] == true,
            can_publish_sources: p["can_publish_sources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
        };
        Ok(peer)
    }

    /// The identity the server gave it (the token's `sub`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// What the server granted it when it joined.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// Publishes a 440 Hz sine wave (48 kHz mono, as a microphone) and keeps it playing;
    /// returns the track sid. A server that refuses (no `canPublish`, microphone not in
    /// `canPublishSources`) answers the SDK with NOT_ALLOWED, which livekit 1.2.1 ignores: the
    /// SDK gives up after its own 10 s and this returns `publish_failed` ("track publication
    /// timed out, no response received from the server").
    pub async fn publish_audio(&mut self) -> Result<String, PeerError> {
        let answer = self
            .command(json!({ "cmd": "publish_audio", "frequency": 440, "timeout": 15 }))
            .await?;
        Ok(str_field(&answer, "sid"))
    }

    /// Publishes a 320×240 video of a solid colour that changes every frame, 15 fps, as a
    /// screen share (`screen_share`; LiveKit's screen-share encoding sends only ~3 fps at
    /// this size) or a camera; returns the track sid. Refusal: as [`Peer::publish_audio`].
    pub async fn publish_video(&mut self, screen_share: bool) -> Result<String, PeerError> {
        let answer = self
            .command(json!({
                "cmd": "publish_video", "screen_share": screen_share,
                "width": 320, "height": 240, "fps": 15, "timeout": 15,
            }))
            .await?;
        Ok(str_field(&answer, "sid"))
    }

    /// Counts the audio frames (10 ms each) that arrive from participant `from` after this
    /// call, until `frames` have or `timeout` passes; says how loud they were.
    pub async fn wait_audio(
        &mut self,
        from: &str,
        frames: u64,
        timeout: Duration,
    ) -> Result<AudioReport, PeerError> {
        let a = self
            .command(json!({
                "cmd": "wait_audio", "from": from, "frames": frames,
                "timeout": timeout.as_secs_f64(),
            }))
            .await?;
        Ok(AudioReport {
            frames: a["frames"].as_u64().unwrap_or(0),
            sample_rate: a["sample_rate"].as_u64().unwrap_or(0),
            channels: a["channels"].as_u64().unwrap_or(0),
            rms: a["rms"].as_f64().unwrap_or(0.0),
            peak: a["peak"].as_f64().unwrap_or(0.0),
            silent: a["silent"] != false,
        })
    }

    /// Counts the video frames that arrive from participant `from` after this call, until
    /// `frames` have or `timeout` passes.
    pub async fn wait_video(
        &mut self,
        from: &str,
        frames: u64,
        timeout: Duration,
    ) -> Result<VideoReport, PeerError> {
        let a = self
            .command(json!({
                "cmd": "wait_video", "from": from, "frames": frames,
                "timeout": timeout.as_secs_f64(),
            }))
            .await?;
        Ok(VideoReport {
            frames: a["frames"].as_u64().unwrap_or(0),
            width: a["width"].as_u64().unwrap_or(0),
            height: a["height"].as_u64().unwrap_or(0),
        })
    }

    /// Who is in the room now.
    pub async fn participants(&mut self) -> Result<Participants, PeerError> {
        self.wait_participants(&[], &[], Duration::ZERO).await
    }

    /// Who is in the room once everyone in `present` is and nobody in `absent` (or when
    /// `timeout` passes: check the answer).
    pub async fn wait_participants(
        &mut self,
        present: &[&str],
        absent: &[&str],
        timeout: Duration,
    ) -> Result<Participants, PeerError> {
        let a = self
            .command(json!({
                "cmd": "participants", "present": present, "absent": absent,
                "timeout": timeout.as_secs_f64(),
            }))
            .await?;
        let tracks = a["tracks"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(identity, list)| {
                let list = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(TrackInfo::from_json)
                    .collect();
                (identity.clone(), list)
            })
            .collect();
        Ok(Participants {
            identity: str_field(&a, "identity"),
            remote: a["remote"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            tracks,
        })
    }

    /// Waits until the server disconnects this participant: `Some(reason)` with the SDK's
    /// DisconnectReason name (`PARTICIPANT_REMOVED` after RoomService `RemoveParticipant`,
    /// `ROOM_DELETED`, `SERVER_SHUTDOWN`…), `None` if still connected after `timeout`.
    pub async fn wait_disconnected(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<String>, PeerError> {
        let a = self
            .command(json!({ "cmd": "wait_disconnected", "timeout": timeout.as_secs_f64() }))
            .await?;
        Ok((a["disconnected"] == true).then(|| str_field(&a, "reason")))
    }

    /// Leaves the room and ends the driver.
    pub async fn leave(mut self) -> Result<(), PeerError> {
        self.command(json!({ "cmd": "leave" })).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(())
    }

    /// The driver's log (the SDK's messages on stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("peer.log")).unwrap_or_default()
    }

    /// Sends one raw driver command (see livekit_peer.py) and returns its answer; `Err` when
    /// the answer is `"ok": false`. Panics if the driver dies or overruns the command's
    /// `timeout` by more than 30 s: that is the harness failing, not LiveKit answering.
    pub async fn command(&mut self, cmd: Value) -> Result<Value, PeerError> {
        let timeout = Duration::from_secs_f64(cmd["timeout"].as_f64().unwrap_or(15.0).max(0.0));
        let line = format!("{cmd}\n");
        let sent = self.stdin.write_all(line.as_bytes()).await;
        if let Err(e) = sent.and(self.stdin.flush().await) {
            panic!(
                "expected the livekit peer driver to take {}: {e}; its log:\n{}",
                cmd["cmd"],
                self.log()
            );
        }
        match tokio::time::timeout(timeout + DRIVER_GRACE, self.stdout.next_line()).await {
            Ok(Ok(Some(answer))) => {
                let answer: Value = serde_json::from_str(&answer).unwrap_or_else(|e| {
                    panic!(
                        "expected a JSON answer to {}, got {answer:?}: {e}",
                        cmd["cmd"]
                    )
                });
                PeerError::check(answer)
            }
            Ok(Ok(None)) | Ok(Err(_)) => panic!(
                "the livekit peer driver ended without answering {}; its log:\n{}",
                cmd["cmd"],
                self.log()
            ),
            Err(_) => panic!(
                "the livekit peer driver did not answer {} within {:?}; its log:\n{}",
                cmd["cmd"],
                timeout + DRIVER_GRACE,
                self.log()
            ),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- livekit peer {:?} log ----\n{}\n---- end of log ----",
                self.identity,
                self.log()
            );
        }
        let _ = self.child.start_kill();
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

/// Largest request head and body the recorder accepts.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// One request a [`WebhookRecorder`] received.
#[derive(Clone, Debug)]
pub struct WebhookCall {
    pub method: String,
    pub path: String,
    /// The `Authorization` header as sent (LiveKit sends the bare JWT).
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl WebhookCall {
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The LiveKit event name (`participant_joined`, `room_started`…).
    pub fn event(&self) -> String {
        str_field(&self.json(), "event")
    }

    /// Checks the call as a LiveKit webhook receiver does: the `Authorization` JWT is signed
    /// with `api_secret`, issued by `api_key`, in date, and its `sha256` claim is the
    /// base64 SHA-256 of the body. Returns the body as JSON.
    pub fn verify(&self, api_key: &str, api_secret: &str) -> Result<Value, String> {
        let header = self
            .authorization
            .as_deref()
            .ok_or("no Authorization header")?;
        let token = header.strip_prefix("Bearer ").unwrap_or(header);
        let claims = verify_hs256(token, api_secret)?;
        if claims["iss"] != api_key {
            return Err(format!("issued by {}, not {api_key}", claims["iss"]));
        }
        let digest = STANDARD.encode(Sha256::digest(self.body.as_bytes()));
        if claims["sha256"] != digest.as_str() {
            return Err(format!(
                "sha256 claim {} is not the body's {digest}",
                claims["sha256"]
            ));
        }
        serde_json::from_str(&self.body).map_err(|e| format!("the body is not JSON: {e}"))
    }
}

/// An HTTP/1.1 listener on 127.0.0.1 that answers every request 200 and records it.
pub struct WebhookRecorder {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<WebhookCall>>>,
    arrived: Arc<Notify>,
    accept: JoinHandle<()>,
}

impl WebhookRecorder {
    pub async fn start() -> WebhookRecorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("expected to bind a loopback port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("expected a local address: {e}"));
        let calls: Arc<Mutex<Vec<WebhookCall>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let accept = tokio::spawn({
            let (calls, arrived) = (calls.clone(), arrived.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, calls.clone(), arrived.clone()));
                }
            }
        });
        WebhookRecorder {
            addr,
            calls,
            arrived,
            accept,
        }
    }

    /// `http://127.0.0.1:<port>/livekit/webhook`.
    pub fn url(&self) -> String {
        format!("http://{}/livekit/webhook", self.addr)
    }

    /// Everything received so far, in order.
    pub fn calls(&self) -> Vec<WebhookCall> {
        lock(&self.calls).clone()
    }

    /// The first call (received before or after this one is made) for which `matches` holds;
    /// panics after `timeout`, listing what did arrive.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        matches: impl Fn(&WebhookCall) -> bool,
    ) -> WebhookCall {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(call) = lock(&self.calls).iter().find(|c| matches(c)) {
                return call.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                let seen: Vec<String> = self
                    .calls()
                    .iter()
                    .map(|c| format!("{} {} {}", c.method, c.path, c.body))
                    .collect();
                panic!(
                    "expected a matching webhook within {timeout:?}; received:\n{}",
                    seen.join("\n")
                );
            }
        }
    }

    /// The first LiveKit event named `event` about participant `identity` (any participant
    /// when `None`).
    pub async fn wait_event(
        &self,
        event: &str,
        identity: Option<&str>,
        timeout: Duration,
    ) -> WebhookCall {
        self.wait_for(timeout, |c| {
            let body = c.json();
            body["event"] == event && identity.is_none_or(|i| body["participant"]["identity"] == i)
        })
        .await
    }
}

impl Drop for WebhookRecorder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one connection: requests with a `Content-Length` body, kept alive until the
/// client closes or sends something this recorder does not read (then it closes).
async fn serve(mut stream: TcpStream, calls: Arc<Mutex<Vec<WebhookCall>>>, arrived: Arc<Notify>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line.next().unwrap_or_default().to_owned();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        if headers.contains_key("transfer-encoding") {
            let _ = stream
                .write_all(b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            return;
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            return;
        }
        let body_start = head_end + 4;
        while buf.len() < body_start + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[body_start..body_start + length]).into_owned();
        buf.drain(..body_start + length);
        lock(&calls).push(WebhookCall {
            method,
            path,
            authorization: headers.get("authorization").cloned(),
            content_type: headers.get("content-type").cloned(),
            body,
        });
        arrived.notify_waiters();
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let _ = stream.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_tokens_verify_only_with_their_secret_and_in_date() {
        let now = unix_now();
        let claims = json!({ "iss": "key", "sub": "alice", "nbf": now - 10, "exp": now + 600 });
        let token = sign_hs256("secret", &claims);
        assert_eq!(jwt_claims(&token), claims);
        assert_eq!(verify_hs256(&token, "secret"), Ok(claims.clone()));
        assert!(verify_hs256(&token, "other").is_err());

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] =
            URL_SAFE_NO_PAD.encode(json!({ "sub": "mallory", "exp": now + 600 }).to_string());
        assert!(verify_hs256(&parts.join("."), "secret").is_err());

        let expired = sign_hs256("secret", &json!({ "exp": now - 3600 }));
        assert!(verify_hs256(&expired, "secret").is_err());
        let no_exp = sign_hs256("secret", &json!({ "sub": "alice" }));
        assert!(verify_hs256(&no_exp, "secret").is_err());
        assert!(verify_hs256("not a token", "secret").is_err());
    }

    #[test]
    fn webhook_calls_verify_against_the_body_hash() {
        let body = r#"{"event":"participant_joined"}"#.to_owned();
        let now = unix_now();
        let sha = STANDARD.encode(Sha256::digest(body.as_bytes()));
        let token = sign_hs256(
            "secret",
            &json!({ "iss": "key", "nbf": now, "exp": now + 300, "sha256": sha }),
        );
        let call = WebhookCall {
            method: "POST".into(),
            path: "/".into(),
            authorization: Some(token),
            content_type: None,
            body,
        };
        assert_eq!(call.event(), "participant_joined");
        assert!(call.verify("key", "secret").is_ok());
        assert!(call.verify("other key", "secret").is_err());
        let mut changed = call.clone();
        changed.body.push(' ');
        assert!(changed.verify("key", "secret").is_err());
        let mut unsigned = call;
        unsigned.authorization = None;
        assert!(unsigned.verify("key", "secret").is_err());
    }
}
