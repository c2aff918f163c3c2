//! Push rules: the default rule set, and adding, moving, disabling and removing rules.

use paracord_complement::{expect_error, expect_ok, StatusCode, TestServer};
use serde_json::json;

#[tokio::test]
async fn default_push_rules_are_served_and_synced() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let all = expect_ok(alice.get("/pushrules/").await, "GET /pushrules/");
    let overrides = all["global"]["override"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        overrides
            .iter()
            .any(|r| r["rule_id"] == ".m.rule.master" && r["default"] == true),
        "{all}"
    );
    assert!(
        all["global"]["underride"]
            .as_array()
            .is_some_and(|u| u.iter().any(|r| r["rule_id"] == ".m.rule.message")),
        "{all}"
    );
    let master = expect_ok(
        alice.get("/pushrules/global/override/.m.rule.master").await,
        "GET one rule",
    );
    assert_eq!(master["enabled"], false, "{master}");
    let sync = alice.sync(None, 0, None).await;
    let ad = sync["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        ad.iter()
            .any(|e| e["type"] == "m.push_rules" && e["content"]["global"]["override"].is_array()),
        "push rules in initial sync account data: {ad:?}"
    );
}

#[tokio::test]
async fn rules_can_be_added_ordered_toggled_and_removed() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let rule = |pattern: &str| json!({ "pattern": pattern, "actions": ["notify"] });
    expect_ok(
        alice
            .put("/pushrules/global/content/first", &rule("cake"))
            .await,
        "add first",
    );
    expect_ok(
        alice
            .put("/pushrules/global/content/second", &rule("pie"))
            .await,
        "add second (highest priority)",
    );
    expect_ok(
        alice
            .put("/pushrules/global/content/third?after=first", &rule("tart"))
            .await,
        "add third after first",
    );
    let content = expect_ok(alice.get("/pushrules/global/").await, "GET global")["content"].clone();
    let ids: Vec<&str> = content
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["rule_id"].as_str())
        .filter(|id| !id.starts_with('.'))
        .collect();
    assert_eq!(ids, vec!["second", "first", "third"], "{content}");

    expect_ok(
        alice
            .put(
                "/pushrules/global/content/first/enabled",
                &json!({ "enabled": false }),
            )
            .await,
        "disable",
    );
    let enabled = expect_ok(
        alice.get("/pushrules/global/content/first/enabled").await,
        "GET enabled",
    );
    assert_eq!(enabled["enabled"], false, "{enabled}");
    expect_ok(
        alice
            .put(
                "/pushrules/global/content/first/actions",
                &json!({ "actions": ["notify", { "set_tweak": "highlight" }] }),
            )
            .await,
        "set actions",
    );
    let actions = expect_ok(
        alice.get("/pushrules/global/content/first/actions").await,
        "GET actions",
    );
    assert_eq!(actions["actions"][1]["set_tweak"], "highlight", "{actions}");

    expect_ok(
        alice
            .delete("/pushrules/global/content/second", &json!({}))
            .await,
        "delete",
    );
    let gone = alice.get("/pushrules/global/content/second").await;
    expect_error(&gone, StatusCode::NOT_FOUND, "M_NOT_FOUND", "deleted rule");
    let default_delete = alice
        .delete("/pushrules/global/override/.m.rule.master", &json!({}))
        .await;
    assert!(
        default_delete.0.is_client_error(),
        "server default rules cannot be deleted: {default_delete:?}"
    );
    let missing = alice
        .put(
            "/pushrules/global/content/x/enabled",
            &json!({ "enabled": true }),
        )
        .await;
    expect_error(
        &missing,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "enabling a missing rule",
    );

    // Survives in the account data the clients read.
    let sync = alice.sync(None, 0, None).await;
    let ad = sync["account_data"]["events"].to_string();
    assert!(
        ad.contains("\"first\"") && !ad.contains("\"second\""),
        "{ad}"
    );
}

