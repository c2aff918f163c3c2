//! Black-box harness for the Paracord conformance suite: real `paracord`
//! processes on loopback ports, driven over HTTP only; for interoperability
//! tests, a real Synapse next to them ([`synapse`]).
//!
//! The server binary comes from `PARACORD_BIN`, or sits next to the test
//! executable's `deps/` directory (`target/<profile>/paracord`).

mod client;
pub mod e2ee;
mod events;
pub mod federation;
mod hmac_sha1;
pub mod irc;
pub mod livekit;
pub mod network;
pub mod ngircd;
pub mod pyclients;
mod server;
pub mod synapse;
pub mod venv;

use rand::{distributions::Alphanumeric, Rng};
pub use reqwest::{Method, StatusCode};
use serde_json::Value;

pub use crate::{
    client::{query, Client, Reply, User, CLIENT_V3, WAIT},
    events::{
        bodies, ephemeral, find_event, find_state, has_event_id, joined_room, room_account_data,
        room_state, room_timeline,
    },
    server::{free_port, Env, TestServer, LOOPBACK_ALLOWLIST},
};

/// Percent-encodes everything but RFC 3986 unreserved characters, for path
/// segments (`!room:server`, `#alias:server`, `$event`) and query values.
pub fn enc(s: &str) -> String {
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

/// A fresh, valid, lowercase localpart.
pub fn random_localpart() -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("u{}", suffix.to_lowercase())
}

/// A random lowercase word, for unique names and search terms.
pub fn random_word() -> String {
    random_localpart()
}

/// Asserts a 200 and returns the body.
pub fn expect_ok(resp: (StatusCode, Value), what: &str) -> Value {
    let (status, body) = resp;
    assert_eq!(
        status,
        StatusCode::OK,
        "expected 200 for {what}, got {status}: {body}"
    );
    body
}

/// Asserts a Matrix error: the status, the `errcode`, and a string `error`.
pub fn expect_error(resp: &(StatusCode, Value), status: StatusCode, errcode: &str, what: &str) {
    let (got, body) = resp;
    assert_eq!(
        *got, status,
        "expected {status} {errcode} for {what}, got {got}: {body}"
    );
    assert_eq!(
        body["errcode"], errcode,
        "expected errcode {errcode} for {what}, got {got}: {body}"
    );
    assert!(
        body["error"].is_string(),
        "expected a string `error` for {what}, got {got}: {body}"
    );
}

/// Asserts an error status with a well-formed Matrix error body, for
/// endpoints where the spec fixes the status but not the `errcode`.
pub fn expect_error_status(resp: &(StatusCode, Value), status: StatusCode, what: &str) {
    let (got, body) = resp;
    assert_eq!(
        *got, status,
        "expected {status} for {what}, got {got}: {body}"
    );
    assert!(
        body["errcode"].is_string() && body["error"].is_string(),
        "expected string `errcode` and `error` for {what}, got {got}: {body}"
    );
}

/// True when `s` looks like an unpadded URL-safe base64 SHA-256 with `sigil`
/// (43 characters after the sigil), the format of event ids from room v4 on
/// and of room ids from room v12 on.
pub fn is_hash_id(s: &str, sigil: char) -> bool {
    let mut chars = s.chars();
    chars.next() == Some(sigil)
        && s.len() == 44
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A helper process of a test (a push gateway, a web page server), killed on drop.
pub struct ChildProcess {
    child: std::process::Child,
    /// The loopback port it listens on.
    pub port: u16,
}

impl ChildProcess {
    /// Starts `command` (given the chosen free port) and waits, with a deadline, until the port
    /// accepts connections.
    pub async fn start(command: impl FnOnce(u16) -> std::process::Command) -> ChildProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = command(port).spawn().expect("the helper process starts");
        let process = ChildProcess { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "helper process did not listen on {port}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        process
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
