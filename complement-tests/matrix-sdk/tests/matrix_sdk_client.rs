//! Interop: the `matrix-sdk` client library (plain, unencrypted, in-memory
//! store) against a real `paracord` process.
//!
//! Two users log in through the SDK, A creates a room and invites B, B sees
//! the invite by syncing and joins, both exchange messages and see each
//! other's through `/sync` and `/messages`. The server is then SIGKILLed and
//! restarted on the same data directory; fresh SDK clients log in again and
//! read the whole room back by paginating `/messages` to its start.
//!
//! `RUST_LOG=matrix_sdk=debug` shows the SDK's requests.

use std::time::{Duration, Instant};

use matrix_sdk::{
    config::{RequestConfig, SyncSettings},
    room::{Messages, MessagesOptions},
    ruma::{
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            room::message::{MessageType, RoomMessageEventContent},
            AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
        },
        OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    },
    sync::SyncResponse,
    Client, Room, RoomState,
};
use paracord_complement::{TestServer, User};

/// How long any one wait (a sync condition, a pagination) may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Long-poll timeout of each `/sync`.
const SYNC_TIMEOUT: Duration = Duration::from_millis(1000);

/// `/messages` page size: small, so that reading the room back takes several
/// pages and exercises the pagination tokens.
const PAGE: u32 = 5;

const ROOM_NAME: &str = "sdk interop";

/// One message as sent, or as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Msg {
    event_id: OwnedEventId,
    sender: OwnedUserId,
    body: String,
}

/// Plain-HTTP SDK client for the test server. Retries are off so that a
/// failing request shows up as the first error it caused.
async fn sdk_client(server: &TestServer) -> Client {
    // reqwest is built with `rustls-no-provider`: a TLS provider must exist
    // even for http:// URLs. `ring` is already in the tree (reqwest 0.12).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .homeserver_url(server.base_url())
        .request_config(
            RequestConfig::new()
                .disable_retry()
                .timeout(Duration::from_secs(20)),
        )
        .build()
        .await
        .unwrap_or_else(|e| panic!("expected an SDK client for {}: {e:?}", server.base_url()))
}

/// Logs `user` in through `matrix_auth().login_username` with `identifier`
/// (a localpart or a full user id) on a fresh SDK client.
async fn sdk_login(server: &TestServer, user: &User, identifier: &str) -> Client {
    let client = sdk_client(server).await;
    let resp = client
        .matrix_auth()
        .login_username(identifier, &user.password)
        .initial_device_display_name("paracord-sdk-tests")
        .send()
        .await
        .unwrap_or_else(|e| panic!("expected SDK login of {identifier} to succeed: {e:?}"));
    assert_eq!(
        resp.user_id.as_str(),
        user.user_id,
        "expected login as {identifier} to return the registered user id, got {resp:?}"
    );
    assert!(
        client.matrix_auth().logged_in(),
        "expected the SDK client to be logged in after {resp:?}"
    );
    client
}

/// One line per room of a sync response, for failure messages.
fn describe_sync(resp: &SyncResponse) -> String {
    let mut lines = Vec::new();
    for (id, room) in &resp.rooms.joined {
        let events: Vec<String> = room
            .timeline
            .events
            .iter()
            .map(|ev| describe_raw(ev.raw().json().get()))
            .collect();
        lines.push(format!(
            "joined {id}: limited={} timeline={events:?}",
            room.timeline.limited
        ));
    }
    for (id, room) in &resp.rooms.invited {
        let n = room.invite_state.events.len();
        lines.push(format!("invited {id}: {n} stripped state events"));
    }
    for id in resp.rooms.left.keys() {
        lines.push(format!("left {id}"));
    }
    if lines.is_empty() {
        lines.push("no room updates".to_owned());
    }
    lines.join("; ")
}

/// `type sender body` of a raw event, tolerant of anything malformed.
fn describe_raw(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    format!(
        "{} {} {}",
        v["type"].as_str().unwrap_or("?"),
        v["sender"].as_str().unwrap_or("?"),
        v["content"]["body"].as_str().unwrap_or("")
    )
}

/// Syncs (reusing the client's last token) until `check` returns `Some`,
/// failing after [`DEADLINE`] with a summary of every response seen.
async fn sync_until<T>(
    client: &Client,
    what: &str,
    mut check: impl FnMut(&Client, &SyncResponse) -> Option<T>,
) -> T {
    let who = client
        .user_id()
        .map(ToString::to_string)
        .unwrap_or_default();
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let resp = client
            .sync_once(SyncSettings::default().timeout(SYNC_TIMEOUT))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "expected /sync for {who} to succeed while waiting until {what}: {e:?}\n\
                     responses so far: {seen:#?}"
                )
            });
        if let Some(found) = check(client, &resp) {
            return found;
        }
        seen.push(describe_sync(&resp));
        if Instant::now() > deadline {
            panic!(
                "expected {who} to see {what} through /sync within {DEADLINE:?}; \
                 responses: {seen:#?}"
            );
        }
    }
}

