//! End-to-end encryption interop: real `matrix-sdk` clients (Olm/Megolm through
//! vodozemac, in-memory crypto stores) and the `paracord-cli` binary against a real
//! `paracord` process.
//!
//! What the server must provide: `/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/device_signing/upload` (password UIA or none) and `/keys/signatures/upload`,
//! `/sendToDevice`, and in `/sync` the `to_device` events, `device_lists.changed` and
//! `device_one_time_keys_count`; `/room_keys/version` (with `count`) and
//! `/room_keys/keys`; global account data (secret storage, `m.direct`); the invitee's
//! `m.room.member` with `is_direct` in the invite's stripped state; `GET
//! /rooms/{id}/event/{id}`, `/members` and `/messages`; `DELETE /devices/{id}` with
//! password UIA, which also removes the device's keys from `/keys/query` and tells the
//! users who share a room through `device_lists`; MSC3814 dehydrated devices (`PUT`,
//! `GET`, `DELETE /dehydrated_device` and its `events` with `next_batch`). The harness's `data_dir()` and
//! `log_path()` give the files to scan for plaintext.
//!
//! `RUST_LOG=matrix_sdk=debug` shows the SDK's requests. Run against Synapse (to tell a
//! test mistake from a server one) with `PARACORD_BIN` pointing at
//! `complement-tests/reference/synapse-as-paracord.py`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use matrix_sdk::{
    config::{RequestConfig, SyncSettings},
    deserialized_responses::{TimelineEvent, TimelineEventKind},
    encryption::dehydrated_devices::DehydratedDeviceEvent,
    room::MessagesOptions,
    ruma::{
        api::client::uiaa, events::room::message::RoomMessageEventContent, OwnedDeviceId,
        OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    },
    Client, Room, RoomState,
};
use matrix_sdk_crypto::store::types::DehydratedDeviceKey;
use paracord_complement::{enc, expect_ok, random_word, StatusCode, TestServer, User};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long any one wait (a sync condition, a CLI run) may take.
const DEADLINE: Duration = Duration::from_secs(45);

/// Long-poll timeout of each `/sync`.
const SYNC_TIMEOUT: Duration = Duration::from_millis(1000);

const MEGOLM: &str = "m.megolm.v1.aes-sha2";

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// An SDK client with end-to-end encryption and in-memory stores. Retries are off so
/// that a failing request shows up as the first error it caused.
async fn sdk_client(base_url: &str) -> Client {
    // reqwest 0.13 is built with `rustls-no-provider`: a TLS provider must exist even
    // for http:// URLs.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .homeserver_url(base_url)
        // Stay on `base_url` (a relay, in one test) even when the login response
        // names the server's own public URL in `well_known`.
        .respect_login_well_known(false)
        .request_config(
            RequestConfig::new()
                .disable_retry()
                .timeout(Duration::from_secs(20)),
        )
        .build()
        .await
        .unwrap_or_else(|e| panic!("expected an SDK client for {base_url}: {e:?}"))
}

/// Logs `user` in as a new device and runs the first sync, which uploads the
/// device's identity keys and one-time keys.
async fn login(server: &TestServer, user: &User, device_name: &str) -> Client {
    login_via(server, &server.base_url(), user, device_name).await
}

/// Logs `user` in with the SDK at `base_url` (any homeserver) and runs the first sync.
async fn sdk_login(base_url: &str, user: &User, device_name: &str) -> Client {
    let client = sdk_client(base_url).await;
    client
        .matrix_auth()
        .login_username(&user.user_id, &user.password)
        .initial_device_display_name(device_name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected SDK login of {} to succeed: {e:?}", user.user_id));
    client
        .sync_once(SyncSettings::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "expected the first /sync of {} to succeed: {e:?}",
                user.user_id
            )
        });
    client
}

/// [`login`] with the client talking to `base_url` (a relay in front of `server`).
async fn login_via(server: &TestServer, base_url: &str, user: &User, device_name: &str) -> Client {
    let client = sdk_login(base_url, user, device_name).await;
    // The server now publishes the device's identity keys.
    let device = device_of(&client);
    let http = server.client_with_token(&client.access_token().expect("an access token"));
    let keys = expect_ok(
        http.post(
            "/keys/query",
            &json!({ "device_keys": { user.user_id.clone(): [] } }),
        )
        .await,
        "POST /keys/query after the first sync",
    );
    let published = &keys["device_keys"][&user.user_id][device.as_str()];
    assert_eq!(
        published["device_id"],
        device.as_str(),
        "expected {} ({device_name}) to have uploaded its device keys (POST /keys/upload), \
         /keys/query says {keys}",
        user.user_id
    );
    client
}

fn device_of(client: &Client) -> OwnedDeviceId {
    client
        .device_id()
        .map(ToOwned::to_owned)
        .expect("a logged-in client has a device id")
}

fn user_of(client: &Client) -> OwnedUserId {
    client
        .user_id()
        .map(ToOwned::to_owned)
        .expect("a logged-in client has a user id")
}