fn counts(sync: &serde_json::Value, room: &str) -> (u64, u64) {
    let n = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        n["notification_count"].as_u64().unwrap_or(u64::MAX),
        n["highlight_count"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test]
async fn push_rules_drive_unread_counts_and_notifications() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] }))
        .await;
    bob.join_ok(&room).await;
    bob.send_text(&room, "hello").await;
    let mention = bob
        .send_event(
            &room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": "alice?", "m.mentions": { "user_ids": [alice.user_id] } }),
        )
        .await;
    let sync = alice.sync(None, 0, None).await;
    assert_eq!(
        counts(&sync, &room),
        (2, 1),
        "two notifying messages in a DM, one mention: {}",
        sync["rooms"]["join"][&room]["unread_notifications"]
    );
    // The sender is not notified by their own messages.
    let bob_sync = bob.sync(None, 0, None).await;
    assert_eq!(
        counts(&bob_sync, &room).0,
        0,
        "{}",
        bob_sync["rooms"]["join"][&room]["unread_notifications"]
    );

    let all = expect_ok(alice.get("/notifications").await, "GET /notifications");
    let list = all["notifications"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "{all}");
    assert_eq!(
        list[0]["event"]["event_id"],
        mention.as_str(),
        "newest first: {all}"
    );
    assert_eq!(list[0]["read"], false, "{all}");
    let highlights = expect_ok(
        alice.get("/notifications?only=highlight").await,
        "only=highlight",
    );
    assert_eq!(
        highlights["notifications"].as_array().map(Vec::len),
        Some(1),
        "{highlights}"
    );

    let since = sync["next_batch"].as_str().unwrap().to_owned();
    expect_ok(
        alice
            .post(
                &format!(
                    "/rooms/{}/receipt/m.read/{}",
                    paracord_complement::enc(&room),
                    paracord_complement::enc(&mention)
                ),
                &json!({}),
            )
            .await,
        "read receipt",
    );
    let after = alice.sync(Some(&since), 0, None).await;
    assert_eq!(
        counts(&after, &room),
        (0, 0),
        "read up to the newest: {}",
        after["rooms"]["join"][&room]
    );
    let all = expect_ok(
        alice.get("/notifications").await,
        "GET /notifications after reading",
    );
    assert_eq!(all["notifications"][0]["read"], true, "{all}");

    // A room rule with no actions mutes the room.
    expect_ok(
        alice
            .put(
                &format!("/pushrules/global/room/{}", paracord_complement::enc(&room)),
                &json!({ "actions": [] }),
            )
            .await,
        "mute",
    );
    bob.send_text(&room, "muted?").await;
    let muted = alice.sync(None, 0, None).await;
    assert_eq!(
        counts(&muted, &room).0,
        0,
        "muted room: {}",
        muted["rooms"]["join"][&room]["unread_notifications"]
    );
}

