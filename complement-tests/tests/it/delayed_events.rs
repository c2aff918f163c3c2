//! Delayed events (MSC4140, docs/delayed-events.md): scheduled with
//! `?org.matrix.msc4140.delay=` on `/send` and `/state` or with the current
//! revision's `PUT …/delayed_event/…`, listed, restarted, cancelled and sent
//! early, at the unstable and the stable paths; sent by the server when due,
//! across a graceful stop and a SIGKILL.
//!
//! Timing is judged on the server's own timestamps (`origin_server_ts`,
//! `scheduled_at`, `finalised_ts`), never on how long the test waited, so a
//! loaded machine makes a test slower, not flaky.

use std::time::Duration;

use paracord_complement::{
    enc, expect_error, expect_ok, room_timeline, Client, Method, StatusCode, TestServer, User, WAIT,
};
use serde_json::{json, Value};
use tokio::time::Instant;

const UNSTABLE: &str = "/_matrix/client/unstable/org.matrix.msc4140";
const STABLE: &str = "/_matrix/client/v1";

/// `PUT /send` of an `m.text` message with `?org.matrix.msc4140.delay=`.
async fn schedule_with_txn(
    user: &Client,
    room: &str,
    txn: &str,
    delay: &str,
    body: &str,
) -> (StatusCode, Value) {
    user.put(
        &format!(
            "/rooms/{}/send/m.room.message/{}?org.matrix.msc4140.delay={delay}",
            enc(room),
            enc(txn)
        ),
        &json!({ "msgtype": "m.text", "body": body }),
    )
    .await
}

/// Schedules an `m.text` message `delay_ms` from now; returns its delay id.
async fn schedule(user: &Client, room: &str, delay_ms: u64, body: &str) -> String {
    let resp = schedule_with_txn(user, room, &Client::txn_id(), &delay_ms.to_string(), body).await;
    delay_id_of(&expect_ok(resp, "scheduling a delayed message"))
}

/// Schedules a state event with `PUT /state?org.matrix.msc4140.delay=`; returns its delay id.
async fn schedule_state(
    user: &Client,
    room: &str,
    event_type: &str,
    state_key: &str,
    delay_ms: u64,
    content: &Value,
) -> String {
    let resp = user
        .put(
            &format!(
                "/rooms/{}/state/{}/{}?org.matrix.msc4140.delay={delay_ms}",
                enc(room),
                enc(event_type),
                enc(state_key)
            ),
            content,
        )
        .await;
    delay_id_of(&expect_ok(resp, "scheduling a delayed state event"))
}