/// Sets up cross-signing for `user`, answering the UIA with the password.
async fn bootstrap_cross_signing(client: &Client, user: &User) {
    if let Err(e) = client.encryption().bootstrap_cross_signing(None).await {
        let info = e.as_uiaa_response().unwrap_or_else(|| {
            panic!(
                "expected cross-signing setup of {} to succeed or ask for UIA: {e:?}",
                user.user_id
            )
        });
        let mut password = uiaa::Password::new(
            uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(user.user_id.clone())),
            user.password.clone(),
        );
        password.session = info.session.clone();
        client
            .encryption()
            .bootstrap_cross_signing(Some(uiaa::AuthData::Password(password)))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "expected cross-signing setup of {} with password UIA: {e:?}",
                    user.user_id
                )
            });
    }
}

/// Syncs until `check` returns `Some`, failing after [`DEADLINE`].
async fn sync_until<T>(client: &Client, what: &str, mut check: impl AsyncCheck<T>) -> T {
    let who = user_of(client);
    let deadline = Instant::now() + DEADLINE;
    loop {
        client
            .sync_once(SyncSettings::default().timeout(SYNC_TIMEOUT))
            .await
            .unwrap_or_else(|e| panic!("expected /sync for {who} while waiting for {what}: {e:?}"));
        if let Some(found) = check.check(client).await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {who} ({}) to see {what} within {DEADLINE:?}; last seen: {}",
            device_of(client),
            check.last_seen()
        );
    }
}

/// An async condition over a client (closures returning futures do not borrow well).
trait AsyncCheck<T> {
    async fn check(&mut self, client: &Client) -> Option<T>;

    /// What the last check saw, for the failure message.
    fn last_seen(&self) -> String {
        "nothing recorded".to_owned()
    }
}

/// The room in `state`.
struct RoomIn<'a>(&'a RoomId, RoomState);

impl AsyncCheck<Room> for RoomIn<'_> {
    async fn check(&mut self, client: &Client) -> Option<Room> {
        client
            .get_room(self.0)
            .filter(|room| room.state() == self.1)
    }
}

/// The event, decrypted; remembers the last failure (not found, or why it did not
/// decrypt).
struct Decrypted<'a>(&'a RoomId, &'a OwnedEventId, String);

impl AsyncCheck<TimelineEvent> for Decrypted<'_> {
    async fn check(&mut self, client: &Client) -> Option<TimelineEvent> {
        let Some(room) = client.get_room(self.0) else {
            self.2 = "the room is unknown".to_owned();
            return None;
        };
        match room.event(self.1, None).await {
            Ok(event) => match &event.kind {
                TimelineEventKind::Decrypted(_) => Some(event),
                other => {
                    self.2 = format!("{other:?}");
                    None
                }
            },
            Err(e) => {
                self.2 = format!("GET /event failed: {e:?}");
                None
            }
        }
    }

    fn last_seen(&self) -> String {
        self.2.clone()
    }
}

/// `user`'s `device` gone (or marked deleted) from the client's view of their devices.
struct DeviceGone<'a>(&'a UserId, &'a OwnedDeviceId);

impl AsyncCheck<()> for DeviceGone<'_> {
    async fn check(&mut self, client: &Client) -> Option<()> {
        let device = client.encryption().get_device(self.0, self.1).await.ok()?;
        match device {
            None => Some(()),
            Some(device) if device.is_deleted() => Some(()),
            Some(_) => None,
        }
    }
}

/// Body and Megolm session id of a decrypted `m.room.message`.
fn decrypted_text(event: &TimelineEvent, what: &str) -> (String, String) {
    let TimelineEventKind::Decrypted(_) = &event.kind else {
        panic!("expected {what} to be decrypted, got {:?}", event.kind);
    };
    let info = event
        .encryption_info()
        .unwrap_or_else(|| panic!("expected encryption info for {what}"));
    let session_id = info
        .session_id()
        .unwrap_or_else(|| panic!("expected {what} to be a Megolm event, got {info:?}"))
        .to_owned();
    let raw: Value = serde_json::from_str(event.raw().json().get())
        .unwrap_or_else(|e| panic!("expected {what} to be JSON: {e}"));
    assert_eq!(
        raw["type"], "m.room.message",
        "expected {what} to decrypt to an m.room.message, got {raw}"
    );
    let body = raw["content"]["body"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a text body in {what}, got {raw}"))
        .to_owned();
    (body, session_id)
}

async fn send_text(room: &Room, body: &str) -> OwnedEventId {
    room.send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "expected {} to send an encrypted message to {}: {e:?}",
                room.own_user_id(),
                room.room_id()
            )
        })
        .response
        .event_id
}

/// Waits until `client` has decrypted `event_id` and checks its body.
async fn expect_decrypts(
    client: &Client,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    body: &str,
) -> String {
    let what = format!("{event_id} ({body:?}) decrypted in {room_id}");
    let event = sync_until(client, &what, Decrypted(room_id, event_id, String::new())).await;
    let (got, session_id) = decrypted_text(&event, &what);
    assert_eq!(got, body, "expected {} to read {what}", user_of(client));
    session_id
}

/// The event as the server stores it, fetched over plain HTTP: an `m.room.encrypted`
/// Megolm event whose JSON does not contain `plaintext`.
async fn expect_ciphertext_on_server(
    user: &User,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    plaintext: &str,
) {
    let path = format!(
        "/rooms/{}/event/{}",
        enc(room_id.as_str()),
        enc(event_id.as_str())
    );
    let event = expect_ok(user.get(&path).await, "GET /rooms/{id}/event/{id}");
    assert_eq!(
        event["type"], "m.room.encrypted",
        "expected the server to hold {event_id} as m.room.encrypted, got {event}"
    );
    assert_eq!(
        event["content"]["algorithm"], MEGOLM,
        "expected Megolm in {event}"
    );
    assert!(
        !event.to_string().contains(plaintext),
        "expected the server's copy of {event_id} not to contain the plaintext: {event}"
    );
}

