//! Polls in guild channels (spec/polls.md): MSC3381 events, stable and unstable; SEND_POLLS
//! refused on submission and soft-failed from another server; the tally endpoint counting
//! each member's latest valid vote; the poll's server ending it at its closing time, also
//! after a restart; and what a plain Matrix client reads with `/messages`, on Paracord and on
//! Synapse.

use std::time::Duration;

use paracord_complement::{
    enc, expect_error, expect_ok, federation::federating_server, synapse::SynapseServer, Client,
    StatusCode, TestServer, User,
};
use serde_json::{json, Value};

use crate::forging::{now_ms, Forger};

const SEND_POLLS: u64 = 1 << 49;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Polls `check` every 100 ms for up to `secs` seconds until it returns `Some`.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..secs * 10 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// `owner`'s new guild: `(guild, #general)`.
async fn new_guild(owner: &User) -> (String, String) {
    let guild = expect_ok(
        owner
            .post("/_paracord/v1/guilds", &json!({ "name": "Polls" }))
            .await,
        "create guild",
    );
    (s(&guild["id"]), s(&guild["system_channel"]))
}

/// `members` join the guild space and #general.
async fn join_all(owner: &User, guild: &str, general: &str, members: &[&User]) {
    for m in members {
        owner.invite_ok(guild, &m.user_id).await;
        m.join_ok(guild).await;
        m.join_ok(general).await;
    }
}

async fn overwrite(owner: &User, channel: &str, target: &str, allow: u64, deny: u64) {
    expect_ok(
        owner
            .put(
                &format!(
                    "/_paracord/v1/channels/{}/permissions/{}",
                    enc(channel),
                    enc(target)
                ),
                &json!({ "allow": allow.to_string(), "deny": deny.to_string() }),
            )
            .await,
        &format!("overwrite {target}"),
    );
}

/// A stable `m.poll.start` content with these answers.
fn poll(question: &str, answers: &[&str], kind: &str, closes_at: Option<u64>) -> Value {
    let mut fallback = question.to_owned();
    for (i, a) in answers.iter().enumerate() {
        fallback.push_str(&format!("\n{}. {a}", i + 1));
    }
    let mut content = json!({
        "m.text": [{ "mimetype": "text/plain", "body": fallback }],
        "m.poll": {
            "kind": kind,
            "max_selections": 1,
            "question": { "m.text": [{ "body": question }] },
            "answers": answers
                .iter()
                .map(|a| json!({ "m.id": a.to_lowercase(), "m.text": [{ "body": a }] }))
                .collect::<Vec<_>>(),
        },
    });
    if let Some(at) = closes_at {
        content["chat.paracord.poll"] = json!({ "closes_at": at });
    }
    content
}

fn vote(start: &str, answers: &[&str]) -> Value {
    json!({
        "m.relates_to": { "rel_type": "m.reference", "event_id": start },
        "m.selections": answers,
    })
}

async fn send(user: &Client, room: &str, kind: &str, content: &Value) -> (StatusCode, Value) {
    user.send_with_txn(room, kind, &Client::txn_id(), content)
        .await
}

async fn tally(user: &Client, channel: &str, start: &str) -> (StatusCode, Value) {
    user.get(&format!(
        "/_paracord/v1/channels/{}/polls/{}",
        enc(channel),
        enc(start)
    ))
    .await
}

async fn tally_ok(user: &Client, channel: &str, start: &str) -> Value {
    expect_ok(tally(user, channel, start).await, "the poll's tally")
}

/// The first event of `room`'s timeline that `pick` accepts, as `user` reads it.
async fn find_event(user: &Client, room: &str, pick: impl Fn(&Value) -> bool) -> Option<Value> {
    user.all_messages(room).await.into_iter().find(|e| pick(e))
}

