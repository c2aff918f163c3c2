//! The router in process: requests go through `router::app` (extractors, authentication,
//! error mapping, the typed responses) against a real RocksDB in a temporary directory, with
//! no listener and no second process. The black-box suite in complement-tests drives a real
//! server over HTTP; these tests catch the same classes of mistake in seconds.

// The helpers below are part of the tests: a failure stops the test there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, StatusCode},
    Router,
};
use paracord_core::Config;
use paracord_service::Services;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A server on a fresh database, and an account on it.
struct Server {
    _dir: tempfile::TempDir,
    app: Router,
    token: String,
    user_id: String,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let services = Services::open(config).unwrap();
    let login = services
        .accounts
        .register(
            Some("alice"),
            Some("a long enough password".into()),
            None,
            None,
            false,
            false,
            None,
        )
        .await
        .unwrap();
    Server {
        _dir: dir,
        app: paracord_api::router::app(Arc::new(services)),
        token: login.access_token,
        user_id: login.user_id.to_string(),
    }
}

/// The status and JSON body of one request.
async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let mut req = req
        .body(Body::from(body.map(<[u8]>::to_vec).unwrap_or_default()))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path} answered no JSON ({e}): {bytes:?}"))
    };
    (status, json)
}

async fn get(s: &Server, path: &str) -> (StatusCode, Value) {
    call(&s.app, Method::GET, path, Some(&s.token), None).await
}

async fn send(s: &Server, method: Method, path: &str, body: &Value) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).unwrap();
    call(&s.app, method, path, Some(&s.token), Some(&bytes)).await
}