/// A creates an encrypted direct room with B and B joins it; both clients see it
/// joined. Checks `is_direct` and `m.room.encryption` over plain HTTP.
async fn open_dm(a: &Client, b: &Client, b_http: &User) -> OwnedRoomId {
    let b_id = user_of(b);
    let room = a
        .create_dm(&b_id)
        .await
        .unwrap_or_else(|e| panic!("expected A to create a direct room with {b_id}: {e:?}"));
    let room_id = room.room_id().to_owned();
    let invited = sync_until(b, "the direct invite", RoomIn(&room_id, RoomState::Invited)).await;
    assert!(
        invited.is_direct().await.unwrap_or(false),
        "expected B's invite to {room_id} to carry is_direct"
    );
    invited
        .join()
        .await
        .unwrap_or_else(|e| panic!("expected B to join {room_id}: {e:?}"));
    sync_until(
        b,
        "the direct room joined",
        RoomIn(&room_id, RoomState::Joined),
    )
    .await;
    sync_until(
        a,
        "the direct room joined",
        RoomIn(&room_id, RoomState::Joined),
    )
    .await;

    let encryption = b_http
        .state_content(room_id.as_str(), "m.room.encryption", "")
        .await;
    assert_eq!(
        encryption["algorithm"], MEGOLM,
        "expected m.room.encryption with {MEGOLM} in {room_id}, got {encryption}"
    );
    let membership = b_http
        .state_content(room_id.as_str(), "m.room.member", &b_http.user_id)
        .await;
    assert_eq!(
        membership["membership"], "join",
        "expected B joined in {room_id}: {membership}"
    );
    let a_room = a.get_room(&room_id).expect("A knows the room");
    assert!(
        a_room.is_direct().await.unwrap_or(false),
        "expected A to have {room_id} in m.direct"
    );
    room_id
}

