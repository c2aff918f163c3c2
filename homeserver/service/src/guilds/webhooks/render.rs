//! Execute bodies (Discord's, Slack's, GitHub's) read into one [`Message`], its checks with
//! Discord's error codes, and the Matrix events it becomes (spec/webhooks.md §4–§7): a
//! `m.text` whose `formatted_body` holds the embeds as HTML (every piece of user text
//! escaped) with a plain-text `body`, `m.mentions` limited by `allowed_mentions`, and one
//! `m.file`/`m.image` per attached file.

use std::{fmt::Write as _, sync::LazyLock};

use http::StatusCode;
use paracord_core::{Error, ErrorKind};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Most characters of `content` (Discord's limit).
pub const MAX_CONTENT: usize = 2000;
/// Most embeds of one message.
pub const MAX_EMBEDS: usize = 10;
/// Most characters of a Slack or GitHub message once rendered.
const MAX_INTEGRATION_TEXT: usize = 4000;

/// Why an execution is refused, in Discord's error shape (`{"code", "message"}`).
#[derive(Debug)]
pub enum ExecuteError {
    /// A wrong id or token, a deleted webhook or channel: `404`, code 10015.
    UnknownWebhook,
    /// Nothing to post: `400`, code 50006.
    Empty,
    /// The body is not JSON (or not an object): `400`, code 50109.
    InvalidJson,
    /// A field breaks a rule: `400`, code 50035 with Discord's `errors` tree.
    InvalidForm(Value),
    /// `?thread_id=` names no event of the channel: `400`, code 10003.
    UnknownThread,
    /// A message id that is no message of this webhook: `404`, code 10008.
    UnknownMessage,
    /// The webhook's bucket is empty: `429` with `retry_after` (seconds).
    RateLimited { retry_after_ms: u64 },
    /// A GitHub body without the right `X-Hub-Signature-256`: `401`.
    BadSignature,
    /// The body or a file is too large: `413`, code 40005.
    TooLarge,
    /// Anything else, from the server's own error type.
    Internal(Error),
}

impl ExecuteError {
    /// The HTTP status and the Discord-shaped body.
    pub fn answer(&self) -> (StatusCode, Value) {
        let plain = |status: StatusCode, code: u64, message: &str| {
            (status, json!({ "code": code, "message": message }))
        };
        match self {
            Self::UnknownWebhook => plain(StatusCode::NOT_FOUND, 10015, "Unknown Webhook"),
            Self::Empty => plain(
                StatusCode::BAD_REQUEST,
                50006,
                "Cannot send an empty message",
            ),
            Self::InvalidJson => plain(
                StatusCode::BAD_REQUEST,
                50109,
                "The request body contains invalid JSON.",
            ),
            Self::InvalidForm(errors) => (
                StatusCode::BAD_REQUEST,
                json!({ "code": 50035, "message": "Invalid Form Body", "errors": errors }),
            ),
            Self::UnknownThread => plain(StatusCode::BAD_REQUEST, 10003, "Unknown Channel"),
            Self::UnknownMessage => plain(StatusCode::NOT_FOUND, 10008, "Unknown Message"),
            Self::RateLimited { retry_after_ms } => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({
                    "code": 0,
                    "message": "You are being rate limited.",
                    "retry_after": (*retry_after_ms as f64) / 1000.0,
                    "global": false,
                }),
            ),
            Self::BadSignature => plain(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized"),
            Self::TooLarge => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                40005,
                "Request entity too large",
            ),
            Self::Internal(e) => match e.kind() {
                Some(ErrorKind::Forbidden) => {
                    plain(StatusCode::FORBIDDEN, 50013, "Missing Permissions")
                }
                Some(
                    ErrorKind::InvalidParam
                    | ErrorKind::BadJson
                    | ErrorKind::NotJson
                    | ErrorKind::MissingParam,
                ) => {
                    let message = e.classify().1["error"].clone();
                    (
                        StatusCode::BAD_REQUEST,
                        json!({
                            "code": 50035,
                            "message": "Invalid Form Body",
                            "errors": { "_errors": [{ "code": "BASE_TYPE_INVALID", "message": message }] },
                        }),
                    )
                }
                Some(ErrorKind::TooLarge) => plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    40005,
                    "Request entity too large",
                ),
                Some(ErrorKind::LimitExceeded { retry_after_ms }) => Self::RateLimited {
                    retry_after_ms: *retry_after_ms,
                }
                .answer(),
                _ => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    0,
                    "500: Internal Server Error",
                ),
            },
        }
    }
}