/// The push gateway is a real separate process (complement-tests/support/push_gateway.py).
struct Gateway {
    process: paracord_complement::ChildProcess,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start_gateway(reject: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pushes.jsonl");
    // The checkout's path when cargo runs the test: a test binary reused from a build in
    // another checkout (the same target directory) has that one's path compiled in.
    let crate_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let script = std::path::Path::new(&crate_dir).join("support/push_gateway.py");
    let (out_arg, reject) = (out.clone(), reject.to_owned());
    let process = paracord_complement::ChildProcess::start(move |port| {
        let mut c = std::process::Command::new("python3");
        c.arg(script).arg(port.to_string()).arg(out_arg).arg(reject);
        c
    })
    .await;
    Gateway {
        process,
        out,
        _dir: dir,
    }
}

async fn wait_for_push(gw: &Gateway, event_id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&gw.out).unwrap_or_default();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["notification"]["event_id"] == event_id {
                return v;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no push for {event_id}; gateway got: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn notifications_are_pushed_to_a_real_gateway() {
    let gw = start_gateway("stale-key").await;
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let url = format!(
        "http://127.0.0.1:{}/_matrix/push/v1/notify",
        gw.process.port
    );
    let pusher = |key: &str| {
        json!({
            "kind": "http", "app_id": "chat.paracord.test", "pushkey": key,
            "app_display_name": "Test", "device_display_name": "Phone", "lang": "en",
            "data": { "url": url },
        })
    };
    let bad = alice.post("/pushers/set", &json!({ "kind": "http", "app_id": "a", "pushkey": "k", "app_display_name": "a", "device_display_name": "d", "lang": "en", "data": { "url": "http://127.0.0.1:1/wrong" } })).await;
    expect_error(
        &bad,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "gateway url must end in /_matrix/push/v1/notify",
    );
    expect_ok(
        alice.post("/pushers/set", &pusher("good-key")).await,
        "set pusher",
    );
    let mut second = pusher("stale-key");
    second["append"] = json!(true);
    expect_ok(alice.post("/pushers/set", &second).await, "second pusher");
    let listed = expect_ok(alice.get("/pushers").await, "GET /pushers");
    assert_eq!(
        listed["pushers"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    let room = alice
        .create_room(
            &json!({ "preset": "trusted_private_chat", "invite": [bob.user_id], "name": "Pushy" }),
        )
        .await;
    bob.join_ok(&room).await;
    let event = bob.send_text(&room, "ping").await;
    let push = wait_for_push(&gw, &event).await;
    let n = &push["notification"];
    assert_eq!(n["room_id"], room.as_str(), "{push}");
    assert_eq!(n["sender"], bob.user_id.as_str(), "{push}");
    assert_eq!(n["content"]["body"], "ping", "{push}");
    assert_eq!(n["room_name"], "Pushy", "{push}");
    assert_eq!(n["counts"]["unread"], 1, "{push}");
    let keys: Vec<&str> = n["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["pushkey"].as_str())
        .collect();
    assert!(
        keys.contains(&"good-key") || keys.contains(&"stale-key"),
        "{push}"
    );

    // The gateway rejected "stale-key": the server drops that pusher.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let listed = expect_ok(alice.get("/pushers").await, "GET /pushers");
        let keys: Vec<String> = listed["pushers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
            .collect();
        if keys == vec!["good-key".to_owned()] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rejected pusher still listed: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // kind: null deletes.
    expect_ok(
        alice
            .post(
                "/pushers/set",
                &json!({ "kind": null, "app_id": "chat.paracord.test", "pushkey": "good-key" }),
            )
            .await,
        "delete pusher",
    );
    let listed = expect_ok(alice.get("/pushers").await, "GET /pushers after delete");
    assert_eq!(
        listed["pushers"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
}

#[tokio::test]
async fn thread_notifications_are_counted_per_thread_with_threaded_receipts() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] }))
        .await;
    bob.join_ok(&room).await;
    let root = bob.send_text(&room, "thread root").await;
    let reply = |body: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    bob.send_event(&room, "m.room.message", &reply("r1")).await;
    let r2 = bob.send_event(&room, "m.room.message", &reply("r2")).await;
    let main_message = bob.send_text(&room, "main timeline").await;

    // Issue 14: a threaded receipt names a thread root (or `main`) and an event in that
    // thread; anything else is a 400 M_INVALID_PARAM.
    let receipt_path = |event: &str| {
        format!(
            "/rooms/{}/receipt/m.read/{}",
            paracord_complement::enc(&room),
            paracord_complement::enc(event)
        )
    };
    for (event, body, what) in [
        (
            &r2,
            json!({ "thread_id": main_message }),
            "a thread_id that is not a thread root",
        ),
        (
            &main_message,
            json!({ "thread_id": root }),
            "an event outside the thread",
        ),
        (
            &r2,
            json!({ "thread_id": "main" }),
            "a thread reply as main",
        ),
        (&r2, json!({ "thread_id": "" }), "an empty thread_id"),
    ] {
        let resp = alice.post(&receipt_path(event), &body).await;
        expect_error(&resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM", what);
    }
    // Not a string: refused while the body is read (M_BAD_JSON).
    let resp = alice
        .post(&receipt_path(&r2), &json!({ "thread_id": 7 }))
        .await;
    paracord_complement::expect_error_status(
        &resp,
        StatusCode::BAD_REQUEST,
        "a thread_id that is not a string",
    );
    let resp = alice
        .post(
            &format!(
                "/rooms/{}/receipt/m.fully_read/{}",
                paracord_complement::enc(&room),
                paracord_complement::enc(&r2)
            ),
            &json!({ "thread_id": root }),
        )
        .await;
    expect_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "m.fully_read with a thread_id",
    );

    let filter = r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#;
    let sync = alice.sync(None, 0, Some(filter)).await;
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 2,
        "root and main message: {joined}"
    );
    assert_eq!(
        joined["unread_thread_notifications"][&root]["notification_count"], 2,
        "two replies: {joined}"
    );
    // Without the filter flag, one total.
    let plain = alice.sync(None, 0, None).await;
    assert_eq!(
        counts(&plain, &room).0,
        4,
        "{}",
        plain["rooms"]["join"][&room]["unread_notifications"]
    );

    expect_ok(
        alice
            .post(
                &format!(
                    "/rooms/{}/receipt/m.read/{}",
                    paracord_complement::enc(&room),
                    paracord_complement::enc(&r2)
                ),
                &json!({ "thread_id": root }),
            )
            .await,
        "threaded receipt",
    );
    let sync = alice.sync(None, 0, Some(filter)).await;
    let joined = &sync["rooms"]["join"][&room];
    assert!(
        joined["unread_thread_notifications"].get(&root).is_none(),
        "thread read: {joined}"
    );
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 2,
        "main still unread: {joined}"
    );
}

// Issue 14: threaded receipts read their thread's notifications in every count: the total
// without `unread_thread_notifications` drops what a threaded receipt read, and with it a
// thread with nothing unread is left out (and the field with it when no thread is unread).
// The receipts follow Complement's TestThreadedReceipts; mentions use `m.mentions`, the
// legacy body-matching rules being gone from the spec (v1.17, MSC4210).
#[tokio::test]
async fn threaded_receipts_read_their_thread_in_every_count() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    let mention = json!({ "user_ids": [bob.user_id] });
    let a = alice.send_text(&room, "Hello world!").await;
    let in_thread = |body: &str, mentions: Option<&serde_json::Value>| {
        let mut c = json!({ "msgtype": "m.text", "body": body,
            "m.relates_to": { "rel_type": "m.thread", "event_id": a } });
        if let Some(m) = mentions {
            c["m.mentions"] = m.clone();
        }
        c
    };
    let b = alice
        .send_event(&room, "m.room.message", &in_thread("Start thread!", None))
        .await;
    alice
        .send_event(
            &room,
            "m.room.message",
            &in_thread("Thread response", Some(&mention)),
        )
        .await;
    let d = alice
        .send_event(
            &room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": "Hello bob", "m.mentions": mention }),
        )
        .await;
    alice
        .send_event(&room, "m.room.message", &in_thread("End thread", None))
        .await;
    let f = alice
        .send_event(
            &room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": "Reference!",
                "m.relates_to": { "rel_type": "m.reference", "event_id": a } }),
        )
        .await;
    let g = alice
        .send_event(
            &room,
            "m.room.reaction",
            &json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": f, "key": "test" } }),
        )
        .await;

    let filter = r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#;
    let receipt = |event: &str, body: serde_json::Value| {
        let path = format!(
            "/rooms/{}/receipt/m.read/{}",
            paracord_complement::enc(&room),
            paracord_complement::enc(event)
        );
        let bob = &bob;
        async move { expect_ok(bob.post(&path, &body).await, "POST receipt") }
    };
    // (total, total highlights, main, main highlights, thread, thread highlights)
    let check = |step: &'static str, want: (u64, u64, u64, u64, Option<(u64, u64)>)| {
        let bob = &bob;
        let room = &room;
        let a = &a;
        async move {
            let plain = bob.sync(None, 0, None).await;
            let joined = &plain["rooms"]["join"][room];
            assert_eq!(
                counts(&plain, room),
                (want.0, want.1),
                "{step}: total counts, got {joined}"
            );
            assert!(
                joined.get("unread_thread_notifications").is_none(),
                "{step}: no thread counts without the filter flag, got {joined}"
            );
            let split = bob.sync(None, 0, Some(filter)).await;
            let joined = &split["rooms"]["join"][room];
            assert_eq!(
                counts(&split, room),
                (want.2, want.3),
                "{step}: main timeline counts, got {joined}"
            );
            match want.4 {
                Some((n, h)) => {
                    let t = &joined["unread_thread_notifications"][a.as_str()];
                    assert_eq!(
                        (
                            t["notification_count"].as_u64(),
                            t["highlight_count"].as_u64()
                        ),
                        (Some(n), Some(h)),
                        "{step}: thread counts, got {joined}"
                    );
                }
                None => assert!(
                    joined.get("unread_thread_notifications").is_none(),
                    "{step}: no thread counts when no thread is unread, got {joined}"
                ),
            }
        }
    };
    check("nothing read", (6, 2, 3, 1, Some((3, 1)))).await;
    receipt(&a, json!({ "thread_id": "main" })).await;
    check("main read up to A", (5, 2, 2, 1, Some((3, 1)))).await;
    receipt(&b, json!({ "thread_id": a })).await;
    check("thread read up to B", (4, 2, 2, 1, Some((2, 1)))).await;
    receipt(&d, json!({})).await;
    check("all read up to D", (2, 0, 1, 0, Some((1, 0)))).await;
    receipt(&g, json!({ "thread_id": a })).await;
    check("thread read up to G", (1, 0, 1, 0, None)).await;
}