/// A unique plaintext that must never reach the server.
fn marker(what: &str) -> String {
    format!("secret-{what}-{}", random_word())
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// The files (of `files`) whose bytes contain `needle`.
fn files_containing(files: &[PathBuf], needle: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|path| {
            std::fs::read(path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dm_both_ways_and_no_plaintext_on_the_server() {
    init_logging();
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let a = login(&server, &alice, "alice phone").await;
    let b = login(&server, &bob, "bob laptop").await;

    let room_id = open_dm(&a, &b, &bob).await;
    let room_a = a.get_room(&room_id).expect("A's room");
    let room_b = b.get_room(&room_id).expect("B's room");

    let mut secrets = Vec::new();
    for round in 0..2 {
        let text = marker(&format!("a{round}"));
        let id = send_text(&room_a, &text).await;
        expect_decrypts(&b, &room_id, &id, &text).await;
        expect_ciphertext_on_server(&alice, &room_id, &id, &text).await;
        secrets.push(text);

        let text = marker(&format!("b{round}"));
        let id = send_text(&room_b, &text).await;
        expect_decrypts(&a, &room_id, &id, &text).await;
        expect_ciphertext_on_server(&bob, &room_id, &id, &text).await;
        secrets.push(text);
    }

    // Control: a plaintext message in an unencrypted room must be found by the same
    // scan, or the scan proves nothing (e.g. compressed storage).
    let plain_room = alice
        .create_room(&json!({ "preset": "private_chat", "name": "plain" }))
        .await;
    let control = marker("control");
    alice.send_text(&plain_room, &control).await;
    // Let the server write whatever it writes after a send (search index, caches).
    a.sync_once(SyncSettings::default().timeout(SYNC_TIMEOUT))
        .await
        .expect("a sync after the control message");

    let data = files_under(&server.data_dir());
    assert!(
        !data.is_empty(),
        "expected files in the data directory {}",
        server.data_dir().display()
    );
    let found = files_containing(&data, &control);
    assert!(
        !found.is_empty(),
        "expected the unencrypted control text to be somewhere in {} ({} files), \
         else this scan cannot see plaintext at all",
        server.data_dir().display(),
        data.len()
    );
    let log = std::fs::read(server.log_path()).unwrap_or_default();
    assert!(
        !log.is_empty(),
        "expected the server log {} to have output",
        server.log_path().display()
    );
    for secret in &secrets {
        let leaked = files_containing(&data, secret);
        assert!(
            leaked.is_empty(),
            "expected the plaintext of an encrypted message to appear in no file of the data \
             directory, found {secret:?} in {leaked:?}"
        );
        let in_log = files_containing(&[server.log_path()], secret);
        assert!(
            in_log.is_empty(),
            "expected the plaintext {secret:?} not to appear in the server log"
        );
    }
    println!(
        "{} encrypted messages exchanged; {} data files scanned, control found in {found:?}",
        secrets.len(),
        data.len()
    );
}

/// Alice on one Paracord server, bob on another: the direct room, its invite and join cross
/// the federation, and so do device-key queries, one-time-key claims and the to-device
/// messages that carry the room keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dm_across_two_servers() {
    init_logging();
    let (server_a, _) = paracord_complement::federation::federating_server().await;
    let (server_b, _) = paracord_complement::federation::federating_server().await;
    let alice = server_a.register_random().await;
    let bob = server_b.register_random().await;
    let a = login(&server_a, &alice, "alice on A").await;
    let b = login(&server_b, &bob, "bob on B").await;

    let room_id = open_dm(&a, &b, &bob).await;
    let room_a = a.get_room(&room_id).expect("A's room");
    let room_b = b.get_room(&room_id).expect("B's room");
    for round in 0..2 {
        let text = marker(&format!("fed-a{round}"));
        let id = send_text(&room_a, &text).await;
        expect_decrypts(&b, &room_id, &id, &text).await;
        expect_ciphertext_on_server(&bob, &room_id, &id, &text).await;

        let text = marker(&format!("fed-b{round}"));
        let id = send_text(&room_b, &text).await;
        expect_decrypts(&a, &room_id, &id, &text).await;
        expect_ciphertext_on_server(&alice, &room_id, &id, &text).await;
    }
}

/// A Paracord user and a Synapse user (Synapse from PyPI, federating over TLS on loopback)
/// in an encrypted direct room, both with matrix-sdk: the DM's invite and join, the key
/// queries and claims and the to-device room keys all cross between the two servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dm_between_a_paracord_and_a_synapse_user() {
    init_logging();
    let synapse = paracord_complement::synapse::SynapseServer::start().await;
    let (paracord, _) = paracord_complement::federation::federating_server().await;
    let alice = paracord.register_random().await;
    let bob = synapse.register_random().await;
    let a = login(&paracord, &alice, "alice on Paracord").await;
    let b = sdk_login(&synapse.base_url(), &bob, "bob on Synapse").await;

    let room_id = open_dm(&a, &b, &bob).await;
    let room_a = a.get_room(&room_id).expect("alice's room");
    let room_b = b.get_room(&room_id).expect("bob's room");
    for round in 0..2 {
        let text = marker(&format!("to-synapse-{round}"));
        let id = send_text(&room_a, &text).await;
        expect_decrypts(&b, &room_id, &id, &text).await;
        expect_ciphertext_on_server(&alice, &room_id, &id, &text).await;

        let text = marker(&format!("to-paracord-{round}"));
        let id = send_text(&room_b, &text).await;
        expect_decrypts(&a, &room_id, &id, &text).await;
        expect_ciphertext_on_server(&alice, &room_id, &id, &text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_device_restores_history_from_key_backup() {
    init_logging();
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let a1 = login(&server, &alice, "alice first").await;
    let b = login(&server, &bob, "bob").await;
    bootstrap_cross_signing(&a1, &alice).await;

    let room_id = open_dm(&a1, &b, &bob).await;
    let room_a1 = a1.get_room(&room_id).expect("A1's room");
    let room_b = b.get_room(&room_id).expect("B's room");
    let from_a = marker("history-a");
    let id_a = send_text(&room_a1, &from_a).await;
    expect_decrypts(&b, &room_id, &id_a, &from_a).await;
    let from_b = marker("history-b");
    let id_b = send_text(&room_b, &from_b).await;
    expect_decrypts(&a1, &room_id, &id_b, &from_b).await;

    // A1 turns on key backup and secret storage and uploads every room key it has.
    let recovery_key = a1
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .unwrap_or_else(|e| panic!("expected A1 to enable key backup: {e:?}"));
    let version = expect_ok(
        alice.get("/room_keys/version").await,
        "GET /room_keys/version",
    );
    let count = version["count"].as_u64().unwrap_or(0);
    assert!(
        count >= 2,
        "expected the backup to hold at least the two room keys, got {version}"
    );

    // A second device: no room keys, so the history does not decrypt yet.
    let a2 = login(&server, &alice, "alice second").await;
    let room_a2 = sync_until(
        &a2,
        "the room on the new device",
        RoomIn(&room_id, RoomState::Joined),
    )
    .await;
    let before = room_a2
        .event(&id_b, None)
        .await
        .unwrap_or_else(|e| panic!("expected A2 to fetch {id_b}: {e:?}"));
    assert!(
        matches!(before.kind, TimelineEventKind::UnableToDecrypt { .. }),
        "expected the new device not to decrypt history before restoring, got {:?}",
        before.kind
    );

    a2.encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .unwrap_or_else(|e| {
            panic!("expected A2 to open secret storage with the recovery key: {e:?}")
        });
    a2.encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .unwrap_or_else(|e| panic!("expected A2 to download the room keys of {room_id}: {e:?}"));

    let mut options = MessagesOptions::backward();
    options.limit = UInt::from(50u32);
    let page = room_a2
        .messages(options)
        .await
        .unwrap_or_else(|e| panic!("expected A2 to read /messages of {room_id}: {e:?}"));
    let mut bodies = Vec::new();
    for event in &page.chunk {
        match &event.kind {
            TimelineEventKind::UnableToDecrypt { utd_info, .. } => {
                panic!("expected every message of {room_id} to decrypt after the restore, got {utd_info:?}")
            }
            TimelineEventKind::Decrypted(_) => {
                bodies.push(decrypted_text(event, "restored history").0);
            }
            TimelineEventKind::PlainText { .. } => {}
        }
    }
    bodies.reverse();
    assert_eq!(
        bodies,
        vec![from_a, from_b],
        "expected the new device to read the whole encrypted history after the restore"
    );
}

/// `DELETE /devices/{id}` with password UIA.
async fn delete_device(user: &User, device: &OwnedDeviceId) {
    let path = format!("/devices/{}", enc(device.as_str()));
    let (status, body) = user.delete(&path, &json!({})).await;
    let done = if status == StatusCode::UNAUTHORIZED {
        let session = body["session"]
            .as_str()
            .unwrap_or_else(|| panic!("expected a UIA session from DELETE {path}, got {body}"));
        user.delete(&path, &json!({ "auth": user.password_auth(session) }))
            .await
    } else {
        (status, body)
    };
    expect_ok(done, "DELETE /devices/{id} with password UIA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_device_gets_no_new_room_key() {
    init_logging();
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    // A talks through a relay that records its requests: which devices its
    // `/sendToDevice` calls address is then observed, not inferred.
    let relay = Relay::start(server.port()).await;
    let a = login_via(&server, &relay.url(), &alice, "alice").await;
    let b1 = login(&server, &bob, "bob keeps").await;
    let b2 = login(&server, &bob, "bob loses").await;
    let b2_device = device_of(&b2);

    let room_id = open_dm(&a, &b1, &bob).await;
    sync_until(
        &b2,
        "the room on B's second device",
        RoomIn(&room_id, RoomState::Joined),
    )
    .await;
    let room_a = a.get_room(&room_id).expect("A's room");

    let first = marker("before-delete");
    let id1 = send_text(&room_a, &first).await;
    let session1 = expect_decrypts(&b1, &room_id, &id1, &first).await;
    let session1_b2 = expect_decrypts(&b2, &room_id, &id1, &first).await;
    assert_eq!(
        session1, session1_b2,
        "both of B's devices got the same room key"
    );

    // Control: the first room key was sent to B2, and the relay saw it.
    let before = relay.sent_since(&RelayMark::default());
    assert!(
        before
            .iter()
            .any(|c| contains(c, b"/sendToDevice/") && contains(c, b2_device.as_str().as_bytes())),
        "expected A's /sendToDevice requests before the deletion to address {b2_device} \
         (else the check below proves nothing)"
    );

    delete_device(&bob, &b2_device).await;
    let mark = relay.mark();
    let (status, _) = whoami_of(&server, &b2).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "expected the deleted device's access token to stop working"
    );
    let keys = expect_ok(
        alice
            .post(
                "/keys/query",
                &json!({ "device_keys": { bob.user_id.clone(): [] } }),
            )
            .await,
        "POST /keys/query",
    );
    let devices = &keys["device_keys"][&bob.user_id];
    assert!(
        devices.get(b2_device.as_str()).is_none(),
        "expected /keys/query to stop listing the deleted device {b2_device}, got {devices}"
    );
    assert!(
        devices.get(device_of(&b1).as_str()).is_some(),
        "expected /keys/query to still list B's remaining device, got {devices}"
    );

    // A learns about the change through device_lists.changed in /sync.
    let bob_id = user_of(&b1);
    sync_until(
        &a,
        "B's second device gone",
        DeviceGone(&bob_id, &b2_device),
    )
    .await;

    let second = marker("after-delete");
    let id2 = send_text(&room_a, &second).await;
    let session2 = expect_decrypts(&b1, &room_id, &id2, &second).await;
    assert_ne!(
        session1, session2,
        "expected A to start a new Megolm session once a recipient device was deleted, \
         so the deleted device never gets the new room key"
    );
    let after = relay.sent_since(&mark);
    assert!(
        after.iter().any(|c| contains(c, b"/sendToDevice/")),
        "expected A to send the new room key with /sendToDevice after the deletion"
    );
    assert!(
        !after
            .iter()
            .any(|c| contains(c, b2_device.as_str().as_bytes())),
        "expected no request of A after the deletion to address the deleted device {b2_device}"
    );
    let recipients = a
        .encryption()
        .get_user_devices(&bob_id)
        .await
        .expect("A's view of B's devices");
    let known: Vec<OwnedDeviceId> = recipients
        .devices()
        .filter(|d| !d.is_deleted())
        .map(|d| d.device_id().to_owned())
        .collect();
    assert_eq!(
        known,
        vec![device_of(&b1)],
        "expected A to encrypt only to B's remaining device"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A loopback TCP relay in front of the server that keeps every byte its clients send
/// (plain HTTP/1.1), one buffer per connection so a request is never split by another
/// connection's bytes.
struct Relay {
    port: u16,
    sent: Connections,
    task: tokio::task::JoinHandle<()>,
}

/// The bytes sent on each connection of a [`Relay`], in the order they were accepted.
type Connections = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// How much each connection of a [`Relay`] had sent at some moment.
#[derive(Default)]
struct RelayMark(Vec<usize>);

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the relay");
        let port = listener.local_addr().expect("the relay's address").port();
        let sent: Connections = Arc::default();
        let connections = Arc::clone(&sent);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let buffer: Arc<Mutex<Vec<u8>>> = Arc::default();
                connections
                    .lock()
                    .expect("relay lock")
                    .push(Arc::clone(&buffer));
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let up = async {
                        let mut chunk = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from_client.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            buffer
                                .lock()
                                .expect("relay lock")
                                .extend_from_slice(&chunk[..n]);
                            if to_server.write_all(&chunk[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay { port, sent, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn mark(&self) -> RelayMark {
        let connections = self.sent.lock().expect("relay lock");
        RelayMark(
            connections
                .iter()
                .map(|c| c.lock().expect("relay lock").len())
                .collect(),
        )
    }

    /// What each connection sent after `mark` (connections opened since: everything).
    fn sent_since(&self, mark: &RelayMark) -> Vec<Vec<u8>> {
        let connections = self.sent.lock().expect("relay lock");
        connections
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let bytes = c.lock().expect("relay lock");
                let from = mark.0.get(i).copied().unwrap_or(0).min(bytes.len());
                bytes[from..].to_vec()
            })
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn whoami_of(server: &TestServer, client: &Client) -> (StatusCode, Value) {
    let token = client
        .access_token()
        .expect("a logged-in client has an access token");
    server.client_with_token(&token).whoami().await
}

/// The `paracord-cli` binary: `PARACORD_CLI_BIN`, or next to the test executable's
/// `deps/` directory (`target/<profile>/paracord-cli`, built by
/// `cargo test -p paracord-cli` or `cargo build -p paracord-cli`).
fn cli_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PARACORD_CLI_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is under target/<profile>/deps");
    profile_dir.join(format!("paracord-cli{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `paracord-cli --json --store <store> <args>`; returns each stdout line as JSON.
async fn cli(store: &Path, password: Option<&str>, args: &[&str]) -> Vec<Value> {
    let bin = cli_binary();
    assert!(
        bin.exists(),
        "expected the CLI at {} (cargo build -p paracord-cli, or set PARACORD_CLI_BIN)",
        bin.display()
    );
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("--json")
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("PARACORD_CLI_PASSWORD")
        .env_remove("PARACORD_CLI_STORE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(password) = password {
        cmd.env("PARACORD_CLI_PASSWORD", password);
    }
    let output = tokio::time::timeout(DEADLINE + Duration::from_secs(15), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("expected paracord-cli {args:?} to finish"))
        .unwrap_or_else(|e| panic!("expected to run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.is_empty() {
        // Warnings (e.g. a failed cross-signing setup at login); shown when the test fails.
        eprintln!("paracord-cli {args:?} stderr: {stderr}");
    }
    assert!(
        output.status.success(),
        "expected paracord-cli {args:?} to succeed, got {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("expected JSON lines from {args:?}, got {line:?}: {e}"))
        })
        .collect()
}

fn one(lines: Vec<Value>, what: &str) -> Value {
    assert_eq!(
        lines.len(),
        1,
        "expected one JSON object from {what}, got {lines:?}"
    );
    lines.into_iter().next().expect("one line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dm_send_tail_verify_backup_restore() {
    init_logging();
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let stores = tempfile::tempdir().expect("a temporary directory");
    let a = stores.path().join("alice");
    let b = stores.path().join("bob");
    let a2 = stores.path().join("alice-second");
    let hs = server.base_url();

    let a_login = one(
        cli(
            &a,
            Some(&alice.password),
            &["login", "--homeserver", &hs, "--user", &alice.localpart],
        )
        .await,
        "login",
    );
    assert_eq!(a_login["user_id"], alice.user_id.as_str());
    assert_eq!(
        a_login["cross_signing"], true,
        "expected login to set up cross-signing: {a_login}"
    );
    let b_login = one(
        cli(
            &b,
            Some(&bob.password),
            &["login", "--homeserver", &hs, "--user", &bob.user_id],
        )
        .await,
        "login",
    );
    assert_eq!(
        b_login["cross_signing"], true,
        "expected login to set up cross-signing: {b_login}"
    );
    let b_device = b_login["device_id"]
        .as_str()
        .expect("a device id")
        .to_owned();

    // A opens the DM, B's `dm` accepts the invite: one room for both.
    let created = one(cli(&a, None, &["dm", &bob.user_id]).await, "dm");
    assert_eq!(created["action"], "created", "{created}");
    assert_eq!(created["encrypted"], true, "{created}");
    let room_id = created["room_id"].as_str().expect("a room id").to_owned();
    let joined = one(cli(&b, None, &["dm", &alice.user_id]).await, "dm");
    assert_eq!(
        joined["room_id"],
        room_id.as_str(),
        "expected B to join A's DM: {joined}"
    );
    assert_eq!(joined["action"], "joined", "{joined}");
    let again = one(cli(&a, None, &["dm", &bob.user_id]).await, "dm");
    assert_eq!(
        again["room_id"],
        room_id.as_str(),
        "expected `dm` to reuse the room: {again}"
    );
    let rooms = cli(&a, None, &["rooms"]).await;
    let listed = rooms
        .iter()
        .find(|r| r["room_id"] == room_id.as_str())
        .unwrap_or_else(|| panic!("expected {room_id} in `rooms`, got {rooms:?}"));
    assert_eq!(listed["encrypted"], true, "{listed}");
    assert_eq!(listed["is_direct"], true, "{listed}");

    let hello = marker("cli-a");
    let sent = one(cli(&a, None, &["send", &room_id, &hello]).await, "send");
    assert_eq!(sent["encrypted"], true, "{sent}");
    let tail = cli(
        &b,
        None,
        &["tail", &room_id, "--count", "1", "--timeout", "30"],
    )
    .await;
    let got = one(tail, "tail");
    assert_eq!(got["body"], hello.as_str(), "{got}");
    assert_eq!(got["decrypted"], true, "{got}");
    assert_eq!(got["event_id"], sent["event_id"], "{got}");

    let reply = marker("cli-b");
    cli(&b, None, &["send", &alice.user_id, &reply]).await;
    let tail = cli(
        &a,
        None,
        &["tail", &bob.user_id, "--count", "2", "--timeout", "30"],
    )
    .await;
    let bodies: Vec<&str> = tail.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, vec![hello.as_str(), reply.as_str()], "{tail:?}");
    assert!(tail.iter().all(|m| m["decrypted"] == true), "{tail:?}");

    // Cross-signing: both logins set it up; A verifies B's device through B's identity.
    let verified = one(
        cli(&a, None, &["verify", &bob.user_id, &b_device]).await,
        "verify",
    );
    assert_eq!(verified["verified"], true, "{verified}");

    // Backup on A's device, restore on a second one.
    let backup = one(cli(&a, None, &["backup"]).await, "backup");
    let key = backup["recovery_key"]
        .as_str()
        .expect("a recovery key")
        .to_owned();
    let a2_login = one(
        cli(
            &a2,
            Some(&alice.password),
            &["login", "--homeserver", &hs, "--user", &alice.user_id],
        )
        .await,
        "login",
    );
    let a2_device = a2_login["device_id"]
        .as_str()
        .expect("a device id")
        .to_owned();
    // Before the restore the new device cannot read the history.
    let before = cli(&a2, None, &["tail", &room_id, "--count", "2"]).await;
    assert!(
        before.len() == 2 && before.iter().all(|m| m["decrypted"] == false),
        "expected no readable history on a new device before `restore`: {before:?}"
    );
    // A's first device signs the new one with its self-signing key.
    let own = one(
        cli(&a, None, &["verify", &alice.user_id, &a2_device]).await,
        "verify",
    );
    assert_eq!(own["verified"], true, "{own}");
    let restored = one(cli(&a2, None, &["restore", &key]).await, "restore");
    assert_eq!(restored["restored"], true, "{restored}");
    // Secret storage gave the new device the cross-signing keys: it trusts itself.
    let whoami = one(cli(&a2, None, &["whoami"]).await, "whoami");
    assert_eq!(whoami["device_id"], a2_device.as_str(), "{whoami}");
    assert_eq!(whoami["cross_signing_master_key"], true, "{whoami}");
    assert_eq!(whoami["device_verified"], true, "{whoami}");
    assert_eq!(whoami["backup"], "Enabled", "{whoami}");
    let tail = cli(
        &a2,
        None,
        &["tail", &room_id, "--count", "2", "--timeout", "30"],
    )
    .await;
    let bodies: Vec<&str> = tail.iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(
        bodies,
        vec![hello.as_str(), reply.as_str()],
        "expected the second device to read the history after `restore`: {tail:?}"
    );
}

/// MSC3814's unstable endpoint, for the checks over plain HTTP.
const DEHYDRATED_DEVICE: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

/// `user`'s dehydrated `device`, as the client sees it: known, flagged dehydrated and
/// cross-signed by its owner (else senders withhold room keys from it).
struct DehydratedDeviceKnown<'a>(&'a UserId, &'a OwnedDeviceId, String);

impl AsyncCheck<()> for DehydratedDeviceKnown<'_> {
    async fn check(&mut self, client: &Client) -> Option<()> {
        let device = match client.encryption().get_device(self.0, self.1).await {
            Ok(Some(device)) => device,
            other => {
                self.2 = format!("get_device: {other:?}");
                return None;
            }
        };
        self.2 = format!(
            "dehydrated: {}, cross-signed by owner: {}",
            device.is_dehydrated(),
            device.is_cross_signed_by_owner()
        );
        (device.is_dehydrated() && device.is_cross_signed_by_owner()).then_some(())
    }

    fn last_seen(&self) -> String {
        self.2.clone()
    }
}

/// Sends `count` plaintext to-device events from `from` to `user`'s `device` over plain
/// HTTP, one `/sendToDevice` each.
async fn send_filler_to_device(from: &User, user: &str, device: &OwnedDeviceId, count: usize) {
    for n in 0..count {
        let path = format!(
            "/sendToDevice/org.paracord.test.filler/{}",
            paracord_complement::Client::txn_id()
        );
        let body = json!({ "messages": { user: { device.as_str(): { "n": n } } } });
        expect_ok(from.put(&path, &body).await, "PUT /sendToDevice (filler)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dehydrated_device_gets_room_keys_while_alice_is_offline() {
    init_logging();
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let a1 = login(&server, &alice, "alice only device").await;
    let b = login(&server, &bob, "bob").await;
    // Senders give room keys only to dehydrated devices their owner cross-signed.
    bootstrap_cross_signing(&a1, &alice).await;
    let room_id = open_dm(&a1, &b, &bob).await;
    let alice_id = user_of(&a1);

    let dehydration = a1.encryption().dehydrated_devices();
    let supported = dehydration
        .is_supported()
        .await
        .unwrap_or_else(|e| panic!("expected GET {DEHYDRATED_DEVICE} to answer: {e:?}"));
    assert!(
        supported,
        "expected GET {DEHYDRATED_DEVICE} without a device to be M_NOT_FOUND, not M_UNRECOGNIZED"
    );
    let pickle_key = DehydratedDeviceKey::new();
    let dehydrated_id = dehydration
        .create(Some("alice dehydrated"), &pickle_key)
        .await
        .unwrap_or_else(|e| panic!("expected A to upload a dehydrated device: {e:?}"));
    let stored = expect_ok(alice.get(DEHYDRATED_DEVICE).await, "GET dehydrated_device");
    assert_eq!(
        stored["device_id"],
        dehydrated_id.as_str(),
        "expected GET {DEHYDRATED_DEVICE} to return the uploaded device, got {stored}"
    );
    assert!(
        stored["device_data"]["algorithm"].is_string(),
        "expected the device_data the SDK uploaded (with its algorithm) back, got {stored}"
    );

    // Alice goes offline: her SDK device and the harness's registration device log out.
    a1.logout()
        .await
        .unwrap_or_else(|e| panic!("expected A's SDK device to log out: {e:?}"));
    expect_ok(alice.post("/logout", &json!({})).await, "POST /logout");
    let keys = expect_ok(
        bob.post(
            "/keys/query",
            &json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await,
        "POST /keys/query",
    );
    let devices = &keys["device_keys"][&alice.user_id];
    let listed: Vec<&String> = devices
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        listed,
        vec![dehydrated_id.as_str()],
        "expected the dehydrated device to be A's only device with keys once she logged out, \
         got {keys}"
    );
    assert_eq!(
        devices[dehydrated_id.as_str()]["dehydrated"],
        true,
        "expected /keys/query to flag the device as dehydrated, got {keys}"
    );
    sync_until(
        &b,
        "A's dehydrated device, cross-signed",
        DehydratedDeviceKnown(&alice_id, &dehydrated_id, String::new()),
    )
    .await;
    sync_until(
        &b,
        "A's logged-out device gone",
        DeviceGone(&alice_id, &device_of(&a1)),
    )
    .await;

    // Bob writes while Alice has no client. Plaintext to-device filler between the two
    // room keys makes the dehydrated device's queue longer than one batch of
    // `/dehydrated_device/{id}/events` (Paracord gives 100 at a time), so the room keys
    // are on different pages and rehydration must follow `next_batch`.
    const FILLER: usize = 150;
    let room_b = b.get_room(&room_id).expect("B's room");
    let first = marker("offline-1");
    let id1 = send_text(&room_b, &first).await;
    send_filler_to_device(&bob, &alice.user_id, &dehydrated_id, FILLER).await;
    room_b
        .discard_room_key()
        .await
        .unwrap_or_else(|e| panic!("expected B to discard its room key: {e:?}"));
    let second = marker("offline-2");
    let id2 = send_text(&room_b, &second).await;
    expect_ciphertext_on_server(&bob, &room_id, &id2, &second).await;

    // Alice comes back on a new device, without key backup.
    let a2 = login(&server, &alice, "alice new device").await;
    let a2_http = server.client_with_token(&a2.access_token().expect("an access token"));
    let (status, backup) = a2_http.get("/room_keys/version").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "expected A to have no key backup (so only the dehydrated device can help), got {backup}"
    );
    let room_a2 = sync_until(
        &a2,
        "the room on the new device",
        RoomIn(&room_id, RoomState::Joined),
    )
    .await;
    let before = room_a2
        .event(&id1, None)
        .await
        .unwrap_or_else(|e| panic!("expected A2 to fetch {id1}: {e:?}"));
    assert!(
        matches!(before.kind, TimelineEventKind::UnableToDecrypt { .. }),
        "expected the new device not to decrypt B's offline messages before rehydrating, got {:?}",
        before.kind
    );

    let rehydration = a2.encryption().dehydrated_devices();
    let mut progress = rehydration.state_stream();
    let rehydrated = rehydration
        .rehydrate(&pickle_key)
        .await
        .unwrap_or_else(|e| panic!("expected A2 to rehydrate {dehydrated_id}: {e:?}"));
    assert!(
        rehydrated,
        "expected A2 to find the dehydrated device {dehydrated_id} (GET {DEHYDRATED_DEVICE})"
    );
    let mut batches = 0;
    let mut completed = None;
    while let Some(Some(event)) = progress.next().now_or_never() {
        match event {
            Ok(DehydratedDeviceEvent::RehydrationProgress { .. }) => batches += 1,
            Ok(DehydratedDeviceEvent::RehydrationCompleted {
                device_id,
                room_keys_imported,
                to_device_events,
            }) => completed = Some((device_id, room_keys_imported, to_device_events)),
            _ => {}
        }
    }
    let (device_id, room_keys, to_device) =
        completed.unwrap_or_else(|| panic!("expected a RehydrationCompleted event"));
    assert_eq!(device_id, dehydrated_id);
    assert!(
        to_device >= FILLER + 2,
        "expected the {FILLER} filler events and both room keys from the events endpoint, \
         got {to_device} to-device events"
    );
    assert!(
        batches >= 2,
        "expected the queue to come in more than one batch (next_batch), got {batches}"
    );
    assert_eq!(
        room_keys, 2,
        "expected the dehydrated device to have received B's two room keys"
    );

    expect_decrypts(&a2, &room_id, &id1, &first).await;
    expect_decrypts(&a2, &room_id, &id2, &second).await;

    // The SDK deletes the device it rehydrated.
    let (status, body) = a2_http.get(DEHYDRATED_DEVICE).await;
    assert_eq!(
        (status, &body["errcode"]),
        (StatusCode::NOT_FOUND, &json!("M_NOT_FOUND")),
        "expected no dehydrated device after rehydration (the SDK deletes it), got {body}"
    );
}