fn delay_id_of(resp: &Value) -> String {
    assert!(
        resp.get("event_id").is_none(),
        "expected no event_id for a delayed event, got {resp}"
    );
    resp["delay_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("expected a delay_id, got {resp}"))
        .to_owned()
}

/// `GET {prefix}/delayed_events/{delay_id}`.
async fn get_delayed(user: &Client, prefix: &str, id: &str) -> (StatusCode, Value) {
    user.get(&format!("{prefix}/delayed_events/{}", enc(id)))
        .await
}

/// `POST {prefix}/delayed_events/{delay_id}/{action}`.
async fn act(user: &Client, prefix: &str, id: &str, action: &str) -> (StatusCode, Value) {
    user.post(
        &format!("{prefix}/delayed_events/{}/{action}", enc(id)),
        &json!({}),
    )
    .await
}

/// The caller's scheduled delayed events.
async fn list(user: &Client, prefix: &str) -> Vec<Value> {
    let body = expect_ok(
        user.get(&format!("{prefix}/delayed_events")).await,
        "listing delayed events",
    );
    body["delayed_events"]
        .as_array()
        .unwrap_or_else(|| panic!("expected a delayed_events array, got {body}"))
        .clone()
}

/// When a delayed event is due by the server's clock: `scheduled_at + delay_ms`.
fn due_of(event: &Value) -> u64 {
    let at = event["scheduled_at"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer scheduled_at, got {event}"));
    let delay = event["delay_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer delay_ms, got {event}"));
    assert_eq!(
        (event["running_since"].as_u64(), event["delay"].as_u64()),
        (Some(at), Some(delay)),
        "expected the earlier revision's names to carry the same values, got {event}"
    );
    at + delay
}

/// Polls `GET /delayed_events/{delay_id}` until it is finalised (deadline [`WAIT`] plus
/// `extra`); returns it.
async fn finalised(user: &Client, id: &str, extra: Duration) -> Value {
    let deadline = Instant::now() + WAIT + extra;
    loop {
        let event = expect_ok(
            get_delayed(user, STABLE, id).await,
            "reading a delayed event",
        );
        if event.get("finalised_ts").is_some() {
            return event;
        }
        assert!(
            Instant::now() < deadline,
            "expected delayed event {id} to be finalised, still {event}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The room's timeline event with `content.body == body`, once it is there (deadline).
async fn wait_for_body(user: &User, room: &str, body: &str, extra: Duration) -> Value {
    let deadline = Instant::now() + WAIT + extra;
    loop {
        if let Some(ev) = find_body(user, room, body).await {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "expected a message {body:?} in {room} within {:?}",
            WAIT + extra
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn find_body(user: &User, room: &str, body: &str) -> Option<Value> {
    user.all_messages(room)
        .await
        .into_iter()
        .find(|e| e["content"]["body"] == body)
}

/// This machine's clock (the servers under test run on it), in ms since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ts_of(event: &Value) -> u64 {
    event["origin_server_ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer origin_server_ts, got {event}"))
}

#[tokio::test]
async fn a_delayed_message_is_sent_when_due_and_shows_in_sync() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let since = bob.sync_token().await;
    let own_since = alice.sync_token().await;

    let id = schedule(&alice, &room, 3_000, "sent later").await;
    let scheduled = list(&alice, UNSTABLE).await;
    assert_eq!(
        scheduled.len(),
        1,
        "expected one scheduled, got {scheduled:?}"
    );
    assert_eq!(scheduled[0]["delay_id"], id.as_str());
    assert_eq!(scheduled[0]["room_id"], room.as_str());
    assert_eq!(scheduled[0]["type"], "m.room.message");
    assert_eq!(scheduled[0]["content"]["body"], "sent later");
    assert!(scheduled[0].get("state_key").is_none());
    let due = due_of(&scheduled[0]);

    let sync = bob
        .sync_until(Some(&since), None, "the delayed message arrives", |s| {
            room_timeline(s, &room)
                .iter()
                .any(|e| e["content"]["body"] == "sent later")
        })
        .await;
    let timeline = room_timeline(&sync, &room);
    let event = timeline
        .iter()
        .find(|e| e["content"]["body"] == "sent later")
        .unwrap_or_else(|| panic!("expected the message in {sync}"));
    assert_eq!(event["sender"], alice.user_id.as_str());
    assert_eq!(event["type"], "m.room.message");
    assert_eq!(event["content"]["msgtype"], "m.text");
    assert!(
        ts_of(event) >= due,
        "expected it sent no earlier than {due}, got {event}"
    );
    assert!(
        event["unsigned"]
            .get("org.matrix.msc4140.delay_id")
            .is_none(),
        "expected the delay id hidden from others, got {event}"
    );

    // Its sender sees which delayed event it was.
    let own = alice
        .sync_until(Some(&own_since), None, "the sender sees it", |s| {
            room_timeline(s, &room)
                .iter()
                .any(|e| e["content"]["body"] == "sent later")
        })
        .await;
    let mine = room_timeline(&own, &room)
        .into_iter()
        .find(|e| e["content"]["body"] == "sent later")
        .unwrap_or_else(|| panic!("expected the message in {own}"));
    assert_eq!(mine["unsigned"]["org.matrix.msc4140.delay_id"], id.as_str());

    let record = finalised(&alice, &id, Duration::ZERO).await;
    assert_eq!(record["event_id"], mine["event_id"]);
    assert!(record.get("error").is_none());
    assert!(list(&alice, STABLE).await.is_empty());
}

#[tokio::test]
async fn delayed_state_events_are_sent_in_both_forms() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "name": "before" })).await;

    // The earlier revision's form: `PUT /state?org.matrix.msc4140.delay=`.
    let name = schedule_state(
        &alice,
        &room,
        "m.room.name",
        "",
        1_000,
        &json!({ "name": "after" }),
    )
    .await;
    // The current revision's endpoint, at its unstable and its stable path.
    let mut ids = vec![name];
    for (prefix, key, value) in [
        (UNSTABLE, "org.example.one", "first"),
        ("/_matrix/client/v3", "org.example.two", "second"),
    ] {
        let resp = alice
            .put(
                &format!(
                    "{prefix}/rooms/{}/delayed_event/org.example.delayed/{}",
                    enc(&room),
                    Client::txn_id()
                ),
                &json!({ "delay_ms": 1_000, "state_key": key, "content": { "v": value } }),
            )
            .await;
        ids.push(delay_id_of(&expect_ok(resp, "PUT delayed_event")));
    }
    for id in &ids {
        let record = finalised(&alice, id, Duration::ZERO).await;
        assert!(
            record["event_id"].is_string(),
            "expected {id} sent, got {record}"
        );
    }
    assert_eq!(
        alice.state_content(&room, "m.room.name", "").await["name"],
        "after"
    );
    assert_eq!(
        alice
            .state_content(&room, "org.example.delayed", "org.example.one")
            .await["v"],
        "first"
    );
    assert_eq!(
        alice
            .state_content(&room, "org.example.delayed", "org.example.two")
            .await["v"],
        "second"
    );
}