/// One field's errors, as Discord nests them: `{"field": {"_errors": [{code, message}]}}`.
fn form_error(field: &str, code: &str, message: impl Into<String>) -> ExecuteError {
    let mut errors = Map::new();
    errors.insert(
        field.to_owned(),
        json!({ "_errors": [{ "code": code, "message": message.into() }] }),
    );
    ExecuteError::InvalidForm(Value::Object(errors))
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EmbedField {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EmbedFooter {
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EmbedAuthor {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon_url: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EmbedImage {
    #[serde(default)]
    pub url: String,
}

/// A Discord embed (the parts Paracord renders; others are ignored).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Embed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<EmbedField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer: Option<EmbedFooter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<EmbedAuthor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<EmbedImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<EmbedImage>,
}

impl Embed {
    fn is_empty(&self) -> bool {
        self.title.as_deref().unwrap_or("").is_empty()
            && self.description.as_deref().unwrap_or("").is_empty()
            && self.fields.is_empty()
            && self.footer.as_ref().is_none_or(|f| f.text.is_empty())
            && self.author.as_ref().is_none_or(|a| a.name.is_empty())
            && self.image.is_none()
            && self.thumbnail.is_none()
    }

    /// Discord's limits on an embed's parts.
    fn check(&self, i: usize) -> Result<(), ExecuteError> {
        let long = |part: &str, text: &str, max: usize| -> Result<(), ExecuteError> {
            if text.chars().count() > max {
                return Err(form_error(
                    &format!("embeds.{i}.{part}"),
                    "BASE_TYPE_MAX_LENGTH",
                    format!("Must be {max} or fewer in length."),
                ));
            }
            Ok(())
        };
        long("title", self.title.as_deref().unwrap_or(""), 256)?;
        long(
            "description",
            self.description.as_deref().unwrap_or(""),
            4096,
        )?;
        if self.fields.len() > 25 {
            return Err(form_error(
                &format!("embeds.{i}.fields"),
                "BASE_TYPE_MAX_LENGTH",
                "Must be 25 or fewer in length.",
            ));
        }
        for (j, f) in self.fields.iter().enumerate() {
            long(&format!("fields.{j}.name"), &f.name, 256)?;
            long(&format!("fields.{j}.value"), &f.value, 1024)?;
        }
        if let Some(f) = &self.footer {
            long("footer.text", &f.text, 2048)?;
        }
        if let Some(a) = &self.author {
            long("author.name", &a.name, 256)?;
        }
        Ok(())
    }
}

/// A file of a multipart execution.
#[derive(Clone, Debug)]
pub struct Upload {
    pub filename: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A message to post, checked.
#[derive(Clone, Debug, Default)]
pub struct Message {
    pub content: String,
    pub username: Option<String>,
    pub avatar_url: Option<String>,
    pub embeds: Vec<Embed>,
    /// Users to mention (`m.mentions.user_ids`): those named in the content that
    /// `allowed_mentions` lets through.
    pub mentioned_users: Vec<String>,
    /// `@everyone`/`@here` in the content, and allowed (`m.mentions.room`).
    pub mention_everyone: bool,
    /// `?thread_id=`: the event id of the thread's root.
    pub thread_id: Option<String>,
    pub files: Vec<Upload>,
}

impl Message {
    /// Whether there is a text event to send (content or embeds).
    pub fn has_text(&self) -> bool {
        !self.content.trim().is_empty() || !self.embeds.is_empty()
    }
}

/// `<@USER_ID>` (or `<@!USER_ID>`) with a Matrix user id: a mention.
static MENTION: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"<@!?(@[^\s<>:]+:[^\s<>]+)>").ok());

fn mentions_in(content: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(re) = MENTION.as_ref() {
        for c in re.captures_iter(content) {
            if let Some(m) = c.get(1) {
                let u = m.as_str().to_owned();
                if ruma::UserId::parse(&u).is_ok() && !out.contains(&u) {
                    out.push(u);
                }
            }
        }
    }
    out
}

fn names_everyone(content: &str) -> bool {
    content.contains("@everyone") || content.contains("@here")
}

fn string_field(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, ExecuteError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                return Err(form_error(
                    field,
                    "BASE_TYPE_MAX_LENGTH",
                    format!("Must be {max} or fewer in length."),
                ));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(form_error(field, "BASE_TYPE_STRING", "Must be a string.")),
    }
}

/// Reads Discord's execute body (`content`, `username`, `avatar_url`, `embeds`,
/// `allowed_mentions`; `tts`, `flags` and the rest are ignored) with the files of a multipart
/// request and `?thread_id=`.
pub fn discord(
    body: Value,
    thread_id: Option<String>,
    files: Vec<Upload>,
) -> Result<Message, ExecuteError> {
    let Value::Object(body) = body else {
        return Err(ExecuteError::InvalidJson);
    };
    let content = string_field(&body, "content", MAX_CONTENT)?.unwrap_or_default();
    let username = string_field(&body, "username", 80)?.filter(|u| !u.trim().is_empty());
    let avatar_url = string_field(&body, "avatar_url", 2048)?.filter(|u| !u.is_empty());
    let embeds = match body.get("embeds") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > MAX_EMBEDS {
                return Err(form_error(
                    "embeds",
                    "BASE_TYPE_MAX_LENGTH",
                    format!("Must be {MAX_EMBEDS} or fewer in length."),
                ));
            }
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                let embed: Embed = serde_json::from_value(e.clone()).map_err(|e| {
                    form_error(&format!("embeds.{i}"), "MODEL_TYPE_CONVERT", e.to_string())
                })?;
                embed.check(i)?;
                if !embed.is_empty() {
                    out.push(embed);
                }
            }
            out
        }
        Some(_) => return Err(form_error("embeds", "BASE_TYPE_ARRAY", "Must be an array.")),
    };
    let (users_allowed, listed, everyone_allowed) = allowed_mentions(body.get("allowed_mentions"))?;
    let mentioned_users = mentions_in(&content)
        .into_iter()
        .filter(|u| users_allowed || listed.contains(u))
        .collect();
    let message = Message {
        mention_everyone: everyone_allowed && names_everyone(&content),
        content,
        username,
        avatar_url,
        embeds,
        mentioned_users,
        thread_id,
        files,
    };
    if !message.has_text() && message.files.is_empty() {
        return Err(ExecuteError::Empty);
    }
    Ok(message)
}

