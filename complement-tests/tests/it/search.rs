//! Full-text search (`POST /search`): ranking and recent order, filters, context, groupings,
//! pagination, visibility, redaction and rebuilding the index.

use paracord_complement::{enc, expect_ok, StatusCode, TestServer, User};
use serde_json::{json, Value};

async fn search(user: &User, criteria: Value, next: Option<&str>) -> Value {
    let path = match next {
        Some(n) => format!("/search?next_batch={}", enc(n)),
        None => "/search".to_owned(),
    };
    expect_ok(
        user.post(
            &path,
            &json!({ "search_categories": { "room_events": criteria } }),
        )
        .await,
        "POST /search",
    )
}

fn ids(v: &Value) -> Vec<String> {
    v["search_categories"]["room_events"]["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x["result"]["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Indexing is committed every half second: poll until the expected count appears.
async fn search_until(user: &User, criteria: Value, want: usize) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = search(user, criteria.clone(), None).await;
        if ids(&v).len() == want {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {want} results for {criteria}, got {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn search_finds_visible_messages_with_order_filters_context_and_groups() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Zoo" }))
        .await;
    bob.join_ok(&room).await;
    let private = carol
        .create_room(&json!({ "preset": "private_chat" }))
        .await;
    let quick = alice.send_text(&room, "the quick brown fox").await;
    bob.send_text(&room, "a lazy dog sleeps").await;
    // A later millisecond for the date-range check below.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = bob.send_text(&room, "fox again, foxes everywhere").await;
    carol.send_text(&private, "a secret fox").await;

    let found = search_until(&alice, json!({ "search_term": "fox" }), 2).await;
    let got = ids(&found);
    assert!(
        got.contains(&quick) && got.contains(&again),
        "both visible fox messages: {found}"
    );
    let cat = &found["search_categories"]["room_events"];
    assert_eq!(
        cat["count"], 2,
        "carol's private room is not searched: {found}"
    );
    assert!(
        cat["highlights"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "fox"),
        "{found}"
    );
    assert!(cat["results"][0]["rank"].is_number(), "{found}");
    // Issue 14: every word of the term must match.
    let both = search(&alice, json!({ "search_term": "quick fox" }), None).await;
    assert_eq!(ids(&both), vec![quick.clone()], "{both}");
    assert_eq!(
        both["search_categories"]["room_events"]["count"], 1,
        "{both}"
    );

    let recent = search(
        &alice,
        json!({ "search_term": "fox", "order_by": "recent" }),
        None,
    )
    .await;
    assert_eq!(
        ids(&recent),
        vec![again.clone(), quick.clone()],
        "newest first: {recent}"
    );

    let by_bob = search(
        &alice,
        json!({ "search_term": "fox", "filter": { "senders": [bob.user_id] } }),
        None,
    )
    .await;
    assert_eq!(ids(&by_bob), vec![again.clone()], "{by_bob}");
    let names = search_until(
        &alice,
        json!({ "search_term": "zoo", "keys": ["content.name"] }),
        1,
    )
    .await;
    assert_eq!(
        names["search_categories"]["room_events"]["results"][0]["result"]["type"], "m.room.name",
        "{names}"
    );

    let with_ctx = search(
        &alice,
        json!({ "search_term": "lazy", "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
                "groupings": { "group_by": [{ "key": "room_id" }] } }),
        None,
    )
    .await;
    let result = &with_ctx["search_categories"]["room_events"]["results"][0];
    assert_eq!(
        result["context"]["events_before"][0]["event_id"],
        quick.as_str(),
        "{with_ctx}"
    );
    assert_eq!(
        result["context"]["events_after"][0]["event_id"],
        again.as_str(),
        "{with_ctx}"
    );
    assert!(
        result["context"]["profile_info"][&bob.user_id].is_object()
            || result["context"]["profile_info"][&alice.user_id].is_object(),
        "{with_ctx}"
    );
    let groups = &with_ctx["search_categories"]["room_events"]["groups"]["room_id"][&room];
    assert_eq!(
        groups["results"].as_array().map(Vec::len),
        Some(1),
        "{with_ctx}"
    );

    // Date range (Paracord extension keys in the filter).
    let ts_of = |v: Value| v["origin_server_ts"].as_u64().unwrap();
    let quick_ts = ts_of(expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&quick)))
            .await,
        "GET event",
    ));
    let again_ts = ts_of(expect_ok(
        alice
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&again)))
            .await,
        "GET event",
    ));
    assert!(again_ts > quick_ts, "sent at least 5 ms apart");
    let until_quick = search(
        &alice,
        json!({ "search_term": "fox", "filter": { "org.paracord.until_ts": quick_ts } }),
        None,
    )
    .await;
    assert_eq!(
        ids(&until_quick),
        vec![quick.clone()],
        "only the earlier event: {until_quick}"
    );
    let from_again = search(
        &alice,
        json!({ "search_term": "fox", "filter": { "org.paracord.from_ts": again_ts } }),
        None,
    )
    .await;
    assert_eq!(
        ids(&from_again),
        vec![again.clone()],
        "only the later event: {from_again}"
    );

    let page1 = search(
        &alice,
        json!({ "search_term": "fox", "order_by": "recent", "filter": { "limit": 1 } }),
        None,
    )
    .await;
    assert_eq!(ids(&page1), vec![again.clone()], "{page1}");
    let next = page1["search_categories"]["room_events"]["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let page2 = search(
        &alice,
        json!({ "search_term": "fox", "order_by": "recent", "filter": { "limit": 1 } }),
        Some(&next),
    )
    .await;
    assert_eq!(ids(&page2), vec![quick.clone()], "{page2}");
    // Issue 14: a full page has a next one; the page after the last is empty, without one.
    let next = page2["search_categories"]["room_events"]["next_batch"]
        .as_str()
        .expect("next_batch after a full page")
        .to_owned();
    let page3 = search(
        &alice,
        json!({ "search_term": "fox", "order_by": "recent", "filter": { "limit": 1 } }),
        Some(&next),
    )
    .await;
    assert!(ids(&page3).is_empty(), "{page3}");
    assert!(
        page3["search_categories"]["room_events"]["next_batch"].is_null(),
        "{page3}"
    );
}