#[tokio::test]
async fn a_restart_moves_the_send_time_later() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let id = schedule(&alice, &room, 4_000, "restarted").await;
    let first = expect_ok(get_delayed(&alice, STABLE, &id).await, "GET delayed event");
    let first_due = due_of(&first);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    expect_ok(act(&alice, STABLE, &id, "restart").await, "restart");
    let restarted = expect_ok(get_delayed(&alice, STABLE, &id).await, "GET delayed event");
    let new_due = due_of(&restarted);
    assert!(
        restarted.get("finalised_ts").is_none(),
        "expected it still scheduled after the restart, got {restarted}"
    );
    assert!(
        new_due > first_due,
        "expected the restart to move the send time from {first_due}, got {restarted}"
    );

    let event = wait_for_body(&alice, &room, "restarted", Duration::from_secs(4)).await;
    assert!(
        ts_of(&event) >= new_due,
        "expected it sent no earlier than the restarted time {new_due} (first {first_due}), got {event}"
    );
    let record = finalised(&alice, &id, Duration::ZERO).await;
    assert_eq!(record["event_id"], event["event_id"]);
    assert!(record["finalised_ts"].as_u64() >= Some(new_due));
}

#[tokio::test]
async fn a_cancelled_event_is_never_sent() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let cancelled = schedule(&alice, &room, 3_000, "never").await;
    expect_ok(act(&alice, UNSTABLE, &cancelled, "cancel").await, "cancel");
    // A later one: the timer sends in order, so once it is out, the cancelled one's time
    // has passed too.
    let marker = schedule(&alice, &room, 4_000, "marker").await;
    wait_for_body(&alice, &room, "marker", Duration::from_secs(4)).await;
    finalised(&alice, &marker, Duration::ZERO).await;
    assert!(
        find_body(&alice, &room, "never").await.is_none(),
        "expected the cancelled message never sent"
    );
    let record = expect_ok(
        get_delayed(&alice, UNSTABLE, &cancelled).await,
        "GET cancelled",
    );
    assert!(
        record["finalised_ts"].is_u64()
            && record.get("event_id").is_none()
            && record.get("error").is_none(),
        "expected a cancelled delayed event, got {record}"
    );
    // Cancelling again is a safe retry; sending or restarting it conflicts.
    expect_ok(
        act(&alice, STABLE, &cancelled, "cancel").await,
        "cancel again",
    );
    for action in ["send", "restart"] {
        expect_error(
            &act(&alice, STABLE, &cancelled, action).await,
            StatusCode::CONFLICT,
            "M_UNKNOWN",
            &format!("{action} of a cancelled delayed event"),
        );
    }
}

