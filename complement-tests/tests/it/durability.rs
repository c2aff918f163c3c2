//! Nothing acknowledged is lost: across a restart, and across a SIGKILL in
//! the middle of concurrent sends.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use paracord_complement::{bodies, enc, expect_ok, Client, Method, StatusCode, TestServer, WAIT};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Every event served by /messages must be well formed.
fn assert_well_formed(events: &[Value]) {
    for ev in events {
        for field in ["event_id", "type", "sender"] {
            assert!(
                ev[field].is_string(),
                "expected string `{field}` on every event in /messages, got {ev}"
            );
        }
        assert!(
            ev["content"].is_object(),
            "expected object `content` on every event in /messages, got {ev}"
        );
        assert!(
            ev["origin_server_ts"].is_u64(),
            "expected integer `origin_server_ts` on every event in /messages, got {ev}"
        );
    }
}

#[tokio::test]
async fn acknowledged_messages_survive_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let room = alice.create_room(&json!({ "name": "durable" })).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let body = format!("durable {i}");
        let id = alice.send_text(&room, &body).await;
        sent.push((id, body));
    }

    server.kill9();
    server.restart().await;

    let again = server.login(&alice.localpart, &alice.password).await;
    let timeline = again.all_messages(&room).await;
    assert_well_formed(&timeline);
    let expected: Vec<String> = sent.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(
        bodies(&timeline),
        expected,
        "expected all 20 messages, in order, after the restart"
    );
    for (id, _) in &sent {
        assert!(
            timeline.iter().any(|e| e["event_id"] == id.as_str()),
            "expected event {id} after the restart"
        );
    }
    let name = again.state_content(&room, "m.room.name", "").await;
    assert_eq!(
        name["name"], "durable",
        "expected room state to survive the restart, got {name}"
    );

    expect_ok(
        alice.whoami().await,
        "the pre-restart access token after the restart",
    );

    let sync = again.sync(None, 0, None).await;
    assert!(
        sync["rooms"]["join"].get(&room).is_some(),
        "expected the room in sync after the restart, got {sync}"
    );
    let since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    let fresh = again.send_text(&room, "after restart").await;
    again
        .sync_until(
            Some(&since),
            None,
            "the post-restart message arrives",
            |s| {
                paracord_complement::has_event_id(
                    &paracord_complement::room_timeline(s, &room),
                    &fresh,
                )
            },
        )
        .await;
}

/// Sends messages one after another until the server stops answering;
/// returns every (event_id, body) that was acknowledged with a 200.
async fn send_until_failure(
    client: Client,
    room: String,
    tag: &'static str,
    acked: Arc<AtomicUsize>,
) -> Vec<(String, String)> {
    let mut ok = Vec::new();
    for i in 0.. {
        let body = format!("{tag} {i}");
        let path = format!("/rooms/{}/send/m.room.message/{tag}-{i}", enc(&room));
        let content = json!({ "msgtype": "m.text", "body": body });
        match client.try_json(Method::PUT, &path, Some(&content)).await {
            Ok((StatusCode::OK, resp)) => {
                let id = resp["event_id"].as_str().unwrap_or_default().to_owned();
                ok.push((id, body));
                acked.fetch_add(1, Ordering::SeqCst);
            }
            _ => break,
        }
    }
    ok
}

#[tokio::test]
async fn acknowledged_events_survive_sigkill_during_concurrent_sends() {
    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;

    let acked_a = Arc::new(AtomicUsize::new(0));
    let acked_b = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let task_a = tokio::spawn(send_until_failure(
        alice.client.clone(),
        room.clone(),
        "alice",
        acked_a.clone(),
    ));
    let task_b = tokio::spawn(send_until_failure(
        bob.client.clone(),
        room.clone(),
        "bob",
        acked_b.clone(),
    ));

    // Let both writers get going for about a second, then pull the plug.
    let deadline = Instant::now() + WAIT;
    while started.elapsed() < Duration::from_secs(1)
        || acked_a.load(Ordering::SeqCst) < 5
        || acked_b.load(Ordering::SeqCst) < 5
    {
        assert!(
            Instant::now() < deadline,
            "expected both writers to get 5 sends acknowledged within {WAIT:?}, got {} and {}",
            acked_a.load(Ordering::SeqCst),
            acked_b.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    let a = task_a
        .await
        .unwrap_or_else(|e| panic!("expected alice's writer to finish: {e}"));
    let b = task_b
        .await
        .unwrap_or_else(|e| panic!("expected bob's writer to finish: {e}"));

    server.restart().await;

    for (who, user, acked) in [("alice", &alice, &a), ("bob", &bob, &b)] {
        for (id, body) in acked {
            let path = format!("/rooms/{}/event/{}", enc(&room), enc(id));
            let ev = expect_ok(
                user.get(&path).await,
                &format!("GET acknowledged event {id} ({body}) after SIGKILL"),
            );
            assert_eq!(
                ev["content"]["body"],
                body.as_str(),
                "expected {who}'s acknowledged event intact, got {ev}"
            );
        }
    }

    let timeline = alice.all_messages(&room).await;
    assert_well_formed(&timeline);
    let position: HashMap<&str, usize> = timeline
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e["event_id"].as_str().map(|id| (id, i)))
        .collect();
    assert_eq!(
        position.len(),
        timeline.len(),
        "expected no event twice in /messages after SIGKILL"
    );
    for (who, acked) in [("alice", &a), ("bob", &b)] {
        let mut last = None;
        for (id, body) in acked {
            let at = *position.get(id.as_str()).unwrap_or_else(|| {
                panic!("expected {who}'s acknowledged {id} ({body}) in /messages after SIGKILL")
            });
            assert!(
                last.is_none_or(|l| at > l),
                "expected {who}'s events in send order in /messages, {id} ({body}) is out of order"
            );
            last = Some(at);
        }
    }
    // Whatever was in flight may or may not have landed, but each writer's
    // messages must form a gap-free prefix of what it tried to send.
    for tag in ["alice", "bob"] {
        let mut numbers: Vec<u64> = bodies(&timeline)
            .iter()
            .filter_map(|b| {
                b.strip_prefix(&format!("{tag} "))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        numbers.sort_unstable();
        let expected: Vec<u64> = (0..numbers.len() as u64).collect();
        assert_eq!(
            numbers, expected,
            "expected {tag}'s surviving messages to be 0..n with no gaps"
        );
    }

    let since = alice.sync_token().await;
    let fresh = bob.send_text(&room, "after the crash").await;
    alice
        .sync_until(Some(&since), None, "a post-crash message arrives", |s| {
            paracord_complement::has_event_id(&paracord_complement::room_timeline(s, &room), &fresh)
        })
        .await;
}

/// A server whose port is taken is not mistaken for the one already listening there: the
/// harness sees it exit (the other answers `/versions` just as well) and, when the port is
/// its own choice, starts it again elsewhere; here the test pins the port, so it gives up.
#[tokio::test]
#[should_panic(expected = "find a free port")]
async fn a_server_whose_port_is_taken_is_not_taken_for_the_other() {
    let first = TestServer::start().await;
    let taken = format!("127.0.0.1:{}", first.port());
    let _second = TestServer::start_with(move |env| {
        for (key, value) in env.iter_mut() {
            if key == "PARACORD_LISTEN" {
                *value = taken.clone();
            }
        }
    })
    .await;
}