#[tokio::test]
async fn a_channel_poll_counts_each_members_latest_valid_vote() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let eve = server.register_random().await;
    let (guild, general) = new_guild(&alice).await;
    join_all(&alice, &guild, &general, &[&bob, &carol]).await;

    // What a poll must be is checked on submission in a guild channel.
    let bad = |answers: &[&str]| poll("Lunch?", answers, "m.disclosed", None);
    let too_many: Vec<String> = (0..11).map(|i| format!("A{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let mut dup = bad(&["Pizza", "Sushi"]);
    dup["m.poll"]["answers"][1]["m.id"] = json!("pizza");
    let mut empty = bad(&["Pizza", "Sushi"]);
    empty["m.poll"]["answers"][1]["m.text"] = json!([{ "body": "" }]);
    let mut max = bad(&["Pizza", "Sushi"]);
    max["m.poll"]["max_selections"] = json!(3);
    let mut wrong_type = bad(&["Pizza", "Sushi"]);
    wrong_type["m.poll"]["answers"] = json!("pizza");
    let far = poll(
        "Lunch?",
        &["Pizza", "Sushi"],
        "m.disclosed",
        Some(now_ms() + 33 * 24 * 3600 * 1000),
    );
    for (what, content, errcode) in [
        ("one answer", bad(&["Pizza"]), "M_INVALID_PARAM"),
        ("eleven answers", bad(&too_many), "M_INVALID_PARAM"),
        ("a repeated answer id", dup, "M_INVALID_PARAM"),
        ("an empty answer", empty, "M_INVALID_PARAM"),
        ("max_selections above the answers", max, "M_INVALID_PARAM"),
        ("answers that are no array", wrong_type, "M_BAD_JSON"),
        ("a closing time past 32 days", far, "M_INVALID_PARAM"),
    ] {
        expect_error(
            &send(&bob, &general, "m.poll.start", &content).await,
            StatusCode::BAD_REQUEST,
            errcode,
            what,
        );
    }

    let start = s(&expect_ok(
        send(
            &alice,
            &general,
            "m.poll.start",
            &poll("Lunch?", &["Pizza", "Sushi", "Tacos"], "m.disclosed", None),
        )
        .await,
        "alice's poll",
    )["event_id"]);
    // Bob votes, then changes his vote: only the latest counts.
    for answer in ["pizza", "sushi"] {
        expect_ok(
            send(&bob, &general, "m.poll.response", &vote(&start, &[answer])).await,
            "bob votes",
        );
    }
    // Carol votes, then sends a response naming no answer of the poll: her vote is spoiled.
    expect_ok(
        send(
            &carol,
            &general,
            "m.poll.response",
            &vote(&start, &["tacos"]),
        )
        .await,
        "carol votes",
    );
    let after_carol = tally_ok(&carol, &general, &start).await;
    assert_eq!(
        after_carol["my_selections"],
        json!(["tacos"]),
        "{after_carol}"
    );
    expect_ok(
        send(
            &carol,
            &general,
            "m.poll.response",
            &vote(&start, &["burgers"]),
        )
        .await,
        "carol's invalid vote is sent (and ignored)",
    );

    let seen = tally_ok(&bob, &general, &start).await;
    assert_eq!(seen["question"], "Lunch?", "{seen}");
    assert_eq!(seen["kind"], "m.disclosed");
    assert_eq!(seen["max_selections"], 1);
    assert_eq!(seen["sender"], alice.user_id.as_str());
    assert_eq!(seen["ended"], false);
    assert_eq!(
        seen["answers"],
        json!([
            { "id": "pizza", "text": "Pizza" },
            { "id": "sushi", "text": "Sushi" },
            { "id": "tacos", "text": "Tacos" },
        ])
    );
    assert_eq!(
        seen["counts"],
        json!({ "pizza": 0, "sushi": 1, "tacos": 0 }),
        "bob's latest vote counts, carol's spoiled one is no vote: {seen}"
    );
    assert_eq!(seen["voters"], 1);
    assert_eq!(seen["my_selections"], json!(["sushi"]));
    assert_eq!(
        tally_ok(&carol, &general, &start).await["my_selections"],
        json!([])
    );

    // An undisclosed poll shows counts only to its sender until it ends.
    let secret = s(&expect_ok(
        send(
            &alice,
            &general,
            "m.poll.start",
            &poll("Secret?", &["Yes", "No"], "m.undisclosed", None),
        )
        .await,
        "an undisclosed poll",
    )["event_id"]);
    expect_ok(
        send(&bob, &general, "m.poll.response", &vote(&secret, &["yes"])).await,
        "bob votes in secret",
    );
    let to_bob = tally_ok(&bob, &general, &secret).await;
    assert_eq!(to_bob["counts"], Value::Null, "{to_bob}");
    assert_eq!(to_bob["voters"], 1);
    assert_eq!(to_bob["my_selections"], json!(["yes"]));
    let to_alice = tally_ok(&alice, &general, &secret).await;
    assert_eq!(
        to_alice["counts"],
        json!({ "yes": 1, "no": 0 }),
        "{to_alice}"
    );
    // Bob may not end alice's poll (MANAGE_MESSAGES); alice may, and then everyone sees it.
    let end = json!({
        "m.relates_to": { "rel_type": "m.reference", "event_id": secret },
        "m.text": [{ "body": "The poll has closed." }],
    });
    let refused = send(&bob, &general, "m.poll.end", &end).await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob ends alice's poll",
    );
    assert!(
        refused.1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("MANAGE_MESSAGES"),
        "{}",
        refused.1
    );
    let end_id = s(&expect_ok(
        send(&alice, &general, "m.poll.end", &end).await,
        "alice ends",
    )["event_id"]);
    let ended = tally_ok(&bob, &general, &secret).await;
    assert_eq!(ended["ended"], true, "{ended}");
    assert_eq!(ended["ended_by"]["event_id"], end_id.as_str());
    assert_eq!(ended["ended_by"]["sender"], alice.user_id.as_str());
    assert_eq!(ended["counts"], json!({ "yes": 1, "no": 0 }));

    // Nobody outside the guild reads the poll; a message is no poll.
    let (status, _) = tally(&eve, &general, &start).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = alice.send_text(&general, "not a poll").await;
    let (status, body) = tally(&bob, &general, &text).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
        "{body}"
    );
}