#[tokio::test]
async fn send_sends_at_once() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let id = schedule(&alice, &room, 3_600_000, "right now").await;
    expect_ok(act(&alice, STABLE, &id, "send").await, "send");
    // Answered once the event is in the room.
    let event = find_body(&alice, &room, "right now")
        .await
        .unwrap_or_else(|| panic!("expected the message in the room once send answered"));
    let record = expect_ok(get_delayed(&alice, STABLE, &id).await, "GET sent");
    assert_eq!(record["event_id"], event["event_id"]);
    assert!(
        record["finalised_ts"].as_u64() < Some(due_of(&record)),
        "expected it sent before its time (sent by the endpoint), got {record}"
    );
    assert!(list(&alice, STABLE).await.is_empty());
    // A retry succeeds and sends nothing more; cancelling conflicts.
    expect_ok(act(&alice, UNSTABLE, &id, "send").await, "send again");
    expect_error(
        &act(&alice, STABLE, &id, "cancel").await,
        StatusCode::CONFLICT,
        "M_UNKNOWN",
        "cancel of a sent delayed event",
    );
    let copies = alice
        .all_messages(&room)
        .await
        .into_iter()
        .filter(|e| e["content"]["body"] == "right now")
        .count();
    assert_eq!(copies, 1, "expected the message once");
}

#[tokio::test]
async fn the_earlier_single_url_manages_with_an_action_in_the_body() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    for prefix in [UNSTABLE, STABLE] {
        let id = schedule(&alice, &room, 3_600_000, &format!("body action {prefix}")).await;
        let path = format!("{prefix}/delayed_events/{}", enc(&id));
        let before = expect_ok(get_delayed(&alice, prefix, &id).await, "GET");
        tokio::time::sleep(Duration::from_millis(20)).await;
        expect_ok(
            alice.post(&path, &json!({ "action": "restart" })).await,
            "restart in the body",
        );
        let after = expect_ok(get_delayed(&alice, prefix, &id).await, "GET");
        assert!(
            due_of(&after) > due_of(&before),
            "expected a restart, got {after}"
        );
        expect_ok(
            alice.post(&path, &json!({ "action": "send" })).await,
            "send in the body",
        );
        wait_for_body(
            &alice,
            &room,
            &format!("body action {prefix}"),
            Duration::ZERO,
        )
        .await;
        // As Synapse answers: a finalised delayed event is gone for this form, so a client
        // of that revision schedules a new one; sending it again is a safe retry.
        expect_error(
            &alice.post(&path, &json!({ "action": "restart" })).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "restart of a sent delayed event (body action)",
        );
        expect_ok(
            alice.post(&path, &json!({ "action": "send" })).await,
            "send again (body action)",
        );
        expect_error(
            &alice.post(&path, &json!({ "action": "explode" })).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            "an unknown action",
        );
    }
}

