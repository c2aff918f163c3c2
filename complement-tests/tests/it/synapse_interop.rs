//! Interoperability with Synapse (issue item 8): a real Synapse from PyPI and a Paracord,
//! federating over TLS on loopback, each named by its IP literal and port.
//!
//! One scenario, run with the room hosted on either side and in room versions 12 and 10: the
//! host's public directory is read over federation; the other side's user joins (by alias or
//! by room id) and gets the history from before the join; messages (including content that
//! tests canonical JSON), media, state changes, typing and read receipts flow both ways;
//! profiles are queried both ways; users join, leave, get invited and kicked from either side;
//! redactions go both ways; invites across servers are accepted and rejected; a knock is
//! answered; a restricted room is joined through a space, whose hierarchy is read across.
//!
//! Besides: E2EE keys and to-device messages, device-list updates, catching up after an
//! outage (`/get_missing_events`), and concurrent state changes resolved alike.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use paracord_complement::{
    e2ee::{verify_signature, FakeDevice, SIGNED_CURVE25519},
    enc, ephemeral, expect_ok,
    federation::federating_server,
    find_event, random_localpart,
    synapse::SynapseServer,
    Client, Method, User,
};
use serde_json::{json, Value};

/// Federation between two processes on a loaded machine (Synapse batches and retries): more
/// time than the one-server `WAIT`.
const FEDERATION_WAIT: Duration = Duration::from_secs(45);