#[tokio::test]
async fn a_poll_ends_at_its_closing_time_also_across_a_restart_and_later_votes_do_not_count() {
    let mut server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let (guild, general) = new_guild(&alice).await;
    join_all(&alice, &guild, &general, &[&bob]).await;

    let closes_at = now_ms() + 3_000;
    let start = s(&expect_ok(
        send(
            &alice,
            &general,
            "m.poll.start",
            &poll("Soon?", &["Yes", "No"], "m.disclosed", Some(closes_at)),
        )
        .await,
        "a poll closing in 3 s",
    )["event_id"]);
    expect_ok(
        send(&bob, &general, "m.poll.response", &vote(&start, &["yes"])).await,
        "bob votes",
    );
    let open = tally_ok(&bob, &general, &start).await;
    assert_eq!(open["closes_at"], closes_at, "{open}");
    assert_eq!(open["ended"], false);

    // Alice's server ends it as alice, with the results, at its closing time.
    let ended = eventually("the poll's end", 30, || async {
        let t = tally_ok(&bob, &general, &start).await;
        (t["ended"] == true).then_some(t)
    })
    .await;
    assert_eq!(
        ended["ended_by"]["sender"],
        alice.user_id.as_str(),
        "{ended}"
    );
    assert!(
        ended["ended_by"]["ts"].as_u64().unwrap_or(0) >= closes_at,
        "ended no earlier than its closing time {closes_at}: {ended}"
    );
    let end_id = s(&ended["ended_by"]["event_id"]);

    // A plain Matrix client reads standard MSC3381 events with /messages.
    let events = bob.all_messages(&general).await;
    let of = |id: &str| {
        events
            .iter()
            .find(|e| e["event_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("expected {id} in /messages: {events:?}"))
    };
    let start_event = of(&start);
    assert_eq!(start_event["type"], "m.poll.start");
    assert_eq!(
        start_event["content"]["m.poll"]["answers"][0]["m.id"],
        "yes"
    );
    assert!(
        s(&start_event["content"]["m.text"][0]["body"]).contains("1. Yes"),
        "a text fallback for clients without polls: {start_event}"
    );
    let end_event = of(&end_id);
    assert_eq!(end_event["type"], "m.poll.end", "{end_event}");
    assert_eq!(end_event["sender"], alice.user_id.as_str());
    assert_eq!(
        end_event["content"]["m.relates_to"],
        json!({ "rel_type": "m.reference", "event_id": start })
    );
    assert_eq!(
        end_event["content"]["m.poll.results"],
        json!({ "yes": 1, "no": 0 })
    );
    assert_eq!(
        end_event["content"]["m.text"][0]["body"],
        "The poll has closed. Top answer: Yes"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.poll.response" && e["sender"] == bob.user_id.as_str()),
        "bob's vote is an m.poll.response in /messages"
    );

    // A vote after the end is sent but does not count.
    expect_ok(
        send(&bob, &general, "m.poll.response", &vote(&start, &["no"])).await,
        "bob votes late",
    );
    let after = tally_ok(&bob, &general, &start).await;
    assert_eq!(after["counts"], json!({ "yes": 1, "no": 0 }), "{after}");
    assert_eq!(after["my_selections"], json!(["yes"]));
    let ends = bob
        .all_messages(&general)
        .await
        .into_iter()
        .filter(|e| e["type"] == "m.poll.end")
        .count();
    assert_eq!(ends, 1, "the poll is ended once");

    // An unstable poll due while the server is down is ended once it is back.
    let closes_at = now_ms() + 4_000;
    let unstable = json!({
        "org.matrix.msc1767.text": "Later?\n1. Yes\n2. No",
        "org.matrix.msc3381.poll.start": {
            "kind": "org.matrix.msc3381.poll.disclosed",
            "max_selections": 1,
            "question": { "org.matrix.msc1767.text": "Later?" },
            "answers": [
                { "id": "yes", "org.matrix.msc1767.text": "Yes" },
                { "id": "no", "org.matrix.msc1767.text": "No" },
            ],
        },
        "chat.paracord.poll": { "closes_at": closes_at },
    });
    let later = s(&expect_ok(
        send(&alice, &general, "org.matrix.msc3381.poll.start", &unstable).await,
        "an unstable poll closing in 4 s",
    )["event_id"]);
    expect_ok(
        send(
            &bob,
            &general,
            "org.matrix.msc3381.poll.response",
            &json!({
                "m.relates_to": { "rel_type": "m.reference", "event_id": later },
                "org.matrix.msc3381.poll.response": { "answers": ["no"] },
            }),
        )
        .await,
        "bob votes with the unstable type",
    );
    let status = server.terminate().await;
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    tokio::time::sleep(Duration::from_millis(
        closes_at.saturating_sub(now_ms()) + 500,
    ))
    .await;
    let restarted_at = now_ms();
    server.restart().await;
    let bob = server.login(&bob.localpart, &bob.password).await;
    let ended = eventually("the unstable poll's end after the restart", 30, || async {
        let t = tally_ok(&bob, &general, &later).await;
        (t["ended"] == true).then_some(t)
    })
    .await;
    assert!(
        ended["ended_by"]["ts"].as_u64().unwrap_or(0) >= restarted_at,
        "ended after the restart ({restarted_at}): {ended}"
    );
    assert_eq!(ended["counts"], json!({ "yes": 0, "no": 1 }), "{ended}");
    let end_event = find_event(&bob, &general, |e| {
        e["event_id"] == ended["ended_by"]["event_id"]
    })
    .await
    .unwrap_or_else(|| panic!("expected the end in /messages: {ended}"));
    assert_eq!(
        end_event["type"], "org.matrix.msc3381.poll.end",
        "{end_event}"
    );
    assert_eq!(end_event["sender"], alice.user_id.as_str());
    assert_eq!(
        end_event["content"]["org.matrix.msc1767.text"],
        "The poll has closed. Top answer: No"
    );
}

/// B's key pair for ruma, from its key file (`ed25519 <version> <PKCS#8>`).

#[tokio::test]
async fn sending_a_poll_needs_send_polls_and_another_servers_poll_without_it_is_soft_failed() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register_random().await;
    let carol = a.register_random().await;
    let bob = b.register_random().await;
    let (guild, general) = new_guild(&alice).await;
    join_all(&alice, &guild, &general, &[&carol]).await;
    // Bob of B joins by an invite accepted through his own server.
    let invite = expect_ok(
        alice
            .post(
                &format!("/_paracord/v1/channels/{}/invites", enc(&general)),
                &json!({}),
            )
            .await,
        "create invite",
    );
    expect_ok(
        bob.post(
            &format!(
                "/_paracord/v1/invites/{}?server={}",
                s(&invite["code"]),
                enc(&a_name)
            ),
            &json!({}),
        )
        .await,
        "bob accepts through B",
    );
    let poll_by_alice = s(&expect_ok(
        send(
            &alice,
            &general,
            "m.poll.start",
            &poll("Tea?", &["Yes", "No"], "m.disclosed", None),
        )
        .await,
        "alice's poll",
    )["event_id"]);

    overwrite(&alice, &general, "role:everyone", 0, SEND_POLLS).await;
    let perms_path = format!(
        "/_paracord/v1/channels/{}/permissions/{}",
        enc(&general),
        enc(&bob.user_id)
    );
    eventually("B to see SEND_POLLS denied", 20, || async {
        let p = bob.get(&perms_path).await.1["permissions"].clone();
        let bits: u64 = p.as_str().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
        (bits & SEND_POLLS == 0).then_some(())
    })
    .await;

    // Refused on submission on both servers, naming the flag.
    let content = poll("Coffee?", &["Yes", "No"], "m.disclosed", None);
    for (who, user) in [("carol on A", &carol), ("bob on B", &bob)] {
        let resp = send(user, &general, "m.poll.start", &content).await;
        expect_error(&resp, StatusCode::FORBIDDEN, "M_FORBIDDEN", who);
        assert!(
            resp.1["error"]
                .as_str()
                .unwrap_or_default()
                .contains("SEND_POLLS"),
            "{who}: {}",
            resp.1
        );
    }
    // Voting needs no SEND_POLLS: bob's vote reaches A and counts there.
    expect_ok(
        send(
            &bob,
            &general,
            "m.poll.response",
            &vote(&poll_by_alice, &["yes"]),
        )
        .await,
        "bob votes from B",
    );
    eventually("bob's vote to count on A", 20, || async {
        let t = tally_ok(&alice, &general, &poll_by_alice).await;
        (t["counts"]["yes"] == 1).then_some(())
    })
    .await;
    // B answers bob's read from its own copy of the channel.
    let on_b = tally_ok(&bob, &general, &poll_by_alice).await;
    assert_eq!(on_b["my_selections"], json!(["yes"]), "{on_b}");
    assert_eq!(on_b["counts"], json!({ "yes": 1, "no": 0 }), "{on_b}");

    // B's server sends A a poll of bob's anyway (the test signs it with B's key): A
    // soft-fails it. A message of his in the same transaction gets in.
    let forger = Forger::new((&a, &a_name), (&b, &b_name), &alice, &general, &bob.user_id).await;
    let forged_poll = forger.event(
        "m.poll.start",
        None,
        content.clone(),
        &forger.prev,
        forger.depth + 1,
    );
    let forged_text = forger.event(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "from B" }),
        &forged_poll.0,
        forger.depth + 2,
    );
    let ids = (forged_poll.0.clone(), forged_text.0.clone());
    forger.send(vec![forged_poll, forged_text]).await;
    let (forged_poll, forged_text) = ids;
    let seen: Vec<String> = alice
        .all_messages(&general)
        .await
        .iter()
        .map(|e| s(&e["event_id"]))
        .collect();
    assert!(
        seen.contains(&forged_text),
        "bob's forged message gets in: {seen:?}"
    );
    assert!(
        !seen.contains(&forged_poll),
        "bob's poll is soft-failed, not in /messages: {seen:?}"
    );
    let (status, _) = tally(&alice, &general, &forged_poll).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a soft-failed poll is no poll"
    );
}