#[tokio::test]
async fn listing_shows_only_the_callers_scheduled_events_in_send_order() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;

    let later = schedule(&alice, &room, 7_200_000, "later").await;
    let sooner = schedule(&alice, &room, 3_600_000, "sooner").await;
    let topic = schedule_state(
        &alice,
        &room,
        "m.room.topic",
        "",
        5_400_000,
        &json!({ "topic": "t" }),
    )
    .await;
    let bobs = schedule(&bob, &room, 3_600_000, "bob's").await;

    for prefix in [UNSTABLE, STABLE] {
        let mine: Vec<Value> = list(&alice, prefix).await;
        let ids: Vec<&str> = mine.iter().filter_map(|e| e["delay_id"].as_str()).collect();
        assert_eq!(
            ids,
            vec![sooner.as_str(), topic.as_str(), later.as_str()],
            "expected alice's three, next due first, at {prefix}: {mine:?}"
        );
        assert_eq!(mine[1]["state_key"], "");
        assert_eq!(mine[1]["content"]["topic"], "t");
        let theirs = list(&bob, prefix).await;
        assert_eq!(theirs.len(), 1, "expected only bob's, got {theirs:?}");
        assert_eq!(theirs[0]["delay_id"], bobs.as_str());
    }
    // A finalised one leaves the list.
    expect_ok(act(&alice, STABLE, &sooner, "cancel").await, "cancel");
    let ids: Vec<String> = list(&alice, STABLE)
        .await
        .iter()
        .filter_map(|e| e["delay_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![topic, later]);
    // No token, no list.
    expect_error(
        &server
            .client()
            .get(&format!("{STABLE}/delayed_events"))
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "listing without a token",
    );
}

#[tokio::test]
async fn another_user_cannot_see_or_manage_yours() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;

    let id = schedule(&alice, &room, 3_600_000, "alice's").await;
    for prefix in [UNSTABLE, STABLE] {
        expect_error(
            &get_delayed(&bob, prefix, &id).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "bob reading alice's delayed event",
        );
        for action in ["restart", "cancel", "send"] {
            expect_error(
                &act(&bob, prefix, &id, action).await,
                StatusCode::NOT_FOUND,
                "M_NOT_FOUND",
                &format!("bob's {action} of alice's delayed event"),
            );
        }
        expect_error(
            &bob.post(
                &format!("{prefix}/delayed_events/{}", enc(&id)),
                &json!({ "action": "cancel" }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "bob's cancel in the body",
        );
        // Without a token the management endpoints refuse (the current revision requires
        // authentication; the delay id is no credential).
        expect_error(
            &act(&server.client(), prefix, &id, "cancel").await,
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "cancel without a token",
        );
        expect_error(
            &act(&alice, prefix, "no-such-delay-id", "cancel").await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "an unknown delay id",
        );
    }
    let record = expect_ok(get_delayed(&alice, STABLE, &id).await, "alice's GET");
    assert!(
        record.get("finalised_ts").is_none(),
        "expected alice's delayed event untouched, got {record}"
    );
    assert!(find_body(&alice, &room, "alice's").await.is_none());
    // Another device of alice's manages it (delayed events belong to the user).
    let other_device = server.login(&alice.localpart, &alice.password).await;
    expect_ok(
        act(&other_device, STABLE, &id, "cancel").await,
        "cancel from another device",
    );
}

#[tokio::test]
async fn bad_delays_and_limits_get_the_msc_errors() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_DELAYED_EVENTS_MAX_DELAY_MS", "60000");
        TestServer::set_env(env, "PARACORD_DELAYED_EVENTS_MAX_SCHEDULED", "2");
    })
    .await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let caps = expect_ok(alice.get("/capabilities").await, "capabilities");
    assert_eq!(
        caps["capabilities"]["org.matrix.msc4140.delayed_events"],
        json!({ "max_delay_ms": 60000, "max_scheduled": 2 })
    );
    let versions = expect_ok(
        server.client().get("/_matrix/client/versions").await,
        "versions",
    );
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);

    for bad in ["-1", "0", "abc", "1.5", ""] {
        expect_error(
            &schedule_with_txn(&alice, &room, &Client::txn_id(), bad, "x").await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            &format!("delay {bad:?}"),
        );
    }
    let over = schedule_with_txn(&alice, &room, &Client::txn_id(), "60001", "x").await;
    expect_error(
        &over,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
        "a delay over the maximum",
    );
    assert_eq!(over.1["org.matrix.msc4140.errcode"], "M_MAX_DELAY_EXCEEDED");
    assert_eq!(over.1["org.matrix.msc4140.max_delay"], 60000);
    let delayed_event = |body: Value| {
        let alice = &alice;
        let room = room.clone();
        async move {
            alice
                .put(
                    &format!(
                        "{UNSTABLE}/rooms/{}/delayed_event/m.room.message/{}",
                        enc(&room),
                        Client::txn_id()
                    ),
                    &body,
                )
                .await
        }
    };
    let content = json!({ "msgtype": "m.text", "body": "x" });
    expect_error(
        &delayed_event(json!({ "delay_ms": 60001, "content": content })).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "the current revision's answer to a delay over the maximum",
    );
    for body in [
        json!({ "delay_ms": 0, "content": content }),
        json!({ "delay_ms": -5, "content": content }),
        json!({ "delay_ms": "100", "content": content }),
    ] {
        expect_error(
            &delayed_event(body.clone()).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            &format!("delayed_event {body}"),
        );
    }
    for body in [
        json!({ "content": content }),
        json!({ "delay_ms": 100 }),
        json!({ "delay_ms": 100, "content": [1] }),
        json!({ "delay_ms": 100, "content": content, "state_key": 5 }),
    ] {
        expect_error(
            &delayed_event(body.clone()).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            &format!("delayed_event {body}"),
        );
    }
    expect_error(
        &alice
            .put(
                &format!(
                    "/rooms/{}/send/m.room.message/{}?org.matrix.msc4140.delay=100",
                    enc(&room),
                    Client::txn_id()
                ),
                &json!([1, 2]),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "a delayed message whose content is no object",
    );
    // Nothing above was scheduled.
    assert!(list(&alice, STABLE).await.is_empty());

    // Two may be scheduled at once here.
    schedule(&alice, &room, 50_000, "one").await;
    schedule(&alice, &room, 40_000, "two").await;
    let full = schedule_with_txn(&alice, &room, &Client::txn_id(), "5000", "three").await;
    expect_error(
        &full,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
        "a third delayed event",
    );
    assert_eq!(
        full.1["org.matrix.msc4140.errcode"],
        "M_MAX_DELAYED_EVENTS_EXCEEDED"
    );
    let reply = alice
        .raw(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/delayed_event/m.room.message/{}",
                enc(&room),
                Client::txn_id()
            ),
            Some((
                json!({ "delay_ms": 5000, "content": content })
                    .to_string()
                    .into_bytes(),
                "application/json",
            )),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text
    );
    assert_eq!(reply.body["errcode"], "M_LIMIT_EXCEEDED");
    let retry: u64 = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("expected a Retry-After header, got {:?}", reply.headers));
    assert!(
        (1..=40).contains(&retry),
        "expected Retry-After up to the next send time (40 s), got {retry}"
    );
    assert_eq!(list(&alice, STABLE).await.len(), 2);
}