/// `allowed_mentions`: whether users named in the content may be mentioned, which users may
/// be (`users`), and whether `@everyone` may. Absent: everything (Discord's default).
fn allowed_mentions(v: Option<&Value>) -> Result<(bool, Vec<String>, bool), ExecuteError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((true, Vec::new(), true));
    };
    let bad = |what: &str| form_error("allowed_mentions", "MODEL_TYPE_CONVERT", what);
    let obj = v.as_object().ok_or_else(|| bad("Must be an object."))?;
    let strings = |key: &str| -> Result<Vec<String>, ExecuteError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(&format!("{key} must be strings.")))
                })
                .collect(),
            Some(_) => Err(bad(&format!("{key} must be an array."))),
        }
    };
    let parse = strings("parse")?;
    for p in &parse {
        if !["users", "roles", "everyone"].contains(&p.as_str()) {
            return Err(bad(&format!("{p:?} is not users, roles or everyone.")));
        }
    }
    let users = strings("users")?;
    if users.len() > 100 {
        return Err(bad("users must be 100 or fewer."));
    }
    let users_parsed = parse.iter().any(|p| p == "users");
    if users_parsed && !users.is_empty() {
        return Err(form_error(
            "allowed_mentions",
            "MUTUALLY_EXCLUSIVE",
            "parse:[\"users\"] and users: [ids...] are mutually exclusive.",
        ));
    }
    Ok((users_parsed, users, parse.iter().any(|p| p == "everyone")))
}

/// Escapes text for HTML (element content and quoted attribute values alike).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escaped text with its line breaks as `<br>`.
fn escape_lines(s: &str) -> String {
    escape(s).replace('\n', "<br>")
}