/// The `m.room.message` text events of a timeline, parsed by the SDK.
fn texts<'a>(events: impl IntoIterator<Item = &'a AnySyncTimelineEvent>) -> Vec<Msg> {
    events
        .into_iter()
        .filter_map(|ev| match ev {
            AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                SyncMessageLikeEvent::Original(msg),
            )) => Some(Msg {
                event_id: msg.event_id.clone(),
                sender: msg.sender.clone(),
                body: match &msg.content.msgtype {
                    MessageType::Text(text) => text.body.clone(),
                    other => format!("<non-text msgtype {}>", other.msgtype()),
                },
            }),
            _ => None,
        })
        .collect()
}

/// Deserializes every event of a `/messages` page with the SDK's types; a
/// failure means the server served an event the SDK cannot read.
fn parse_page(page: &Messages, what: &str) -> Vec<AnySyncTimelineEvent> {
    page.chunk
        .iter()
        .map(|ev| {
            ev.raw().deserialize().unwrap_or_else(|e| {
                panic!(
                    "expected every event of /messages ({what}) to deserialize as a timeline \
                     event, got {e} for {}",
                    ev.raw().json().get()
                )
            })
        })
        .collect()
}

/// Syncs until `msg` appears in the timeline of `room_id`.
async fn sync_until_message(client: &Client, room_id: &RoomId, msg: &Msg) {
    let what = format!("{msg:?} in the timeline of {room_id}");
    sync_until(client, &what, |_, resp| {
        let room = resp.rooms.joined.get(room_id)?;
        let events: Vec<AnySyncTimelineEvent> = room
            .timeline
            .events
            .iter()
            .map(|ev| {
                ev.raw().deserialize().unwrap_or_else(|e| {
                    panic!(
                        "expected every /sync timeline event to deserialize, got {e} for {}",
                        ev.raw().json().get()
                    )
                })
            })
            .collect();
        texts(&events).contains(msg).then_some(())
    })
    .await;
}

/// Sends a text message through the SDK; returns it as sent.
async fn send_text(room: &Room, body: &str) -> Msg {
    let sender = room.own_user_id().to_owned();
    let result = room
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "expected {sender} to send {body:?} to {}: {e:?}",
                room.room_id()
            )
        });
    Msg {
        event_id: result.response.event_id,
        sender,
        body: body.to_owned(),
    }
}

/// Reads the whole room with `/messages` backwards from the end until the
/// server says there is nothing more; returns every event, oldest first.
async fn read_history(room: &Room) -> Vec<AnySyncTimelineEvent> {
    let who = room.own_user_id().to_owned();
    let deadline = Instant::now() + DEADLINE;
    let mut from: Option<String> = None;
    let mut pages = Vec::new();
    let mut newest_first = Vec::new();
    loop {
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = UInt::from(PAGE);
        let page = room.messages(options).await.unwrap_or_else(|e| {
            panic!(
                "expected GET /messages from={from:?} for {who} in {} to succeed: {e:?}\n\
                 pages so far: {pages:#?}",
                room.room_id()
            )
        });
        let events = parse_page(&page, &format!("{who}, from={from:?}"));
        pages.push(format!(
            "start={} end={:?} events={:?}",
            page.start,
            page.end,
            page.chunk
                .iter()
                .map(|ev| describe_raw(ev.raw().json().get()))
                .collect::<Vec<_>>()
        ));
        assert!(
            events.len() <= PAGE as usize,
            "expected at most limit={PAGE} events per /messages page, got: {pages:#?}"
        );
        let done = events.is_empty();
        newest_first.extend(events);
        match page.end {
            Some(end) if !done => {
                assert_ne!(
                    Some(&end),
                    from.as_ref(),
                    "expected /messages `end` to move on; pages: {pages:#?}"
                );
                from = Some(end);
            }
            _ => break,
        }
        assert!(
            Instant::now() < deadline,
            "expected backwards pagination of {} to finish within {DEADLINE:?}; pages: {pages:#?}",
            room.room_id()
        );
    }
    println!(
        "{who} read {} events of {} in {} pages",
        newest_first.len(),
        room.room_id(),
        pages.len()
    );
    newest_first.reverse();
    newest_first
}

/// Checks that `history` (oldest first) starts at the room's creation and
/// holds exactly the messages of `sent`, in order.
fn assert_full_history(history: &[AnySyncTimelineEvent], sent: &[Msg], what: &str) {
    let types: Vec<String> = history
        .iter()
        .map(|ev| format!("{} {}", ev.event_type(), ev.sender()))
        .collect();
    assert_eq!(
        history
            .first()
            .map(|ev| ev.event_type().to_string())
            .as_deref(),
        Some("m.room.create"),
        "expected the history read by {what} to go back to m.room.create, got {types:#?}"
    );
    let got = texts(history);
    assert_eq!(
        got, sent,
        "expected {what} to read back every message sent, in order; all events: {types:#?}"
    );
}

/// The name given at creation, as the SDK computed it from synced state.
fn assert_room_name(room: &Room, what: &str) {
    assert_eq!(
        room.name().as_deref(),
        Some(ROOM_NAME),
        "expected {what} to know the room's m.room.name from /sync"
    );
}