#[tokio::test]
async fn delayed_events_can_be_turned_off() {
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_DELAYED_EVENTS_MAX_SCHEDULED", "0");
    })
    .await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    expect_error(
        &schedule_with_txn(&alice, &room, &Client::txn_id(), "1000", "x").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a delayed event where they are off",
    );
    // Ordinary sends are untouched.
    alice.send_text(&room, "still works").await;
}

#[tokio::test]
async fn a_repeated_transaction_gets_the_same_delay_id() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;
    let txn = Client::txn_id();

    let first = delay_id_of(&expect_ok(
        schedule_with_txn(&alice, &room, &txn, "3600000", "once").await,
        "schedule",
    ));
    let again = delay_id_of(&expect_ok(
        schedule_with_txn(&alice, &room, &txn, "3600000", "once").await,
        "schedule again",
    ));
    assert_eq!(
        first, again,
        "expected the same delay id for the same transaction"
    );
    assert_eq!(list(&alice, STABLE).await.len(), 1);
    // The same transaction id from another device is another request.
    let other_device = server.login(&alice.localpart, &alice.password).await;
    let other = delay_id_of(&expect_ok(
        schedule_with_txn(&other_device, &room, &txn, "3600000", "once").await,
        "schedule from another device",
    ));
    assert_ne!(first, other);
    // The current revision's endpoint: idempotent per transaction too.
    let path = format!(
        "{UNSTABLE}/rooms/{}/delayed_event/m.room.message/{}",
        enc(&room),
        Client::txn_id()
    );
    let body = json!({ "delay_ms": 3_600_000, "content": { "msgtype": "m.text", "body": "x" } });
    let a = delay_id_of(&expect_ok(alice.put(&path, &body).await, "delayed_event"));
    let b = delay_id_of(&expect_ok(
        alice.put(&path, &body).await,
        "delayed_event again",
    ));
    assert_eq!(a, b);
    assert_eq!(list(&alice, STABLE).await.len(), 3);
    // A retry after it was sent still answers its delay id, and sends nothing more.
    expect_ok(act(&alice, STABLE, &first, "send").await, "send");
    let retried = delay_id_of(&expect_ok(
        schedule_with_txn(&alice, &room, &txn, "3600000", "once").await,
        "schedule after sending",
    ));
    assert_eq!(retried, first);
    let copies = alice
        .all_messages(&room)
        .await
        .into_iter()
        .filter(|e| e["content"]["body"] == "once")
        .count();
    assert_eq!(copies, 1);
}