/// A link target: only `http(s)` URLs, escaped; anything else is no link.
fn href(url: Option<&str>) -> Option<String> {
    url.filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(escape)
}

/// The content as plain text: mentions become the user ids.
fn plain_content(content: &str) -> String {
    match MENTION.as_ref() {
        Some(re) => re.replace_all(content, "$1").into_owned(),
        None => content.to_owned(),
    }
}

/// The content as HTML: escaped, mentions as `matrix.to` links (pills).
fn html_content(content: &str) -> String {
    let Some(re) = MENTION.as_ref() else {
        return escape_lines(content);
    };
    let mut out = String::new();
    let mut last = 0;
    for c in re.captures_iter(content) {
        let (Some(all), Some(user)) = (c.get(0), c.get(1)) else {
            continue;
        };
        out.push_str(&escape_lines(&content[last..all.start()]));
        let u = escape(user.as_str());
        let _ = write!(out, "<a href=\"https://matrix.to/#/{u}\">{u}</a>");
        last = all.end();
    }
    out.push_str(&escape_lines(&content[last..]));
    out
}

fn embed_html(e: &Embed) -> String {
    let mut h = String::new();
    let colour = e
        .color
        .map(|c| format!(" data-mx-border-color=\"#{:06x}\"", c & 0xFF_FFFF))
        .unwrap_or_default();
    let _ = write!(h, "<blockquote data-paracord-embed{colour}>");
    if let Some(a) = e.author.as_ref().filter(|a| !a.name.is_empty()) {
        let name = escape(&a.name);
        match href(a.url.as_deref()) {
            Some(u) => {
                let _ = write!(h, "<p><strong><a href=\"{u}\">{name}</a></strong></p>");
            }
            None => {
                let _ = write!(h, "<p><strong>{name}</strong></p>");
            }
        }
    }
    if let Some(t) = e.title.as_deref().filter(|t| !t.is_empty()) {
        let t = escape(t);
        match href(e.url.as_deref()) {
            Some(u) => {
                let _ = write!(h, "<h4><a href=\"{u}\">{t}</a></h4>");
            }
            None => {
                let _ = write!(h, "<h4>{t}</h4>");
            }
        }
    }
    if let Some(d) = e.description.as_deref().filter(|d| !d.is_empty()) {
        let _ = write!(h, "<p>{}</p>", escape_lines(d));
    }
    for f in &e.fields {
        let _ = write!(
            h,
            "<p><strong>{}</strong><br>{}</p>",
            escape(&f.name),
            escape_lines(&f.value)
        );
    }
    for img in [&e.image, &e.thumbnail].into_iter().flatten() {
        if let Some(u) = href(Some(&img.url)) {
            let _ = write!(h, "<p><a href=\"{u}\">{u}</a></p>");
        }
    }
    if let Some(f) = e.footer.as_ref().filter(|f| !f.text.is_empty()) {
        let _ = write!(h, "<p><sub>{}</sub></p>", escape_lines(&f.text));
    }
    h.push_str("</blockquote>");
    h
}