/// Fetches `room_id` from a client after syncing until it is in `state`.
async fn sync_until_room(client: &Client, room_id: &RoomId, state: RoomState) -> Room {
    let what = format!("room {room_id} in state {state:?}");
    sync_until(client, &what, |client, _| {
        client
            .get_room(room_id)
            .filter(|room| room.state() == state)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sdk_client_chats_and_reads_history_after_sigkill() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }

    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;

    let a = sdk_login(&server, &alice, &alice.localpart).await;
    let b = sdk_login(&server, &bob, &bob.localpart).await;
    // A first sync each, as a client starts.
    a.sync_once(SyncSettings::default())
        .await
        .unwrap_or_else(|e| panic!("expected A's initial /sync to succeed: {e:?}"));
    b.sync_once(SyncSettings::default())
        .await
        .unwrap_or_else(|e| panic!("expected B's initial /sync to succeed: {e:?}"));

    // A creates a private room and invites B.
    let mut request = CreateRoomRequest::new();
    request.name = Some(ROOM_NAME.to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    let room_a = a
        .create_room(request)
        .await
        .unwrap_or_else(|e| panic!("expected A to create a room: {e:?}"));
    let room_id: OwnedRoomId = room_a.room_id().to_owned();
    println!("A created {room_id}");
    assert_eq!(
        room_a.state(),
        RoomState::Joined,
        "expected the creator to be joined to {room_id}"
    );
    let bob_id: OwnedUserId = bob
        .user_id
        .as_str()
        .try_into()
        .unwrap_or_else(|e| panic!("expected {} to be a user id: {e}", bob.user_id));
    room_a
        .invite_user_by_id(&bob_id)
        .await
        .unwrap_or_else(|e| panic!("expected A to invite {bob_id} to {room_id}: {e:?}"));

    // B sees the invite by syncing, checks who sent it, and joins.
    let invited = sync_until_room(&b, &room_id, RoomState::Invited).await;
    let invite = invited
        .invite_details()
        .await
        .unwrap_or_else(|e| panic!("expected invite details of {room_id} for B: {e:?}"));
    assert_eq!(
        invite.inviter_id.as_str(),
        alice.user_id,
        "expected the invite to {room_id} to come from A, got {:?}",
        invite.inviter_id
    );
    invited
        .join()
        .await
        .unwrap_or_else(|e| panic!("expected B to join {room_id}: {e:?}"));
    let room_b = sync_until_room(&b, &room_id, RoomState::Joined).await;
    println!("B joined {room_id}");
    assert_room_name(&room_b, "B after joining");

    // Messages both ways; each is sent only after the other side saw the
    // previous one, so the room's order is fixed.
    let mut sent = Vec::new();
    let a1 = send_text(&room_a, "hello from A").await;
    sync_until_message(&b, &room_id, &a1).await;
    sent.push(a1);
    let b1 = send_text(&room_b, "hello from B").await;
    sync_until_message(&a, &room_id, &b1).await;
    sent.push(b1);
    let a2 = send_text(&room_a, "A again").await;
    sync_until_message(&b, &room_id, &a2).await;
    sent.push(a2);
    let b2 = send_text(&room_b, "B again").await;
    sync_until_message(&a, &room_id, &b2).await;
    sent.push(b2);
    // Enough more that reading the room back takes several pages.
    for i in 0..6 {
        let (room, name) = if i % 2 == 0 {
            (&room_a, "A")
        } else {
            (&room_b, "B")
        };
        sent.push(send_text(room, &format!("{name} bulk {i}")).await);
    }
    let last = sent.last().cloned().expect("messages were sent");
    sync_until_message(&a, &room_id, &last).await;
    sync_until_message(&b, &room_id, &last).await;

    // Each side sees the other's messages through /messages too.
    assert_full_history(&read_history(&room_a).await, &sent, "A before the restart");
    assert_full_history(&read_history(&room_b).await, &sent, "B before the restart");

    // SIGKILL, restart on the same data directory, fresh SDK clients.
    server.kill9();
    server.restart().await;
    println!("server restarted after SIGKILL");

    let a = sdk_login(&server, &alice, &alice.user_id).await;
    let b = sdk_login(&server, &bob, &bob.user_id).await;
    let room_a = sync_until_room(&a, &room_id, RoomState::Joined).await;
    let room_b = sync_until_room(&b, &room_id, RoomState::Joined).await;
    assert_room_name(&room_a, "A after the restart");
    assert_room_name(&room_b, "B after the restart");
    assert_full_history(&read_history(&room_a).await, &sent, "A after the restart");
    assert_full_history(&read_history(&room_b).await, &sent, "B after the restart");

    // The restarted server still carries new messages both ways.
    let a3 = send_text(&room_a, "A after the restart").await;
    sync_until_message(&b, &room_id, &a3).await;
    sent.push(a3);
    let b3 = send_text(&room_b, "B after the restart").await;
    sync_until_message(&a, &room_id, &b3).await;
    sent.push(b3);
    assert_full_history(&read_history(&room_b).await, &sent, "B at the end");
    println!("{} messages exchanged and read back", sent.len());
}