#[tokio::test]
async fn room_mentions_need_power_and_sender_rules_mute() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let mod_user = server.register_random().await;
    let pleb = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    mod_user.join_ok(&room).await;
    pleb.join_ok(&room).await;
    let mut pl = alice.state_content(&room, "m.room.power_levels", "").await;
    pl["users"][&mod_user.user_id] = json!(50);
    alice.put_state(&room, "m.room.power_levels", "", &pl).await;

    let room_mention =
        |body: &str| json!({ "msgtype": "m.text", "body": body, "m.mentions": { "room": true } });
    pleb.send_event(&room, "m.room.message", &room_mention("@room from pleb"))
        .await;
    let sync = alice.sync(None, 0, None).await;
    assert_eq!(
        counts(&sync, &room).1,
        0,
        "pleb lacks notifications.room power: {}",
        sync["rooms"]["join"][&room]["unread_notifications"]
    );
    mod_user
        .send_event(&room, "m.room.message", &room_mention("@room from mod"))
        .await;
    let sync = alice.sync(None, 0, None).await;
    assert_eq!(
        counts(&sync, &room).1,
        1,
        "sender_notification_permission lets the mod highlight: {}",
        sync["rooms"]["join"][&room]["unread_notifications"]
    );

    // A sender rule with no actions silences one user (mentions would still notify: override
    // rules such as .m.rule.is_user_mention come before sender rules).
    let before = counts(&alice.sync(None, 0, None).await, &room).0;
    expect_ok(
        alice
            .put(
                &format!(
                    "/pushrules/global/sender/{}",
                    paracord_complement::enc(&pleb.user_id)
                ),
                &json!({ "actions": [] }),
            )
            .await,
        "mute pleb",
    );
    let muted = pleb
        .send_event(
            &room,
            "m.room.message",
            &json!({ "msgtype": "m.text", "body": "hello" }),
        )
        .await;
    let after = counts(&alice.sync(None, 0, None).await, &room).0;
    assert_eq!(
        after, before,
        "muted sender does not notify (event {muted})"
    );
    mod_user.send_text(&room, "hello from mod").await;
    let later = counts(&alice.sync(None, 0, None).await, &room).0;
    assert_eq!(later, before + 1, "others still notify");
}