#[tokio::test]
async fn scheduled_events_survive_a_graceful_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let while_down = schedule(&alice, &room, 3_000, "due while down").await;
    let after = schedule(&alice, &room, 12_000, "due after the restart").await;
    let scheduled = list(&alice, STABLE).await;
    let due = |id: &str| {
        scheduled
            .iter()
            .find(|e| e["delay_id"] == id)
            .map(due_of)
            .unwrap_or_else(|| panic!("expected {id} listed, got {scheduled:?}"))
    };
    let (down_due, after_due) = (due(&while_down), due(&after));

    let status = server.terminate().await;
    assert!(
        status.success(),
        "expected a clean exit on SIGTERM, got {status}"
    );
    // Past the first one's time while nothing runs (the server's clock is this machine's).
    let wait = down_due.saturating_sub(now_ms()) + 500;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let restarted_at = now_ms();
    server.restart().await;

    let alice = server.login(&alice.localpart, &alice.password).await;
    let first = wait_for_body(&alice, &room, "due while down", Duration::ZERO).await;
    assert!(
        ts_of(&first) >= restarted_at,
        "expected the overdue one sent after the restart ({restarted_at}), got {first}"
    );
    let record = finalised(&alice, &while_down, Duration::ZERO).await;
    assert_eq!(record["event_id"], first["event_id"]);
    let second = wait_for_body(
        &alice,
        &room,
        "due after the restart",
        Duration::from_secs(12),
    )
    .await;
    assert!(
        ts_of(&second) >= after_due,
        "expected the second sent at its time {after_due}, got {second}"
    );
    assert!(
        ts_of(&first) < ts_of(&second),
        "expected the overdue one first, got {first} and {second}"
    );
}

#[tokio::test]
async fn a_scheduled_event_survives_sigkill_right_after_the_answer() {
    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let id = schedule(&alice, &room, 2_000, "acknowledged").await;
    let state_id = schedule_state(
        &alice,
        &room,
        "m.room.topic",
        "",
        2_000,
        &json!({ "topic": "acknowledged" }),
    )
    .await;
    server.kill9();
    server.restart().await;

    let alice = server.login(&alice.localpart, &alice.password).await;
    let event = wait_for_body(&alice, &room, "acknowledged", Duration::ZERO).await;
    let record = finalised(&alice, &id, Duration::ZERO).await;
    assert_eq!(record["event_id"], event["event_id"]);
    let record = finalised(&alice, &state_id, Duration::ZERO).await;
    assert!(
        record["event_id"].is_string(),
        "expected it sent, got {record}"
    );
    assert_eq!(
        alice.state_content(&room, "m.room.topic", "").await["topic"],
        "acknowledged"
    );
}

