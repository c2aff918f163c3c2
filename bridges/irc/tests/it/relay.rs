//! Messages, formatting, membership, nick changes, long messages, echo and reconnects.

use std::time::Duration;

use paracord_complement::User;
use serde_json::{json, Value};

use paracord_complement::irc::IrcClient;

use crate::harness::Setup;

const PUPPET: &str = "Alice_M[m]";

fn body_is(text: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == "m.room.message" && e["content"]["body"] == text
}

/// A bridged private room: alice (display name "Alice M") made it and invited the bot;
/// carol is in `channel` on IRC before the bridge starts.
async fn bridged(channel: &str) -> (Setup, User, String, IrcClient) {
    bridged_on(Setup::new().await, channel).await
}

async fn bridged_on(mut s: Setup, channel: &str) -> (Setup, User, String, IrcClient) {
    let alice = s.server.register_random().await;
    let (status, body) = alice
        .client
        .put(
            &format!(
                "/profile/{}/displayname",
                paracord_complement::enc(&alice.user_id)
            ),
            &json!({"displayname": "Alice M"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = alice
        .client
        .create_room(&json!({"preset": "private_chat", "name": "bridged"}))
        .await;
    s.create_bot().await;
    alice.client.invite_ok(&room, &s.bot_id()).await;
    let mut carol = IrcClient::connect(s.irc.port(), "carol").await;
    carol.join(channel).await;
    s.start_bridge(&[(channel, &room)]);
    carol.wait_for_member(channel, "matrixbridge").await;
    (s, alice, room, carol)
}

#[tokio::test]
async fn irc_and_matrix_talk_both_ways_without_echo() {
    let (s, alice, room, mut carol) = bridged("#talk").await;
    let carol_ghost = s.server.user_id("irc_carol");

    // IRC → Matrix: from carol's ghost, named after the nick.
    carol.privmsg("#talk", "hello from irc").await;
    let e = s
        .wait_for_event(&alice, &room, "carol's message", body_is("hello from irc"))
        .await;
    assert_eq!(e["sender"], carol_ghost.as_str());
    assert_eq!(e["content"]["msgtype"], "m.text");
    let member = s.member(&alice, &room, &carol_ghost).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["displayname"], "carol");

    // mIRC formatting → HTML; CTCP ACTION → m.emote.
    carol
        .privmsg("#talk", "\x02bold\x02 and \x1ditalic\x1d and \x0304red\x03")
        .await;
    let e = s
        .wait_for_event(
            &alice,
            &room,
            "the formatted message",
            body_is("bold and italic and red"),
        )
        .await;
    assert_eq!(e["content"]["format"], "org.matrix.custom.html");
    let html = e["content"]["formatted_body"].as_str().unwrap();
    assert!(html.contains("<b>bold</b>"), "{html}");
    assert!(html.contains("<i>italic</i>"), "{html}");
    assert!(html.contains("<font color=\"#ff0000\""), "{html}");
    carol.privmsg("#talk", "\x01ACTION waves\x01").await;
    let e = s
        .wait_for_event(&alice, &room, "the action", body_is("waves"))
        .await;
    assert_eq!(e["content"]["msgtype"], "m.emote");

    // Matrix → IRC: from alice's own connection, named after her display name.
    alice.client.send_text(&room, "hi from matrix").await;
    let m = carol
        .wait_for("alice's message", |m| {
            m.command == "PRIVMSG" && m.param(1) == "hi from matrix"
        })
        .await;
    assert_eq!(m.nick, PUPPET);
    assert_eq!(m.param(0), "#talk");

    // HTML → mIRC codes; m.emote → ACTION.
    alice
        .client
        .send_event(
            &room,
            "m.room.message",
            &json!({"msgtype": "m.text", "body": "**strong** words",
                    "format": "org.matrix.custom.html",
                    "formatted_body": "<strong>strong</strong> <em>words</em>"}),
        )
        .await;
    carol
        .wait_for("the formatted message", |m| {
            m.nick == PUPPET && m.param(1) == "\x02strong\x02 \x1dwords\x1d"
        })
        .await;
    alice
        .client
        .send_event(
            &room,
            "m.room.message",
            &json!({"msgtype": "m.emote", "body": "dances"}),
        )
        .await;
    carol
        .wait_for("the emote as an ACTION", |m| {
            m.nick == PUPPET && m.param(1) == "\x01ACTION dances\x01"
        })
        .await;

    // A reply goes without the quote of the message it answers.
    let first = e["event_id"].as_str().unwrap().to_owned();
    alice
        .client
        .send_event(
            &room,
            "m.room.message",
            &json!({"msgtype": "m.text", "body": "> <@x:y> waves\n\nwave back",
                    "m.relates_to": {"m.in_reply_to": {"event_id": first}}}),
        )
        .await;
    carol
        .wait_for("the reply", |m| {
            m.nick == PUPPET && m.param(1) == "wave back"
        })
        .await;

    // A long message: several lines under the limit, in order, nothing lost.
    let long: Vec<String> = (0..400).map(|i| format!("w{i:03}é")).collect();
    let long = long.join(" ");
    alice.client.send_text(&room, &long).await;
    let mut pieces = Vec::new();
    while pieces.join(" ").len() < long.len() {
        let m = carol
            .wait_for("the next piece of the long message", |m| {
                m.nick == PUPPET && m.command == "PRIVMSG" && m.param(1).starts_with('w')
            })
            .await;
        assert!(
            m.raw.len() + 2 <= 512,
            "a line over 512 bytes: {}",
            m.raw.len()
        );
        pieces.push(m.param(1).to_owned());
    }
    assert!(
        pieces.len() >= 3,
        "expected several lines, got {}",
        pieces.len()
    );
    assert_eq!(pieces.join(" "), long);

    // No echo: one copy of each message on each side, no ghost for alice's connection.
    carol.drain(Duration::from_secs(2)).await;
    let on_irc: Vec<&str> = carol
        .seen
        .iter()
        .filter(|m| m.command == "PRIVMSG" || m.command == "NOTICE")
        .map(|m| m.raw.as_str())
        .collect();
    assert!(
        carol
            .seen
            .iter()
            .filter(|m| m.command == "PRIVMSG" || m.command == "NOTICE")
            .all(|m| m.nick == PUPPET),
        "messages on IRC from someone else than alice's connection: {on_irc:#?}"
    );
    let on_irc_count = |text: &str| on_irc.iter().filter(|l| l.ends_with(text)).count();
    assert_eq!(on_irc_count(":hi from matrix"), 1, "{on_irc:#?}");
    let timeline = alice.client.all_messages(&room).await;
    let count = |body: &str| {
        timeline
            .iter()
            .filter(|e| e["content"]["body"] == body)
            .count()
    };
    assert_eq!(count("hello from irc"), 1);
    assert_eq!(count("hi from matrix"), 1);
    let ghost_senders: Vec<&Value> = timeline
        .iter()
        .map(|e| &e["sender"])
        .filter(|s| s.as_str().unwrap_or("").starts_with("@irc_"))
        .filter(|s| *s != carol_ghost.as_str())
        .collect();
    assert!(
        ghost_senders.is_empty(),
        "unexpected ghosts: {ghost_senders:?}"
    );
    for e in &timeline {
        if e["sender"] == carol_ghost.as_str() && e["type"] == "m.room.message" {
            let body = e["content"]["body"].as_str().unwrap_or("");
            assert!(!body.contains("matrix"), "echo of a Matrix message: {e}");
        }
    }
}

#[tokio::test]
async fn nick_changes_parts_quits_and_matrix_leaves_are_bridged() {
    let (s, alice, room, mut carol) = bridged("#members").await;
    let carol_ghost = s.server.user_id("irc_carol");
    carol.privmsg("#members", "first").await;
    s.wait_for_event(&alice, &room, "carol's message", body_is("first"))
        .await;

    // A nick change: the same ghost, renamed.
    carol.send("NICK carol2").await;
    carol.nick = "carol2".into();
    s.wait_for_member(&alice, &room, &carol_ghost, "the ghost renamed", |m| {
        m["displayname"] == "carol2"
    })
    .await;
    carol.privmsg("#members", "after rename").await;
    let e = s
        .wait_for_event(
            &alice,
            &room,
            "the renamed ghost's message",
            body_is("after rename"),
        )
        .await;
    assert_eq!(e["sender"], carol_ghost.as_str());

    // Kicked on Matrix: the ghost comes back with the next message.
    let (status, body) = alice
        .client
        .post(
            &format!("/rooms/{}/kick", paracord_complement::enc(&room)),
            &json!({"user_id": carol_ghost, "reason": "test"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    carol.privmsg("#members", "back again").await;
    let e = s
        .wait_for_event(
            &alice,
            &room,
            "the kicked ghost's message",
            body_is("back again"),
        )
        .await;
    assert_eq!(e["sender"], carol_ghost.as_str());

    // A PART: the ghost leaves.
    carol.send("PART #members :bye").await;
    s.wait_for_member(&alice, &room, &carol_ghost, "the ghost's leave", |m| {
        m["membership"] == "leave"
    })
    .await;

    // A QUIT: dave's ghost leaves.
    let mut dave = IrcClient::connect(s.irc.port(), "dave").await;
    dave.join("#members").await;
    let dave_ghost = s.server.user_id("irc_dave");
    s.wait_for_member(&alice, &room, &dave_ghost, "dave's ghost joining", |m| {
        m["membership"] == "join"
    })
    .await;
    dave.privmsg("#members", "dave here").await;
    s.wait_for_event(&alice, &room, "dave's message", body_is("dave here"))
        .await;
    dave.send("QUIT :gone").await;
    s.wait_for_member(&alice, &room, &dave_ghost, "dave's ghost leaving", |m| {
        m["membership"] == "leave"
    })
    .await;

    // Alice's connection joins when she speaks and parts when she leaves the room.
    carol.join("#members").await;
    alice.client.send_text(&room, "hello irc").await;
    carol
        .wait_for("alice's message", |m| {
            m.nick == PUPPET && m.param(1) == "hello irc"
        })
        .await;
    alice.client.leave_ok(&room).await;
    carol
        .wait_for("alice's connection leaving", |m| {
            (m.command == "PART" || m.command == "QUIT") && m.nick == PUPPET
        })
        .await;
}

#[tokio::test]
async fn the_bridge_reconnects_with_backoff_after_the_irc_server_restarts() {
    let (mut s, alice, room, mut carol) = bridged("#again").await;
    alice.client.send_text(&room, "before").await;
    carol
        .wait_for("alice's message", |m| {
            m.nick == PUPPET && m.param(1) == "before"
        })
        .await;

    // An outage of a few seconds: several failed attempts, each waiting longer.
    s.irc.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.irc.restart().await;
    let log = s.bridge_log();
    for wait in ["200ms", "400ms", "800ms"] {
        assert!(
            log.contains(&format!("reconnecting in {wait}")),
            "expected a reconnect after {wait} in the bridge log:\n{log}"
        );
    }

    let mut carol = IrcClient::connect(s.irc.port(), "carol").await;
    carol.join("#again").await;
    carol.wait_for_member("#again", "matrixbridge").await;
    carol.privmsg("#again", "after restart").await;
    let e = s
        .wait_for_event(
            &alice,
            &room,
            "the message after the restart",
            body_is("after restart"),
        )
        .await;
    assert_eq!(e["sender"], s.server.user_id("irc_carol").as_str());
    alice.client.send_text(&room, "matrix after restart").await;
    carol
        .wait_for("alice's message after the restart", |m| {
            m.nick == PUPPET && m.param(1) == "matrix after restart"
        })
        .await;
}

#[tokio::test]
async fn joining_an_irc_alias_bridges_the_channel() {
    let mut s = Setup::new().await;
    s.start_bridge(&[]);
    let alice = s.server.register_random().await;
    let mut carol = IrcClient::connect(s.irc.port(), "carol").await;
    carol.join("#dynamic").await;
    let alias = format!("#irc_dynamic:{}", s.server.server_name());
    // The bridge needs a moment to listen; the alias query fails until then.
    let deadline = std::time::Instant::now() + crate::harness::WAIT;
    let room = loop {
        let (status, body) = alice.client.join(&alias).await;
        if status == 200 {
            break body["room_id"].as_str().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected joining {alias} to succeed: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    carol.wait_for_member("#dynamic", "matrixbridge").await;
    carol.privmsg("#dynamic", "hello dynamic").await;
    s.wait_for_event(&alice, &room, "carol's message", body_is("hello dynamic"))
        .await;
    alice.client.send_text(&room, "back at you").await;
    carol
        .wait_for("alice's message", |m| m.param(1) == "back at you")
        .await;
}

#[tokio::test]
async fn a_taken_nick_gets_a_number_and_the_state_survives_a_bridge_restart() {
    let (mut s, alice, room, mut carol) = bridged("#state").await;
    let carol_ghost = s.server.user_id("irc_carol");
    // Someone on IRC already has the nick alice's connection would get.
    let mut squatter = IrcClient::connect(s.irc.port(), PUPPET).await;
    squatter.join("#state").await;
    alice.client.send_text(&room, "who am i").await;
    let m = carol
        .wait_for("alice's message", |m| m.param(1) == "who am i")
        .await;
    assert_eq!(m.nick, format!("{PUPPET}1"));

    carol.privmsg("#state", "first").await;
    s.wait_for_event(&alice, &room, "carol's message", body_is("first"))
        .await;
    carol.send("NICK carol2").await;
    carol.nick = "carol2".into();
    s.wait_for_member(&alice, &room, &carol_ghost, "the ghost renamed", |m| {
        m["displayname"] == "carol2"
    })
    .await;

    // A new bridge process reads the state file: carol2 is still carol's ghost, and
    // alice's connection comes back by itself.
    s.restart_bridge();
    carol
        .wait_for("alice's connection back", |m| {
            m.command == "JOIN" && m.nick.starts_with(PUPPET)
        })
        .await;
    carol.wait_for_member("#state", "matrixbridge").await;
    carol.privmsg("#state", "after bridge restart").await;
    let e = s
        .wait_for_event(
            &alice,
            &room,
            "the message after the bridge restart",
            body_is("after bridge restart"),
        )
        .await;
    assert_eq!(e["sender"], carol_ghost.as_str());
}

#[tokio::test]
async fn the_bridge_speaks_tls_to_the_irc_server() {
    let (s, alice, room, mut carol) = bridged_on(Setup::new_tls().await, "#secure").await;
    carol.privmsg("#secure", "over plain tcp").await;
    let e = s
        .wait_for_event(&alice, &room, "carol's message", body_is("over plain tcp"))
        .await;
    assert_eq!(e["sender"], s.server.user_id("irc_carol").as_str());
    alice.client.send_text(&room, "over tls").await;
    carol
        .wait_for("alice's message", |m| {
            m.nick == PUPPET && m.param(1) == "over tls"
        })
        .await;
    // Both of the bridge's connections came in on the TLS port.
    for nick in ["matrixbridge", PUPPET] {
        carol.send(&format!("WHOIS {nick}")).await;
        carol
            .wait_for(
                &format!("{nick} on TLS (ngircd's 275, elsewhere 671)"),
                |m| (m.command == "275" || m.command == "671") && m.param(1) == nick,
            )
            .await;
    }
}

#[tokio::test]
async fn private_messages_become_a_direct_room() {
    let (s, alice, room, mut carol) = bridged("#private").await;
    alice.client.send_text(&room, "hello").await;
    carol
        .wait_for("alice's message", |m| {
            m.nick == PUPPET && m.param(1) == "hello"
        })
        .await;

    // carol writes to alice's connection: carol's ghost invites alice to a direct room.
    carol.privmsg(PUPPET, "psst").await;
    let deadline = std::time::Instant::now() + crate::harness::WAIT;
    let direct = loop {
        let sync = alice.client.sync(None, 0, None).await;
        let invites = sync["rooms"]["invite"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some((room_id, _)) = invites.into_iter().next() {
            break room_id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected an invite to a direct room"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    alice.client.join_ok(&direct).await;
    let e = s
        .wait_for_event(&alice, &direct, "carol's private message", body_is("psst"))
        .await;
    assert_eq!(e["sender"], s.server.user_id("irc_carol").as_str());
    let member = s.member(&alice, &direct, &alice.user_id).await;
    assert_eq!(member["membership"], "join");

    // alice answers in the direct room: a private message to carol.
    alice.client.send_text(&direct, "psst back").await;
    let m = carol
        .wait_for("alice's private answer", |m| {
            m.command == "PRIVMSG" && m.param(1) == "psst back"
        })
        .await;
    assert_eq!((m.nick.as_str(), m.param(0)), (PUPPET, "carol"));

    // The same direct room the next time.
    carol.privmsg(PUPPET, "again").await;
    s.wait_for_event(
        &alice,
        &direct,
        "carol's second private message",
        body_is("again"),
    )
    .await;
}
