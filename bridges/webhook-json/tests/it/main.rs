//! The JSON webhook bridge against a real Paracord: a posted body becomes the rendered
//! message in the hook's room; bad JSON is a 400 and an unknown hook a 404.
//!
//! ```sh
//! cargo build -p paracord
//! PARACORD_BIN=$CARGO_TARGET_DIR/debug/paracord cargo test -p paracord-bridge-webhook-json --test it
//! ```

// A black-box test reports a failure by panicking where it happens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use paracord_complement::{free_port, TestServer};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "Zq8sW3nV7bK2pL5xR9tY";

struct Bridge(Child, std::path::PathBuf);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- webhook bridge log ----\n{}\n---- end ----",
                std::fs::read_to_string(&self.1).unwrap_or_default()
            );
        }
    }
}

fn write_config(dir: &Path, homeserver: &str, server_name: &str, ports: (u16, u16), room: &str) {
    let yaml = format!(
        "homeserver_url: {homeserver}\n\
         server_name: '{server_name}'\n\
         registration: {reg}\n\
         listen: 127.0.0.1:{as_port}\n\
         state: {state}\n\
         webhook_listen: 127.0.0.1:{hook_port}\n\
         hooks:\n\
         \x20 - name: pushes\n\
         \x20   token: {TOKEN}\n\
         \x20   room: '{room}'\n\
         \x20   template: '{{{{ sender.login }}}} pushed {{{{ commits.length }}}} commits to \
         {{{{ repository.full_name }}}} ({{{{ commits[0].message ?? \"no message\" }}}}){{{{ missing }}}}'\n",
        reg = dir.join("appservices/webhook.yaml").display(),
        state = dir.join("state.json").display(),
        as_port = ports.0,
        hook_port = ports.1,
    );
    std::fs::write(dir.join("webhooks.yaml"), yaml).unwrap();
}

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paracord-webhook-json"));
    cmd.arg("--config").arg(dir.join("webhooks.yaml"));
    cmd
}

#[tokio::test]
async fn posted_json_becomes_a_message_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("appservices")).unwrap();
    let ports = (free_port(), free_port());
    let dir_path = dir.path().to_owned();
    let server = TestServer::start_with(|env| {
        let get = |k: &str| env.iter().find(|(key, _)| key == k).unwrap().1.clone();
        let homeserver = format!("http://{}", get("PARACORD_LISTEN"));
        write_config(
            &dir_path,
            &homeserver,
            &get("PARACORD_SERVER_NAME"),
            ports,
            "!x:y",
        );
        let out = command(&dir_path).arg("--generate").output().unwrap();
        assert!(
            out.status.success(),
            "expected --generate to succeed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir_path.join("appservices").display().to_string();
        TestServer::set_env(env, "PARACORD_APPSERVICE_DIR", &path);
    })
    .await;

    // A private room with the bot invited (its user exists once the appservice asks who it is).
    let registration =
        std::fs::read_to_string(dir.path().join("appservices/webhook.yaml")).unwrap();
    let as_token = registration
        .lines()
        .find_map(|l| l.strip_prefix("as_token: "))
        .unwrap()
        .trim_matches(['\'', '"']);
    let (status, body) = server.client_with_token(as_token).whoami().await;
    assert_eq!(status, 200, "{body}");
    let bot = server.user_id("webhooks");
    let alice = server.register_random().await;
    let room = alice
        .client
        .create_room(&json!({"preset": "private_chat"}))
        .await;
    alice.client.invite_ok(&room, &bot).await;

    write_config(
        dir.path(),
        &server.base_url(),
        &server.server_name(),
        ports,
        &room,
    );
    let log = dir.path().join("bridge.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = command(dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _bridge = Bridge(child, log);

    let http = reqwest::Client::new();
    let url = |token: &str| format!("http://127.0.0.1:{}/hooks/{token}", ports.1);
    let post = |token: &str, body: &str| {
        http.post(url(token))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    // Wait for the hook listener.
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", ports.1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the webhook listener did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let push = json!({
        "sender": {"login": "octocat"},
        "repository": {"full_name": "octo/hello"},
        "commits": [{"message": "fix it"}, {"message": "test it"}, {"message": "ship it"}],
    });
    let resp = post(TOKEN, &push.to_string()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let event_id = answer["event_id"].as_str().unwrap().to_owned();

    // A body without some fields: the default, or nothing.
    let resp = post(TOKEN, r#"{"sender": {"login": "ghost"}, "commits": []}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let deadline = Instant::now() + WAIT;
    let (first, second) = loop {
        let timeline = alice.client.all_messages(&room).await;
        let find = |pred: &dyn Fn(&Value) -> bool| timeline.iter().find(|e| pred(e)).cloned();
        let first = find(&|e| e["event_id"] == event_id.as_str());
        let second = find(&|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("ghost"))
        });
        if let (Some(a), Some(b)) = (first, second) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "expected both messages: {timeline:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first["sender"], bot.as_str());
    assert_eq!(first["content"]["msgtype"], "m.notice");
    assert_eq!(
        first["content"]["body"],
        "octocat pushed 3 commits to octo/hello (fix it)"
    );
    assert_eq!(
        second["content"]["body"],
        "ghost pushed 0 commits to  (no message)"
    );

    // Bad JSON: 400 with a Matrix error; nothing sent.
    let resp = post(TOKEN, "{not json").await.unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["errcode"], "M_NOT_JSON");
    assert!(err["error"].as_str().unwrap().contains("JSON"), "{err}");

    // An unknown hook, a wrong token of the right length, another path: 404.
    for token in ["nope", "Zq8sW3nV7bK2pL5xR9tZ"] {
        let resp = post(token, &push.to_string()).await.unwrap();
        assert_eq!(resp.status(), 404, "token {token}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["errcode"], "M_NOT_FOUND");
    }
    let resp = http
        .post(format!("http://127.0.0.1:{}/other", ports.1))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let timeline = alice.client.all_messages(&room).await;
    let from_bot = timeline
        .iter()
        .filter(|e| e["type"] == "m.room.message" && e["sender"] == bot.as_str())
        .count();
    assert_eq!(
        from_bot, 2,
        "only the two good posts are sent: {timeline:?}"
    );
}