#[tokio::test]
async fn redacted_events_leave_the_index_and_admins_can_rebuild_it() {
    let server = TestServer::start().await;
    // No account is an admin for being registered first (issue 15): register one as such.
    let admin = server
        .admin_register(&paracord_complement::random_localpart(), true)
        .await;
    let bob = server.register_random().await;
    let room = admin.create_room(&json!({})).await;
    let gone = admin.send_text(&room, "embarrassing typo").await;
    admin.send_text(&room, "kept message").await;
    search_until(&admin, json!({ "search_term": "embarrassing" }), 1).await;
    expect_ok(
        admin
            .put(
                &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&gone)),
                &json!({}),
            )
            .await,
        "redact",
    );
    search_until(&admin, json!({ "search_term": "embarrassing" }), 0).await;

    let denied = bob
        .post("/_paracord/v1/admin/search/rebuild", &json!({}))
        .await;
    assert_eq!(denied.0, StatusCode::FORBIDDEN, "{denied:?}");
    let rebuilt = expect_ok(
        admin
            .post("/_paracord/v1/admin/search/rebuild", &json!({}))
            .await,
        "rebuild",
    );
    assert!(
        rebuilt["indexed_events"].as_u64().unwrap_or(0) >= 1,
        "{rebuilt}"
    );
    let after = search_until(&admin, json!({ "search_term": "kept" }), 1).await;
    assert_eq!(ids(&after).len(), 1, "{after}");
    let still_gone = search(&admin, json!({ "search_term": "embarrassing" }), None).await;
    assert!(
        ids(&still_gone).is_empty(),
        "redacted stays out after a rebuild: {still_gone}"
    );
}