/// Whether `user`'s push rules have a room rule for `room` that does not notify.
async fn mutes_room(user: &paracord_complement::User, room: &str) -> bool {
    let all = expect_ok(user.get("/pushrules/").await, "GET /pushrules/");
    all["global"]["room"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["rule_id"] == room && r["actions"][0] == "dont_notify")
}

// Issue 14: a user's push rule for a room follows them into the room that replaces it, when
// they join it: the upgrader through `/upgrade`, the creator of a room naming a predecessor
// (an upgrade by hand), and any other member who joins later.
#[tokio::test]
async fn room_push_rules_follow_users_into_an_upgraded_room() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let alice2 = server.register_random().await;
    for manual in [false, true] {
        let old = alice
            .create_room(&json!({ "preset": "public_chat", "room_version": "10" }))
            .await;
        alice2.join_ok(&old).await;
        for u in [&alice, &alice2] {
            expect_ok(
                u.put(
                    &format!("/pushrules/global/room/{}", paracord_complement::enc(&old)),
                    &json!({ "actions": ["dont_notify"] }),
                )
                .await,
                "PUT room push rule",
            );
        }
        let new = if manual {
            let new = alice
                .create_room(&json!({
                    "preset": "public_chat", "room_version": "11",
                    "creation_content": { "predecessor": { "room_id": old } },
                }))
                .await;
            alice
                .put_state(
                    &old,
                    "m.room.tombstone",
                    "",
                    &json!({ "body": "replaced", "replacement_room": new }),
                )
                .await;
            new
        } else {
            let up = expect_ok(
                alice
                    .post(
                        &format!("/rooms/{}/upgrade", paracord_complement::enc(&old)),
                        &json!({ "new_version": "11" }),
                    )
                    .await,
                "POST /upgrade",
            );
            up["replacement_room"]
                .as_str()
                .unwrap_or_else(|| panic!("expected a replacement_room, got {up}"))
                .to_owned()
        };
        assert!(
            mutes_room(&alice, &new).await && mutes_room(&alice, &old).await,
            "expected the upgrader's rule copied (manual: {manual})"
        );
        assert!(
            !mutes_room(&alice2, &new).await,
            "expected no copy before alice2 joins (manual: {manual})"
        );
        alice2.join_ok(&new).await;
        assert!(
            mutes_room(&alice2, &new).await,
            "expected alice2's rule copied on joining (manual: {manual})"
        );
        let sync = alice2.sync(None, 0, None).await;
        let rules = sync["account_data"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "m.push_rules")
            .cloned()
            .unwrap_or_else(|| panic!("expected m.push_rules in account data, got {sync}"));
        assert!(
            rules["content"]["global"]["room"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["rule_id"] == new.as_str()),
            "expected the copied rule in sync's account data, got {rules}"
        );
    }
}

