//! Pins and slow mode in guild channels (spec/guilds.md §9, §11; spec/rest.md §6, issue 20):
//! pins are the standard `m.room.pinned_events` state, written through the REST extension
//! or by a plain Matrix client, only with MANAGE_MESSAGES, at most 50, only of the channel;
//! the listing shows what the requester may see, newest pin first. Slow mode holds a member
//! back however many messages others sent since theirs.

use std::time::Duration;

use paracord_complement::{
    enc, expect_error, expect_ok, federation::federating_server, Client, StatusCode, TestServer,
    User,
};
use serde_json::{json, Value};

use crate::forging::Forger;

const KICK_MEMBERS: u64 = 2;
const MANAGE_MESSAGES: u64 = 8192;
const READ_MESSAGE_HISTORY: u64 = 65_536;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// `owner`'s new guild: `(guild, #general)`.
async fn new_guild(owner: &User) -> (String, String) {
    let guild = expect_ok(
        owner
            .post("/_paracord/v1/guilds", &json!({ "name": "Pins" }))
            .await,
        "create guild",
    );
    (s(&guild["id"]), s(&guild["system_channel"]))
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

/// Creates a role with `perms` and gives it to `member`.
async fn role(owner: &User, guild: &str, name: &str, perms: u64, member: &str) {
    let role = expect_ok(
        owner
            .post(
                &format!("/_paracord/v1/guilds/{}/roles", enc(guild)),
                &json!({ "name": name, "position": 1, "permissions": perms.to_string() }),
            )
            .await,
        &format!("create role {name}"),
    );
    expect_ok(
        owner
            .put(
                &format!(
                    "/_paracord/v1/guilds/{}/members/{}/roles/{}",
                    enc(guild),
                    enc(member),
                    enc(&s(&role["id"]))
                ),
                &json!({}),
            )
            .await,
        &format!("give {name} to {member}"),
    );
}

fn pins_path(channel: &str) -> String {
    format!("/_paracord/v1/channels/{}/pins", enc(channel))
}

fn pin_path(channel: &str, event: &str) -> String {
    format!("{}/{}", pins_path(channel), enc(event))
}

/// The event ids `user` is shown by `GET /pins`, in order.
async fn listed(user: &User, channel: &str) -> Vec<String> {
    let list = expect_ok(user.get(&pins_path(channel)).await, "list pins");
    list.as_array()
        .unwrap_or_else(|| panic!("pins are an array: {list}"))
        .iter()
        .map(|e| s(&e["event_id"]))
        .collect()
}

async fn put_pins(user: &User, room: &str, pinned: &Value) -> (StatusCode, Value) {
    user.put(
        &format!("/rooms/{}/state/m.room.pinned_events/", enc(room)),
        &json!({ "pinned": pinned }),
    )
    .await
}

#[tokio::test]
async fn pins_need_manage_messages_hold_fifty_events_of_the_channel_and_list_what_one_sees() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let carol = server.register_random().await;
    let dave = server.register_random().await;
    let (guild, general) = new_guild(&alice).await;
    for u in [&bob, &carol, &dave] {
        alice.invite_ok(&guild, &u.user_id).await;
        u.join_ok(&guild).await;
    }
    bob.join_ok(&general).await;
    carol.join_ok(&general).await;

    let first = alice.send_text(&general, "first").await;
    let second = bob.send_text(&general, "second").await;

    // Without MANAGE_MESSAGES: refused through the extension and through plain Matrix, even
    // at level 50 (KICK_MEMBERS), where the power levels alone would let it through.
    expect_error(
        &carol.put(&pin_path(&general, &first), &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "carol pins without MANAGE_MESSAGES",
    );
    role(&alice, &guild, "kicker", KICK_MEMBERS, &carol.user_id).await;
    let refused = put_pins(&carol, &general, &json!([first])).await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a level-50 kicker sets the pins",
    );
    assert!(
        s(&refused.1["error"]).contains("MANAGE_MESSAGES"),
        "{refused:?}"
    );

    // With it, bob pins two messages; the newest pin is listed first.
    role(&alice, &guild, "mod", MANAGE_MESSAGES, &bob.user_id).await;
    for e in [&first, &second] {
        expect_ok(
            bob.put(&pin_path(&general, e), &json!({})).await,
            "bob pins",
        );
    }
    expect_ok(
        bob.put(&pin_path(&general, &first), &json!({})).await,
        "pinning again changes nothing",
    );
    assert_eq!(
        listed(&bob, &general).await,
        [second.clone(), first.clone()]
    );
    let list = expect_ok(bob.get(&pins_path(&general)).await, "list pins");
    assert_eq!(list[0]["content"]["body"], "second", "{list}");
    assert_eq!(list[0]["sender"], bob.user_id.as_str(), "{list}");
    // A plain Matrix client reads the standard state.
    let state = alice
        .state_content(&general, "m.room.pinned_events", "")
        .await;
    assert_eq!(state, json!({ "pinned": [first, second] }));

    // Only events of the channel: another room's event is no event of this channel (404
    // through the extension, 400 through plain Matrix); unknown and malformed ids are 404.
    let elsewhere = alice.create_room(&json!({ "preset": "public_chat" })).await;
    let other = alice.send_text(&elsewhere, "elsewhere").await;
    expect_error(
        &bob.put(&pin_path(&general, &other), &json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "pinning another room's event",
    );
    expect_error(
        &put_pins(&alice, &general, &json!([first, other])).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "pins naming another room's event",
    );
    expect_error(
        &put_pins(&alice, &general, &json!("not a list")).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
        "pins that are no list",
    );
    for bad in ["$nothing", "not-an-event-id"] {
        expect_error(
            &bob.put(&pin_path(&general, bad), &json!({})).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            &format!("pinning {bad}"),
        );
    }

    // At most 50.
    let mut pinned = vec![first.clone(), second.clone()];
    for i in 0..48 {
        let e = alice.send_text(&general, &format!("m{i}")).await;
        expect_ok(bob.put(&pin_path(&general, &e), &json!({})).await, "pin");
        pinned.push(e);
    }
    let extra = alice.send_text(&general, "one too many").await;
    expect_error(
        &bob.put(&pin_path(&general, &extra), &json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "the 51st pin",
    );
    let mut too_many = pinned.clone();
    too_many.push(extra.clone());
    expect_error(
        &put_pins(&alice, &general, &json!(too_many)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "51 pins through plain Matrix, even from the owner",
    );
    assert_eq!(listed(&bob, &general).await.len(), 50);

    // Unpinning: a pinned event goes; one that is not pinned is 404.
    expect_ok(
        bob.delete(&pin_path(&general, &pinned[2]), &json!({}))
            .await,
        "unpin",
    );
    expect_error(
        &bob.delete(&pin_path(&general, &pinned[2]), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "unpinning what is not pinned",
    );
    expect_error(
        &carol.delete(&pin_path(&general, &first), &json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "carol unpins without MANAGE_MESSAGES",
    );
    expect_ok(
        bob.put(&pin_path(&general, &extra), &json!({})).await,
        "pin",
    );
    assert_eq!(listed(&bob, &general).await[0], extra);

    // Nothing a member may not see: dave joins without READ_MESSAGE_HISTORY and is shown
    // only pins from after his join; someone who cannot see the channel gets 404.
    overwrite(&alice, &general, "role:everyone", 0, READ_MESSAGE_HISTORY).await;
    dave.join_ok(&general).await;
    let later = alice.send_text(&general, "after dave").await;
    expect_ok(
        bob.delete(&pin_path(&general, &pinned[3]), &json!({}))
            .await,
        "unpin",
    );
    expect_ok(
        bob.put(&pin_path(&general, &later), &json!({})).await,
        "pin",
    );
    assert_eq!(listed(&dave, &general).await, std::slice::from_ref(&later));
    let outsider = server.register_random().await;
    expect_error(
        &outsider.get(&pins_path(&general)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an outsider lists the pins",
    );
    expect_error(
        &outsider.put(&pin_path(&general, &later), &json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an outsider pins",
    );
}

/// Issue 20: slow mode found the member's last message by reading back at most 500 events;
/// with more than that from others in between, a member could post again too early.
#[tokio::test]
async fn slow_mode_holds_a_member_back_past_five_hundred_messages_of_others() {
    let server = TestServer::start().await;
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let (guild, general) = new_guild(&alice).await;
    alice.invite_ok(&guild, &bob.user_id).await;
    bob.join_ok(&guild).await;
    bob.join_ok(&general).await;
    expect_ok(
        alice
            .patch(
                &format!("/_paracord/v1/channels/{}", enc(&general)),
                &json!({ "rate_limit_per_user": 21600 }),
            )
            .await,
        "six hours of slow mode",
    );
    bob.send_text(&general, "mine").await;
    // The owner is not held back by slow mode.
    for i in 0..510 {
        alice.send_text(&general, &format!("chatter {i}")).await;
    }
    let again = bob
        .send_with_txn(
            &general,
            "m.room.message",
            &Client::txn_id(),
            &json!({ "msgtype": "m.text", "body": "again" }),
        )
        .await;
    expect_error(
        &again,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob's second message within six hours",
    );
    assert!(s(&again.1["error"]).contains("Slow mode"), "{again:?}");
}

/// Another server's pins from a member at level 50 without MANAGE_MESSAGES are soft-failed:
/// the Matrix rules allow them, the guild's do not (a list beyond 50 is soft-failed the same
/// way, in `guilds::enforce`'s unit tests). The test
/// signs them with B's key, as a server that does not check the guild's rules would send
/// them; B itself refuses them on submission.
#[tokio::test]
async fn another_servers_pins_without_manage_messages_are_soft_failed() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register_random().await;
    let bob = b.register_random().await;
    let (guild, general) = new_guild(&alice).await;
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
    // Bob is a kicker: level 50, no MANAGE_MESSAGES.
    role(&alice, &guild, "kicker", KICK_MEMBERS, &bob.user_id).await;
    let pinned_msg = alice.send_text(&general, "pin me").await;
    // B refuses bob's own attempt once it has the new power levels and the message (a pin
    // of an event B does not hold yet is a bad request there).
    let mut tries = 0;
    loop {
        let pl = bob.get_state(&general, "m.room.power_levels", "").await.1;
        let (has_msg, _) = bob
            .get(&format!(
                "/rooms/{}/event/{}",
                enc(&general),
                enc(&pinned_msg)
            ))
            .await;
        if pl["users"][bob.user_id.as_str()] == 50 && has_msg == StatusCode::OK {
            break;
        }
        tries += 1;
        assert!(tries < 100, "B sees bob at level 50: {pl}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = put_pins(&bob, &general, &json!([pinned_msg])).await;
    expect_error(
        &refused,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "bob pins on B",
    );

    let forger = Forger::new((&a, &a_name), (&b, &b_name), &alice, &general, &bob.user_id).await;
    let forged_pins = forger.event(
        "m.room.pinned_events",
        Some(""),
        json!({ "pinned": [pinned_msg] }),
        &forger.prev,
        forger.depth + 1,
    );
    // A sibling, not a child: an event built on a soft-failed state event would carry that
    // state along, as the Matrix rules have it.
    let forged_text = forger.event(
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "from B" }),
        &forger.prev,
        forger.depth + 1,
    );
    let ids = (forged_pins.0.clone(), forged_text.0.clone());
    forger.send(vec![forged_pins, forged_text]).await;
    let (forged_pins, forged_text) = ids;
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
        !seen.contains(&forged_pins),
        "bob's pins are soft-failed: {seen:?}"
    );
    let (status, pins) = alice.get_state(&general, "m.room.pinned_events", "").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "A's channel has no pins: {pins}"
    );
    assert!(listed(&alice, &general).await.is_empty());
}
