//! `paracord-webhook-json`: incoming webhooks for Matrix. Each configured hook has a secret
//! URL; a JSON body posted to it is rendered through the hook's template into a message the
//! bridge's bot sends into the hook's room.
//!
//! ```sh
//! paracord-webhook-json --config webhooks.yaml --generate   # writes the registration
//! paracord-webhook-json --config webhooks.yaml
//! curl -d '{"sender":{"login":"octo"}}' http://127.0.0.1:29331/hooks/<token>
//! ```
//! See `bridges/README.md`.

mod template;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use clap::Parser;
use paracord_appservice::{
    ruma::OwnedRoomId, user_namespace_on, Appservice, Error, Events, JsonFileStore, Registration,
};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::template::Template;

/// The largest body a hook accepts.
const BODY_LIMIT: usize = 1024 * 1024;
/// The longest message sent (bytes of the rendered text); longer ones are cut with `…`.
const MESSAGE_LIMIT: usize = 16 * 1024;
/// The shortest token accepted in the config.
const MIN_TOKEN: usize = 16;

/// Incoming JSON webhooks for Matrix.
#[derive(Debug, clap::Parser)]
#[command(name = "paracord-webhook-json", version)]
struct Args {
    /// The configuration file (YAML).
    #[arg(short, long, default_value = "webhooks.yaml")]
    config: PathBuf,
    /// Write a new registration to the configured `registration` path (which must not exist
    /// yet) and exit.
    #[arg(long)]
    generate: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    homeserver_url: String,
    server_name: String,
    registration: PathBuf,
    /// Where the appservice listens for the homeserver's transactions.
    listen: SocketAddr,
    /// The URL the homeserver reaches `listen` at (default `http://<listen>`).
    #[serde(default)]
    url: Option<String>,
    state: PathBuf,
    #[serde(default = "default_bot")]
    bot_localpart: String,
    /// Where the hooks are served (`POST /hooks/<token>`).
    webhook_listen: SocketAddr,
    hooks: Vec<HookConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookConfig {
    name: String,
    /// The secret part of the hook's URL.
    token: String,
    /// Room id or alias; the bot joins it (it must be invited to a private room).
    room: String,
    template: String,
    /// `notice` (the default: bots' messages other bots do not answer) or `text`.
    #[serde(default = "default_msgtype")]
    msgtype: String,
}

fn default_bot() -> String {
    "webhooks".into()
}

fn default_msgtype() -> String {
    "notice".into()
}

struct Hook {
    name: String,
    token: String,
    room: String,
    template: Template,
    msgtype: &'static str,
}

fn load_config(path: &Path) -> Result<(Config, Vec<Hook>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config: Config =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hooks = Vec::new();
    for h in &config.hooks {
        if h.token.len() < MIN_TOKEN || !h.token.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "hook {}: the token must be at least {MIN_TOKEN} letters and digits",
                h.name
            ));
        }
        if hooks.iter().any(|o: &Hook| o.token == h.token) {
            return Err(format!("hook {}: the token of another hook", h.name));
        }
        let template = Template::parse(&h.template).map_err(|e| format!("hook {}: {e}", h.name))?;
        let msgtype = match h.msgtype.as_str() {
            "notice" => "m.notice",
            "text" => "m.text",
            other => {
                return Err(format!(
                    "hook {}: msgtype `{other}` (expected `notice` or `text`)",
                    h.name
                ))
            }
        };
        hooks.push(Hook {
            name: h.name.clone(),
            token: h.token.clone(),
            room: h.room.clone(),
            template,
            msgtype,
        });
    }
    Ok((config, hooks))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paracord-webhook-json: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (config, hooks) = load_config(&args.config)?;
    let url = config
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    if args.generate {
        // New tokens would lock out the homeserver's copy of the old file.
        if config.registration.exists() {
            return Err(format!(
                "{} exists; delete it first to generate a new registration",
                config.registration.display()
            ));
        }
        // No users of its own besides the bot: an exclusive namespace of `<bot>_*` keeps
        // the name space for later.
        let registration = Registration::generate(
            "webhook-json",
            Some(&url),
            &config.bot_localpart,
            [user_namespace_on(
                &format!("{}_.*", config.bot_localpart),
                &config.server_name,
            )],
        );
        registration
            .save(&config.registration)
            .map_err(|e| e.to_string())?;
        println!(
            "wrote {}; copy it to the homeserver's appservice directory",
            config.registration.display()
        );
        return Ok(());
    }
    let registration = Registration::load(&config.registration).map_err(|e| e.to_string())?;
    let store = JsonFileStore::open(&config.state).map_err(|e| e.to_string())?;
    let (app, events) =
        Appservice::builder(registration, &config.homeserver_url, &config.server_name)
            .store(store)
            .build()
            .map_err(|e| e.to_string())?;
    let as_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", config.listen))?;
    let hook_listener = tokio::net::TcpListener::bind(config.webhook_listen)
        .await
        .map_err(|e| format!("webhook_listen {}: {e}", config.webhook_listen))?;
    tokio::spawn(app.clone().serve_listener(as_listener));
    tokio::spawn(accept_invites(app.clone(), events));
    let state = Arc::new(Hooks {
        app,
        hooks,
        rooms: Mutex::new(HashMap::new()),
    });
    for (i, hook) in state.hooks.iter().enumerate() {
        if let Err(e) = state.room(i).await {
            tracing::warn!(
                "hook {}: joining {}: {e} (tried again on use)",
                hook.name,
                hook.room
            );
        }
    }
    tracing::info!(
        "webhooks listening on {} ({} hooks)",
        config.webhook_listen,
        state.hooks.len()
    );
    axum::serve(hook_listener, router(state))
        .await
        .map_err(|e| e.to_string())
}

