//! The appservice SDK's end-to-end encryption (feature `e2ee`, issue 17 item 2) against a
//! real `paracord` and a real `matrix-sdk` client: the bot's device is made with MSC4190,
//! its keys and to-device messages reach it in transactions (MSC3202/MSC4203, the
//! registration has `org.matrix.msc3202: true`), it decrypts what the client sends and
//! answers encrypted, and the server only ever holds ciphertext.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
};

use matrix_sdk::{
    config::{RequestConfig, SyncSettings},
    deserialized_responses::TimelineEventKind,
    ruma::{events::room::message::RoomMessageEventContent, OwnedEventId, RoomId},
    Client,
};
use matrix_sdk_crypto::{
    types::events::room::encrypted::EncryptedEvent, DecryptionSettings, TrustRequirement,
};
use paracord_appservice::{
    parse_command, user_namespace, Appservice, Event, Events, Intent, Registration,
};
use paracord_complement::{enc, expect_ok, random_localpart, random_word, TestServer, User};
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

const DEADLINE: Duration = Duration::from_secs(45);
const MEGOLM: &str = "m.megolm.v1.aes-sha2";
const BOT_DEVICE: &str = "BOTCRYPTO";

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A Paracord with an SDK appservice registered with `org.matrix.msc3202: true`, listening.
struct Setup {
    server: TestServer,
    _dir: tempfile::TempDir,
    app: Appservice,
    events: Option<Events>,
    serving: JoinHandle<()>,
    /// Where the appservice listens.
    url: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn setup() -> Setup {
    setup_with(|r| r).await
}

/// [`setup`] serving `wrap(app.router())`.
async fn setup_with(wrap: impl FnOnce(axum::Router) -> axum::Router) -> Setup {
    init_logging();
    let id = format!("e2e{}", random_localpart());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut registration = Registration::generate(
        &id,
        Some(&url),
        &format!("{id}bot"),
        [user_namespace(&format!("@{id}_.*:localhost:\\d+"))],
    );
    let dir = tempfile::tempdir().unwrap();
    registration.set_msc3202(true);
    registration.save(dir.path().join("e2ee.yaml")).unwrap();
    let path = dir.path().display().to_string();
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &path);
    })
    .await;
    let (app, events) =
        Appservice::builder(registration, &server.base_url(), &server.server_name())
            .build()
            .unwrap();
    let router = wrap(app.router());
    let serving = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Setup {
        server,
        _dir: dir,
        app,
        events: Some(events),
        serving,
        url,
    }
}

/// An SDK client with end-to-end encryption, logged in and synced once (which uploads its
/// device keys).
async fn sdk_login(base_url: &str, user: &User) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::builder()
        .homeserver_url(base_url)
        .respect_login_well_known(false)
        .request_config(
            RequestConfig::new()
                .disable_retry()
                .timeout(Duration::from_secs(20)),
        )
        .build()
        .await
        .expect("an SDK client");
    client
        .matrix_auth()
        .login_username(&user.user_id, &user.password)
        .initial_device_display_name("alice's client")
        .send()
        .await
        .expect("SDK login");
    client
        .sync_once(SyncSettings::default())
        .await
        .expect("the first /sync");
    client
}

/// What the bot saw and did, reported to the test.
#[derive(Debug)]
enum Seen {
    Event(Box<Event>),
    Answered(OwnedEventId),
}

/// The bot: joins on invite, answers `!echo text` with `text`, reports every event.
fn run_bot(bot: Intent, mut events: Events, report: mpsc::UnboundedSender<Seen>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let (Some(invited), Some(room_id)) = (event.invited_user(), event.room_id()) {
                if invited == bot.user_id() {
                    bot.join(room_id.as_str()).await.expect("the bot joins");
                }
            }
            let answer = event.message().and_then(|m| {
                let command = parse_command(&m.body)?;
                (m.sender != bot.user_id() && command.name == "echo")
                    .then_some((m.room_id, command.rest))
            });
            let _ = report.send(Seen::Event(Box::new(event)));
            if let Some((room_id, text)) = answer {
                let sent = bot
                    .send_text(&room_id, &text)
                    .await
                    .unwrap_or_else(|e| panic!("expected the bot to answer in {room_id}: {e}"));
                let _ = report.send(Seen::Answered(sent));
            }
        }
    })
}