fn embed_plain(e: &Embed) -> String {
    let mut lines = Vec::new();
    if let Some(a) = e.author.as_ref().filter(|a| !a.name.is_empty()) {
        lines.push(a.name.clone());
    }
    if let Some(t) = e.title.as_deref().filter(|t| !t.is_empty()) {
        lines.push(match e.url.as_deref() {
            Some(u) if !u.is_empty() => format!("{t} ({u})"),
            _ => t.to_owned(),
        });
    }
    if let Some(d) = e.description.as_deref().filter(|d| !d.is_empty()) {
        lines.extend(d.lines().map(str::to_owned));
    }
    for f in &e.fields {
        lines.push(format!("{}: {}", f.name, f.value));
    }
    for img in [&e.image, &e.thumbnail].into_iter().flatten() {
        lines.push(img.url.clone());
    }
    if let Some(f) = e.footer.as_ref().filter(|f| !f.text.is_empty()) {
        lines.push(f.text.clone());
    }
    lines
        .into_iter()
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `m.room.message` content of a message's text and embeds.
pub fn text_content(m: &Message) -> Value {
    let mut body = plain_content(&m.content);
    let mut html = html_content(&m.content);
    for e in &m.embeds {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(&embed_plain(e));
        html.push_str(&embed_html(e));
    }
    let mut mentions = json!({ "user_ids": m.mentioned_users });
    if m.mention_everyone {
        mentions["room"] = json!(true);
    }
    let mut content = json!({
        "msgtype": "m.text",
        "body": body,
        "m.mentions": mentions,
    });
    if !m.embeds.is_empty() || !m.mentioned_users.is_empty() || html != escape(&m.content) {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(html);
    }
    content
}

/// The content of a file's event: `m.image` for images, `m.file` otherwise.
pub fn file_content(f: &Upload, mxc: &str) -> Value {
    let msgtype = if f.content_type.starts_with("image/") {
        "m.image"
    } else {
        "m.file"
    };
    json!({
        "msgtype": msgtype,
        "body": f.filename,
        "filename": f.filename,
        "url": mxc,
        "info": { "mimetype": f.content_type, "size": f.bytes.len() },
        "m.mentions": {},
    })
}

/// What every event of an execution carries about who posted it: the per-message profile
/// (`com.beeper.per_message_profile`, shown by clients that know it; its avatar as an
/// `mxc://` URI: `avatar_mxc`, the execution's avatar as stored here) and
/// `chat.paracord.webhook` (the webhook, the name and the avatar URL as given).
pub fn profile(
    webhook_id: &str,
    webhook_name: &str,
    m: &Message,
    avatar_mxc: Option<&str>,
) -> Value {
    let name = m.username.as_deref().unwrap_or(webhook_name);
    let mut per_message = json!({ "id": webhook_id, "displayname": name });
    let mut ours = json!({ "id": webhook_id, "username": name });
    if let Some(mxc) = avatar_mxc {
        per_message["avatar_url"] = json!(mxc);
    }
    if let Some(a) = &m.avatar_url {
        ours["avatar_url"] = json!(a);
    }
    json!({
        "com.beeper.per_message_profile": per_message,
        "chat.paracord.webhook": ours,
    })
}

/// An RFC 3339 timestamp (UTC) of milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

// ----- Slack -----

fn slack_colour(c: &str) -> Option<u32> {
    match c {
        "good" => Some(0x002e_b886),
        "warning" => Some(0x00da_a038),
        "danger" => Some(0x00a3_002d),
        c => u32::from_str_radix(c.trim_start_matches('#'), 16).ok(),
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("text").and_then(text_of),
        _ => None,
    }
    .filter(|s| !s.is_empty())
}

/// Reads Slack's incoming-webhook body: `text`, `username`, `icon_url`, the text of
/// `blocks` (section, header, context, markdown) and `attachments` (as embeds).
pub fn slack(body: Value) -> Result<Message, ExecuteError> {
    let Value::Object(body) = body else {
        return Err(ExecuteError::InvalidJson);
    };
    let mut lines: Vec<String> = Vec::new();
    if let Some(t) = body.get("text").and_then(text_of) {
        lines.push(t);
    }
    for b in body
        .get("blocks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(t) = b.get("text").and_then(text_of) {
            lines.push(t);
        }
        for f in b
            .get("fields")
            .or_else(|| b.get("elements"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = text_of(f) {
                lines.push(t);
            }
        }
    }
    let mut embeds = Vec::new();
    for a in body
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_EMBEDS)
    {
        let s = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_owned);
        if let Some(p) = s("pretext") {
            lines.push(p);
        }
        let embed = Embed {
            title: s("title"),
            url: s("title_link"),
            description: s("text").or_else(|| s("fallback")),
            color: s("color").as_deref().and_then(slack_colour),
            fields: a
                .get("fields")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .take(25)
                .map(|f| EmbedField {
                    name: f["title"].as_str().unwrap_or_default().to_owned(),
                    value: f["value"].as_str().unwrap_or_default().to_owned(),
                    inline: f["short"].as_bool(),
                })
                .collect(),
            footer: s("footer").map(|text| EmbedFooter {
                text,
                icon_url: None,
            }),
            author: s("author_name").map(|name| EmbedAuthor {
                name,
                url: s("author_link"),
                icon_url: None,
            }),
            ..Embed::default()
        };
        if !embed.is_empty() {
            embeds.push(embed);
        }
    }
    let content = lines.join("\n");
    integration_message(
        content,
        body.get("username")
            .and_then(Value::as_str)
            .map(str::to_owned),
        body.get("icon_url")
            .and_then(Value::as_str)
            .map(str::to_owned),
        embeds,
    )
}