#[tokio::test]
async fn a_delayed_state_event_is_not_cancelled_by_its_senders_own_change() {
    // MSC4140 leaves conflicting delayed state events to a later proposal (and its earlier
    // revision's alternative cancelled only on another user's change): the delayed event
    // still goes out.
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({})).await;

    let id = schedule_state(
        &alice,
        &room,
        "m.room.topic",
        "",
        3_000,
        &json!({ "topic": "delayed" }),
    )
    .await;
    alice
        .put_state(&room, "m.room.topic", "", &json!({ "topic": "now" }))
        .await;
    assert_eq!(
        alice.state_content(&room, "m.room.topic", "").await["topic"],
        "now"
    );
    let record = finalised(&alice, &id, Duration::ZERO).await;
    assert!(
        record["event_id"].is_string(),
        "expected it sent, got {record}"
    );
    assert_eq!(
        alice.state_content(&room, "m.room.topic", "").await["topic"],
        "delayed"
    );
}

#[tokio::test]
async fn a_sender_who_lost_permission_gets_a_failure_and_nothing_is_sent() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let mut pl = alice.state_content(&room, "m.room.power_levels", "").await;
    pl["users"][bob.user_id.as_str()] = json!(50);
    alice.put_state(&room, "m.room.power_levels", "", &pl).await;

    // Allowed when scheduled…
    let id = schedule_state(
        &bob,
        &room,
        "m.room.topic",
        "",
        3_000,
        &json!({ "topic": "bob's" }),
    )
    .await;
    // …but not when due: bob is demoted (and stays in the room).
    pl["users"][bob.user_id.as_str()] = json!(0);
    alice.put_state(&room, "m.room.power_levels", "", &pl).await;
    let record = finalised(&bob, &id, Duration::from_secs(3)).await;
    assert!(
        record.get("event_id").is_none(),
        "expected no event, got {record}"
    );
    assert_eq!(
        record["error"]["errcode"], "M_FORBIDDEN",
        "expected the error a /state gets, got {record}"
    );
    let (status, topic) = alice.get_state(&room, "m.room.topic", "").await;
    assert!(
        status == StatusCode::NOT_FOUND || topic["topic"] != "bob's",
        "expected the topic unchanged, got {status} {topic}"
    );
    // It ended with an error: sending it by hand conflicts, cancelling is a safe retry.
    expect_error(
        &act(&bob, STABLE, &id, "send").await,
        StatusCode::CONFLICT,
        "M_UNKNOWN",
        "send of a failed delayed event",
    );
    expect_ok(
        act(&bob, STABLE, &id, "cancel").await,
        "cancel of a failed one",
    );

    // Scheduling does not ask for membership; sending does: bob left before it was due.
    bob.leave_ok(&room).await;
    let message = schedule(&bob, &room, 500, "bob after leaving").await;
    let record = finalised(&bob, &message, Duration::ZERO).await;
    assert_eq!(record["error"]["errcode"], "M_FORBIDDEN", "got {record}");
    assert!(find_body(&alice, &room, "bob after leaving")
        .await
        .is_none());

    // The server carries on: a later delayed event of alice's goes out.
    let after = schedule(&alice, &room, 200, "still sending").await;
    wait_for_body(&alice, &room, "still sending", Duration::ZERO).await;
    finalised(&alice, &after, Duration::ZERO).await;
}

#[tokio::test]
async fn a_failing_send_action_answers_the_error_and_keeps_it_scheduled() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;

    // Bob is not in the room yet: sending by hand fails as a /send would.
    let id = schedule(&bob, &room, 3_600_000, "bob's early bird").await;
    expect_error(
        &act(&bob, STABLE, &id, "send").await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "send while not in the room",
    );
    let record = expect_ok(get_delayed(&bob, STABLE, &id).await, "GET");
    assert!(
        record.get("finalised_ts").is_none(),
        "expected it still scheduled, got {record}"
    );
    bob.join_ok(&room).await;
    expect_ok(act(&bob, STABLE, &id, "send").await, "send once joined");
    assert!(find_body(&alice, &room, "bob's early bird").await.is_some());
}