#[tokio::test]
async fn versions_answer_without_a_token() {
    let s = server().await;
    let (status, body) = call(&s.app, Method::GET, "/_matrix/client/versions", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let versions = body["versions"].as_array().expect("a versions list");
    assert!(
        versions.iter().any(|v| v == "v1.1"),
        "expected v1.1 among {versions:?}"
    );
    let (status, body) = call(&s.app, Method::GET, "/_paracord/v1/versions", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["versions"], json!(["1"]));
}

#[tokio::test]
async fn unknown_endpoints_and_methods_are_unrecognized() {
    let s = server().await;
    let (status, body) = get(&s, "/_matrix/client/v3/no_such_endpoint").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{body}");
    let (status, body) = send(
        &s,
        Method::DELETE,
        "/_matrix/client/v3/account/whoami",
        &json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{body}");
}

#[tokio::test]
async fn a_token_is_required_and_checked() {
    let s = server().await;
    let path = "/_matrix/client/v3/account/whoami";
    let (status, body) = call(&s.app, Method::GET, path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_MISSING_TOKEN", "{body}");
    let (status, body) = call(&s.app, Method::GET, path, Some("not-a-token"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{body}");
    let (status, body) = get(&s, path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], s.user_id.as_str(), "{body}");
}

#[tokio::test]
async fn bad_bodies_get_matrix_errors() {
    let s = server().await;
    let path = "/_matrix/client/v3/createRoom";
    let (status, body) = call(&s.app, Method::POST, path, Some(&s.token), Some(b"{")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_NOT_JSON", "{body}");
    let (status, body) = send(&s, Method::POST, path, &json!({ "preset": 7 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_BAD_JSON", "{body}");
    // Nothing was created by either.
    let (_, rooms) = get(&s, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(rooms["joined_rooms"], json!([]), "{rooms}");
}

#[tokio::test]
async fn a_message_goes_in_and_comes_back_through_sync_and_messages() {
    let s = server().await;
    let (status, created) = send(
        &s,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        &json!({ "name": "in process" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().expect("a room id").to_owned();
    let (status, sent) = send(
        &s,
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
        &json!({ "msgtype": "m.text", "body": "hello" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let event_id = sent["event_id"].as_str().expect("an event id").to_owned();
    // The same transaction id gives the same event.
    let (_, again) = send(
        &s,
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
        &json!({ "msgtype": "m.text", "body": "hello" }),
    )
    .await;
    assert_eq!(again["event_id"], event_id.as_str(), "{again}");

    let (status, sync) = get(&s, "/_matrix/client/v3/sync").await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert!(sync["next_batch"].is_string(), "{sync}");
    let joined = &sync["rooms"]["join"][&room];
    let timeline = joined["timeline"]["events"].as_array().expect("a timeline");
    assert_eq!(
        timeline.last().map(|e| &e["event_id"]),
        Some(&json!(event_id)),
        "{sync}"
    );
    assert_eq!(joined["summary"]["m.joined_member_count"], 1, "{sync}");
    // Complement reads `limited` whenever there is a timeline, and an empty `ephemeral`.
    assert_eq!(joined["timeline"]["limited"], false, "{sync}");
    assert_eq!(joined["ephemeral"], json!({ "events": [] }), "{sync}");
    assert_eq!(
        joined["unread_notifications"]["notification_count"], 0,
        "{sync}"
    );

    let (status, page) = get(
        &s,
        &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"][0]["content"]["body"], "hello", "{page}");

    // An incremental sync from the token has nothing new.
    let since = sync["next_batch"].as_str().unwrap();
    let (status, next) = get(&s, &format!("/_matrix/client/v3/sync?since={since}")).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert!(next["rooms"]["join"].get(&room).is_none(), "{next}");
}

#[tokio::test]
async fn filters_round_trip() {
    let s = server().await;
    let user = s.user_id.clone();
    let filter = json!({ "room": { "timeline": { "limit": 3, "types": ["m.room.message"] } } });
    let (status, created) = send(
        &s,
        Method::POST,
        &format!("/_matrix/client/v3/user/{user}/filter"),
        &filter,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["filter_id"].as_str().expect("a filter id");
    let (status, read) = get(&s, &format!("/_matrix/client/v3/user/{user}/filter/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read, filter);
    let (status, body) = get(&s, &format!("/_matrix/client/v3/user/{user}/filter/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND", "{body}");
}

#[tokio::test]
async fn search_results_page_back_with_next_batch() {
    let s = server().await;
    let (_, created) = send(
        &s,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        &json!({}),
    )
    .await;
    let room = created["room_id"].as_str().expect("a room id").to_owned();
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, sent) = send(
            &s,
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s{i}"),
            &json!({ "msgtype": "m.text", "body": format!("Message number {i}") }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        ids.push(sent["event_id"].as_str().unwrap().to_owned());
    }
    let body = json!({ "search_categories": { "room_events": {
        "keys": ["content.body"], "search_term": "Message", "order_by": "recent",
        "filter": { "limit": 10, "rooms": [room] },
    } } });
    let page_ids = |page: &Value| -> Vec<String> {
        page["search_categories"]["room_events"]["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results in {page}"))
            .iter()
            .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, first) = send(&s, Method::POST, "/_matrix/client/v3/search", &body).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        first["search_categories"]["room_events"]["count"], 20,
        "{first}"
    );
    let newest: Vec<String> = ids[10..].iter().rev().cloned().collect();
    assert_eq!(page_ids(&first), newest);
    let next = first["search_categories"]["room_events"]["next_batch"]
        .as_str()
        .expect("a next_batch")
        .to_owned();
    let (status, second) = send(
        &s,
        Method::POST,
        &format!("/_matrix/client/v3/search?next_batch={next}"),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let oldest: Vec<String> = ids[..10].iter().rev().cloned().collect();
    assert_eq!(page_ids(&second), oldest);
    // The page after the last is empty, with its `results` key all the same.
    let last = second["search_categories"]["room_events"]["next_batch"]
        .as_str()
        .expect("a next_batch after a full page")
        .to_owned();
    let (status, third) = send(
        &s,
        Method::POST,
        &format!("/_matrix/client/v3/search?next_batch={last}"),
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{third}");
    assert!(page_ids(&third).is_empty(), "{third}");
}

#[tokio::test]
async fn joined_members_always_name_their_profile_fields() {
    let s = server().await;
    let (_, created) = send(
        &s,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        &json!({}),
    )
    .await;
    let room = created["room_id"].as_str().expect("a room id").to_owned();
    let (status, body) = get(
        &s,
        &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let me = &body["joined"][&s.user_id];
    assert!(me.get("display_name").is_some(), "{body}");
    assert_eq!(me.get("avatar_url"), Some(&Value::Null), "{body}");
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_not_json() {
    let s = server().await;
    let (status, body) = call(
        &s.app,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        Some(&s.token),
        Some(b"{\"name\":\"\xff\"}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errcode"], "M_NOT_JSON", "{body}");
}

#[tokio::test]
async fn public_rooms_say_they_are_public() {
    let s = server().await;
    let (status, created) = send(
        &s,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        &json!({ "visibility": "public", "preset": "public_chat", "name": "open" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (status, page) = get(&s, "/_matrix/client/v3/publicRooms").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["chunk"][0]["room_id"], created["room_id"], "{page}");
    assert_eq!(page["chunk"][0]["join_rule"], "public", "{page}");
}

/// A built web client as the `paracord` binary embeds it: an index, a hashed script with its
/// gzip copy, and a file at the root.
static WEB: &[paracord_api::web::WebAsset] = &[
    paracord_api::web::WebAsset {
        path: "index.html",
        mime: "text/html; charset=utf-8",
        body: b"<!doctype html><title>app</title>",
        gzip: None,
    },
    paracord_api::web::WebAsset {
        path: "assets/index-Ab12.js",
        mime: "text/javascript; charset=utf-8",
        body: b"console.log(1)",
        gzip: Some(b"\x1f\x8bfake-gzip"),
    },
    paracord_api::web::WebAsset {
        path: "favicon.svg",
        mime: "image/svg+xml",
        body: b"<svg/>",
        gzip: None,
    },
];

/// One raw request: status, headers and body bytes.
async fn raw(
    app: &Router,
    method: Method,
    path: &str,
    accept_encoding: Option<&str>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = accept_encoding {
        req = req.header("accept-encoding", a);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, parts.headers, bytes.to_vec())
}

fn web_app() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let services = Services::open(config).unwrap();
    (dir, paracord_api::app_with_web(Arc::new(services), WEB))
}

#[tokio::test]
async fn the_web_client_is_served_at_the_root_and_on_its_routes() {
    let (_dir, app) = web_app();
    for path in [
        "/",
        "/login",
        "/invite/hT4k9QzP",
        "/channels/!a:example.org/!b:example.org",
    ] {
        let (status, headers, body) = raw(&app, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body, b"<!doctype html><title>app</title>", "{path}");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(directive), "{directive} missing from {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
    }
    let (status, headers, body) = raw(&app, Method::GET, "/favicon.svg", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"<svg/>");
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert_eq!(headers["cache-control"], "no-cache");
}

#[tokio::test]
async fn hashed_assets_are_immutable_and_gzipped_when_accepted() {
    let (_dir, app) = web_app();
    let path = "/assets/index-Ab12.js";
    let (status, headers, body) = raw(&app, Method::GET, path, Some("gzip, br")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"\x1f\x8bfake-gzip");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], "accept-encoding");
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    let (_, headers, body) = raw(&app, Method::GET, path, None).await;
    assert_eq!(body, b"console.log(1)");
    assert!(headers.get("content-encoding").is_none());
    let (_, headers, body) = raw(&app, Method::GET, path, Some("gzip;q=0")).await;
    assert_eq!(body, b"console.log(1)");
    assert!(headers.get("content-encoding").is_none());
    // An asset that does not exist is not the app's HTML under a script's name.
    let (status, _, body) = raw(&app, Method::GET, "/assets/gone-Zz99.js", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ne!(body, b"<!doctype html><title>app</title>");
}

#[tokio::test]
async fn the_web_client_never_shadows_the_apis() {
    let (_dir, app) = web_app();
    for path in [
        "/_matrix/nonexistent",
        "/_matrix",
        "/_paracord/v1/nonexistent",
        "/_synapse/admin/v1/nonexistent",
        "/.well-known/nonexistent",
    ] {
        let (status, body) = call(&app, Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{path}: {body}");
    }
    // Not a GET: not the app's either.
    let (status, body) = call(&app, Method::POST, "/login", None, Some(b"{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{body}");
    // The APIs still answer as before.
    let (status, body) = call(&app, Method::GET, "/_matrix/client/versions", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn without_a_built_web_client_the_root_says_so() {
    let s = server().await;
    let (status, headers, body) = raw(&s.app, Method::GET, "/", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("built without the web client"), "{text}");
    assert!(text.contains("npm run build"), "{text}");
    let (status, body) = get(&s, "/_matrix/nonexistent").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{body}");
}