/// Polls `probe` until it yields a value, failing after [`FEDERATION_WAIT`] with `what` and the
/// last thing seen.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + FEDERATION_WAIT;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "expected {what} within {FEDERATION_WAIT:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `client`'s server has `user` with `expected` membership in `room`.
async fn wait_membership(client: &Client, room: &str, user: &str, expected: &str, what: &str) {
    eventually(what, || async {
        let (status, body) = client.get_state(room, "m.room.member", user).await;
        if status == 200 && body["membership"] == expected {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

/// Waits until `client`'s server has the state event `(event_type, "")` in `room` and `check`
/// accepts its content.
async fn wait_state(
    client: &Client,
    room: &str,
    event_type: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    eventually(what, || async {
        let (status, body) = client.get_state(room, event_type, "").await;
        if status == 200 && check(&body) {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await
}

/// Waits until `client`'s server has the event `event_id` of `room` and `check` accepts it;
/// returns the event.
async fn wait_event(
    client: &Client,
    room: &str,
    event_id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        let (status, event) = client
            .get(&format!("/rooms/{}/event/{}", enc(room), enc(event_id)))
            .await;
        if status == 200 && check(&event) {
            Ok(event)
        } else {
            Err(format!("{status} {event}"))
        }
    })
    .await
}

/// Long-polls `user`'s sync until `pick` finds something in a response, failing after
/// [`FEDERATION_WAIT`].
async fn sync_until<T>(user: &User, what: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + FEDERATION_WAIT;
    let mut since: Option<String> = None;
    loop {
        let sync = user.sync(since.as_deref(), 1000, None).await;
        if let Some(found) = pick(&sync) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "expected {what} within {FEDERATION_WAIT:?}; last sync: {sync}"
        );
        since = sync["next_batch"].as_str().map(str::to_owned);
    }
}

/// Asks `asker`'s server for `user`'s profile (over federation: `user` is on the other server)
/// and checks the display name.
async fn check_profile(asker: &Client, user: &str, displayname: &str, what: &str) {
    let profile = expect_ok(asker.get(&format!("/profile/{}", enc(user))).await, what);
    assert_eq!(profile["displayname"], displayname, "{what}: got {profile}");
}

/// A message whose signature and content hash only check out when both servers encode
/// canonical JSON the same way: escapes, non-ASCII text, key order, integer limits, nesting.
fn awkward_content(from: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("from {from}: héllo 👍 \"quoted\" back\\slash\nnew line\ttab \u{1} \u{7f} \u{2028} </end>"),
        "org.example.numbers": { "max": 9007199254740991_i64, "min": -9007199254740991_i64, "zero": 0 },
        "org.example.misc": {
            "t": true, "f": false, "n": null, "empty_object": {}, "empty_array": [],
            "nested": [1, [2, { "b": 1, "a": 2 }]],
        },
        "org.example.keys": { "é": 1, "Z": 2, "a": 3, "_": 4, "10": 5, "9": 6, "": 7 },
    })
}

/// The users of one server in the scenario.
struct Side {
    /// "Synapse" or "Paracord".
    label: &'static str,
    server_name: String,
    /// Creates the room (host) or joins it (guest).
    main: User,
    /// Host: joins and leaves locally. Guest: invited, accepts.
    second: User,
    /// Host: in no room, asked for its profile. Guest: invited, rejects.
    third: User,
}

impl Side {
    async fn new(label: &'static str, server_name: String, users: [User; 3]) -> Side {
        let [main, second, third] = users;
        for (user, role) in [(&main, "main"), (&second, "second"), (&third, "third")] {
            expect_ok(
                user.put(
                    &format!("/profile/{}/displayname", enc(&user.user_id)),
                    &json!({ "displayname": format!("{label} {role}") }),
                )
                .await,
                "setting a display name",
            );
        }
        Side {
            label,
            server_name,
            main,
            second,
            third,
        }
    }
}

/// How the guest finds the room.
#[derive(Clone, Copy)]
enum JoinBy {
    /// `#alias:host`, resolved over federation (`/query/directory`).
    Alias,
    /// The room id, with the host as `via` / `server_name`.
    RoomId,
}

/// Redacts `event_id` as `user`.
async fn redact(user: &User, room: &str, event_id: &str) {
    expect_ok(
        user.put(
            &format!(
                "/rooms/{}/redact/{}/{}",
                enc(room),
                enc(event_id),
                Client::txn_id()
            ),
            &json!({ "reason": "interop test" }),
        )
        .await,
        "redacting",
    );
}

/// The room is on `host`; `guest`'s user joins it and everything flows both ways.
async fn scenario(host: &Side, guest: &Side, version: &str, join_by: JoinBy) {
    let alias_local = random_localpart();
    let alias = format!("#{alias_local}:{}", host.server_name);
    let room_name = format!("{} room", host.label);
    let room = host
        .main
        .create_room(&json!({
            "preset": "public_chat", "name": room_name, "room_version": version,
            "room_alias_name": alias_local, "visibility": "public",
        }))
        .await;

    let before = host.main.send_text(&room, "before the join").await;

    // The host's public room directory, asked through the guest (`/publicRooms` over
    // federation).
    eventually(
        "the room in the host's directory, seen from the guest",
        || async {
            let path = format!("/publicRooms?server={}&limit=50", enc(&host.server_name));
            let (status, body) = guest.main.get(&path).await;
            let listed = body["chunk"].as_array().is_some_and(|chunk| {
                chunk
                    .iter()
                    .any(|r| r["room_id"] == room.as_str() && r["name"] == room_name.as_str())
            });
            if status == 200 && listed {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;

    // The join: make_join/send_join against the host.
    let path = match join_by {
        JoinBy::Alias => format!("/join/{}", enc(&alias)),
        JoinBy::RoomId => format!(
            "/join/{}?via={}&server_name={}",
            enc(&room),
            enc(&host.server_name),
            enc(&host.server_name)
        ),
    };
    let (status, body) = guest.main.post(&path, &json!({})).await;
    assert_eq!(status, 200, "{} joins the {room_name}: {body}", guest.label);
    assert_eq!(body["room_id"], room.as_str(), "the joined room: {body}");
    let create = guest.main.state_content(&room, "m.room.create", "").await;
    assert_eq!(
        create["room_version"], version,
        "room version on the guest: {create}"
    );
    let name = guest.main.state_content(&room, "m.room.name", "").await;
    assert_eq!(
        name["name"],
        room_name.as_str(),
        "the room state reached the guest"
    );
    let host_member = guest
        .main
        .state_content(&room, "m.room.member", &host.main.user_id)
        .await;
    assert_eq!(
        host_member["membership"], "join",
        "the host's creator on the guest"
    );
    wait_membership(
        &host.main,
        &room,
        &guest.main.user_id,
        "join",
        "the guest's join on the host",
    )
    .await;

    // History from before the join (the joining server asks for recent events).
    eventually("the history from before the join on the guest", || async {
        let timeline = guest.main.all_messages(&room).await;
        if timeline.iter().any(|e| e["event_id"] == before.as_str()) {
            Ok(())
        } else {
            Err(format!("{timeline:?}"))
        }
    })
    .await;

    // Messages both ways.
    let from_host = host.main.send_text(&room, "hello from the host").await;
    wait_event(
        &guest.main,
        &room,
        &from_host,
        "host → guest message",
        |e| {
            e["content"]["body"] == "hello from the host"
                && e["sender"] == host.main.user_id.as_str()
        },
    )
    .await;
    let from_guest = guest.main.send_text(&room, "hello from the guest").await;
    wait_event(
        &host.main,
        &room,
        &from_guest,
        "guest → host message",
        |e| {
            e["content"]["body"] == "hello from the guest"
                && e["sender"] == guest.main.user_id.as_str()
        },
    )
    .await;
    // Content that only survives if both sides agree on canonical JSON (a content hash that
    // does not match makes Synapse redact the event; a bad signature makes either drop it).
    for (from, to) in [(host, guest), (guest, host)] {
        let content = awkward_content(from.label);
        let id = from
            .main
            .send_event(&room, "m.room.message", &content)
            .await;
        let seen = wait_event(
            &to.main,
            &room,
            &id,
            &format!("{} → {} awkward message", from.label, to.label),
            |e| e["content"].get("msgtype").is_some(),
        )
        .await;
        assert_eq!(
            seen["content"], content,
            "{}'s message as {} sees it",
            from.label, to.label
        );
    }

    // Media both ways: a file uploaded on one server, downloaded through the other
    // (authenticated media over federation), bytes and type intact.
    for (from, to) in [(host, guest), (guest, host)] {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let upload = from
            .main
            .raw(
                Method::POST,
                "/_matrix/media/v3/upload?filename=interop.bin",
                Some((bytes.clone(), "application/octet-stream")),
            )
            .await;
        assert_eq!(
            upload.status, 200,
            "upload on {}: {}",
            from.label, upload.text
        );
        let mxc = upload.body["content_uri"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (server, media_id) = mxc
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_else(|| panic!("an mxc URI from {}: {}", from.label, upload.text));
        assert_eq!(server, from.server_name, "the media's server");
        from.main
            .send_event(
                &room,
                "m.room.message",
                &json!({ "msgtype": "m.file", "body": "interop.bin", "url": mxc }),
            )
            .await;
        let download = to
            .main
            .raw(
                Method::GET,
                &format!("/_matrix/client/v1/media/download/{server}/{media_id}"),
                None,
            )
            .await;
        let what = format!("{}'s media downloaded through {}", from.label, to.label);
        assert_eq!(download.status, 200, "{what}: {}", download.text);
        assert_eq!(
            download
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/octet-stream"),
            "{what}"
        );
        let got = to
            .main
            .raw(
                Method::GET,
                &format!("/_matrix/client/v1/media/download/{server}/{media_id}"),
                None,
            )
            .await;
        assert_eq!(got.status, 200, "{what}, again (cached): {}", got.text);
        assert!(
            download.bytes == bytes && got.bytes == bytes,
            "{what}: the bytes differ"
        );
    }

    // State both ways: the host sets the topic and raises the guest; the guest renames.
    host.main
        .put_state(
            &room,
            "m.room.topic",
            "",
            &json!({ "topic": "set on the host" }),
        )
        .await;
    wait_state(
        &guest.main,
        &room,
        "m.room.topic",
        "the topic on the guest",
        |c| c["topic"] == "set on the host",
    )
    .await;
    let mut levels = host
        .main
        .state_content(&room, "m.room.power_levels", "")
        .await;
    levels["users"][&guest.main.user_id] = json!(100);
    host.main
        .put_state(&room, "m.room.power_levels", "", &levels)
        .await;
    wait_state(
        &guest.main,
        &room,
        "m.room.power_levels",
        "the guest's power on the guest",
        |c| c["users"][&guest.main.user_id] == 100,
    )
    .await;
    guest
        .main
        .put_state(
            &room,
            "m.room.name",
            "",
            &json!({ "name": "renamed by the guest" }),
        )
        .await;
    wait_state(
        &host.main,
        &room,
        "m.room.name",
        "the new name on the host",
        |c| c["name"] == "renamed by the guest",
    )
    .await;

    // Profiles over federation, of members and of users who share no room; unknown users.
    let askers = [
        (host, guest, &guest.second, "second"),
        (guest, host, &host.third, "third"),
    ];
    for (asker, other, loner, role) in askers {
        let what = format!("{} asks for a {} profile", asker.label, other.label);
        check_profile(
            &asker.main,
            &other.main.user_id,
            &format!("{} main", other.label),
            &what,
        )
        .await;
        check_profile(
            &asker.main,
            &loner.user_id,
            &format!("{} {role}", other.label),
            &what,
        )
        .await;
        let nobody = format!("@{}:{}", random_localpart(), other.server_name);
        let (status, body) = asker.main.get(&format!("/profile/{}", enc(&nobody))).await;
        assert_eq!(status, 404, "{what}: an unknown user's profile: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "{what}: got {body}");
    }

    // Typing and read receipts both ways.
    for (from, to) in [(host, guest), (guest, host)] {
        let typist = &from.main;
        expect_ok(
            typist
                .put(
                    &format!("/rooms/{}/typing/{}", enc(&room), enc(&typist.user_id)),
                    &json!({ "typing": true, "timeout": 30000 }),
                )
                .await,
            "typing",
        );
        let what = format!("{}'s typing on {}", from.label, to.label);
        sync_until(&to.main, &what, |sync| {
            let events = ephemeral(sync, &room);
            let typing = find_event(&events, "m.typing")?["content"]["user_ids"].as_array()?;
            typing
                .iter()
                .any(|u| u == typist.user_id.as_str())
                .then_some(())
        })
        .await;
        // A receipt for the reader's server's own message.
        let read = if std::ptr::eq(to, host) {
            &from_host
        } else {
            &from_guest
        };
        expect_ok(
            typist
                .post(
                    &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(read)),
                    &json!({}),
                )
                .await,
            "a read receipt",
        );
        let what = format!("{}'s read receipt on {}", from.label, to.label);
        sync_until(&to.main, &what, |sync| {
            ephemeral(sync, &room)
                .iter()
                .filter(|e| e["type"] == "m.receipt")
                .find_map(|e| {
                    e["content"][read.as_str()]["m.read"]
                        .get(typist.user_id.as_str())
                        .cloned()
                })
        })
        .await;
    }

    // A second user of the host joins and leaves: the guest sees both.
    host.second.join_ok(&room).await;
    wait_membership(
        &guest.main,
        &room,
        &host.second.user_id,
        "join",
        "a local join on the guest",
    )
    .await;
    host.second.leave_ok(&room).await;
    wait_membership(
        &guest.main,
        &room,
        &host.second.user_id,
        "leave",
        "a local leave on the guest",
    )
    .await;

    // The guest (raised to 100 above) invites a user of the host, who joins, then kicks
    // them: an invite and a kick made on the guest's server about a user of the host.
    guest.main.invite_ok(&room, &host.third.user_id).await;
    sync_until(&host.third, "the guest's invite on the host", |sync| {
        sync["rooms"]["invite"].get(&room).map(|_| ())
    })
    .await;
    host.third.join_ok(&room).await;
    wait_membership(
        &guest.main,
        &room,
        &host.third.user_id,
        "join",
        "the invited host user's join on the guest",
    )
    .await;
    expect_ok(
        guest
            .main
            .post(
                &format!("/rooms/{}/kick", enc(&room)),
                &json!({ "user_id": host.third.user_id, "reason": "interop test" }),
            )
            .await,
        "the guest kicks a user of the host",
    );
    eventually("the guest's kick on the host", || async {
        let state = host.main.full_state(&room).await;
        let member = state.iter().find(|e| {
            e["type"] == "m.room.member" && e["state_key"] == host.third.user_id.as_str()
        });
        match member {
            Some(m)
                if m["content"]["membership"] == "leave"
                    && m["sender"] == guest.main.user_id.as_str() =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Redactions both ways.
    for (from, to, event_id) in [(host, guest, &from_host), (guest, host, &from_guest)] {
        redact(&from.main, &room, event_id).await;
        let what = format!("{}'s redaction on {}", from.label, to.label);
        wait_event(&to.main, &room, event_id, &what, |e| {
            e["content"].as_object().is_some_and(|c| c.is_empty())
        })
        .await;
    }

    // Invites across servers to an invite-only room: one accepted, one rejected.
    let private_name = format!("{} invitation", host.label);
    let private = host
        .main
        .create_room(&json!({
            "preset": "private_chat", "name": private_name, "room_version": version,
        }))
        .await;
    host.main.invite_ok(&private, &guest.second.user_id).await;
    host.main.invite_ok(&private, &guest.third.user_id).await;
    let invite = sync_until(&guest.second, "the invite on the guest", |sync| {
        sync["rooms"]["invite"].get(&private).cloned()
    })
    .await;
    let invite_state = invite["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        invite_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == private_name.as_str()),
        "the invite carries the room's name: {invite}"
    );
    guest.second.join_ok(&private).await;
    wait_membership(
        &host.main,
        &private,
        &guest.second.user_id,
        "join",
        "the invitee's join on the host",
    )
    .await;
    let thanks = guest
        .second
        .send_text(&private, "thanks for the invite")
        .await;
    wait_event(
        &host.main,
        &private,
        &thanks,
        "the invitee's message on the host",
        |e| e["content"]["body"] == "thanks for the invite",
    )
    .await;
    sync_until(&guest.third, "the second invite on the guest", |sync| {
        sync["rooms"]["invite"].get(&private).map(|_| ())
    })
    .await;
    guest.third.leave_ok(&private).await;
    wait_membership(
        &host.main,
        &private,
        &guest.third.user_id,
        "leave",
        "the rejection on the host",
    )
    .await;

    // Knocking (room version 7 and later): the guest knocks on the host's knock-only room
    // and is let in.
    let number: u32 = version.parse().unwrap_or(u32::MAX);
    let via = |room: &str| {
        format!(
            "{}?via={h}&server_name={h}",
            enc(room),
            h = enc(&host.server_name)
        )
    };
    if number >= 7 {
        let knock_room = host
        .main
        .create_room(&json!({
            "preset": "private_chat", "room_version": version,
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" },
            }],
        }))
        .await;
        let (status, body) = guest
            .main
            .post(
                &format!("/knock/{}", via(&knock_room)),
                &json!({ "reason": "let me in" }),
            )
            .await;
        assert_eq!(status, 200, "the guest knocks: {body}");
        wait_membership(
            &host.main,
            &knock_room,
            &guest.main.user_id,
            "knock",
            "the knock on the host",
        )
        .await;
        host.main.invite_ok(&knock_room, &guest.main.user_id).await;
        sync_until(&guest.main, "the host's answer to the knock", |sync| {
            sync["rooms"]["invite"].get(&knock_room).map(|_| ())
        })
        .await;
        guest.main.join_ok(&knock_room).await;
        wait_membership(
            &host.main,
            &knock_room,
            &guest.main.user_id,
            "join",
            "the knocker's join on the host",
        )
        .await;
    }

    // A restricted room (room version 8 and later): refused until the guest is in the space
    // that grants access, then
    if number >= 8 {
        // joined on the authority of a user of the host; the space's hierarchy from the guest.
        let space = host
            .main
            .create_room(&json!({
                "preset": "public_chat", "room_version": version, "name": "a space",
                "creation_content": { "type": "m.space" },
            }))
            .await;
        let restricted = host
            .main
            .create_room(&json!({
                "preset": "private_chat", "room_version": version, "name": "restricted",
                "initial_state": [{
                    "type": "m.room.join_rules", "state_key": "",
                    "content": {
                        "join_rule": "restricted",
                        "allow": [{ "type": "m.room_membership", "room_id": space }],
                    },
                }],
            }))
            .await;
        host.main
            .put_state(
                &space,
                "m.space.child",
                &restricted,
                &json!({ "via": [host.server_name] }),
            )
            .await;
        let (status, body) = guest
            .main
            .post(&format!("/join/{}", via(&restricted)), &json!({}))
            .await;
        assert_eq!(
            status, 403,
            "a restricted room before joining the space: {body}"
        );
        let (status, body) = guest
            .main
            .post(&format!("/join/{}", via(&space)), &json!({}))
            .await;
        assert_eq!(status, 200, "the guest joins the space: {body}");
        let (status, body) = guest
            .main
            .post(&format!("/join/{}", via(&restricted)), &json!({}))
            .await;
        assert_eq!(status, 200, "the restricted room once in the space: {body}");
        let member = host
            .main
            .state_content(&restricted, "m.room.member", &guest.main.user_id)
            .await;
        assert_eq!(
            member["membership"], "join",
            "the restricted join on the host: {member}"
        );
        let authoriser = member["join_authorised_via_users_server"]
            .as_str()
            .unwrap_or_default();
        assert!(
            authoriser.ends_with(&format!(":{}", host.server_name)),
            "a user of the host authorised the join: {member}"
        );
        let hierarchy = expect_ok(
            guest
                .main
                .get(&format!(
                    "/_matrix/client/v1/rooms/{}/hierarchy",
                    enc(&space)
                ))
                .await,
            "the space's hierarchy from the guest",
        );
        let rooms = hierarchy["rooms"].as_array().cloned().unwrap_or_default();
        assert!(
            rooms
                .iter()
                .any(|r| r["room_id"] == space.as_str() && r["room_type"] == "m.space")
                && rooms
                    .iter()
                    .any(|r| r["room_id"] == restricted.as_str() && r["name"] == "restricted"),
            "the space and its child in the hierarchy: {hierarchy}"
        );
    }

    // The guest leaves: the host sees it.
    guest.main.leave_ok(&room).await;
    wait_membership(
        &host.main,
        &room,
        &guest.main.user_id,
        "leave",
        "the guest's leave on the host",
    )
    .await;
}

/// Starts one Synapse and one Paracord (in parallel) with three users each.
async fn start() -> (SynapseServer, paracord_complement::TestServer, Side, Side) {
    let (synapse, (paracord, paracord_name)) =
        tokio::join!(SynapseServer::start(), federating_server());
    let synapse_users = [
        synapse.register_random().await,
        synapse.register_random().await,
        synapse.register_random().await,
    ];
    let paracord_users = [
        paracord.register_random().await,
        paracord.register_random().await,
        paracord.register_random().await,
    ];
    let s = Side::new("Synapse", synapse.server_name(), synapse_users).await;
    let p = Side::new("Paracord", paracord_name, paracord_users).await;
    (synapse, paracord, s, p)
}

#[tokio::test]
async fn a_paracord_user_joins_a_synapse_room_v12_by_alias() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&s, &p, "12", JoinBy::Alias).await;
}

#[tokio::test]
async fn a_paracord_user_joins_a_synapse_room_v10_by_id() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&s, &p, "10", JoinBy::RoomId).await;
}

#[tokio::test]
async fn a_synapse_user_joins_a_paracord_room_v12_by_alias() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&p, &s, "12", JoinBy::Alias).await;
}

#[tokio::test]
async fn a_synapse_user_joins_a_paracord_room_v10_by_id() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&p, &s, "10", JoinBy::RoomId).await;
}