// Issue 14: push-rule changes made at the same moment are all kept (each used to start from
// the same stored rules and the last write won, losing the others; Complement's
// TestPushRuleRoomUpgrade sets rules for one user from parallel subtests).
#[tokio::test]
async fn concurrent_push_rule_changes_are_all_kept() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let rooms: Vec<String> = (0..16)
        .map(|i| format!("!concurrent{i}:example.org"))
        .collect();
    let puts = rooms.iter().map(|room| {
        let client = alice.client.clone();
        let path = format!("/pushrules/global/room/{}", paracord_complement::enc(room));
        async move {
            expect_ok(
                client
                    .put(&path, &json!({ "actions": ["dont_notify"] }))
                    .await,
                "PUT room push rule",
            )
        }
    });
    futures::future::join_all(puts).await;
    let all = expect_ok(alice.get("/pushrules/").await, "GET /pushrules/");
    let kept: Vec<&str> = all["global"]["room"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule_id"].as_str())
        .collect();
    for room in &rooms {
        assert!(
            kept.contains(&room.as_str()),
            "expected the rule for {room} kept, got {kept:?}"
        );
    }
}

/// A pusher body for `url`.
fn http_pusher(pushkey: &str, url: &str) -> serde_json::Value {
    json!({
        "kind": "http", "app_id": "chat.paracord.test", "pushkey": pushkey,
        "app_display_name": "Test", "device_display_name": "Phone", "lang": "en",
        "data": { "url": url }, "append": true,
    })
}

/// Issue 15: a pusher's URL must be an http(s) URL whose path is exactly the notify path, with
/// no query or fragment (the old check only looked at how the URL ended), and a user's pushers
/// are capped.
#[tokio::test]
async fn pusher_urls_need_exactly_the_notify_path_and_pushers_are_capped() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    for bad in [
        "http://127.0.0.1:9/other/_matrix/push/v1/notify",
        "http://127.0.0.1:9/?/_matrix/push/v1/notify",
        "http://127.0.0.1:9/_matrix/push/v1/notify?x=1",
        "http://127.0.0.1:9/x#/_matrix/push/v1/notify",
        "http://127.0.0.1:9/_matrix/push/v1/notify#",
        "ftp://127.0.0.1:9/_matrix/push/v1/notify",
        "http:///_matrix/push/v1/notify",
    ] {
        let resp = alice.post("/pushers/set", &http_pusher("k", bad)).await;
        expect_error(&resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM", bad);
    }
    let url = "http://127.0.0.1:9/_matrix/push/v1/notify";
    for i in 0..20 {
        expect_ok(
            alice
                .post("/pushers/set", &http_pusher(&format!("key{i}"), url))
                .await,
            "a pusher within the cap",
        );
    }
    // Replacing one is not a new one; a 21st is refused.
    expect_ok(
        alice.post("/pushers/set", &http_pusher("key3", url)).await,
        "replacing a pusher",
    );
    let over = alice.post("/pushers/set", &http_pusher("key20", url)).await;
    expect_error(&over, StatusCode::FORBIDDEN, "M_FORBIDDEN", "a 21st pusher");
    let listed = expect_ok(alice.get("/pushers").await, "GET /pushers");
    assert_eq!(
        listed["pushers"].as_array().map(Vec::len),
        Some(20),
        "{listed}"
    );
}

