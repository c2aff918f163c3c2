//! What a user who left (or was kicked or banned from) a room still sees of it: history up to
//! their leave, as the history visibility allows, and nothing after it. Bundled aggregations,
//! `/relations` and `/threads`, `/members`, search, lazy-loaded members and presence.

use std::time::{Duration, Instant};

use paracord_complement::{enc, expect_error, expect_ok, StatusCode, TestServer, User};
use serde_json::{json, Value};

fn rel(rel_type: &str, target: &str) -> Value {
    json!({ "rel_type": rel_type, "event_id": target })
}

fn ids(v: &Value) -> Vec<String> {
    v["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

async fn event(user: &User, room: &str, id: &str) -> Value {
    expect_ok(
        user.get(&format!("/rooms/{}/event/{}", enc(room), enc(id)))
            .await,
        "GET an event",
    )
}

async fn threads(user: &User, room: &str) -> Value {
    expect_ok(
        user.get(&format!("/_matrix/client/v1/rooms/{}/threads", enc(room)))
            .await,
        "GET /threads",
    )
}

async fn ban(by: &User, room: &str, user_id: &str) {
    expect_ok(
        by.post(
            &format!("/rooms/{}/ban", enc(room)),
            &json!({ "user_id": user_id, "reason": "test" }),
        )
        .await,
        "ban",
    );
}

/// `alice` owns a public room (history `shared`) that `bob` joined.
async fn alice_and_bob(server: &TestServer) -> (User, User, String) {
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    bob.join_ok(&room).await;
    (alice, bob, room)
}

// Issue 15: the thread summary, the edit and the references bundled into an event a user who
// left can still see are those sent before the leave; a thread started after it is not
// listed by `/threads`, and `/relations` lists nothing sent after it.
#[tokio::test]
async fn bundled_aggregations_and_relations_stop_at_the_readers_leave() {
    let server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob(&server).await;
    let thread_reply = |body: &str, root: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": rel("m.thread", root) });
    let edit = |body: &str, target: &str| {
        json!({
            "msgtype": "m.text",
            "body": format!("* {body}"),
            "m.new_content": { "msgtype": "m.text", "body": body },
            "m.relates_to": rel("m.replace", target),
        })
    };
    let reference = |target: &str| json!({ "msgtype": "m.text", "body": "see", "m.relates_to": rel("m.reference", target) });

    let root = alice.send_text(&room, "root").await;
    let quiet = alice.send_text(&room, "no thread yet").await;
    let reply_before = alice
        .send_event(&room, "m.room.message", &thread_reply("r1", &root))
        .await;
    let edit_before = alice
        .send_event(&room, "m.room.message", &edit("root, edited", &root))
        .await;
    let ref_before = alice
        .send_event(&room, "m.room.message", &reference(&root))
        .await;
    bob.leave_ok(&room).await;

    let reply_after = alice
        .send_event(&room, "m.room.message", &thread_reply("r2", &root))
        .await;
    let edit_after = alice
        .send_event(&room, "m.room.message", &edit("root, edited again", &root))
        .await;
    let ref_after = alice
        .send_event(&room, "m.room.message", &reference(&root))
        .await;
    let reaction_after = alice
        .send_event(
            &room,
            "m.reaction",
            &json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": "👍" } }),
        )
        .await;
    let late_thread = alice
        .send_event(&room, "m.room.message", &thread_reply("late", &quiet))
        .await;

    // Alice sees everything: the setup is what the assertions below take it to be.
    let seen_by_alice = event(&alice, &room, &root).await;
    let all = &seen_by_alice["unsigned"]["m.relations"];
    assert_eq!(all["m.thread"]["count"], 2, "{seen_by_alice}");
    assert_eq!(all["m.replace"]["event_id"], edit_after, "{seen_by_alice}");

    let seen_by_bob = event(&bob, &room, &root).await;
    let bundled = &seen_by_bob["unsigned"]["m.relations"];
    assert_eq!(
        bundled["m.thread"]["latest_event"]["event_id"], reply_before,
        "the latest thread reply bob could see, not {reply_after}: {seen_by_bob}"
    );
    assert_eq!(
        bundled["m.thread"]["count"], 1,
        "only the reply before the leave counts: {seen_by_bob}"
    );
    assert_eq!(
        bundled["m.replace"]["event_id"], edit_before,
        "the latest edit bob could see, not {edit_after}: {seen_by_bob}"
    );
    assert_eq!(
        bundled["m.reference"]["chunk"],
        json!([{ "event_id": ref_before }]),
        "only the reference before the leave, not {ref_after}: {seen_by_bob}"
    );
    let quiet_for_bob = event(&bob, &room, &quiet).await;
    assert!(
        quiet_for_bob["unsigned"]["m.relations"].is_null(),
        "a thread started after the leave ({late_thread}) is not bundled: {quiet_for_bob}"
    );

    // The same event in bob's `/messages`.
    let page = bob.messages(&room, &[("dir", "b"), ("limit", "50")]).await;
    let in_page = page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["event_id"] == root.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("expected the root in bob's /messages: {page}"));
    assert_eq!(
        in_page["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], reply_before,
        "{in_page}"
    );

    let listed = threads(&bob, &room).await;
    assert_eq!(
        ids(&listed),
        vec![root.clone()],
        "only the thread bob could see, not the one started after his leave: {listed}"
    );
    assert_eq!(
        listed["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        reply_before,
        "{listed}"
    );

    let relations = expect_ok(
        bob.get(&format!(
            "/_matrix/client/v1/rooms/{}/relations/{}",
            enc(&room),
            enc(&root)
        ))
        .await,
        "GET /relations",
    );
    let mut got = ids(&relations);
    got.sort();
    let mut want = vec![reply_before, edit_before, ref_before];
    want.sort();
    assert_eq!(
        got, want,
        "only relations from before the leave, not {reaction_after} and the others: {relations}"
    );
}

// Issue 15: `/members` for a user who left gives the members as of their leave, also when
// `at` names a later point.
#[tokio::test]
async fn members_of_a_left_room_are_those_at_the_leave_whatever_at_says() {
    let server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob(&server).await;
    let carol = server.register_random().await;
    bob.leave_ok(&room).await;
    carol.join_ok(&room).await;
    alice.send_text(&room, "after carol").await;
    let later = alice.sync_token().await;

    let members = |v: &Value| -> Vec<String> {
        v["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect()
    };
    let path = format!("/rooms/{}/members", enc(&room));
    let now = expect_ok(alice.get(&path).await, "alice's /members");
    assert!(members(&now).contains(&carol.user_id), "{now}");

    let plain = expect_ok(bob.get(&path).await, "bob's /members");
    assert!(
        !members(&plain).contains(&carol.user_id),
        "carol joined after bob left: {plain}"
    );
    let at = expect_ok(
        bob.get(&format!("{path}?at={}", enc(&later))).await,
        "bob's /members?at=<later>",
    );
    assert!(
        !members(&at).contains(&carol.user_id),
        "`at` after the leave gives no later members: {at}"
    );
    assert!(
        members(&at).contains(&alice.user_id) && members(&at).contains(&bob.user_id),
        "{at}"
    );
}

/// Polls `/search` until `user` gets `want` results.
async fn search_until(user: &User, criteria: &Value, want: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = expect_ok(
            user.post(
                "/search",
                &json!({ "search_categories": { "room_events": criteria } }),
            )
            .await,
            "POST /search",
        );
        let n = v["search_categories"]["room_events"]["results"]
            .as_array()
            .map_or(0, Vec::len);
        if n == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "expected {want} results for {criteria}, got {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Issue 15: a user who left finds only what they could see; the count does not give away
// later matches, and the room state and profiles that come with the results are those at
// their leave.
#[tokio::test]
async fn search_by_a_left_user_sees_the_room_as_at_the_leave() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let room = alice
        .create_room(&json!({ "preset": "public_chat", "name": "Before" }))
        .await;
    alice
        .put_state(
            &room,
            "m.room.member",
            &alice.user_id,
            &json!({ "membership": "join", "displayname": "Alice Before" }),
        )
        .await;
    bob.join_ok(&room).await;
    let term = paracord_complement::random_word();
    let before = alice.send_text(&room, &format!("{term} before")).await;
    bob.leave_ok(&room).await;
    alice
        .put_state(&room, "m.room.name", "", &json!({ "name": "After" }))
        .await;
    alice
        .put_state(
            &room,
            "m.room.member",
            &alice.user_id,
            &json!({ "membership": "join", "displayname": "Alice After" }),
        )
        .await;
    carol.join_ok(&room).await;
    let after = alice.send_text(&room, &format!("{term} after")).await;

    let criteria = json!({
        "search_term": term,
        "include_state": true,
        "event_context": { "before_limit": 3, "after_limit": 3, "include_profile": true },
    });
    // Once alice finds both, both are indexed.
    search_until(&alice, &criteria, 2).await;
    let found = search_until(&bob, &criteria, 1).await;
    let cat = &found["search_categories"]["room_events"];
    assert_eq!(
        cat["results"][0]["result"]["event_id"], before,
        "only the message bob could see, not {after}: {found}"
    );
    assert_eq!(
        cat["count"], 1,
        "the count leaves out what bob cannot see: {found}"
    );
    let state = cat["state"][&room]
        .as_array()
        .unwrap_or_else(|| panic!("expected the room's state: {found}"));
    let name = state
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .unwrap_or_else(|| panic!("expected the room name in the state: {found}"));
    assert_eq!(
        name["content"]["name"], "Before",
        "the name at bob's leave: {found}"
    );
    assert!(
        !state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str()),
        "carol joined after bob left: {found}"
    );
    let context = &cat["results"][0]["context"];
    for e in context["events_after"].as_array().into_iter().flatten() {
        assert_ne!(e["event_id"], after.as_str(), "{found}");
        assert_ne!(e["type"], "m.room.name", "{found}");
    }
    assert_eq!(
        context["profile_info"][&alice.user_id]["displayname"], "Alice Before",
        "alice's profile as of bob's leave: {found}"
    );
}

// Issue 15: the member events lazy-loaded with `/messages` are those at the page, not the
// current ones: a banned user learns no later profile change. `/context` lazy-loads too, and
// stops at the ban.
#[tokio::test]
async fn lazy_loaded_members_in_messages_are_from_the_page_not_after_the_ban() {
    let server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob(&server).await;
    let carol = server.register_random().await;
    carol.join_ok(&room).await;
    alice
        .put_state(
            &room,
            "m.room.member",
            &alice.user_id,
            &json!({ "membership": "join", "displayname": "Alice Before" }),
        )
        .await;
    let said = alice.send_text(&room, "hello bob").await;
    ban(&alice, &room, &bob.user_id).await;
    alice
        .put_state(
            &room,
            "m.room.member",
            &alice.user_id,
            &json!({ "membership": "join", "displayname": "Alice After" }),
        )
        .await;

    let filter = json!({ "lazy_load_members": true }).to_string();
    let page = bob
        .messages(
            &room,
            &[("dir", "b"), ("limit", "50"), ("filter", filter.as_str())],
        )
        .await;
    assert!(
        page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["event_id"] == said.as_str()),
        "bob still reads what was said before the ban: {page}"
    );
    let alice_member = page["state"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
        .unwrap_or_else(|| panic!("expected alice's member event in `state`: {page}"));
    assert_eq!(
        alice_member["content"]["displayname"], "Alice Before",
        "alice's member event as of the page, not after the ban: {page}"
    );

    // One event after `said`: the ban. Carol sent nothing in that window.
    let context = expect_ok(
        bob.get(&format!(
            "/rooms/{}/context/{}?limit=1&filter={}",
            enc(&room),
            enc(&said),
            enc(&filter)
        ))
        .await,
        "GET /context with lazy-loaded members",
    );
    let members: Vec<&Value> = context["state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .collect();
    assert!(
        !members
            .iter()
            .any(|e| e["state_key"] == carol.user_id.as_str()),
        "only the members of the senders in the context, not carol's: {context}"
    );
    let alice_member = members
        .iter()
        .find(|e| e["state_key"] == alice.user_id.as_str())
        .unwrap_or_else(|| panic!("expected alice's member event: {context}"));
    assert_eq!(
        alice_member["content"]["displayname"], "Alice Before",
        "{context}"
    );
    for e in context["events_after"].as_array().into_iter().flatten() {
        assert_ne!(
            e["state_key"],
            alice.user_id.as_str(),
            "nothing after the ban: {context}"
        );
    }
}

fn presence_senders(sync: &Value) -> Vec<String> {
    sync["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["sender"].as_str().map(str::to_owned))
        .collect()
}

async fn set_presence(user: &User, presence: &str) {
    expect_ok(
        user.put(
            &format!("/presence/{}/status", enc(&user.user_id)),
            &json!({ "presence": presence }),
        )
        .await,
        "PUT presence",
    );
}

// Issue 15: presence goes only to users who share a room with its user: `GET /presence` of
// anyone else is refused, and after leaving the only shared room no more updates arrive.
#[tokio::test]
async fn presence_is_only_for_users_sharing_a_room() {
    let server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob(&server).await;
    let stranger = server.register_random().await;
    set_presence(&alice, "online").await;
    let path = format!("/presence/{}/status", enc(&alice.user_id));

    let own = expect_ok(alice.get(&path).await, "own presence");
    assert_eq!(own["presence"], "online", "{own}");
    let shared = expect_ok(bob.get(&path).await, "presence of a room member");
    assert_eq!(shared["presence"], "online", "{shared}");
    expect_error(
        &stranger.get(&path).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "presence of a user sharing no room",
    );

    // Carol shares a room with bob only, so bob's sync has something to wake for.
    let carol = server.register_random().await;
    let other = bob.create_room(&json!({ "preset": "public_chat" })).await;
    carol.join_ok(&other).await;
    bob.leave_ok(&room).await;
    expect_error(
        &bob.get(&path).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "presence of a user after leaving the only shared room",
    );
    let since = bob.sync_token().await;
    set_presence(&alice, "unavailable").await;
    set_presence(&carol, "online").await;

    let deadline = Instant::now() + Duration::from_secs(15);
    let mut since = since;
    loop {
        let sync = bob.sync(Some(&since), 1000, None).await;
        let senders = presence_senders(&sync);
        assert!(
            !senders.contains(&alice.user_id),
            "no presence of alice after bob left their only shared room: {sync}"
        );
        if senders.contains(&carol.user_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected carol's presence in bob's sync: {sync}"
        );
        since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
    }
}