/// Issue 14: rooms of every stable version. Version 1 has `$opaque:server` event ids,
/// `[id, hashes]` event references and state resolution v1; version 3 the first
/// reference-hash ids (standard base64, with `/` and `+` to escape in paths); version 5 the
/// last without strict canonical JSON.
#[tokio::test]
async fn a_synapse_user_joins_a_paracord_room_v1_by_id() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&p, &s, "1", JoinBy::RoomId).await;
}

#[tokio::test]
async fn a_paracord_user_joins_a_synapse_room_v3_by_alias() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&s, &p, "3", JoinBy::Alias).await;
}

#[tokio::test]
async fn a_paracord_user_joins_a_synapse_room_v5_by_id() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&s, &p, "5", JoinBy::RoomId).await;
}

#[tokio::test]
async fn a_synapse_user_joins_a_paracord_room_v9_by_alias() {
    let (_synapse, _paracord, s, p) = start().await;
    scenario(&p, &s, "9", JoinBy::Alias).await;
}

/// Device keys go both ways through `/user/keys/query`, one-time keys through
/// `/user/keys/claim`, and a to-device message from Synapse reaches Paracord
/// (`m.direct_to_device`), while the users share no room: every answer comes over
/// federation. Then, in a shared room, a new device on either side shows up on the other
/// (`m.device_list_update`, `/user/devices`).
#[tokio::test]
async fn device_keys_one_time_keys_to_device_messages_and_device_lists_cross_servers() {
    let (synapse, paracord, s, p) = start().await;
    let (sam, pat) = (&s.main, &p.main);
    let sam_device = FakeDevice::new(&sam.user_id, &sam.device_id);
    let pat_device = FakeDevice::new(&pat.user_id, &pat.device_id);
    for (user, device) in [(sam, &sam_device), (pat, &pat_device)] {
        expect_ok(
            user.post(
                "/keys/upload",
                &json!({
                    "device_keys": device.device_keys(),
                    "one_time_keys": device.one_time_keys(2),
                }),
            )
            .await,
            "uploading device and one-time keys",
        );
    }
    for (asker, owner, device) in [(sam, pat, &pat_device), (pat, sam, &sam_device)] {
        let what = format!("{} asks for {}'s device keys", asker.user_id, owner.user_id);
        let answer = expect_ok(
            asker
                .post(
                    "/keys/query",
                    &json!({ "device_keys": { &owner.user_id: [] } }),
                )
                .await,
            &what,
        );
        let keys = &answer["device_keys"][&owner.user_id][&owner.device_id];
        let uploaded = device.device_keys();
        for field in ["user_id", "device_id", "algorithms", "keys", "signatures"] {
            assert_eq!(
                keys[field], uploaded[field],
                "{what}: `{field}` in {answer}"
            );
        }
        assert!(
            verify_signature(
                keys,
                &owner.user_id,
                &device.key_id(),
                &device.ed25519.public_key()
            ),
            "{what}: the device's signature checks out: {keys}"
        );

        let what = format!(
            "{} claims a one-time key of {}",
            asker.user_id, owner.user_id
        );
        let answer = expect_ok(
            asker
                .post(
                    "/keys/claim",
                    &json!({
                        "one_time_keys": { &owner.user_id: { &owner.device_id: SIGNED_CURVE25519 } },
                    }),
                )
                .await,
            &what,
        );
        let claimed = answer["one_time_keys"][&owner.user_id][&owner.device_id]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(claimed.len(), 1, "{what}: one key in {answer}");
        let (key_id, key) = claimed.iter().next().unwrap_or_else(|| panic!("{what}"));
        assert!(
            key_id.starts_with("signed_curve25519:"),
            "{what}: got {answer}"
        );
        assert!(
            verify_signature(
                key,
                &owner.user_id,
                &device.key_id(),
                &device.ed25519.public_key()
            ),
            "{what}: the key's signature checks out: {key}"
        );
    }

    let content = json!({ "algorithm": "m.test", "body": "a secret for pat's device" });
    expect_ok(
        sam.put(
            &format!("/sendToDevice/m.test.interop/{}", Client::txn_id()),
            &json!({ "messages": { &pat.user_id: { &pat.device_id: content } } }),
        )
        .await,
        "Synapse sends a to-device message",
    );
    let event = sync_until(pat, "Synapse's to-device message on Paracord", |sync| {
        sync["to_device"]["events"]
            .as_array()?
            .iter()
            .find(|e| e["type"] == "m.test.interop")
            .cloned()
    })
    .await;
    assert_eq!(event["sender"], sam.user_id.as_str(), "got {event}");
    assert_eq!(event["content"], content, "got {event}");

    // Device lists once they share a room: each server hears of the other's new device
    // (`m.device_list_update`). Synapse keeps the device lists of users it shares a room
    // with and only refetches them when told to; it answered with the stale list while
    // Paracord's update named a previous id Synapse knew (fixed: no previous id, so Synapse
    // takes a new snapshot).
    let room = sam
        .create_room(&json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = pat
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&s.server_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "pat joins: {body}");
    for (asker, owner) in [(sam, pat), (pat, sam)] {
        let known = expect_ok(
            asker
                .post(
                    "/keys/query",
                    &json!({ "device_keys": { &owner.user_id: [] } }),
                )
                .await,
            "device keys once in a shared room",
        );
        assert!(
            known["device_keys"][&owner.user_id][&owner.device_id].is_object(),
            "got {known}"
        );
    }
    // A new device for each: logged in, with keys.
    let pat_new = paracord.login(&pat.localpart, &pat.password).await;
    let sam_new = synapse.login(sam).await;
    for (asker, owner, new) in [(sam, pat, &pat_new), (pat, sam, &sam_new)] {
        let since = asker.sync_token().await;
        let device = FakeDevice::new(&new.user_id, &new.device_id);
        expect_ok(
            new.post(
                "/keys/upload",
                &json!({ "device_keys": device.device_keys() }),
            )
            .await,
            "keys of the new device",
        );
        let what = format!(
            "{}'s new device in {}'s device list changes",
            owner.user_id, asker.user_id
        );
        let mut since = Some(since);
        let deadline = Instant::now() + FEDERATION_WAIT;
        loop {
            let sync = asker.sync(since.as_deref(), 1000, None).await;
            let changed = sync["device_lists"]["changed"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if changed.iter().any(|u| u == owner.user_id.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expected {what}; last sync: {sync}"
            );
            since = sync["next_batch"].as_str().map(str::to_owned);
        }
        let what = format!(
            "{}'s new device in {}'s key query",
            owner.user_id, asker.user_id
        );
        eventually(&what, || async {
            let answer = expect_ok(
                asker
                    .post(
                        "/keys/query",
                        &json!({ "device_keys": { &owner.user_id: [] } }),
                    )
                    .await,
                &what,
            );
            let keys = &answer["device_keys"][&owner.user_id][&new.device_id];
            if keys["keys"] == device.device_keys()["keys"] {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        })
        .await;
    }
}

/// Paracord is down while Synapse's room moves on, and Synapse restarts meanwhile (dropping
/// its in-memory queue). Once Paracord is back, Synapse sends only the room's latest event
/// (its catch-up mode), and Paracord fetches the events in between with `/get_missing_events`.
#[tokio::test]
async fn a_paracord_server_that_was_down_catches_up_with_a_synapse_room() {
    let (mut synapse, mut paracord, s, p) = start().await;
    let admin = synapse.register_admin().await;
    let (sam, pat) = (&s.main, &p.main);
    let room = sam
        .create_room(&json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = pat
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&s.server_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "pat joins: {body}");
    // One PDU delivered, so Synapse has a position to catch up from.
    let before = sam.send_text(&room, "before the outage").await;
    wait_event(pat, &room, &before, "the first message on Paracord", |_| {
        true
    })
    .await;

    paracord.kill9();
    let mut missed = Vec::new();
    for i in 1..=3 {
        missed.push(sam.send_text(&room, &format!("missed {i}")).await);
    }
    // Wait until Synapse has failed to reach Paracord (so it is in catch-up mode).
    let destination = format!(
        "/_synapse/admin/v1/federation/destinations/{}",
        enc(&p.server_name)
    );
    eventually("Synapse marks Paracord as unreachable", || async {
        let (status, body) = admin.get(&destination).await;
        if status == 200 && body["failure_ts"].is_u64() {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;

    synapse.restart().await;
    paracord.restart().await;
    // A request from Paracord tells Synapse it is back.
    pat.send_text(&room, "back again").await;
    for (i, id) in missed.iter().enumerate() {
        let body = format!("missed {}", i + 1);
        wait_event(pat, &room, id, "a missed message on Paracord", |e| {
            e["content"]["body"] == body.as_str()
        })
        .await;
    }
    let timeline = paracord_complement::bodies(&pat.all_messages(&room).await);
    for body in ["before the outage", "missed 1", "missed 2", "missed 3"] {
        assert!(
            timeline.iter().any(|b| b == body),
            "{body:?} in Paracord's timeline: {timeline:?}"
        );
    }
}

/// The event ids of `room`'s current `m.room.name` and `m.room.power_levels` as `client`'s
/// server has them.
async fn name_and_levels(client: &Client, room: &str) -> (Value, Value) {
    let state = client.full_state(room).await;
    let id_of = |event_type: &str| {
        state
            .iter()
            .find(|e| e["type"] == event_type && e["state_key"] == "")
            .map(|e| e["event_id"].clone())
            .unwrap_or(Value::Null)
    };
    (id_of("m.room.name"), id_of("m.room.power_levels"))
}

/// Whether `ancestor` is among the `prev_events` ancestors of `event` on Synapse (through its
/// admin API, which shows events as they travel over federation).
async fn is_ancestor(admin: &User, ancestor: &str, event: &str) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut queue = vec![event.to_owned()];
    while let Some(id) = queue.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let fetched = expect_ok(
            admin
                .get(&format!("/_synapse/admin/v1/fetch_event/{}", enc(&id)))
                .await,
            "an event from Synapse's admin API",
        );
        for prev in fetched["event"]["prev_events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            // An event id, or in room versions 1 and 2 an `[id, {"sha256": …}]` pair.
            let prev = prev
                .as_str()
                .or_else(|| prev[0].as_str())
                .unwrap_or_default();
            if prev == ancestor {
                return true;
            }
            queue.push(prev.to_owned());
        }
    }
    false
}

/// Both servers change the same state at the same moment, repeatedly, and one of them takes
/// away the other's power while that other renames the room: the room forks, and both servers
/// must resolve it to the same state (state resolution v2, v2.1 in room version 12, and v1 in
/// room version 1).
#[tokio::test]
async fn concurrent_state_changes_resolve_the_same_on_both_servers() {
    let (synapse, _paracord, s, p) = start().await;
    let admin = synapse.register_admin().await;
    let (sam, pat) = (&s.main, &p.main);
    for version in ["12", "10", "1"] {
        let room = sam
            .create_room(&json!({ "preset": "public_chat", "room_version": version }))
            .await;
        let (status, body) = pat
            .post(
                &format!("/join/{}?via={}", enc(&room), enc(&s.server_name)),
                &json!({}),
            )
            .await;
        assert_eq!(status, 200, "pat joins: {body}");
        let mut levels = sam.state_content(&room, "m.room.power_levels", "").await;
        levels["users"][&pat.user_id] = json!(50);
        sam.put_state(&room, "m.room.power_levels", "", &levels)
            .await;
        wait_state(
            pat,
            &room,
            "m.room.power_levels",
            "pat's power on Paracord",
            |c| c["users"][&pat.user_id] == 50,
        )
        .await;

        for round in 0..4 {
            let (by_sam, by_pat) = (
                json!({ "name": format!("sam {round}") }),
                json!({ "name": format!("pat {round}") }),
            );
            tokio::join!(
                sam.put_state(&room, "m.room.name", "", &by_sam),
                pat.put_state(&room, "m.room.name", "", &by_pat),
            );
        }
        // Sam demotes pat while pat renames: pat's rename must lose on both servers.
        levels["users"][&pat.user_id] = json!(0);
        let demoted = json!({ "name": "pat, demoted" });
        let (demotion, doomed) = tokio::join!(
            sam.put_state(&room, "m.room.power_levels", "", &levels),
            pat.put_state(&room, "m.room.name", "", &demoted),
        );
        // Something after the fork from each side, so both resolve the same extremities.
        sam.send_text(&room, "after the fork (sam)").await;
        pat.send_text(&room, "after the fork (pat)").await;

        let what = format!("the same name and power levels on both servers (v{version})");
        let (name_id, _) = eventually(&what, || async {
            let on_synapse = name_and_levels(sam, &room).await;
            let on_paracord = name_and_levels(pat, &room).await;
            if on_synapse == on_paracord && !on_synapse.0.is_null() {
                Ok(on_synapse)
            } else {
                Err(format!("Synapse {on_synapse:?}, Paracord {on_paracord:?}"))
            }
        })
        .await;
        // Usually the two are concurrent and pat's rename loses; if Synapse had pat's rename
        // before it made the demotion, the rename came first and stands.
        if is_ancestor(&admin, &doomed, &demotion).await {
            assert_eq!(
                name_id,
                doomed.as_str(),
                "the rename came first (v{version})"
            );
        } else {
            assert_ne!(
                name_id,
                doomed.as_str(),
                "a rename by a user demoted concurrently stays out of the state (v{version})"
            );
        }
        let levels_now = pat.state_content(&room, "m.room.power_levels", "").await;
        assert_eq!(
            levels_now["users"][&pat.user_id], 0,
            "the demotion holds on Paracord (v{version})"
        );
    }
}

/// A state event from Synapse that forks the room on Paracord (it does not follow Paracord's
/// latest event, which Synapse has not seen) still changes Paracord's current state. Paracord
/// used to resolve the forked room's current state without the arriving event itself (not
/// yet readable from the batch being written), so the topic stayed unset until some later
/// event joined the two branches.
#[tokio::test]
async fn a_state_event_that_forks_the_room_reaches_the_current_state() {
    let (mut synapse, mut paracord, s, p) = start().await;
    let admin = synapse.register_admin().await;
    let (sam, pat) = (&s.main, &p.main);
    let room = sam
        .create_room(&json!({ "preset": "public_chat", "room_version": "12" }))
        .await;
    let (status, body) = pat
        .post(
            &format!("/join/{}?via={}", enc(&room), enc(&s.server_name)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "pat joins: {body}");
    wait_membership(sam, &room, &pat.user_id, "join", "pat's join on Synapse").await;
    // One PDU delivered, so Synapse catches up from there later.
    let hello = sam.send_text(&room, "hello").await;
    wait_event(pat, &room, &hello, "sam's message on Paracord", |_| true).await;

    // Each side moves on while the other is down: pat's message waits in Paracord's queue,
    // then Synapse's topic (which cannot follow it) waits in Synapse's.
    synapse.stop();
    let from_pat = pat.send_text(&room, "while Synapse is down").await;
    paracord.kill9();
    synapse.restart().await;
    let topic = sam
        .put_state(
            &room,
            "m.room.topic",
            "",
            &json!({ "topic": "set while apart" }),
        )
        .await;
    let destination = format!(
        "/_synapse/admin/v1/federation/destinations/{}",
        enc(&p.server_name)
    );
    eventually("Synapse marks Paracord as unreachable", || async {
        let (status, body) = admin.get(&destination).await;
        if status == 200 && body["failure_ts"].is_u64() {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;

    // Paracord back: its message tells Synapse it is up, and Synapse catches up with the
    // topic, which forks Paracord's room.
    paracord.restart().await;
    wait_event(sam, &room, &from_pat, "pat's message on Synapse", |_| true).await;
    let fetched = expect_ok(
        admin
            .get(&format!("/_synapse/admin/v1/fetch_event/{}", enc(&topic)))
            .await,
        "the topic event on Synapse",
    );
    assert_eq!(
        fetched["event"]["prev_events"],
        json!([hello]),
        "the topic follows sam's message only: {fetched}"
    );
    wait_state(pat, &room, "m.room.topic", "the topic on Paracord", |c| {
        c["topic"] == "set while apart"
    })
    .await;
}