/// The next report satisfying `pred`, within [`DEADLINE`].
async fn next_seen<T>(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    what: &str,
    mut pred: impl FnMut(Seen) -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(seen)) => {
                if let Some(found) = pred(seen) {
                    return found;
                }
            }
            Ok(None) => panic!("the bot stopped while waiting for {what}"),
            Err(_) => panic!("expected {what} within {DEADLINE:?}"),
        }
    }
}

/// The event as the server hands it to a plain HTTP reader: `m.room.encrypted` (Megolm),
/// without the plaintext.
async fn expect_ciphertext_on_server(user: &User, room: &str, event_id: &str, plaintext: &str) {
    let path = format!("/rooms/{}/event/{}", enc(room), enc(event_id));
    let event = expect_ok(user.get(&path).await, "GET /rooms/{id}/event/{id}");
    assert_eq!(
        event["type"], "m.room.encrypted",
        "expected the server to hold {event_id} as m.room.encrypted, got {event}"
    );
    assert_eq!(event["content"]["algorithm"], MEGOLM, "{event}");
    assert!(
        !event.to_string().contains(plaintext),
        "expected the server's copy of {event_id} not to contain the plaintext: {event}"
    );
}

fn encrypted_room_body(invite: &str) -> Value {
    json!({
        "preset": "private_chat",
        "invite": [invite],
        "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
    })
}