/// A Slack or GitHub message: no mentions, a longer limit, nothing to post is 50006.
fn integration_message(
    content: String,
    username: Option<String>,
    avatar_url: Option<String>,
    embeds: Vec<Embed>,
) -> Result<Message, ExecuteError> {
    if content.chars().count() > MAX_INTEGRATION_TEXT {
        return Err(form_error(
            "content",
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {MAX_INTEGRATION_TEXT} or fewer in length."),
        ));
    }
    for (i, e) in embeds.iter().enumerate() {
        e.check(i)?;
    }
    let m = Message {
        content,
        username: username
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.chars().take(80).collect()),
        avatar_url,
        embeds,
        ..Message::default()
    };
    if !m.has_text() {
        return Err(ExecuteError::Empty);
    }
    Ok(m)
}

// ----- GitHub -----

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Reads a GitHub webhook delivery by its `X-GitHub-Event`: `push`, `issues` and
/// `pull_request` become an embed, `ping` posts nothing (`None`), anything else one line.
pub fn github(event: &str, body: Value) -> Result<Option<Message>, ExecuteError> {
    // Indexed as a `Value`, so a missing field reads as `null`.
    if !body.is_object() {
        return Err(ExecuteError::InvalidJson);
    }
    if event == "ping" {
        return Ok(None);
    }
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let repo = s(&body["repository"]["full_name"]);
    let sender = s(&body["sender"]["login"]);
    let author = (!sender.is_empty()).then(|| EmbedAuthor {
        name: sender.clone(),
        url: body["sender"]["html_url"].as_str().map(str::to_owned),
        icon_url: None,
    });
    let embed = match event {
        "push" => {
            let branch = s(&body["ref"]);
            let branch = branch.rsplit('/').next().unwrap_or_default().to_owned();
            let commits = body["commits"].as_array().cloned().unwrap_or_default();
            let n = commits.len();
            let lines: Vec<String> = commits
                .iter()
                .take(10)
                .map(|c| {
                    let id: String = s(&c["id"]).chars().take(7).collect();
                    let message = s(&c["message"]);
                    let first = message.lines().next().unwrap_or_default();
                    format!("{id} {} - {}", cut(first, 50), s(&c["author"]["name"]))
                })
                .collect();
            Embed {
                title: Some(format!(
                    "[{repo}:{branch}] {n} new commit{}",
                    if n == 1 { "" } else { "s" }
                )),
                url: body["compare"].as_str().map(str::to_owned),
                description: Some(lines.join("\n")),
                color: Some(0x7289da),
                author,
                ..Embed::default()
            }
        }
        "issues" | "pull_request" => {
            let (key, what) = if event == "issues" {
                ("issue", "Issue")
            } else {
                ("pull_request", "Pull request")
            };
            let item = &body[key];
            let action = s(&body["action"]);
            let description = (action == "opened")
                .then(|| cut(&s(&item["body"]), 500))
                .filter(|d| !d.is_empty());
            Embed {
                title: Some(format!(
                    "[{repo}] {what} {action}: #{} {}",
                    item["number"].as_u64().unwrap_or(0),
                    s(&item["title"])
                )),
                url: item["html_url"].as_str().map(str::to_owned),
                description,
                color: Some(if action == "closed" {
                    0x6a737d
                } else {
                    0x28a745
                }),
                author,
                ..Embed::default()
            }
        }
        other => {
            let mut line = format!("[{repo}] GitHub event: {}", cut(other, 64));
            if !sender.is_empty() {
                let _ = write!(line, " by {sender}");
            }
            return integration_message(line, Some("GitHub".into()), None, Vec::new()).map(Some);
        }
    };
    integration_message(String::new(), Some("GitHub".into()), None, vec![embed]).map(Some)
}