/// Issue 15: without `ip_range_allowlist`, a push gateway on loopback is never sent to: an IP
/// literal is refused at `/pushers/set`, a name resolving to loopback at delivery, and the
/// gateway gets nothing.
#[tokio::test]
async fn push_gateways_on_loopback_are_refused_without_the_allowlist() {
    let gw = start_gateway("").await;
    let server = TestServer::start_guarded(|_| {}).await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    for host in [
        "127.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.1",
        "0.0.0.0",
    ] {
        let url = format!("http://{host}:{}/_matrix/push/v1/notify", gw.process.port);
        let resp = alice.post("/pushers/set", &http_pusher("lit", &url)).await;
        expect_error(&resp, StatusCode::BAD_REQUEST, "M_INVALID_PARAM", &url);
    }
    let by_name = format!(
        "http://localhost:{}/_matrix/push/v1/notify",
        gw.process.port
    );
    expect_ok(
        alice
            .post("/pushers/set", &http_pusher("named", &by_name))
            .await,
        "a pusher by name (resolved at delivery)",
    );
    let room = alice
        .create_room(&json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] }))
        .await;
    bob.join_ok(&room).await;
    bob.send_text(&room, "ping").await;
    assert!(
        server.wait_for_log("outbound request refused").await,
        "expected the guard to refuse the gateway; log:\n{}",
        server.log_tail(30)
    );
    let pushed = std::fs::read_to_string(&gw.out).unwrap_or_default();
    assert!(pushed.is_empty(), "the gateway got: {pushed}");
}

/// Issue 15: a push gateway's redirect is not followed (here to 127.0.0.2, outside the
/// allowlist as well): the notification never reaches the redirect's target.
#[tokio::test]
async fn push_gateway_redirects_are_not_followed() {
    use paracord_complement::network::{StubAnswer, StubHttp};
    let target = StubHttp::start(
        [127, 0, 0, 2],
        StubAnswer::ok("application/json", r#"{"rejected":[]}"#),
    )
    .await;
    let gateway = StubHttp::start(
        [127, 0, 0, 1],
        StubAnswer::redirect(
            307,
            &format!("http://{}/_matrix/push/v1/notify", target.addr()),
        ),
    )
    .await;
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_IP_RANGE_ALLOWLIST", "127.0.0.1/32");
    })
    .await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let url = format!("http://{}/_matrix/push/v1/notify", gateway.addr());
    expect_ok(
        alice.post("/pushers/set", &http_pusher("k", &url)).await,
        "set pusher",
    );
    let room = alice
        .create_room(&json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] }))
        .await;
    bob.join_ok(&room).await;
    bob.send_text(&room, "ping").await;
    // The 307 is a failed attempt, retried: a second request to the gateway means the first
    // answer was handled without following it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while gateway.requests().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "expected the gateway to be retried, got {:?}",
            gateway.requests()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(target.connections(), 0, "the redirect was followed");
}

/// Issue 15: one gateway that never answers does not delay pushes to other gateways (each
/// gateway has its own queue). Before, one worker sent every push in turn, so a hanging
/// gateway held everyone's for its timeout times its retries (over 40 seconds).
#[tokio::test]
async fn a_slow_push_gateway_does_not_delay_another_users_push() {
    use paracord_complement::network::{StubAnswer, StubHttp};
    let hanging = StubHttp::start([127, 0, 0, 1], StubAnswer::Hang).await;
    let gw = start_gateway("").await;
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let slow = format!("http://{}/_matrix/push/v1/notify", hanging.addr());
    let fast = format!(
        "http://127.0.0.1:{}/_matrix/push/v1/notify",
        gw.process.port
    );
    expect_ok(
        alice
            .post("/pushers/set", &http_pusher("alice", &slow))
            .await,
        "alice's pusher",
    );
    expect_ok(
        bob.post("/pushers/set", &http_pusher("bob", &fast)).await,
        "bob's pusher",
    );
    let with_alice = carol
        .create_room(&json!({ "preset": "trusted_private_chat", "invite": [alice.user_id] }))
        .await;
    alice.join_ok(&with_alice).await;
    let with_bob = carol
        .create_room(&json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] }))
        .await;
    bob.join_ok(&with_bob).await;
    // Alice's push first: it hangs at her gateway.
    carol.send_text(&with_alice, "to alice").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hanging.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "expected alice's gateway to be asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let event = carol.send_text(&with_bob, "to bob").await;
    let sent = std::time::Instant::now();
    let deadline = sent + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&gw.out).unwrap_or_default();
        if text.contains(&event) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob's push waited for alice's gateway; bob's gateway got: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
