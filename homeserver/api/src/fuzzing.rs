//! Entry points for the fuzz targets of `homeserver/fuzz` (issue 15) whose input is read in
//! this crate first: the `/send` body as ruma and the handler read it, `/_paracord/v1` bodies,
//! and the directory's paging. Like `paracord_service::fuzzing`, they panic only where the
//! code broke a promise of its own; the seed corpus and the crash inputs run through them in
//! `cargo test` (the tests below).

use paracord_service::{fuzzing as service, guilds::permissions::EVERYONE};
use ruma::api::federation::transactions::send_transaction_message;
use serde_json::{json, Value};

use crate::{
    paracord::{array_of, guilds::new_guild, json_of, object_of, relay::relayed_request, wire},
    ruma_wrapper::{check_body_json, ruma_request},
};

/// `PUT /_matrix/federation/v1/send/{txnId}` from `remote.test`: `<txnId>\n<body>`. The body
/// as the extractor reads it (JSON, then ruma's request type), the handler's checks and
/// conversion, then the service's part ([`service::transaction`]).
pub fn send_transaction(data: &[u8]) {
    let (txn_id, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"1"[..], data),
    };
    let txn_id = String::from_utf8_lossy(txn_id).into_owned();
    let method = http::Method::PUT;
    if check_body_json(&method, body).is_err() {
        return;
    }
    let Ok(request) = http::Request::builder()
        .method(method)
        .uri("/_matrix/federation/v1/send/txn")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(())
    else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let Ok(txn) = ruma_request::<send_transaction_message::v1::Request>(parts, &[txn_id], body)
    else {
        return;
    };
    let origin = <&ruma::ServerName>::try_from("remote.test")
        .unwrap_or_else(|e| unreachable!("a server name: {e}"));
    if paracord_service::federation::pdus::check_transaction_origin(&txn, origin).is_ok() {
        service::transaction(&txn.pdus, &txn.edus);
    }
}

/// A `/_paracord/v1` request body: read as the extractors read it (any JSON, then an object
/// or an array), as `POST /guilds` reads it, and as the guild host reads a relayed request
/// from `remote.test`; then every body reader of the handlers ([`guild_bodies`]).
pub fn paracord_bodies(data: &[u8]) {
    let _ = new_guild(data);
    let origin = <&ruma::ServerName>::try_from("remote.test")
        .unwrap_or_else(|e| unreachable!("a server name: {e}"));
    if let Ok(relayed) = relayed_request(data, origin, "local.test") {
        assert!(relayed.uri.path().starts_with("/_paracord/v1/"));
        assert_eq!(relayed.user.server_name(), origin);
    }
    let Ok(value) = json_of(data) else {
        return;
    };
    let _ = array_of(value.clone());
    let _ = object_of(value.clone());
    webhook_bodies(data, &value);
    guild_bodies(value);
}

/// The readers of a webhook execution: the body as Discord's (JSON, and as the multipart
/// body it may be), Slack's and GitHub's (for each kind of event), and the events they make,
/// whose HTML never carries a tag from the input.
fn webhook_bodies(data: &[u8], value: &Value) {
    use paracord_service::guilds::webhooks::render;
    let check = |m: &render::Message| {
        let content = render::text_content(m);
        let html = content["formatted_body"].as_str().unwrap_or_default();
        assert!(
            !html.to_ascii_lowercase().contains("<script") && !html.contains("<img"),
            "unescaped HTML: {html}"
        );
        assert!(content["body"].is_string());
    };
    let _ = crate::paracord::webhooks::multipart_body(
        "multipart/form-data; boundary=XyZ",
        data,
        1 << 20,
    );
    if let Ok(m) = render::discord(value.clone(), None, Vec::new()) {
        check(&m);
    }
    if let Ok(m) = render::slack(value.clone()) {
        check(&m);
    }
    for event in ["push", "issues", "pull_request", "ping", "star"] {
        if let Ok(Some(m)) = render::github(event, value.clone()) {
            check(&m);
        }
    }
}

/// A request type of [`wire`] read from a body of its shape: reading never fails on a field
/// (each is an [`wire::Input`]), which is a promise of the wire module.
fn read<T: serde::de::DeserializeOwned>(body: &Value) -> T {
    wire::read(body.clone())
        .unwrap_or_else(|e| unreachable!("a body of the right shape is read: {e}"))
}

/// Every reader of a `/_paracord/v1` body of that shape (an object or an array), as the
/// handlers run them before they touch the guild.
fn guild_bodies(body: Value) {
    if body.is_array() {
        let _ = wire::channel_moves(read(&body));
        if let Ok(moves) = wire::role_moves(read(&body)) {
            for (i, m) in moves.iter().enumerate() {
                assert!(
                    !moves[..i].iter().any(|other| other.id == m.id),
                    "role {} moved twice",
                    m.id
                );
            }
        }
        return;
    }
    if !body.is_object() {
        return;
    }
    let _ = read::<wire::UpdateGuild>(&body).check();
    let _ = read::<wire::CreateChannel>(&body).check();
    let _ = read::<wire::UpdateChannel>(&body).check();
    let _ = read::<wire::CreateRole>(&body).check();
    let _ = read::<wire::UpdateRole>(&body).check();
    if let Ok(changes) = read::<wire::UpdateMember>(&body).check(1_700_000_000_000) {
        if let Some(roles) = &changes.roles {
            for (i, id) in roles.iter().enumerate() {
                assert!(
                    id != EVERYONE && !roles[..i].contains(id),
                    "roles {roles:?}"
                );
            }
        }
    }
    let _ = read::<wire::PutBan>(&body).check();
    let _ = read::<wire::CreateInvite>(&body).check();
    let _ = read::<wire::CreateWebhook>(&body).check();
    let _ = read::<wire::UpdateWebhook>(&body).check();
    let ids = ["role:everyone", "user:@a:local.test", "role:", "user:x"];
    let from_body = body.get("id").and_then(Value::as_str);
    for id in ids.into_iter().chain(from_body) {
        let _ = read::<wire::PutOverwrite>(&body).check(id);
    }
}

/// A pagination token ([`service::tokens`]), also as the room directory's `since` over a list
/// whose length and page size the token's first two bytes choose.
pub fn tokens(data: &[u8]) {
    service::tokens(data);
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let bytes = token.as_bytes();
    let total = usize::from(bytes.first().copied().unwrap_or(0) % 64);
    let limit = bytes.get(1).map(|b| u64::from(*b % 32));
    let all: Vec<Value> = (0..total).map(|i| json!(i)).collect();
    let Ok(body) = paracord_service::rooms::directory::public_rooms_page(all, Some(token), limit)
    else {
        return;
    };
    let chunk = body["chunk"].as_array().map_or(0, Vec::len);
    let most = limit.map_or(usize::MAX, |l| {
        usize::try_from(l.max(1)).unwrap_or(usize::MAX)
    });
    assert!(chunk <= most, "{chunk} rooms in a page of {most}");
    for key in ["next_batch", "prev_batch"] {
        if let Some(next) = body[key].as_str() {
            assert!(
                paracord_service::tokens::parse_offset_token::<usize>('p', next).is_some(),
                "{key} {next} does not parse"
            );
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn fuzz_send_transaction_inputs() {
        service::run_saved_inputs("send_transaction", send_transaction);
    }

    #[test]
    fn fuzz_paracord_bodies_inputs() {
        service::run_saved_inputs("paracord_bodies", paracord_bodies);
    }

    #[test]
    fn fuzz_tokens_inputs() {
        service::run_saved_inputs("tokens", tokens);
    }
}