/// The Discord message object of an execution with `?wait=true`.
pub fn message_object(
    event_id: &str,
    channel_id: &str,
    webhook_id: &str,
    webhook_name: &str,
    m: &Message,
    attachments: Vec<Value>,
    ts: u64,
) -> Value {
    let name = m.username.as_deref().unwrap_or(webhook_name);
    json!({
        "id": event_id,
        "type": 0,
        "channel_id": channel_id,
        "webhook_id": webhook_id,
        "content": m.content,
        "author": {
            "id": webhook_id,
            "username": name,
            "avatar": m.avatar_url,
            "discriminator": "0000",
            "bot": true,
        },
        "embeds": m.embeds,
        "attachments": attachments,
        "mentions": m.mentioned_users.iter().map(|u| json!({ "id": u, "username": u })).collect::<Vec<_>>(),
        "mention_roles": [],
        "mention_everyone": m.mention_everyone,
        "pinned": false,
        "tts": false,
        "flags": 0,
        "timestamp": rfc3339(ts),
        "edited_timestamp": null,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn embeds_are_escaped_html_with_a_plain_fallback() {
        let m = discord(
            json!({
                "content": "<b>hi</b>",
                "embeds": [{
                    "title": "<script>x</script>",
                    "url": "javascript:alert(1)",
                    "description": "a & b",
                    "color": 16711680,
                    "fields": [{ "name": "n\"", "value": "v" }],
                    "footer": { "text": "foot" },
                }],
            }),
            None,
            Vec::new(),
        )
        .unwrap();
        let c = text_content(&m);
        let html = c["formatted_body"].as_str().unwrap();
        assert!(html.contains("&lt;b&gt;hi&lt;/b&gt;"), "{html}");
        assert!(
            html.contains("<h4>&lt;script&gt;x&lt;/script&gt;</h4>"),
            "{html}"
        );
        assert!(!html.contains("javascript"), "{html}");
        assert!(html.contains("data-mx-border-color=\"#ff0000\""), "{html}");
        assert!(html.contains("n&quot;"), "{html}");
        let body = c["body"].as_str().unwrap();
        assert!(
            body.starts_with("<b>hi</b>\n\n> <script>x</script>"),
            "{body}"
        );
        assert!(body.contains("> n\": v"), "{body}");
    }

    #[test]
    fn mentions_follow_allowed_mentions() {
        let m = discord(
            json!({ "content": "<@@a:x> <@@b:x> @everyone",
                    "allowed_mentions": { "users": ["@b:x"] } }),
            None,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(m.mentioned_users, vec!["@b:x".to_owned()]);
        assert!(!m.mention_everyone);
        let all = discord(json!({ "content": "<@@a:x> @here" }), None, Vec::new()).unwrap();
        assert_eq!(all.mentioned_users, vec!["@a:x".to_owned()]);
        assert!(all.mention_everyone);
        assert_eq!(text_content(&all)["body"], "@a:x @here");
    }

    #[test]
    fn discord_errors() {
        let code = |r: Result<Message, ExecuteError>| r.unwrap_err().answer().1["code"].clone();
        assert_eq!(code(discord(json!({}), None, Vec::new())), 50006);
        assert_eq!(
            code(discord(json!({ "content": "  " }), None, Vec::new())),
            50006
        );
        assert_eq!(code(discord(json!([1]), None, Vec::new())), 50109);
        assert_eq!(
            code(discord(
                json!({ "content": "x".repeat(2001) }),
                None,
                Vec::new()
            )),
            50035
        );
        assert_eq!(
            code(discord(json!({ "content": 5 }), None, Vec::new())),
            50035
        );
        let eleven: Vec<Value> = (0..11).map(|i| json!({ "title": i.to_string() })).collect();
        assert_eq!(
            code(discord(json!({ "embeds": eleven }), None, Vec::new())),
            50035
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123+00:00");
    }

    #[test]
    fn github_push_and_generic() {
        let m = github(
            "push",
            json!({ "ref": "refs/heads/main", "repository": { "full_name": "o/r" },
                    "commits": [{ "id": "abcdef123", "message": "fix\nmore", "author": { "name": "A" } }] }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m.embeds[0].title.as_deref(),
            Some("[o/r:main] 1 new commit")
        );
        assert!(github("ping", json!({})).unwrap().is_none());
        let other = github("star", json!({ "repository": { "full_name": "o/r" } }))
            .unwrap()
            .unwrap();
        assert_eq!(other.content, "[o/r] GitHub event: star");
    }
}