/// The bot joins rooms it is invited to (so a hook's private room can invite it); other
/// events are not used.
async fn accept_invites(app: Appservice, mut events: Events) {
    let Ok(bot) = app.bot() else { return };
    while let Some(event) = events.recv().await {
        if let (Some(invited), Some(room)) = (event.invited_user(), event.room_id()) {
            if invited == bot.user_id() {
                if let Err(e) = bot.join(room.as_str()).await {
                    tracing::warn!("joining {room} after an invite: {e}");
                }
            }
        }
    }
}

struct Hooks {
    app: Appservice,
    hooks: Vec<Hook>,
    /// Hook index → the room id its room resolved to once joined.
    rooms: Mutex<HashMap<usize, OwnedRoomId>>,
}

impl Hooks {
    /// The hook whose token is `token`, compared in constant time against every hook.
    fn find(&self, token: &str) -> Option<usize> {
        let mut found = None;
        for (i, hook) in self.hooks.iter().enumerate() {
            if bool::from(hook.token.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(i);
            }
        }
        found
    }

    /// The hook's room id, joining it the first time.
    async fn room(&self, i: usize) -> Result<OwnedRoomId, Error> {
        if let Some(id) = self.rooms.lock().unwrap_or_else(|p| p.into_inner()).get(&i) {
            return Ok(id.clone());
        }
        let room = self
            .hooks
            .get(i)
            .map(|h| h.room.as_str())
            .ok_or_else(|| Error::Invalid(format!("no hook {i}")))?;
        let id = self.app.bot()?.join(room).await?;
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(i, id.clone());
        Ok(id)
    }
}

fn router(state: Arc<Hooks>) -> Router {
    Router::new()
        .route("/hooks/{token}", post(receive))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such hook") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": message}))).into_response()
}

/// `POST /hooks/{token}`: renders the JSON body into the hook's room.
async fn receive(
    State(state): State<Arc<Hooks>>,
    UrlPath(token): UrlPath<String>,
    body: Bytes,
) -> Response {
    let Some((i, hook)) = state
        .find(&token)
        .and_then(|i| Some((i, state.hooks.get(i)?)))
    else {
        return error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such hook");
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "M_NOT_JSON",
                &format!("the body is not valid JSON: {e}"),
            )
        }
    };
    let mut text = hook.template.render(&value);
    truncate(&mut text, MESSAGE_LIMIT);
    if text.trim().is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "M_BAD_JSON",
            "the template rendered an empty message for this body",
        );
    }
    let sent = async {
        let room = state.room(i).await?;
        let content = json!({"msgtype": hook.msgtype, "body": text});
        state
            .app
            .bot()?
            .send_event(&room, "m.room.message", &content)
            .await
    }
    .await;
    match sent {
        Ok(event_id) => (StatusCode::OK, Json(json!({"event_id": event_id}))).into_response(),
        Err(e) => {
            tracing::warn!("hook {}: sending to {}: {e}", hook.name, hook.room);
            error(
                StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                "the homeserver did not accept the message",
            )
        }
    }
}

/// Cuts `text` to at most `limit` bytes at a character boundary, ending it with `…`.
fn truncate(text: &mut String, limit: usize) {
    if text.len() <= limit {
        return;
    }
    let mut cut = limit.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character() {
        let mut s = "é".repeat(10);
        truncate(&mut s, 8);
        assert_eq!(s, "éé…");
        assert!(s.len() <= 8);
        let mut short = "ok".to_owned();
        truncate(&mut short, 8);
        assert_eq!(short, "ok");
    }

    #[test]
    fn config_checks_tokens_templates_and_msgtypes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.yaml");
        let base = "homeserver_url: http://127.0.0.1:8008\nserver_name: x\nregistration: r.yaml\n\
                    listen: 127.0.0.1:1\nstate: s.json\nwebhook_listen: 127.0.0.1:2\nhooks:\n";
        let write = |hooks: &str| std::fs::write(&path, format!("{base}{hooks}")).unwrap();
        write("  - {name: a, token: abcdefghijklmnop1234, room: '!r:x', template: 'hi {{ x }}'}\n");
        let (_, hooks) = load_config(&path).unwrap();
        assert_eq!(hooks[0].msgtype, "m.notice");
        write("  - {name: a, token: short, room: '!r:x', template: 'hi'}\n");
        assert!(load_config(&path).err().unwrap().contains("token"));
        write("  - {name: a, token: abcdefghijklmnop1234, room: '!r:x', template: 'hi {{ x'}\n");
        assert!(load_config(&path).err().unwrap().contains("template error"));
        write(
            "  - {name: a, token: abcdefghijklmnop1234, room: '!r:x', template: 'x', msgtype: html}\n",
        );
        assert!(load_config(&path).err().unwrap().contains("msgtype"));
    }
}