/// A Synapse member of a Paracord guild: Synapse knows nothing of guilds, so it accepts his
/// poll although the guild denies him SEND_POLLS, and Paracord soft-fails it; his vote in a
/// Paracord poll counts, and the end alice's server sends at the closing time reaches him as
/// a standard `m.poll.end` with the results.
#[tokio::test]
async fn a_synapse_member_votes_sees_the_end_and_his_poll_without_send_polls_is_soft_failed() {
    let (synapse, (paracord, paracord_name)) =
        tokio::join!(SynapseServer::start(), federating_server());
    let alice = paracord.register_random().await;
    let sam = synapse.register_random().await;
    let (guild, general) = new_guild(&alice).await;
    overwrite(&alice, &general, "role:everyone", 0, SEND_POLLS).await;

    alice.invite_ok(&guild, &sam.user_id).await;
    let via = |room: &str| {
        format!(
            "/join/{}?via={h}&server_name={h}",
            enc(room),
            h = enc(&paracord_name)
        )
    };
    eventually("sam to join the guild space", 45, || async {
        (sam.post(&via(&guild), &json!({})).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    expect_ok(
        sam.post(&via(&general), &json!({})).await,
        "sam joins #general",
    );

    let closes_at = now_ms() + 8_000;
    let start = s(&expect_ok(
        send(
            &alice,
            &general,
            "m.poll.start",
            &poll("Ship it?", &["Yes", "No"], "m.disclosed", Some(closes_at)),
        )
        .await,
        "alice's poll closing in 8 s",
    )["event_id"]);
    eventually("alice's poll on Synapse", 45, || async {
        let (status, _) = sam
            .get(&format!("/rooms/{}/event/{}", enc(&general), enc(&start)))
            .await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    // Synapse takes both; Paracord counts the vote and soft-fails the poll.
    let sams_poll = s(&expect_ok(
        send(
            &sam,
            &general,
            "m.poll.start",
            &poll("Mine?", &["Yes", "No"], "m.disclosed", None),
        )
        .await,
        "Synapse accepts sam's poll",
    )["event_id"]);
    let sams_vote = s(&expect_ok(
        send(
            &sam,
            &general,
            "org.matrix.msc3381.poll.response",
            &json!({
                "m.relates_to": { "rel_type": "m.reference", "event_id": start },
                "org.matrix.msc3381.poll.response": { "answers": ["no"] },
            }),
        )
        .await,
        "sam votes",
    )["event_id"]);
    // Synapse sends them in order: once the vote is in, the poll has been decided.
    let seen: Vec<String> = eventually("sam's vote on Paracord", 45, || async {
        let ids: Vec<String> = alice
            .all_messages(&general)
            .await
            .iter()
            .map(|e| s(&e["event_id"]))
            .collect();
        ids.contains(&sams_vote).then_some(ids)
    })
    .await;
    assert!(
        !seen.contains(&sams_poll),
        "sam's poll is soft-failed on Paracord: {seen:?}"
    );
    let (status, _) = tally(&alice, &general, &sams_poll).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        tally_ok(&alice, &general, &start).await["counts"],
        json!({ "yes": 0, "no": 1 })
    );

    // The end reaches Synapse as a standard event with the results.
    let end = eventually("alice's end on Synapse", 60, || async {
        find_event(&sam, &general, |e| {
            e["type"] == "m.poll.end" && e["content"]["m.relates_to"]["event_id"] == start.as_str()
        })
        .await
    })
    .await;
    assert_eq!(end["sender"], alice.user_id.as_str(), "{end}");
    assert_eq!(
        end["content"]["m.poll.results"],
        json!({ "yes": 0, "no": 1 }),
        "{end}"
    );
    assert_eq!(
        end["content"]["m.text"][0]["body"],
        "The poll has closed. Top answer: No"
    );
}
