//! Application services (issue 17, item 1): registrations from `appservice_dir`, `as_token`
//! authentication and `?user_id=` assertion, `m.login.application_service` registration and
//! login, exclusive namespaces, pings, transactions (ordered, retried, persisted) and alias
//! queries. The appservice is a small HTTP receiver in the test.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use paracord_complement::{
    enc, expect_error, expect_ok, federation::federating_server_with, random_localpart, StatusCode,
    TestServer,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// One request the appservice received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    body: Value,
}

type AliasHook = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// A tiny appservice: records every request and answers 200 `{}` (or `status`).
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<Mutex<u16>>,
    on_alias: Arc<Mutex<Option<AliasHook>>>,
    on_user: Arc<Mutex<Option<AliasHook>>>,
    /// Answers by path (without the query): 200 with this body.
    canned: Canned,
    task: Option<JoinHandle<()>>,
}

type Canned = Arc<Mutex<Vec<(String, String)>>>;

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            seen: Arc::default(),
            status: Arc::new(Mutex::new(200)),
            on_alias: Arc::default(),
            on_user: Arc::default(),
            canned: Arc::default(),
            task: None,
        };
        r.serve(listener);
        r
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (seen, status, on_alias, on_user, canned) = (
            self.seen.clone(),
            self.status.clone(),
            self.on_alias.clone(),
            self.on_user.clone(),
            self.canned.clone(),
        );
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, status, on_alias, on_user, canned) = (
                    seen.clone(),
                    status.clone(),
                    on_alias.clone(),
                    on_user.clone(),
                    canned.clone(),
                );
                tokio::spawn(async move {
                    let _ = handle(stream, seen, status, on_alias, on_user, canned).await;
                });
            }
        }));
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same address.
    async fn up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => return self.serve(l),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("expected to listen on {} again: {e}", self.addr),
            }
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The bodies of every event received in transactions, in order.
    fn events(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == "PUT" && s.path.starts_with("/_matrix/app/v1/transactions/"))
            .flat_map(|s| s.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The message bodies received, in order, waiting (with a deadline) until `want` are in.
    async fn wait_for_bodies(&self, want: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<String> = self
                .events()
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect();
            if want.iter().all(|w| got.iter().any(|g| g == w)) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected the appservice to receive {want:?}, it got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn handle(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    status: Arc<Mutex<u16>>,
    on_alias: Arc<Mutex<Option<AliasHook>>>,
    on_user: Arc<Mutex<Option<AliasHook>>>,
    canned: Canned,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let path = first.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut authorization = String::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => authorization = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let mut code = *status.lock().unwrap();
    for (prefix, hooks) in [
        ("/_matrix/app/v1/rooms/", &on_alias),
        ("/_matrix/app/v1/users/", &on_user),
    ] {
        if method != "GET" || !path.starts_with(prefix) {
            continue;
        }
        let hook = hooks.lock().unwrap().clone();
        let alias = path.trim_start_matches(prefix).to_owned();
        code = match hook {
            Some(h) if h(alias).await => 200,
            _ => 404,
        };
    }
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        authorization,
        body,
    });
    let bare = path.split('?').next().unwrap_or_default();
    let canned = canned
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| p == bare)
        .map(|(_, b)| b.clone());
    let answer = match canned {
        Some(body) => {
            code = 200;
            body
        }
        None if code == 200 => "{}".to_owned(),
        None => r#"{"errcode":"M_UNKNOWN","error":"test says no"}"#.to_owned(),
    };
    let reply = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// A registration of appservice `id` whose users are `@{id}_*` and aliases `#{id}_*` on a
/// test server (`localhost:<port>`), both exclusive.
fn registration(id: &str, url: Option<&str>) -> String {
    registration_on(id, url, "localhost:\\d+")
}

/// [`registration`] for servers whose name matches `server` (a regex).
fn registration_on(id: &str, url: Option<&str>, server: &str) -> String {
    let url = url.map_or("null".to_owned(), |u| format!("'{u}'"));
    format!(
        "id: {id}\nurl: {url}\nas_token: as_{id}_secret\nhs_token: hs_{id}_secret\nsender_localpart: {id}bot\nrate_limited: false\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@{id}_.*:{server}'\n  aliases:\n    - exclusive: true\n      regex: '#{id}_.*:{server}'\n  rooms: []\n"
    )
}

/// A server with the given registration files (name, contents) in its `appservice_dir`.
async fn server_with(files: &[(&str, String)]) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().display().to_string();
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &path);
    })
    .await;
    (server, dir)
}

/// Whether the server logged that it skipped registration file `name` (waiting for it).
async fn skipped(server: &TestServer, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("skipping appservice registration") && l.contains(name))
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn as_id() -> String {
    format!("as{}", random_localpart().to_lowercase())
}

#[tokio::test]
async fn registrations_load_from_the_directory_and_bad_files_are_skipped() {
    let id = as_id();
    let other = as_id();
    let third = as_id();
    let (server, _dir) = server_with(&[
        ("a.yaml", registration(&id, None)),
        ("b.yml", "id: [not a registration\n".to_owned()),
        // The same as_token as a.yaml: refused.
        (
            "c.yaml",
            registration(&other, None)
                .replace(&format!("as_{other}_secret"), &format!("as_{id}_secret")),
        ),
        // An exclusive user namespace inside a.yaml's: refused.
        (
            "d.yaml",
            registration(&third, None).replace(&format!("'@{third}_"), &format!("'@{id}_x")),
        ),
        // Not a registration file at all.
        ("notes.txt", "hello".to_owned()),
    ])
    .await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let me = expect_ok(bot.whoami().await, "whoami with the as_token");
    assert_eq!(me["user_id"], server.user_id(&format!("{id}bot")), "{me}");
    assert!(
        skipped(&server, "b.yml").await,
        "expected the malformed file to be named in the log:\n{}",
        server.log_tail(40)
    );
    assert!(
        skipped(&server, "c.yaml").await,
        "expected the clashing file to be named in the log:\n{}",
        server.log_tail(40)
    );
    assert!(
        skipped(&server, "d.yaml").await,
        "expected the overlapping file to be named in the log:\n{}",
        server.log_tail(40)
    );
    expect_error(
        &server
            .client_with_token(&format!("as_{third}_secret"))
            .whoami()
            .await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "the overlapping registration's token",
    );
    let refused = server.client_with_token(&format!("hs_{other}_secret"));
    expect_error(
        &refused.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "a skipped registration's token",
    );
}