#[tokio::test]
async fn an_encrypted_bot_decrypts_a_command_and_answers_encrypted() {
    let mut s = setup().await;
    let bot = s.app.bot().unwrap();
    let bot_id = bot.user_id().to_owned();
    s.app
        .enable_encryption(bot_id.as_str(), BOT_DEVICE)
        .await
        .unwrap_or_else(|e| panic!("expected the bot's encrypted device to start: {e}"));

    let alice = s.server.register_random().await;
    // The bot's device and its keys are public: MSC4190 made it, `?device_id=` uploaded.
    let keys = expect_ok(
        alice
            .post(
                "/keys/query",
                &json!({"device_keys": {bot_id.as_str(): []}}),
            )
            .await,
        "POST /keys/query",
    );
    let device = &keys["device_keys"][bot_id.as_str()][BOT_DEVICE];
    assert_eq!(device["device_id"], BOT_DEVICE, "{keys}");
    assert!(
        device["algorithms"].to_string().contains(MEGOLM),
        "{device}"
    );
    let counts = expect_ok(
        alice
            .post(
                "/keys/claim",
                &json!({"one_time_keys": {bot_id.as_str(): {BOT_DEVICE: "signed_curve25519"}}}),
            )
            .await,
        "POST /keys/claim",
    );
    assert!(
        counts["one_time_keys"][bot_id.as_str()][BOT_DEVICE].is_object(),
        "expected the bot's device to have uploaded one-time keys: {counts}"
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let bot_task = run_bot(bot.clone(), s.events.take().unwrap(), tx);

    let client = sdk_login(&s.server.base_url(), &alice).await;
    let room = alice
        .create_room(&encrypted_room_body(bot_id.as_str()))
        .await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap().to_owned();
    // Wait until the client knows the bot joined (so it shares the room key with it).
    let deadline = Instant::now() + DEADLINE;
    let sdk_room = loop {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("/sync");
        if let Some(r) = client.get_room(&room_id) {
            if r.joined_members_count() == 2 {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "expected the bot to join {room_id}"
        );
    };

    let secret = format!("secret-{}", random_word());
    let command = format!("!echo {secret}");
    let sent = sdk_room
        .send(RoomMessageEventContent::text_plain(&command))
        .await
        .expect("the client sends an encrypted message")
        .response
        .event_id;

    // The bot's stream has the plaintext, marked as decrypted.
    let got = next_seen(
        &mut rx,
        "the decrypted command on the bot's stream",
        |seen| {
            let Seen::Event(event) = seen else {
                return None;
            };
            (event.event_id().as_ref() == Some(&sent)).then_some(event)
        },
    )
    .await;
    assert!(
        got.was_encrypted(),
        "expected the command to reach the bot decrypted, got {:?} ({:?})",
        got.encryption(),
        got.raw().json().get()
    );
    let message = got.message().expect("an m.room.message once decrypted");
    assert_eq!(message.body, command);
    assert_eq!(message.sender.as_str(), alice.user_id);

    // The answer is encrypted and the client decrypts it.
    let answer = next_seen(&mut rx, "the bot's answer", |seen| match seen {
        Seen::Answered(id) => Some(id),
        Seen::Event(_) => None,
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    let mut last;
    let body = loop {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("/sync");
        match sdk_room.event(&answer, None).await {
            Ok(event) => match &event.kind {
                TimelineEventKind::Decrypted(_) => {
                    let raw: Value = serde_json::from_str(event.raw().json().get()).unwrap();
                    assert_eq!(raw["type"], "m.room.message", "{raw}");
                    assert_eq!(raw["sender"], bot_id.as_str(), "{raw}");
                    break raw["content"]["body"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                }
                other => last = format!("{other:?}"),
            },
            Err(e) => last = format!("{e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "expected the client to decrypt the bot's answer {answer}; last: {last}"
        );
    };
    assert_eq!(body, secret);

    // The server only ever had ciphertext, of both.
    expect_ciphertext_on_server(&alice, &room, sent.as_str(), &secret).await;
    expect_ciphertext_on_server(&alice, &room, answer.as_str(), &secret).await;
    bot_task.abort();
}

#[tokio::test]
async fn undecryptable_events_are_handed_on_and_plain_rooms_stay_plain() {
    let mut s = setup().await;
    let bot = s.app.bot().unwrap();
    let bot_id = bot.user_id().to_owned();
    s.app
        .enable_encryption(bot_id.as_str(), BOT_DEVICE)
        .await
        .unwrap_or_else(|e| panic!("expected the bot's encrypted device to start: {e}"));
    // A second, different device is refused (one per appservice), the same one is fine.
    assert!(s
        .app
        .enable_encryption(bot_id.as_str(), "OTHER")
        .await
        .is_err());
    s.app
        .enable_encryption(bot_id.as_str(), BOT_DEVICE)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bot_task = run_bot(bot.clone(), s.events.take().unwrap(), tx);

    let alice = s.server.register_random().await;
    let room = alice
        .create_room(&encrypted_room_body(bot_id.as_str()))
        .await;
    let bot_joined = |seen: Seen| match seen {
        Seen::Event(e) => (e.event_type().as_deref() == Some("m.room.member")
            && e.sender().as_deref() == Some(&bot_id)
            && e.room_id().as_deref().map(|r| r.as_str()) == Some(room.as_str()))
        .then_some(()),
        Seen::Answered(_) => None,
    };
    next_seen(&mut rx, "the bot's join", bot_joined).await;

    // Ciphertext of a session the bot never got: handed on, marked undecryptable.
    let bogus = json!({
        "algorithm": MEGOLM,
        "sender_key": "b2dHV2dHV2dHV2dHV2dHV2dHV2dHV2dHV2dHV2dHV2c",
        "session_id": "c2Vzc2lvbnNlc3Npb25zZXNzaW9uc2Vzc2lvbnNlc3Npb24",
        "device_id": alice.device_id,
        "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg2yyOwAtHaZTwyNg37afzg8f3r9IsN9r4RNFg7MaZencUJe4qvELiDiopUjy5wYVDAtqdBzer5bWRD9ldxp1FLgbQvBcjkkywYjCsmsq6+hArLd9oAQZnGKn/qLsK+5uNX3PaWzDRC9wZPQvWYYPCTov3jCwXKTPsLKIiTrcCXDqMvnn8m+T3zF/I2zqxg158tnUwWWIw51UO",
    });
    let undecryptable = alice.send_event(&room, "m.room.encrypted", &bogus).await;
    let got = next_seen(&mut rx, "the undecryptable event", |seen| match seen {
        Seen::Event(e) if e.event_id().map(|id| id.to_string()) == Some(undecryptable.clone()) => {
            Some(e)
        }
        _ => None,
    })
    .await;
    assert!(
        got.is_undecryptable(),
        "expected an undecryptable event, got {:?}",
        got.encryption()
    );
    assert_eq!(got.event_type().as_deref(), Some("m.room.encrypted"));

    // In a room without m.room.encryption the bot sends in the clear.
    let plain = alice
        .create_room(&json!({"preset": "private_chat", "invite": [bot_id.as_str()]}))
        .await;
    let plain_joined = |seen: Seen| match seen {
        Seen::Event(e) => (e.event_type().as_deref() == Some("m.room.member")
            && e.sender().as_deref() == Some(&bot_id)
            && e.room_id().as_deref().map(|r| r.as_str()) == Some(plain.as_str()))
        .then_some(()),
        Seen::Answered(_) => None,
    };
    next_seen(&mut rx, "the bot's join of the plain room", plain_joined).await;
    alice.send_text(&plain, "!echo in the clear").await;
    let answer = next_seen(&mut rx, "the bot's plain answer", |seen| match seen {
        Seen::Answered(id) => Some(id),
        Seen::Event(_) => None,
    })
    .await;
    let path = format!("/rooms/{}/event/{}", enc(&plain), enc(answer.as_str()));
    let event = expect_ok(alice.get(&path).await, "GET the plain answer");
    assert_eq!(event["type"], "m.room.message", "{event}");
    assert_eq!(event["content"]["body"], "in the clear", "{event}");
    bot_task.abort();
}

#[tokio::test]
async fn a_stored_bot_device_keeps_its_keys_and_sessions_across_a_restart() {
    let mut s = setup().await;
    let store = tempfile::tempdir().unwrap();
    let bot = s.app.bot().unwrap();
    let bot_id = bot.user_id().to_owned();
    s.app
        .enable_encryption_with_store(bot_id.as_str(), BOT_DEVICE, store.path(), Some("pass"))
        .await
        .unwrap_or_else(|e| panic!("expected the bot's stored device to start: {e}"));
    let keys_before = s.app.olm_machine().unwrap().identity_keys();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bot_task = run_bot(bot.clone(), s.events.take().unwrap(), tx);

    let alice = s.server.register_random().await;
    let client = sdk_login(&s.server.base_url(), &alice).await;
    let room = alice
        .create_room(&encrypted_room_body(bot_id.as_str()))
        .await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap().to_owned();
    let deadline = Instant::now() + DEADLINE;
    let sdk_room = loop {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("/sync");
        if let Some(r) = client.get_room(&room_id) {
            if r.joined_members_count() == 2 {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "expected the bot to join {room_id}"
        );
    };
    let secret = format!("kept-{}", random_word());
    let sent = sdk_room
        .send(RoomMessageEventContent::text_plain(&secret))
        .await
        .expect("the client sends an encrypted message")
        .response
        .event_id;
    let got = next_seen(&mut rx, "the decrypted message", |seen| match seen {
        Seen::Event(e) if e.event_id().as_ref() == Some(&sent) => Some(e),
        _ => None,
    })
    .await;
    assert!(got.was_encrypted(), "{:?}", got.encryption());

    // "Restart": a new appservice from the same registration and store.
    bot_task.abort();
    let registration = s.app.registration().clone();
    let (again, _events) = Appservice::builder(
        registration.clone(),
        &s.server.base_url(),
        &s.server.server_name(),
    )
    .build()
    .unwrap();
    again
        .enable_encryption_with_store(bot_id.as_str(), BOT_DEVICE, store.path(), Some("pass"))
        .await
        .unwrap_or_else(|e| panic!("expected the stored device to start again: {e}"));
    let machine = again.olm_machine().unwrap();
    assert_eq!(
        machine.identity_keys().ed25519,
        keys_before.ed25519,
        "expected the same device keys after the restart"
    );
    // The Megolm session received before the restart still decrypts the message.
    let path = format!("/rooms/{}/event/{}", enc(&room), enc(sent.as_str()));
    let stored = expect_ok(alice.get(&path).await, "GET the encrypted message");
    let raw: matrix_sdk::ruma::serde::Raw<EncryptedEvent> =
        matrix_sdk::ruma::serde::Raw::new(&stored)
            .unwrap()
            .cast_unchecked();
    let settings = DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    };
    let decrypted = machine
        .decrypt_room_event(&raw, &room_id, &settings)
        .await
        .unwrap_or_else(|e| panic!("expected the restarted bot to decrypt {sent}: {e}"));
    let plain: Value = serde_json::from_str(decrypted.event.json().get()).unwrap();
    assert_eq!(plain["content"]["body"], secret.as_str(), "{plain}");

    // The store belongs to that device: another device id cannot open it.
    let (other, _events) =
        Appservice::builder(registration, &s.server.base_url(), &s.server.server_name())
            .build()
            .unwrap();
    let err = other
        .enable_encryption_with_store(bot_id.as_str(), "ANOTHER", store.path(), Some("pass"))
        .await
        .expect_err("a store of another device");
    assert!(err.to_string().contains("crypto"), "{err}");
}

/// To-device messages taken out of transactions while `holding` is set.
#[derive(Clone, Default)]
struct Held {
    holding: Arc<AtomicBool>,
    messages: Arc<Mutex<Vec<Value>>>,
}

const TO_DEVICE: &str = "de.sorunome.msc2409.to_device";

/// Takes the to-device messages out of the transactions passing through while holding.
async fn hold_to_device(State(held): State<Held>, req: Request, next: Next) -> Response {
    if !held.holding.load(Ordering::SeqCst) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let body = match value.as_object_mut().and_then(|o| o.remove(TO_DEVICE)) {
        Some(Value::Array(messages)) => {
            held.messages.lock().unwrap().extend(messages);
            serde_json::to_vec(&value).unwrap()
        }
        _ => bytes.to_vec(),
    };
    next.run(Request::from_parts(parts, Body::from(body))).await
}

#[tokio::test]
async fn an_event_whose_room_key_comes_later_is_delivered_again_decrypted() {
    let held = Held::default();
    let mut s = setup_with({
        let held = held.clone();
        |router| router.layer(middleware::from_fn_with_state(held, hold_to_device))
    })
    .await;
    let bot = s.app.bot().unwrap();
    let bot_id = bot.user_id().to_owned();
    s.app
        .enable_encryption(bot_id.as_str(), BOT_DEVICE)
        .await
        .unwrap_or_else(|e| panic!("expected the bot's encrypted device to start: {e}"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let bot_task = run_bot(bot.clone(), s.events.take().unwrap(), tx);

    let alice = s.server.register_random().await;
    let client = sdk_login(&s.server.base_url(), &alice).await;
    let room = alice
        .create_room(&encrypted_room_body(bot_id.as_str()))
        .await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap().to_owned();
    let deadline = Instant::now() + DEADLINE;
    let sdk_room = loop {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
            .await
            .expect("/sync");
        if let Some(r) = client.get_room(&room_id) {
            if r.joined_members_count() == 2 {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "expected the bot to join {room_id}"
        );
    };

    // The room key (a to-device message) is held back: the message arrives undecryptable.
    held.holding.store(true, Ordering::SeqCst);
    let secret = format!("late-{}", random_word());
    let sent = sdk_room
        .send(RoomMessageEventContent::text_plain(format!(
            "!echo {secret}"
        )))
        .await
        .expect("the client sends an encrypted message")
        .response
        .event_id;
    let first = next_seen(&mut rx, "the message, undecryptable", |seen| match seen {
        Seen::Event(e) if e.event_id().as_ref() == Some(&sent) => Some(e),
        _ => None,
    })
    .await;
    assert!(
        first.is_undecryptable(),
        "expected the message without its key to be undecryptable, got {:?}",
        first.encryption()
    );
    held.holding.store(false, Ordering::SeqCst);
    let messages = std::mem::take(&mut *held.messages.lock().unwrap());
    assert!(
        !messages.is_empty(),
        "expected the room key to have been held back"
    );

    // The key arrives in a later transaction: the message comes again, decrypted, and the
    // bot answers it.
    let hs = paracord_complement::Client::new(&s.url, Some(s.app.registration().hs_token.clone()));
    let (status, body) = hs
        .put(
            "/_matrix/app/v1/transactions/late-key",
            &json!({"events": [], TO_DEVICE: messages}),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let again = next_seen(&mut rx, "the message again, decrypted", |seen| match seen {
        Seen::Event(e) if e.event_id().as_ref() == Some(&sent) => Some(e),
        _ => None,
    })
    .await;
    assert!(again.was_encrypted(), "{:?}", again.encryption());
    assert_eq!(again.message().unwrap().body, format!("!echo {secret}"));
    next_seen(&mut rx, "the bot's answer", |seen| match seen {
        Seen::Answered(id) => Some(id),
        Seen::Event(_) => None,
    })
    .await;
    bot_task.abort();
}
