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
