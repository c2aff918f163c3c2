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