#[tokio::test]
async fn appservice_registers_logs_in_and_asserts_its_users() {
    let id = as_id();
    let (server, _dir) = server_with(&[("r.yaml", registration(&id, None))]).await;
    let token = format!("as_{id}_secret");
    let bot = server.client_with_token(&token);

    // The login flows advertise the appservice login.
    let flows = expect_ok(server.client().get("/login").await, "GET /login");
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.application_service"),
        "{flows}"
    );

    // Nobody may take the appservice's sender name.
    expect_error(
        &server
            .register_raw(json!({"username": format!("{id}bot"), "password": "pw-long-enough-1"}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
        "normal registration of the appservice's sender",
    );

    // Registration of a namespaced user, no UIA, with inhibit_login honoured.
    let ghost = format!("{id}_alice");
    let r = expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": ghost, "inhibit_login": true}),
        )
        .await,
        "appservice registration",
    );
    assert_eq!(r["user_id"], server.user_id(&ghost), "{r}");
    assert!(r.get("access_token").is_none(), "inhibit_login: {r}");
    // Outside its namespace: M_EXCLUSIVE.
    expect_error(
        &bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": format!("x{}", random_localpart())}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
        "appservice registering outside its namespace",
    );
    // Without the as_token the appservice login type is refused.
    expect_error(
        &server
            .client()
            .post(
                "/register",
                &json!({"type": "m.login.application_service", "username": format!("{id}_bob")}),
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "m.login.application_service without a token",
    );
    // A normal registration in the exclusive namespace: M_EXCLUSIVE.
    expect_error(
        &server
            .register_raw(
                json!({"username": format!("{id}_carol"), "password": "pw-long-enough-1"}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
        "normal registration in an exclusive namespace",
    );

    // ?user_id= : the registered ghost, yes; someone outside the namespace or not registered, no.
    let as_ghost = expect_ok(
        bot.get(&format!(
            "/account/whoami?user_id={}",
            server.user_id(&ghost)
        ))
        .await,
        "whoami as the ghost",
    );
    assert_eq!(as_ghost["user_id"], server.user_id(&ghost), "{as_ghost}");
    let human = server.register_random().await;
    expect_error(
        &bot.get(&format!("/account/whoami?user_id={}", human.user_id))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "asserting a user outside the namespace",
    );
    expect_error(
        &bot.get(&format!(
            "/account/whoami?user_id={}",
            server.user_id(&format!("{id}_nobody"))
        ))
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "asserting an unregistered namespaced user",
    );

    // m.login.application_service login gives the ghost a token of its own.
    let login = expect_ok(
        bot.post(
            "/login",
            &json!({
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": ghost},
            }),
        )
        .await,
        "appservice login",
    );
    let own = server.client_with_token(login["access_token"].as_str().unwrap());
    assert_eq!(
        expect_ok(own.whoami().await, "the ghost's own token")["user_id"],
        server.user_id(&ghost)
    );
    expect_error(
        &server
            .client()
            .post(
                "/login",
                &json!({
                    "type": "m.login.application_service",
                    "identifier": {"type": "m.id.user", "user": ghost},
                }),
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
        "appservice login without the as_token",
    );

    // ?ts= sets the event's origin_server_ts for the appservice's users.
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    let ghost_id = server.user_id(&ghost);
    expect_ok(
        bot.post(&format!("/join/{room}?user_id={ghost_id}"), &json!({}))
            .await,
        "the ghost joins",
    );
    let sent = expect_ok(
        bot.put(
            &format!("/rooms/{room}/send/m.room.message/t1?user_id={ghost_id}&ts=1234567890"),
            &json!({"msgtype": "m.text", "body": "from the past"}),
        )
        .await,
        "send with ?ts=",
    );
    let event = expect_ok(
        human
            .get(&format!(
                "/rooms/{room}/event/{}",
                sent["event_id"].as_str().unwrap()
            ))
            .await,
        "read the event",
    );
    assert_eq!(event["origin_server_ts"], 1234567890, "{event}");
    assert_eq!(event["sender"], ghost_id, "{event}");
}

#[tokio::test]
async fn ping_reaches_the_appservice_and_reports_failures() {
    let receiver = Receiver::start().await;
    let (id, no_url, down) = (as_id(), as_id(), as_id());
    let (server, _dir) = server_with(&[
        ("a.yaml", registration(&id, Some(&receiver.url()))),
        ("b.yaml", registration(&no_url, None)),
        // A port nothing listens on.
        ("c.yaml", registration(&down, Some("http://127.0.0.1:9"))),
    ])
    .await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let ok = expect_ok(
        bot.post(
            &format!("/_matrix/client/v1/appservice/{id}/ping"),
            &json!({"transaction_id": "ping-1"}),
        )
        .await,
        "ping",
    );
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    let pings: Vec<Seen> = receiver
        .requests()
        .into_iter()
        .filter(|s| s.path == "/_matrix/app/v1/ping")
        .collect();
    assert_eq!(pings.len(), 1, "{pings:?}");
    assert_eq!(pings[0].method, "POST");
    assert_eq!(pings[0].authorization, format!("Bearer hs_{id}_secret"));
    assert_eq!(pings[0].body["transaction_id"], "ping-1");

    // Another appservice's id with this token.
    expect_error(
        &bot.post(
            &format!("/_matrix/client/v1/appservice/{no_url}/ping"),
            &json!({}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "ping of another appservice",
    );
    expect_error(
        &server
            .client_with_token(&format!("as_{no_url}_secret"))
            .post(
                &format!("/_matrix/client/v1/appservice/{no_url}/ping"),
                &json!({}),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_URL_NOT_SET",
        "ping without a url",
    );
    expect_error(
        &server
            .client_with_token(&format!("as_{down}_secret"))
            .post(
                &format!("/_matrix/client/v1/appservice/{down}/ping"),
                &json!({}),
            )
            .await,
        StatusCode::BAD_GATEWAY,
        "M_CONNECTION_FAILED",
        "ping of an appservice that is down",
    );
    *receiver.status.lock().unwrap() = 500;
    let bad = bot
        .post(
            &format!("/_matrix/client/v1/appservice/{id}/ping"),
            &json!({}),
        )
        .await;
    expect_error(
        &bad,
        StatusCode::BAD_GATEWAY,
        "M_BAD_STATUS",
        "ping answered 500",
    );
    assert_eq!(bad.1["status"], 500, "{}", bad.1);
    assert!(
        bad.1["body"].as_str().unwrap().contains("test says no"),
        "{}",
        bad.1
    );
}

#[tokio::test]
async fn events_reach_the_appservice_in_order_across_outages_and_restarts() {
    let mut receiver = Receiver::start().await;
    let id = as_id();
    let (mut server, _dir) =
        server_with(&[("a.yaml", registration(&id, Some(&receiver.url())))]).await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let human = server.register_random().await;
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    // Its sender joins: from then on the room's events are the appservice's business.
    expect_ok(
        bot.post(&format!("/join/{room}"), &json!({})).await,
        "bot joins",
    );
    human.send_text(&room, "one").await;
    human.send_text(&room, "two").await;
    let got = receiver.wait_for_bodies(&["one", "two"]).await;
    assert_eq!(got, vec!["one", "two"]);
    for s in receiver.requests() {
        if s.path.starts_with("/_matrix/app/v1/transactions/") {
            assert_eq!(s.authorization, format!("Bearer hs_{id}_secret"), "{s:?}");
        }
    }
    // An invite of one of its users to a room it is not in yet reaches it too (state key).
    let ghost = format!("{id}_invitee");
    expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": ghost}),
        )
        .await,
        "register a ghost",
    );
    let other_room = human.create_room(&json!({})).await;
    human.invite_ok(&other_room, &server.user_id(&ghost)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver.events().iter().any(|e| {
        e["type"] == "m.room.member"
            && e["state_key"] == server.user_id(&ghost)
            && e["content"]["membership"] == "invite"
            && e["room_id"] == other_room
    }) {
        assert!(
            Instant::now() < deadline,
            "expected the ghost's invite to reach the appservice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A room the appservice has nothing to do with is not sent.
    let private = human.create_room(&json!({})).await;
    human.send_text(&private, "secret").await;

    // Down: the events wait, and arrive in order once it is back.
    receiver.down();
    human.send_text(&room, "three").await;
    human.send_text(&room, "four").await;
    // The server tried and failed: the events wait in the queue.
    assert!(
        server.wait_for_log("appservice transaction failed").await,
        "expected a failed delivery while the appservice was down:\n{}",
        server.log_tail(30)
    );
    receiver.up().await;
    let got = receiver.wait_for_bodies(&["three", "four"]).await;
    assert_eq!(got, vec!["one", "two", "three", "four"]);

    // Down again, then the server restarts: the queue is on disk.
    receiver.down();
    human.send_text(&room, "five").await;
    server.restart().await;
    receiver.up().await;
    let got = receiver.wait_for_bodies(&["five"]).await;
    assert_eq!(got, vec!["one", "two", "three", "four", "five"]);
    assert!(
        !receiver
            .events()
            .iter()
            .any(|e| e["content"]["body"] == "secret"),
        "an event of an unrelated room reached the appservice"
    );
    // Once its last user left the room, the room's events are none of its business: a later
    // event elsewhere arrives, the one sent before it in the left room does not.
    let marker_room = human.create_room(&json!({"preset": "public_chat"})).await;
    expect_ok(
        bot.post(&format!("/join/{marker_room}"), &json!({})).await,
        "bot joins",
    );
    expect_ok(
        bot.post(&format!("/rooms/{room}/leave"), &json!({})).await,
        "bot leaves",
    );
    human.send_text(&room, "after the leave").await;
    human.send_text(&marker_room, "marker").await;
    let got = receiver.wait_for_bodies(&["marker"]).await;
    assert!(!got.iter().any(|b| b == "after the leave"), "{got:?}");
    // Client-format events: no federation fields.
    let first = &receiver.events()[0];
    assert!(
        first.get("auth_events").is_none() && first.get("hashes").is_none(),
        "{first}"
    );
    assert!(
        first["event_id"].is_string() && first["room_id"] == room,
        "{first}"
    );
    // Every delivered transaction had its own id.
    let mut ids: Vec<String> = receiver
        .requests()
        .into_iter()
        .filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/"))
        .map(|s| s.path)
        .collect();
    let delivered = ids.len();
    ids.dedup();
    assert!(ids.len() <= delivered);
}

#[tokio::test]
async fn aliases_in_a_namespace_are_asked_of_the_appservice_and_reserved() {
    let receiver = Receiver::start().await;
    let id = as_id();
    let (server, _dir) = server_with(&[("a.yaml", registration(&id, Some(&receiver.url())))]).await;
    let token = format!("as_{id}_secret");
    let bot = server.client_with_token(&token);
    let room = bot.create_room(&json!({"preset": "public_chat"})).await;
    // The appservice creates the alias when asked about it.
    {
        let (base, token, room) = (server.base_url(), token.clone(), room.clone());
        *receiver.on_alias.lock().unwrap() = Some(Arc::new(move |alias: String| {
            let (base, token, room) = (base.clone(), token.clone(), room.clone());
            Box::pin(async move {
                let url = format!("{base}/_matrix/client/v3/directory/room/{alias}");
                reqwest::Client::new()
                    .put(url)
                    .bearer_auth(token)
                    .json(&json!({ "room_id": room }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
        }));
    }
    let human = server.register_random().await;
    let alias = format!("#{id}_lobby:{}", server.server_name());
    let encoded = alias.replace('#', "%23").replace(':', "%3A");
    let found = expect_ok(
        human.get(&format!("/directory/room/{encoded}")).await,
        "alias resolved through the appservice",
    );
    assert_eq!(found["room_id"], room, "{found}");
    assert!(
        receiver.requests().iter().any(|s| s.method == "GET"
            && s.path.starts_with("/_matrix/app/v1/rooms/")
            && s.authorization == format!("Bearer hs_{id}_secret")),
        "{:?}",
        receiver.requests()
    );
    // Joining by an alias the appservice has yet to create works the same way.
    let door = format!("#{id}_door:{}", server.server_name()).replace('#', "%23");
    expect_ok(
        human.post(&format!("/join/{door}"), &json!({})).await,
        "join by an appservice alias",
    );
    assert_eq!(
        expect_ok(
            human.get(&format!("/directory/room/{door}")).await,
            "the new alias"
        )["room_id"],
        room
    );
    // An alias the appservice does not know stays unknown.
    *receiver.on_alias.lock().unwrap() = None;
    let missing = format!("#{id}_nothing:{}", server.server_name()).replace('#', "%23");
    expect_error(
        &human.get(&format!("/directory/room/{missing}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "alias the appservice does not have",
    );
    // A normal user may not take an alias in the exclusive namespace.
    let own_room = human.create_room(&json!({})).await;
    let taken = format!("#{id}_mine:{}", server.server_name()).replace('#', "%23");
    expect_error(
        &human
            .put(
                &format!("/directory/room/{taken}"),
                &json!({ "room_id": own_room }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
        "alias in an exclusive namespace",
    );
}

#[tokio::test]
async fn events_from_another_server_reach_the_appservice() {
    let receiver = Receiver::start().await;
    let id = as_id();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        registration_on(&id, Some(&receiver.url()), "127\\.0\\.0\\.1:\\d+"),
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let (a, a_name) = federating_server_with(|env| {
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &path);
    })
    .await;
    let (b, _) = federating_server_with(|_| {}).await;
    let bot = a.client_with_token(&format!("as_{id}_secret"));
    let room = bot.create_room(&json!({"preset": "public_chat"})).await;
    let bob = b.register_random().await;
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A");
    expect_ok(
        bob.post(
            &format!("/join/{}?via={}", enc(&room), enc(&a_name)),
            &json!({}),
        )
        .await,
        "bob joins through A",
    );
    bob.send_text(&room, "from afar").await;
    receiver.wait_for_bodies(&["from afar"]).await;
    let event = receiver
        .events()
        .into_iter()
        .find(|e| e["content"]["body"] == "from afar")
        .unwrap();
    assert_eq!(event["sender"], bob.user_id, "{event}");
}

#[tokio::test]
async fn users_of_an_appservice_without_rate_limits_are_not_limited() {
    let id = as_id();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), registration(&id, None)).unwrap();
    let path = dir.path().display().to_string();
    let server = TestServer::start_with(|env| {
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &path);
        TestServer::set_env(env, "PARACORD_RATE_LIMITS_ENABLED", "true");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_SEND_BURST", "3");
        TestServer::set_env(env, "PARACORD_RATE_LIMIT_SEND_PER_SECOND", "0.01");
    })
    .await;
    let human = server.register_random().await;
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let ghost = format!("{id}_speaker");
    expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": ghost}),
        )
        .await,
        "register the ghost",
    );
    let ghost_id = server.user_id(&ghost);
    expect_ok(
        bot.post(&format!("/join/{room}?user_id={ghost_id}"), &json!({}))
            .await,
        "the ghost joins",
    );
    for i in 0..10 {
        expect_ok(
            bot.put(
                &format!("/rooms/{room}/send/m.room.message/g{i}?user_id={ghost_id}"),
                &json!({"msgtype": "m.text", "body": format!("ghost {i}")}),
            )
            .await,
            "an unlimited ghost sends",
        );
    }
    // The same limits stop a human after the burst.
    let mut limited = false;
    for i in 0..10 {
        let r = human
            .put(
                &format!("/rooms/{room}/send/m.room.message/h{i}"),
                &json!({"msgtype": "m.text", "body": "human"}),
            )
            .await;
        if r.0 == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited, "expected the human to be rate limited");
}

/// The ping's own timeout (10 s): an appservice that takes the connection and never answers.
#[tokio::test]
async fn ping_of_a_silent_appservice_times_out() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let id = as_id();
    let (server, _dir) = server_with(&[("a.yaml", registration(&id, Some(&url)))]).await;
    expect_error(
        &server
            .client_with_token(&format!("as_{id}_secret"))
            .post(
                &format!("/_matrix/client/v1/appservice/{id}/ping"),
                &json!({}),
            )
            .await,
        StatusCode::GATEWAY_TIMEOUT,
        "M_CONNECTION_TIMEOUT",
        "ping of an appservice that never answers",
    );
    held.abort();
}

#[tokio::test]
async fn profiles_of_unknown_namespaced_users_are_asked_of_the_appservice() {
    let receiver = Receiver::start().await;
    let id = as_id();
    let (server, _dir) = server_with(&[("a.yaml", registration(&id, Some(&receiver.url())))]).await;
    let token = format!("as_{id}_secret");
    // The appservice registers the user it is asked about.
    {
        let (base, token) = (server.base_url(), token.clone());
        *receiver.on_user.lock().unwrap() = Some(Arc::new(move |user: String| {
            let (base, token) = (base.clone(), token.clone());
            Box::pin(async move {
                // `@{id}_name:server`, percent-encoded: the localpart is between %40 and %3A.
                let localpart = user
                    .trim_start_matches("%40")
                    .split("%3A")
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                reqwest::Client::new()
                    .post(format!("{base}/_matrix/client/v3/register"))
                    .bearer_auth(token)
                    .json(&json!({"type": "m.login.application_service", "username": localpart}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            })
        }));
    }
    let human = server.register_random().await;
    let ghost = server.user_id(&format!("{id}_puppet"));
    let profile = expect_ok(
        human.get(&format!("/profile/{ghost}")).await,
        "profile of a user the appservice creates on demand",
    );
    assert_eq!(profile["displayname"], format!("{id}_puppet"), "{profile}");
    assert!(
        receiver
            .requests()
            .iter()
            .any(|s| s.method == "GET" && s.path.starts_with("/_matrix/app/v1/users/")),
        "{:?}",
        receiver.requests()
    );
    // A user outside every namespace is not asked about.
    let before = receiver.requests().len();
    let stranger = server.user_id(&format!("nobody{}", random_localpart().to_lowercase()));
    expect_error(
        &human.get(&format!("/profile/{stranger}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "profile of an unknown user",
    );
    assert_eq!(receiver.requests().len(), before);
}

impl Receiver {
    /// The ephemeral data received in transactions (`ephemeral`), in order.
    fn ephemeral(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == "PUT" && s.path.starts_with("/_matrix/app/v1/transactions/"))
            .flat_map(|s| s.body["ephemeral"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (with a deadline) until an ephemeral item matching `want` arrived.
    async fn wait_for_ephemeral(&self, what: &str, want: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ephemeral().iter().any(&want) {
            assert!(
                Instant::now() < deadline,
                "expected the appservice to receive {what}, it got {:?}",
                self.ephemeral()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Issue 17, item 2 (MSC2409): typing, receipts and presence of a room an appservice's user is
/// in reach appservices registered with `receive_ephemeral` (or the unstable
/// `de.sorunome.msc2409.push_ephemeral`) in the transaction's `ephemeral` array; the others get
/// none, and nobody gets another user's private receipt.
#[tokio::test]
async fn appservice_ephemeral_data_reaches_those_that_asked() {
    let (spec, unstable, plain) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let (a, b, c) = (as_id(), as_id(), as_id());
    let (server, _dir) = server_with(&[
        (
            "a.yaml",
            registration(&a, Some(&spec.url())) + "receive_ephemeral: true\n",
        ),
        (
            "b.yaml",
            registration(&b, Some(&unstable.url())) + "de.sorunome.msc2409.push_ephemeral: true\n",
        ),
        ("c.yaml", registration(&c, Some(&plain.url()))),
    ])
    .await;
    let human = server.register_random().await;
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    for id in [&a, &b, &c] {
        let bot = server.client_with_token(&format!("as_{id}_secret"));
        expect_ok(
            bot.post(&format!("/join/{room}"), &json!({})).await,
            "bot joins",
        );
    }
    let event = human.send_text(&room, "read me").await;
    expect_ok(
        human
            .put(
                &format!("/rooms/{room}/typing/{}", human.user_id),
                &json!({"typing": true, "timeout": 30000}),
            )
            .await,
        "typing",
    );
    expect_ok(
        human
            .post(
                &format!("/rooms/{room}/receipt/m.read.private/{event}"),
                &json!({}),
            )
            .await,
        "private receipt",
    );
    expect_ok(
        human
            .post(&format!("/rooms/{room}/receipt/m.read/{event}"), &json!({}))
            .await,
        "receipt",
    );
    expect_ok(
        human
            .put(
                &format!("/presence/{}/status", human.user_id),
                &json!({"presence": "unavailable", "status_msg": "away"}),
            )
            .await,
        "presence",
    );
    // Presence set by /sync (which names nobody to wake) reaches them too.
    let other = server.register_random().await;
    other.join_ok(&room).await;
    expect_ok(
        other.get("/sync?timeout=0&set_presence=unavailable").await,
        "sync with set_presence",
    );
    let me = human.user_id.clone();
    for receiver in [&spec, &unstable] {
        receiver
            .wait_for_ephemeral("the presence set by /sync", |e| {
                e["type"] == "m.presence"
                    && e["sender"] == other.user_id
                    && e["content"]["presence"] == "unavailable"
            })
            .await;
        receiver
            .wait_for_ephemeral("the typing notification", |e| {
                e["type"] == "m.typing"
                    && e["room_id"] == room
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|u| *u == me))
            })
            .await;
        receiver
            .wait_for_ephemeral("the read receipt", |e| {
                e["type"] == "m.receipt"
                    && e["room_id"] == room
                    && e["content"][&event]["m.read"][&me]["ts"].is_u64()
            })
            .await;
        receiver
            .wait_for_ephemeral("the presence", |e| {
                e["type"] == "m.presence"
                    && e["sender"] == me
                    && e["content"]["presence"] == "unavailable"
                    && e["content"]["status_msg"] == "away"
            })
            .await;
        assert!(
            !receiver
                .ephemeral()
                .iter()
                .any(|e| e["content"][&event].get("m.read.private").is_some()),
            "another user's private receipt reached an appservice: {:?}",
            receiver.ephemeral()
        );
        // The spec's field name only.
        assert!(
            !receiver
                .requests()
                .iter()
                .any(|s| s.body.get("de.sorunome.msc2409.ephemeral").is_some()),
            "unstable field sent"
        );
    }
    // The appservice that did not ask gets the events, no ephemeral data.
    human.send_text(&room, "marker").await;
    plain.wait_for_bodies(&["read me", "marker"]).await;
    assert!(
        plain.ephemeral().is_empty(),
        "ephemeral data reached an appservice without receive_ephemeral: {:?}",
        plain.ephemeral()
    );
}

/// Issue 17, item 3 (spec v1.17, MSC3202): `?device_id=` makes an appservice act as one
/// device of its user — to-device messages, one-time keys and sync are that device's — and a
/// device the user does not have is `400 M_UNKNOWN_DEVICE`.
#[tokio::test]
async fn appservice_masquerades_as_a_device_of_its_user() {
    let id = as_id();
    let (server, _dir) = server_with(&[("a.yaml", registration(&id, None))]).await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let ghost = server.user_id(&format!("{id}_dev"));
    let login = expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": format!("{id}_dev")}),
        )
        .await,
        "register a ghost with a device",
    );
    let device = login["device_id"].as_str().unwrap().to_owned();
    let me = expect_ok(
        bot.get(&format!(
            "/account/whoami?user_id={ghost}&device_id={device}"
        ))
        .await,
        "whoami as the ghost's device",
    );
    assert_eq!(me["user_id"], ghost, "{me}");
    assert_eq!(me["device_id"], device, "{me}");
    expect_error(
        &bot.get(&format!("/account/whoami?user_id={ghost}&device_id=NOPE"))
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_DEVICE",
        "a device the ghost does not have",
    );
    // Without user_id the device must be the sender's.
    expect_error(
        &bot.get(&format!("/account/whoami?device_id={device}"))
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_DEVICE",
        "the ghost's device as the sender",
    );
    let as_device = format!("user_id={ghost}&device_id={device}");
    // One-time keys uploaded for the device can be claimed for it.
    let up = expect_ok(
        bot.post(
            &format!("/keys/upload?{as_device}"),
            &json!({"one_time_keys": {"curve25519:AAAAAQ": "b3RrLWtleS1vbmU"}}),
        )
        .await,
        "keys upload as the device",
    );
    assert_eq!(up["one_time_key_counts"]["curve25519"], 1, "{up}");
    let human = server.register_random().await;
    let claimed = expect_ok(
        human
            .post(
                "/keys/claim",
                &json!({"one_time_keys": {&ghost: {&device: "curve25519"}}}),
            )
            .await,
        "claim the device's key",
    );
    assert_eq!(
        claimed["one_time_keys"][&ghost][&device]["curve25519:AAAAAQ"], "b3RrLWtleS1vbmU",
        "{claimed}"
    );
    // A to-device message for the device arrives in its sync.
    expect_ok(
        human
            .put(
                &format!("/sendToDevice/m.test/{}", random_localpart()),
                &json!({"messages": {&ghost: {&device: {"hello": "device"}}}}),
            )
            .await,
        "send to the device",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sync = expect_ok(
            bot.get(&format!("/sync?timeout=1000&{as_device}")).await,
            "sync as the device",
        );
        let got = sync["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if got.iter().any(|e| e["content"]["hello"] == "device") {
            break;
        }
        assert!(Instant::now() < deadline, "no to-device message: {sync}");
    }
}

impl Receiver {
    /// Answers `GET path` (without query) with `body`.
    fn answer(&self, path: &str, body: Value) {
        self.canned
            .lock()
            .unwrap()
            .push((path.to_owned(), body.to_string()));
    }
}

/// Issue 17, item 4: `/thirdparty/*` asks the appservices that registered the protocol (with
/// their hs_token) and merges what they answer; an unknown protocol is `404 M_NOT_FOUND`, an
/// appservice that is down adds nothing instead of failing the request.
#[tokio::test]
async fn appservice_thirdparty_lookups_are_merged() {
    let (one, two) = (Receiver::start().await, Receiver::start().await);
    let mut down = Receiver::start().await;
    let (a, b, c) = (as_id(), as_id(), as_id());
    let (server, _dir) = server_with(&[
        (
            "a.yaml",
            registration(&a, Some(&one.url())) + "protocols: [gitter, irc]\n",
        ),
        (
            "b.yaml",
            registration(&b, Some(&two.url())) + "protocols: [irc]\n",
        ),
        (
            "c.yaml",
            registration(&c, Some(&down.url())) + "protocols: [irc, dead]\n",
        ),
    ])
    .await;
    down.down();
    let protocol = |network: &str| {
        json!({
            "user_fields": ["network", "nickname"],
            "location_fields": ["network", "channel"],
            "icon": "mxc://example.org/icon",
            "field_types": {
                "network": {"regexp": "[a-z.]+", "placeholder": "irc.example.org"},
                "nickname": {"regexp": ".+", "placeholder": "nick"},
                "channel": {"regexp": "#.+", "placeholder": "#chan"}
            },
            "instances": [{
                "desc": network, "fields": {"network": network}, "network_id": network
            }]
        })
    };
    one.answer(
        "/_matrix/app/v1/thirdparty/protocol/irc",
        protocol("libera"),
    );
    one.answer(
        "/_matrix/app/v1/thirdparty/protocol/gitter",
        protocol("gitter"),
    );
    two.answer("/_matrix/app/v1/thirdparty/protocol/irc", protocol("oftc"));
    let alias = format!("#{a}_chan:{}", server.server_name());
    one.answer(
        "/_matrix/app/v1/thirdparty/location/irc",
        json!([{"alias": alias, "protocol": "irc", "fields": {"network": "libera", "channel": "#chan"}}]),
    );
    two.answer(
        "/_matrix/app/v1/thirdparty/location/irc",
        json!([{"alias": format!("#{b}_chan:{}", server.server_name()), "protocol": "irc", "fields": {"network": "oftc", "channel": "#chan"}}]),
    );
    let remote = server.user_id(&format!("{a}_nick"));
    one.answer(
        "/_matrix/app/v1/thirdparty/user/irc",
        json!([{"userid": remote, "protocol": "irc", "fields": {"nickname": "nick"}}]),
    );
    one.answer(
        "/_matrix/app/v1/thirdparty/user",
        json!([{"userid": remote, "protocol": "irc", "fields": {"nickname": "nick"}}]),
    );
    one.answer(
        "/_matrix/app/v1/thirdparty/location",
        json!([{"alias": alias, "protocol": "irc", "fields": {"channel": "#chan"}}]),
    );
    let human = server.register_random().await;

    let all = expect_ok(human.get("/thirdparty/protocols").await, "protocols");
    let irc = &all["irc"];
    let networks: Vec<&str> = irc["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["network_id"].as_str().unwrap())
        .collect();
    assert_eq!(networks, vec!["libera", "oftc"], "{all}");
    assert!(
        irc["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["instance_id"].is_string()),
        "{all}"
    );
    assert!(all["gitter"].is_object(), "{all}");
    assert!(all.get("dead").is_none(), "{all}");

    let one_protocol = expect_ok(human.get("/thirdparty/protocol/gitter").await, "protocol");
    assert_eq!(one_protocol["instances"][0]["network_id"], "gitter");
    expect_error(
        &human.get("/thirdparty/protocol/nope").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "an unknown protocol",
    );
    expect_error(
        &human.get("/thirdparty/location/nope").await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "locations of an unknown protocol",
    );
    let locations = expect_ok(
        human.get("/thirdparty/location/irc?channel=%23chan").await,
        "locations",
    );
    assert_eq!(locations.as_array().map(Vec::len), Some(2), "{locations}");
    // The search fields reach the appservice.
    assert!(
        one.requests().iter().any(|s| s.path
            == "/_matrix/app/v1/thirdparty/location/irc?channel=%23chan"
            && s.authorization == format!("Bearer hs_{a}_secret")),
        "{:?}",
        one.requests()
    );
    let users = expect_ok(
        human.get("/thirdparty/user/irc?nickname=nick").await,
        "users",
    );
    assert_eq!(users[0]["userid"], remote, "{users}");
    let by_id = expect_ok(
        human
            .get(&format!("/thirdparty/user?userid={remote}"))
            .await,
        "user by id",
    );
    assert_eq!(by_id[0]["userid"], remote, "{by_id}");
    let by_alias = expect_ok(
        human
            .get(&format!(
                "/thirdparty/location?alias={}",
                alias.replace('#', "%23")
            ))
            .await,
        "location by alias",
    );
    assert_eq!(by_alias[0]["alias"], alias, "{by_alias}");
    // The protocol only a down appservice handles: an empty list, not an error.
    let dead = expect_ok(human.get("/thirdparty/user/dead").await, "a dead protocol");
    assert_eq!(dead, json!([]));
}

/// Issue 17, item 5: server admins add (YAML or JSON), list and remove registrations at run
/// time under `/_paracord/v1/admin/appservices`; they are checked like the files, survive a
/// restart, and a removed one loses its token, its queue and its transactions.
#[tokio::test]
async fn appservice_registrations_are_managed_at_run_time() {
    let (added_rx, file_rx) = (Receiver::start().await, Receiver::start().await);
    let (id, file_id) = (as_id(), as_id());
    let (mut server, _dir) =
        server_with(&[("f.yaml", registration(&file_id, Some(&file_rx.url())))]).await;
    let admin = server
        .admin_register(&format!("admin{}", random_localpart()), true)
        .await;
    let human = server.register_random().await;
    const PATH: &str = "/_paracord/v1/admin/appservices";
    let add = |who: &paracord_complement::Client, text: String| {
        let who = who.clone();
        async move {
            who.raw(
                paracord_complement::Method::POST,
                PATH,
                Some((text.into_bytes(), "application/yaml")),
            )
            .await
        }
    };
    let yaml = registration(&id, Some(&added_rx.url()));
    // Only admins.
    let refused = add(&human, yaml.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert_eq!(refused.body["errcode"], "M_FORBIDDEN");
    expect_error(
        &human.get(PATH).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a user listing appservices",
    );
    // Bad input and clashes: 400 with a reason.
    let bad = add(&admin, "id: [broken\n".to_owned()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert_eq!(bad.body["errcode"], "M_INVALID_PARAM", "{}", bad.text);
    let clash = add(
        &admin,
        registration(&id, None).replace(&format!("as_{id}_"), &format!("as_{file_id}_")),
    )
    .await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST, "{}", clash.text);
    assert!(clash.text.contains("token"), "{}", clash.text);

    let added = add(&admin, yaml.clone()).await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.text);
    assert_eq!(added.body["id"], id.as_str());
    let again = add(&admin, yaml.clone()).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST, "{}", again.text);
    let list = expect_ok(admin.get(PATH).await, "list");
    let sources: Vec<(String, String)> = list["appservices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        sources.contains(&(id.clone(), "admin".to_owned())),
        "{list}"
    );
    assert!(
        sources.contains(&(file_id.clone(), "file".to_owned())),
        "{list}"
    );
    assert!(
        !list.to_string().contains("_secret"),
        "tokens listed: {list}"
    );

    // It works at once: its token, its transactions.
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let file_bot = server.client_with_token(&format!("as_{file_id}_secret"));
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    for b in [&bot, &file_bot] {
        expect_ok(
            b.post(&format!("/join/{room}"), &json!({})).await,
            "bot joins",
        );
    }
    human.send_text(&room, "one").await;
    added_rx.wait_for_bodies(&["one"]).await;

    // A restart keeps it.
    server.restart().await;
    expect_ok(bot.whoami().await, "the added token after a restart");
    human.send_text(&room, "two").await;
    added_rx.wait_for_bodies(&["one", "two"]).await;

    // Removed: the token is gone and nothing more is sent to it.
    expect_error(
        &admin.delete(&format!("{PATH}/{file_id}"), &json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "removing a file's registration",
    );
    expect_error(
        &admin.delete(&format!("{PATH}/nope{id}"), &json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        "removing an unknown registration",
    );
    expect_ok(
        admin.delete(&format!("{PATH}/{id}"), &json!({})).await,
        "remove",
    );
    expect_error(
        &bot.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "a removed appservice's token",
    );
    let before = added_rx.requests().len();
    human.send_text(&room, "three").await;
    file_rx.wait_for_bodies(&["three"]).await;
    // The file appservice got it; give the removed one's (stopped) sender the same time again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        added_rx.requests().len(),
        before,
        "{:?}",
        added_rx.requests()
    );
    server.restart().await;
    expect_error(
        &bot.whoami().await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
        "a removed appservice's token after a restart",
    );

    // Added again, as JSON: transaction ids go on, never reused.
    let as_json = json!({
        "id": id, "url": added_rx.url(), "as_token": format!("as_{id}_secret"),
        "hs_token": format!("hs_{id}_secret"), "sender_localpart": format!("{id}bot"),
        "namespaces": {"users": [{"exclusive": true, "regex": format!("@{id}_.*:localhost:\\d+")}],
                       "aliases": [], "rooms": []}
    });
    let readded = add(&admin, as_json.to_string()).await;
    assert_eq!(readded.status, StatusCode::OK, "{}", readded.text);
    human.send_text(&room, "four").await;
    added_rx.wait_for_bodies(&["four"]).await;
    // A transaction id may come again only as a retry of the same events (a restart can cut
    // an answer off); no event comes under two ids, so none was reused.
    let mut by_txn: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut by_event: std::collections::HashMap<Value, String> = Default::default();
    for s in added_rx.requests() {
        if !s.path.starts_with("/_matrix/app/v1/transactions/") {
            continue;
        }
        let ids: Vec<Value> = s.body["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["event_id"].clone())
            .collect();
        if let Some(before) = by_txn.insert(s.path.clone(), ids.clone()) {
            assert_eq!(before, ids, "{} came again with other events", s.path);
        }
        for e in ids {
            if let Some(other) = by_event.insert(e.clone(), s.path.clone()) {
                assert_eq!(other, s.path, "{e} came under two transaction ids");
            }
        }
    }
}

/// Issue 17, item 6 (MSC4190, spec v1.17): an appservice creates a device of its user with
/// `PUT /devices/{id}` (`201`, then `200`), uses it with `?device_id=`, and deletes devices
/// and replaces cross-signing keys without user-interactive auth.
#[tokio::test]
async fn appservice_manages_its_users_devices() {
    let id = as_id();
    let (server, _dir) = server_with(&[("a.yaml", registration(&id, None))]).await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let ghost = server.user_id(&format!("{id}_crypto"));
    expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": format!("{id}_crypto"), "inhibit_login": true}),
        )
        .await,
        "register a ghost without a device",
    );
    let as_ghost = format!("user_id={ghost}");
    let put = |device: &str| {
        let (bot, path) = (bot.clone(), format!("/devices/{device}?{as_ghost}"));
        async move { bot.put(&path, &json!({"display_name": "bridge"})).await }
    };
    let (status, body) = put("BRIDGEDEV").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put("BRIDGEDEV").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = put("OTHERDEV").await;
    assert_eq!(status, StatusCode::CREATED);
    let devices = expect_ok(bot.get(&format!("/devices?{as_ghost}")).await, "devices");
    assert!(
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device_id"] == "BRIDGEDEV" && d["display_name"] == "bridge"),
        "{devices}"
    );
    let me = expect_ok(
        bot.get(&format!("/account/whoami?{as_ghost}&device_id=BRIDGEDEV"))
            .await,
        "whoami as the new device",
    );
    assert_eq!(me["device_id"], "BRIDGEDEV", "{me}");
    let up = expect_ok(
        bot.post(
            &format!("/keys/upload?{as_ghost}&device_id=BRIDGEDEV"),
            &json!({"one_time_keys": {"curve25519:AAAAAg": "b3RrLWtleS10d28"}}),
        )
        .await,
        "keys upload for the new device",
    );
    assert_eq!(up["one_time_key_counts"]["curve25519"], 1, "{up}");
    // A user cannot create a device this way.
    let human = server.register_random().await;
    let (status, _) = human
        .put("/devices/MADEUP", &json!({"display_name": "x"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Cross-signing keys replaced without auth.
    for key in ["a", "b"] {
        expect_ok(
            bot.post(
                &format!("/keys/device_signing/upload?{as_ghost}"),
                &json!({"master_key": {"user_id": ghost, "usage": ["master"],
                        "keys": {format!("ed25519:{key}key"): format!("{key}key")}}}),
            )
            .await,
            "cross-signing upload without auth",
        );
    }
    // Deleted without auth.
    expect_ok(
        bot.delete(&format!("/devices/BRIDGEDEV?{as_ghost}"), &json!({}))
            .await,
        "delete without auth",
    );
    expect_ok(
        bot.post(
            &format!("/delete_devices?{as_ghost}"),
            &json!({"devices": ["OTHERDEV"]}),
        )
        .await,
        "delete_devices without auth",
    );
    expect_error(
        &bot.get(&format!("/account/whoami?{as_ghost}&device_id=BRIDGEDEV"))
            .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_DEVICE",
        "a deleted device",
    );
    let devices = expect_ok(bot.get(&format!("/devices?{as_ghost}")).await, "devices");
    assert_eq!(devices["devices"], json!([]), "{devices}");
}

/// Issue 17, item 1: a transaction that failed is retried after a restart with the same id and
/// the same events, not with the events queued since; no event arrives under two ids.
#[tokio::test]
async fn appservice_transactions_are_fixed_once_formed() {
    let receiver = Receiver::start().await;
    let id = as_id();
    let (mut server, _dir) =
        server_with(&[("a.yaml", registration(&id, Some(&receiver.url())))]).await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let human = server.register_random().await;
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    expect_ok(
        bot.post(&format!("/join/{room}"), &json!({})).await,
        "bot joins",
    );
    human.send_text(&room, "warm-up").await;
    receiver.wait_for_bodies(&["warm-up"]).await;
    // Refused from now on: the next transaction is formed and fails.
    *receiver.status.lock().unwrap() = 500;
    let before = receiver.requests().len();
    human.send_text(&room, "first").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let tried: Vec<Seen> = receiver.requests()[before..]
            .iter()
            .filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/"))
            .cloned()
            .collect();
        if let Some(s) = tried.into_iter().find(|s| {
            s.body["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["content"]["body"] == "first"))
        }) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no failed attempt with the event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // More events, a restart, then the appservice accepts again.
    human.send_text(&room, "second").await;
    human.send_text(&room, "third").await;
    server.restart().await;
    *receiver.status.lock().unwrap() = 200;
    receiver
        .wait_for_bodies(&["first", "second", "third"])
        .await;
    // Every attempt under the failed id carried exactly its events.
    let mut by_event: std::collections::HashMap<String, String> = Default::default();
    for s in receiver.requests() {
        if !s.path.starts_with("/_matrix/app/v1/transactions/") {
            continue;
        }
        // The same events (by id: `unsigned.age` is worked out at each attempt).
        let ids = |b: &Value| -> Vec<Value> {
            b["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["event_id"].clone())
                .collect()
        };
        if s.path == failed.path {
            assert_eq!(ids(&s.body), ids(&failed.body), "{}", s.path);
        }
        for e in s.body["events"].as_array().cloned().unwrap_or_default() {
            let event_id = e["event_id"].as_str().unwrap().to_owned();
            if let Some(other) = by_event.insert(event_id.clone(), s.path.clone()) {
                assert_eq!(
                    other, s.path,
                    "{event_id} arrived under two transaction ids"
                );
            }
        }
    }
}

/// Issue 17, item 6 (MSC3202, unstable `org.matrix.msc3202.` fields): an appservice
/// registered with `org.matrix.msc3202: true` gets the one-time key counts and unused fallback
/// key types of its users' devices in transactions when they change (upload, claim); one
/// without the flag does not.
#[tokio::test]
async fn appservice_gets_its_devices_key_counts() {
    let (crypto_rx, plain_rx) = (Receiver::start().await, Receiver::start().await);
    let (id, plain) = (as_id(), as_id());
    let (server, _dir) = server_with(&[
        (
            "a.yaml",
            registration(&id, Some(&crypto_rx.url())) + "org.matrix.msc3202: true\n",
        ),
        ("b.yaml", registration(&plain, Some(&plain_rx.url()))),
    ])
    .await;
    let count_of = |rx: &Receiver, user: &str| -> Vec<Value> {
        rx.requests()
            .into_iter()
            .filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/"))
            .filter_map(|s| {
                s.body["org.matrix.msc3202.device_one_time_keys_count"][user]["DEV"]["curve25519"]
                    .as_u64()
                    .map(Value::from)
            })
            .collect()
    };
    for (as_id, rx) in [(&id, &crypto_rx), (&plain, &plain_rx)] {
        let bot = server.client_with_token(&format!("as_{as_id}_secret"));
        let ghost = server.user_id(&format!("{as_id}_keys"));
        expect_ok(
            bot.post(
                "/register",
                &json!({"type": "m.login.application_service", "username": format!("{as_id}_keys"), "inhibit_login": true}),
            )
            .await,
            "register a ghost",
        );
        let (status, _) = bot
            .put(&format!("/devices/DEV?user_id={ghost}"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        expect_ok(
            bot.post(
                &format!("/keys/upload?user_id={ghost}&device_id=DEV"),
                &json!({"one_time_keys": {
                    "curve25519:AAAAAQ": "a2V5LW9uZQ",
                    "curve25519:AAAAAg": "a2V5LXR3bw"
                }}),
            )
            .await,
            "upload two keys",
        );
        let human = server.register_random().await;
        expect_ok(
            human
                .post(
                    "/keys/claim",
                    &json!({"one_time_keys": {&ghost: {"DEV": "curve25519"}}}),
                )
                .await,
            "claim one",
        );
        if std::ptr::eq(rx, &crypto_rx) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while count_of(rx, &ghost) != vec![json!(2), json!(1)] {
                assert!(
                    Instant::now() < deadline,
                    "expected counts 2 then 1, got {:?}",
                    count_of(rx, &ghost)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let last = rx
                .requests()
                .into_iter()
                .rev()
                .find(|s| {
                    s.body
                        .get("org.matrix.msc3202.device_unused_fallback_key_types")
                        .is_some()
                })
                .unwrap();
            assert_eq!(
                last.body["org.matrix.msc3202.device_unused_fallback_key_types"][&ghost]["DEV"],
                json!([]),
                "{}",
                last.body
            );
        } else {
            // The other appservice: its own event stream says when it caught up.
            let room = human.create_room(&json!({"preset": "public_chat"})).await;
            expect_ok(bot.post(&format!("/join/{room}"), &json!({})).await, "join");
            human.send_text(&room, "caught up").await;
            rx.wait_for_bodies(&["caught up"]).await;
            assert!(
                rx.requests().iter().all(|s| s
                    .body
                    .get("org.matrix.msc3202.device_one_time_keys_count")
                    .is_none()),
                "key counts reached an appservice without org.matrix.msc3202"
            );
        }
    }
}

/// Issue 17, item 6 (MSC4203, unstable `de.sorunome.msc2409.to_device`): a to-device message
/// for a device of an appservice's user reaches an appservice registered with
/// `org.matrix.msc3202: true` in its transactions, with `to_user_id` and `to_device_id`; one
/// without the flag does not get it.
#[tokio::test]
async fn appservice_gets_its_devices_to_device_messages() {
    let (crypto_rx, plain_rx) = (Receiver::start().await, Receiver::start().await);
    let (id, plain) = (as_id(), as_id());
    let (server, _dir) = server_with(&[
        (
            "a.yaml",
            registration(&id, Some(&crypto_rx.url())) + "org.matrix.msc3202: true\n",
        ),
        ("b.yaml", registration(&plain, Some(&plain_rx.url()))),
    ])
    .await;
    let human = server.register_random().await;
    let to_device = |rx: &Receiver| -> Vec<Value> {
        rx.requests()
            .into_iter()
            .filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/"))
            .flat_map(|s| {
                s.body["de.sorunome.msc2409.to_device"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    };
    for (as_id, rx) in [(&id, &crypto_rx), (&plain, &plain_rx)] {
        let bot = server.client_with_token(&format!("as_{as_id}_secret"));
        let ghost = server.user_id(&format!("{as_id}_td"));
        expect_ok(
            bot.post(
                "/register",
                &json!({"type": "m.login.application_service", "username": format!("{as_id}_td"), "inhibit_login": true}),
            )
            .await,
            "register a ghost",
        );
        let (status, _) = bot
            .put(&format!("/devices/TD?user_id={ghost}"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        expect_ok(
            human
                .put(
                    &format!("/sendToDevice/m.test/{}", random_localpart()),
                    &json!({"messages": {&ghost: {"TD": {"secret": as_id}}}}),
                )
                .await,
            "send to the ghost's device",
        );
        if std::ptr::eq(rx, &crypto_rx) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !to_device(rx).iter().any(|e| {
                e["type"] == "m.test"
                    && e["sender"] == human.user_id
                    && e["to_user_id"] == ghost
                    && e["to_device_id"] == "TD"
                    && e["content"]["secret"] == as_id.as_str()
            }) {
                assert!(
                    Instant::now() < deadline,
                    "no to-device message: {:?}",
                    to_device(rx)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            let room = human.create_room(&json!({"preset": "public_chat"})).await;
            expect_ok(bot.post(&format!("/join/{room}"), &json!({})).await, "join");
            human.send_text(&room, "caught up").await;
            rx.wait_for_bodies(&["caught up"]).await;
            assert!(to_device(rx).is_empty(), "{:?}", to_device(rx));
        }
    }
}

/// Issue 17, item 6 (MSC3202, `org.matrix.msc3202.device_lists`): when the device list of a
/// user who shares a room with an appservice's user changes, an appservice registered with
/// `org.matrix.msc3202: true` gets the user in `changed`; one without the flag does not.
#[tokio::test]
async fn appservice_gets_device_list_changes() {
    let (crypto_rx, plain_rx) = (Receiver::start().await, Receiver::start().await);
    let (id, plain) = (as_id(), as_id());
    let (server, _dir) = server_with(&[
        (
            "a.yaml",
            registration(&id, Some(&crypto_rx.url())) + "org.matrix.msc3202: true\n",
        ),
        ("b.yaml", registration(&plain, Some(&plain_rx.url()))),
    ])
    .await;
    let human = server.register_random().await;
    let room = human.create_room(&json!({"preset": "public_chat"})).await;
    for as_id in [&id, &plain] {
        let bot = server.client_with_token(&format!("as_{as_id}_secret"));
        expect_ok(bot.post(&format!("/join/{room}"), &json!({})).await, "join");
    }
    expect_ok(
        human
            .put(
                &format!("/devices/{}", human.device_id),
                &json!({"display_name": "renamed"}),
            )
            .await,
        "rename a device",
    );
    let changed = |rx: &Receiver| -> Vec<Value> {
        rx.requests()
            .into_iter()
            .filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/"))
            .flat_map(|s| {
                s.body["org.matrix.msc3202.device_lists"]["changed"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !changed(&crypto_rx).iter().any(|u| *u == human.user_id) {
        assert!(
            Instant::now() < deadline,
            "no device list change: {:?}",
            changed(&crypto_rx)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    human.send_text(&room, "caught up").await;
    plain_rx.wait_for_bodies(&["caught up"]).await;
    assert!(changed(&plain_rx).is_empty(), "{:?}", changed(&plain_rx));
}

#[tokio::test]
async fn appservice_users_act_on_the_paracord_extension_and_media() {
    let id = as_id();
    let (server, _dir) = server_with(&[("r.yaml", registration(&id, None))]).await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let ghost = format!("{id}_guildmaster");
    expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": ghost, "inhibit_login": true}),
        )
        .await,
        "appservice registration",
    );
    let ghost_id = server.user_id(&ghost);
    let as_ghost = format!("user_id={}", enc(&ghost_id));

    // A guild made through `/_paracord/v1` with the as_token belongs to the user it names.
    let guild = expect_ok(
        bot.post(
            &format!("/_paracord/v1/guilds?{as_ghost}"),
            &json!({ "name": "Bridged" }),
        )
        .await,
        "POST /_paracord/v1/guilds as the appservice's user",
    );
    assert_eq!(guild["owner"], ghost_id.as_str(), "{guild}");
    // Without `?user_id=` it is the appservice's own sender.
    let own = expect_ok(
        bot.post(
            "/_paracord/v1/guilds",
            &json!({ "name": "The bridge's own" }),
        )
        .await,
        "POST /_paracord/v1/guilds as the appservice",
    );
    assert_eq!(
        own["owner"],
        server.user_id(&format!("{id}bot")).as_str(),
        "{own}"
    );
    // A user outside its namespace cannot be named.
    expect_error(
        &bot.post(
            &format!(
                "/_paracord/v1/guilds?user_id={}",
                enc(&server.user_id(&random_localpart()))
            ),
            &json!({ "name": "Not mine" }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
        "a guild for a user outside the namespace",
    );

    // Media: an upload with the as_token is the named user's, and a wrong as_token is refused.
    let up = bot
        .raw(
            reqwest::Method::POST,
            &format!("/_matrix/media/v3/upload?{as_ghost}"),
            Some((b"bridged attachment".to_vec(), "text/plain")),
        )
        .await;
    assert_eq!(
        up.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&up.bytes)
    );
    let uri = serde_json::from_slice::<Value>(&up.bytes).unwrap_or_default()["content_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(uri.starts_with("mxc://"), "{uri}");
    let stranger = server.client_with_token("as_not_a_real_token");
    let refused = stranger
        .raw(
            reqwest::Method::POST,
            "/_matrix/media/v3/upload",
            Some((b"x".to_vec(), "text/plain")),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        serde_json::from_slice::<Value>(&refused.bytes).unwrap_or_default()["errcode"],
        "M_UNKNOWN_TOKEN"
    );
}

/// A registration's URL is the operator's own configuration: an appservice on loopback is
/// reached without `ip_range_allowlist` (bridges run next to the server), while a pusher on
/// loopback of the same server is still refused (the guard's default is unchanged for what
/// users choose).
#[tokio::test]
async fn an_appservice_on_loopback_needs_no_allowlist() {
    let receiver = Receiver::start().await;
    let id = as_id();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        registration(&id, Some(&receiver.url())),
    )
    .unwrap();
    let path = dir.path().display().to_string();
    let server = TestServer::start_guarded(|env| {
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &path);
    })
    .await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    expect_ok(
        bot.post(
            &format!("/_matrix/client/v1/appservice/{id}/ping"),
            &json!({"transaction_id": "loopback"}),
        )
        .await,
        "ping of an appservice on loopback",
    );
    assert!(
        receiver
            .requests()
            .iter()
            .any(|s| s.path == "/_matrix/app/v1/ping" && s.body["transaction_id"] == "loopback"),
        "{:?}",
        receiver.requests()
    );

    let alice = server.register_random().await;
    expect_error(
        &alice
            .post(
                "/_matrix/client/v3/pushers/set",
                &json!({
                    "kind": "http", "app_id": "m.test", "pushkey": "k", "app_display_name": "t",
                    "device_display_name": "d", "lang": "en",
                    "data": { "url": format!("{}/_matrix/push/v1/notify", receiver.url()) },
                }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
        "a pusher on loopback without the allowlist",
    );
}

/// MSC3202 device lists follow membership (issue 17): a user who starts sharing a room with one
/// of the appservice's users is in `device_lists.changed` (without any key change), and one who
/// no longer shares any room with them is in `device_lists.left`, so an encrypted bridge knows
/// whose devices to track and to forget.
#[tokio::test]
async fn msc3202_device_lists_follow_who_shares_a_room() {
    let receiver = Receiver::start().await;
    let id = as_id();
    let (server, _dir) = server_with(&[(
        "a.yaml",
        registration(&id, Some(&receiver.url())) + "org.matrix.msc3202: true\n",
    )])
    .await;
    let bot = server.client_with_token(&format!("as_{id}_secret"));
    let ghost = format!("{id}_ghost");
    expect_ok(
        bot.post(
            "/register",
            &json!({"type": "m.login.application_service", "username": ghost, "inhibit_login": true}),
        )
        .await,
        "register the ghost",
    );
    let ghost_id = server.user_id(&ghost);
    let alice = server.register_random().await;
    let bob = server.register_random().await;
    let room = alice.create_room(&json!({ "preset": "public_chat" })).await;
    // The ghost joins: alice's devices are new to the appservice.
    expect_ok(
        bot.post(
            &format!("/join/{}?user_id={}", enc(&room), enc(&ghost_id)),
            &json!({}),
        )
        .await,
        "the ghost joins",
    );
    // Bob joins where the ghost is: his are new too.
    bob.join_ok(&room).await;
    device_lists_until(&receiver, |seen| {
        has(seen, "changed", &alice.user_id) && has(seen, "changed", &bob.user_id)
    })
    .await;
    // Bob leaves: he shares no other room with the appservice's users.
    bob.leave_ok(&room).await;
    let seen = device_lists_until(&receiver, |seen| has(seen, "left", &bob.user_id)).await;
    assert!(!has(&seen, "left", &alice.user_id), "{seen:#?}");
    // Alice is in a second room with the ghost: the ghost leaving this one leaves her tracked.
    let second = alice.create_room(&json!({ "preset": "public_chat" })).await;
    expect_ok(
        bot.post(
            &format!("/join/{}?user_id={}", enc(&second), enc(&ghost_id)),
            &json!({}),
        )
        .await,
        "the ghost joins a second room",
    );
    expect_ok(
        bot.post(
            &format!("/rooms/{}/leave?user_id={}", enc(&room), enc(&ghost_id)),
            &json!({}),
        )
        .await,
        "the ghost leaves the first room",
    );
    // Once that leave reached the appservice (its device-list rows go in the same batch),
    // nothing has said alice left: she still shares the second room with the ghost.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !receiver.events().iter().any(|e| {
        e["type"] == "m.room.member"
            && e["state_key"] == ghost_id.as_str()
            && e["room_id"] == room.as_str()
            && e["content"]["membership"] == "leave"
    }) {
        assert!(
            Instant::now() < deadline,
            "the ghost's leave never reached the appservice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_marker = receiver.requests().len();
    expect_ok(
        bot.post(
            &format!("/rooms/{}/leave?user_id={}", enc(&second), enc(&ghost_id)),
            &json!({}),
        )
        .await,
        "the ghost leaves the second room",
    );
    let seen = device_lists_until(&receiver, |seen| has(seen, "left", &alice.user_id)).await;
    let earlier: Vec<Value> = receiver.requests()[..before_marker]
        .iter()
        .map(|s| s.body["org.matrix.msc3202.device_lists"].clone())
        .collect();
    assert!(
        !has(&earlier, "left", &alice.user_id),
        "alice was left while still sharing a room: {seen:#?}"
    );
}

/// The MSC3202 `device_lists` of the transactions received, waiting until `want` holds.
async fn device_lists_until(receiver: &Receiver, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<Value> = receiver
            .requests()
            .into_iter()
            .filter(|s| s.path.starts_with("/_matrix/app/v1/transactions/"))
            .map(|s| s.body["org.matrix.msc3202.device_lists"].clone())
            .filter(|d| !d.is_null())
            .collect();
        if want(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "device lists seen: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether one of `seen` lists `user` under `field` (`changed` or `left`).
fn has(seen: &[Value], field: &str, user: &str) -> bool {
    seen.iter().any(|d| {
        d[field]
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == user))
    })
}
