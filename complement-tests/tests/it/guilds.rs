//! The Paracord profile's guilds through `/_paracord/v1` (spec/rest.md §5–7), and how a guild
//! looks to plain Matrix clients: a space whose channels are restricted rooms.

use paracord_complement::{enc, expect_ok, Method, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn a_new_guild_has_everyone_a_category_and_general_and_is_a_space_to_matrix_clients() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let guild = expect_ok(
        alice
            .post(
                "/_paracord/v1/guilds",
                &json!({ "name": "Rustaceans", "description": "Talk about Rust" }),
            )
            .await,
        "POST /_paracord/v1/guilds",
    );
    let id = guild["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with('!'), "got {guild}");
    assert_eq!(guild["owner"], alice.user_id.as_str());
    assert_eq!(guild["version"], "1");
    assert_eq!(guild["name"], "Rustaceans");
    let channels = guild["channels"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = channels.iter().filter_map(|c| c["kind"].as_str()).collect();
    assert_eq!(kinds, ["category", "text"], "got {guild}");
    let general = channels[1]["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(channels[1]["name"], "general");
    assert_eq!(channels[1]["parent"], channels[0]["id"]);
    assert_eq!(guild["system_channel"], general.as_str());
    assert_eq!(
        guild["roles"],
        json!([{ "id": "everyone", "name": "@everyone", "color": 0, "position": 0,
                 "hoist": false, "mentionable": false, "permissions": "563327981178433" }])
    );
    // Reading it back.
    let again = expect_ok(
        alice
            .get(&format!("/_paracord/v1/guilds/{}", enc(&id)))
            .await,
        "GET guild",
    );
    assert_eq!(again["system_channel"], general.as_str());
    let listed = expect_ok(
        alice
            .get(&format!("/_paracord/v1/guilds/{}/channels", enc(&id)))
            .await,
        "GET channels",
    );
    assert_eq!(listed, Value::Array(channels.clone()));
    // Not a member: as if it did not exist.
    let (status, body) = bob.get(&format!("/_paracord/v1/guilds/{}", enc(&id))).await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // Seen from Matrix: a space listing its channels, which its members join.
    let hierarchy = expect_ok(
        alice
            .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&id)))
            .await,
        "hierarchy",
    );
    let mut names: Vec<&str> = hierarchy["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["Rustaceans", "Text Channels", "general"],
        "got {hierarchy}"
    );
    let (status, body) = bob.join(&general).await;
    assert_eq!(status.as_u16(), 403, "not in the guild yet: {body}");
    alice.invite_ok(&id, &bob.user_id).await;
    bob.join_ok(&id).await;
    bob.join_ok(&general).await;
    bob.send_text(&general, "hello guild").await;
    // The projected power levels: everyone may send, the owner (creator, v12) is not listed.
    let pl = alice
        .state_content(&general, "m.room.power_levels", "")
        .await;
    assert_eq!(pl["users_default"], 1, "got {pl}");
    assert_eq!(pl["events_default"], 1, "got {pl}");
    assert!(pl["users"].get(&alice.user_id).is_none(), "got {pl}");
    assert_eq!(pl["events"]["m.room.power_levels"], 90, "got {pl}");
}

#[tokio::test]
async fn creating_a_guild_checks_its_input() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    for (body, errcode) in [
        (json!({}), "M_MISSING_PARAM"),
        (json!({ "name": "" }), "M_INVALID_PARAM"),
        (json!({ "name": 5 }), "M_BAD_JSON"),
        (
            json!({ "name": "x", "icon": "https://example.org/a.png" }),
            "M_INVALID_PARAM",
        ),
    ] {
        let (status, answer) = alice.post("/_paracord/v1/guilds", &body).await;
        assert_eq!(status.as_u16(), 400, "{body} → {answer}");
        assert_eq!(answer["errcode"], errcode, "{body} → {answer}");
    }
    let reply = alice
        .client
        .raw(
            Method::POST,
            "/_paracord/v1/guilds",
            Some((b"not json".to_vec(), "application/json")),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 400);
    let (status, _) = server
        .client()
        .post("/_paracord/v1/guilds", &json!({ "name": "x" }))
        .await;
    assert_eq!(status.as_u16(), 401, "no token");
    let (status, body) = alice.get("/_paracord/v1/guilds/!nope:x").await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );
}
