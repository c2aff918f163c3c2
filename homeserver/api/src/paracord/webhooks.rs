//! Webhooks (spec/webhooks.md): managing them under `/_paracord/v1` (a Matrix user with
//! MANAGE_WEBHOOKS), and executing them with their token alone, at Discord's path
//! (`/api/webhooks/{id}/{token}`, so a pasted URL works) and under `/_paracord/v1`, with the
//! `/slack` and `/github` variants. Execution answers in Discord's error shape.

use axum::{
    extract::{Path, Request, State},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
    Json, Router,
};
use http::{header, HeaderValue, StatusCode};
use paracord_core::Error;
use paracord_service::guilds::webhooks::{render, ExecuteError, Upload};
use serde_json::{Map, Value};

use super::{
    guild_id,
    wire::{self, CreateWebhook, Empty, UpdateWebhook, WebhookObject},
    Caller, JsonBody,
};
use crate::params::Params;
use crate::{ApiResult, AppState};

/// Most files of one execution (Discord's limit).
const MAX_FILES: usize = 10;

/// The management routes, under `/_paracord/v1` (relayed to the guild host like the rest).
pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/_paracord/v1/channels/{channel_id}/webhooks",
        post(create_webhook_route).get(channel_webhooks_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/webhooks",
        get(guild_webhooks_route),
    )
    .route(
        "/_paracord/v1/webhooks/{webhook_id}",
        get(get_webhook_route)
            .patch(modify_webhook_route)
            .delete(delete_webhook_route),
    )
    .route(
        "/_paracord/v1/webhooks/{webhook_id}/token",
        post(rotate_token_route),
    )
}

/// The execution routes: no Matrix authentication, the token is the secret. They sit outside
/// the relay layer (a webhook lives on its guild host) and take bodies up to the upload limit.
pub(crate) fn execute_routes() -> Router<AppState> {
    let mut r = Router::new();
    for base in [
        "/api/webhooks",
        "/api/v10/webhooks",
        "/_paracord/v1/webhooks",
    ] {
        r = r
            .route(
                &format!("{base}/{{webhook_id}}/{{token}}"),
                post(execute_route)
                    .get(get_with_token_route)
                    .patch(modify_with_token_route)
                    .delete(delete_with_token_route),
            )
            .route(
                &format!("{base}/{{webhook_id}}/{{token}}/messages/{{message_id}}"),
                patch(edit_message_route).delete(delete_message_route),
            )
            .route(
                &format!("{base}/{{webhook_id}}/{{token}}/slack"),
                post(execute_slack_route),
            )
            .route(
                &format!("{base}/{{webhook_id}}/{{token}}/github"),
                post(execute_github_route),
            );
    }
    r
}

fn channel_id(id: &str) -> ApiResult<ruma::OwnedRoomId> {
    ruma::OwnedRoomId::try_from(id).map_err(|_| Error::not_found("no such channel").into())
}

/// `POST /_paracord/v1/channels/{channelId}/webhooks`: the new webhook with its token and URL
/// (the only time the token is shown).
pub(crate) async fn create_webhook_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> ApiResult<Json<WebhookObject>> {
    let channel = channel_id(&id)?;
    let (name, avatar_url) = body.check()?;
    let made = state
        .webhooks
        .create(&channel, &user, name, avatar_url)
        .await?;
    let base = state.config.public_baseurl();
    Ok(Json(WebhookObject::new(
        made.webhook,
        Some((made.token, &base)),
    )))
}

/// `GET /_paracord/v1/channels/{channelId}/webhooks`
pub(crate) async fn channel_webhooks_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<WebhookObject>>> {
    let channel = channel_id(&id)?;
    let list = state.webhooks.list_channel(&channel, &user)?;
    Ok(Json(
        list.into_iter()
            .map(|w| WebhookObject::new(w, None))
            .collect(),
    ))
}

/// `GET /_paracord/v1/guilds/{guildId}/webhooks`
pub(crate) async fn guild_webhooks_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Vec<WebhookObject>>> {
    let guild = guild_id(&id)?;
    let list = state.webhooks.list_guild(&guild, &user)?;
    Ok(Json(
        list.into_iter()
            .map(|w| WebhookObject::new(w, None))
            .collect(),
    ))
}

/// `GET /_paracord/v1/webhooks/{webhookId}`
pub(crate) async fn get_webhook_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<WebhookObject>> {
    Ok(Json(WebhookObject::new(
        state.webhooks.get(&id, &user)?,
        None,
    )))
}

/// `PATCH /_paracord/v1/webhooks/{webhookId}`
pub(crate) async fn modify_webhook_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonBody(body): JsonBody<UpdateWebhook>,
) -> ApiResult<Json<WebhookObject>> {
    let changes = body.check()?;
    let w = state.webhooks.modify(&id, &user, changes).await?;
    Ok(Json(WebhookObject::new(w, None)))
}

/// `DELETE /_paracord/v1/webhooks/{webhookId}`
pub(crate) async fn delete_webhook_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Empty>> {
    state.webhooks.delete(&id, &user).await?;
    Ok(Json(Empty {}))
}

/// `POST /_paracord/v1/webhooks/{webhookId}/token`: a new token (the old one stops working).
pub(crate) async fn rotate_token_route(
    State(state): State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<WebhookObject>> {
    let made = state.webhooks.rotate(&id, &user)?;
    let base = state.config.public_baseurl();
    Ok(Json(WebhookObject::new(
        made.webhook,
        Some((made.token, &base)),
    )))
}

// ----- execution -----

/// Which body an execution reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Discord,
    Slack,
    Github,
}

/// `POST /api/webhooks/{webhookId}/{token}` (and `/_paracord/v1/webhooks/…`): Discord's
/// execute body, JSON or multipart; `?wait=true`, `?thread_id=`.
pub(crate) async fn execute_route(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    answer(execute(&state, &id, &token, Flavour::Discord, req).await)
}

/// `POST …/{webhookId}/{token}/slack`: Slack's incoming-webhook body.
pub(crate) async fn execute_slack_route(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    answer(execute(&state, &id, &token, Flavour::Slack, req).await)
}

/// `POST …/{webhookId}/{token}/github`: a GitHub delivery (`X-GitHub-Event`,
/// `X-Hub-Signature-256`).
pub(crate) async fn execute_github_route(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    answer(execute(&state, &id, &token, Flavour::Github, req).await)
}

/// `GET /api/webhooks/{webhookId}/{token}`: the Webhook object, with the token as its
/// authority (Discord's; no Matrix authentication).
pub(crate) async fn get_with_token_route(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let webhook = state.webhooks.authenticate(&id, &token)?;
            state.webhooks.limit(&webhook)?;
            let base = state.config.public_baseurl();
            Ok(Json(WebhookObject::new(webhook, Some((token, &base)))).into_response())
        }
        .await,
    )
}

/// `PATCH /api/webhooks/{webhookId}/{token}`: `name`, `avatar_url` (as
/// `PATCH /_paracord/v1/webhooks/{id}`, without `secret`).
pub(crate) async fn modify_with_token_route(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
    req: Request,
) -> Response {
    answer(
        async {
            let webhook = state.webhooks.authenticate(&id, &token)?;
            state.webhooks.limit(&webhook)?;
            let body = read_json(&state, req).await?;
            if !body.is_object() {
                return Err(ExecuteError::InvalidJson);
            }
            let changes = wire::read::<UpdateWebhook>(body)
                .and_then(UpdateWebhook::check)
                .map_err(ExecuteError::Internal)?;
            let webhook = state
                .webhooks
                .modify_with_token(webhook, changes)
                .await
                .map_err(ExecuteError::Internal)?;
            Ok(Json(WebhookObject::new(webhook, None)).into_response())
        }
        .await,
    )
}

/// `DELETE /api/webhooks/{webhookId}/{token}`: `204`.
pub(crate) async fn delete_with_token_route(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    answer(
        async {
            let webhook = state.webhooks.authenticate(&id, &token)?;
            state.webhooks.limit(&webhook)?;
            state
                .webhooks
                .delete_with_token(webhook)
                .await
                .map_err(ExecuteError::Internal)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// `PATCH /api/webhooks/{webhookId}/{token}/messages/{eventId}`: Discord's edit body
/// (`content`, `embeds`, `allowed_mentions`); the message object.
pub(crate) async fn edit_message_route(
    State(state): State<AppState>,
    Path((id, token, message_id)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    answer(
        async {
            let webhook = state.webhooks.authenticate(&id, &token)?;
            state.webhooks.limit(&webhook)?;
            let body = read_json(&state, req).await?;
            let message = render::discord(body, None, Vec::new())?;
            let posted = state
                .webhooks
                .edit_message(webhook, &message_id, message)
                .await?;
            Ok(Json(render::message_object(
                &message_id,
                posted.webhook.channel_id.as_str(),
                &posted.webhook.id,
                &posted.webhook.name,
                &posted.message,
                Vec::new(),
                posted.ts,
            ))
            .into_response())
        }
        .await,
    )
}

/// `DELETE /api/webhooks/{webhookId}/{token}/messages/{eventId}`: redacts it; `204`.
pub(crate) async fn delete_message_route(
    State(state): State<AppState>,
    Path((id, token, message_id)): Path<(String, String, String)>,
) -> Response {
    answer(
        async {
            let webhook = state.webhooks.authenticate(&id, &token)?;
            state.webhooks.limit(&webhook)?;
            state.webhooks.delete_message(&webhook, &message_id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// A JSON body of at most the request limit.
async fn read_json(state: &AppState, req: Request) -> Result<Value, ExecuteError> {
    let bytes = axum::body::to_bytes(req.into_body(), state.config.max_request_bytes)
        .await
        .map_err(|_| ExecuteError::TooLarge)?;
    json_of(&bytes)
}

fn answer(r: Result<Response, ExecuteError>) -> Response {
    match r {
        Ok(r) => r,
        Err(e) => {
            if let ExecuteError::Internal(inner) = &e {
                if inner.kind().is_none() {
                    tracing::error!(error = %inner, "webhook execution failed");
                }
            }
            let (status, body) = e.answer();
            let mut response = (status, Json(body.clone())).into_response();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let secs = body["retry_after"].as_f64().unwrap_or(1.0).ceil().max(1.0);
                if let Ok(v) = HeaderValue::from_str(&format!("{secs}")) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            response
        }
    }
}

/// The query's parameters.
fn query(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// JSON of a body: empty is `{}`, anything unreadable is 50109.
fn json_of(bytes: &[u8]) -> Result<Value, ExecuteError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(bytes).map_err(|_| ExecuteError::InvalidJson)
}

/// A Slack or GitHub body: JSON, or a form whose `payload` field is the JSON.
fn json_or_payload(content_type: &str, bytes: &[u8]) -> Result<Value, ExecuteError> {
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let payload = form_urlencoded::parse(bytes)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or(ExecuteError::InvalidJson)?;
        return json_of(payload.as_bytes());
    }
    json_of(bytes)
}

async fn execute(
    state: &AppState,
    id: &str,
    token: &str,
    flavour: Flavour,
    req: Request,
) -> Result<Response, ExecuteError> {
    let webhook = state.webhooks.authenticate(id, token)?;
    state.webhooks.limit(&webhook)?;
    let q = query(&req);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let wait = param("wait").is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
    let thread_id = param("thread_id").filter(|t| !t.is_empty());
    let content_type = header_str(&req, "content-type").unwrap_or("").to_owned();
    let event = header_str(&req, "x-github-event").map(str::to_owned);
    let signature = header_str(&req, "x-hub-signature-256").map(str::to_owned);
    // Files go to the media repository: a body may hold an upload's worth of files, plus
    // the request limit for the rest.
    let limit = state
        .config
        .max_upload_bytes
        .saturating_add(state.config.max_request_bytes);
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ExecuteError::TooLarge)?;
    let message = match flavour {
        Flavour::Discord => {
            let (body, files) = if content_type.starts_with("multipart/form-data") {
                multipart_body(&content_type, &bytes, state.config.max_upload_bytes)?
            } else {
                (json_of(&bytes)?, Vec::new())
            };
            render::discord(body, thread_id, files)?
        }
        Flavour::Slack => {
            let mut m = render::slack(json_or_payload(&content_type, &bytes)?)?;
            m.thread_id = thread_id;
            m
        }
        Flavour::Github => {
            state
                .webhooks
                .check_github_signature(&webhook, signature.as_deref(), &bytes)?;
            let event = event.unwrap_or_default();
            match render::github(&event, json_or_payload(&content_type, &bytes)?)? {
                Some(mut m) => {
                    m.thread_id = thread_id;
                    m
                }
                None => return Ok(StatusCode::NO_CONTENT.into_response()),
            }
        }
    };
    let posted = state.webhooks.execute(webhook, message).await?;
    if flavour == Flavour::Slack {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    if !wait {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let first = posted
        .event_ids
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let files_from = usize::from(posted.message.has_text());
    let attachments = posted
        .files
        .iter()
        .zip(posted.event_ids.iter().skip(files_from))
        .map(|(c, e)| {
            serde_json::json!({
                "id": e,
                "filename": c["filename"],
                "size": c["info"]["size"],
                "content_type": c["info"]["mimetype"],
                "url": c["url"],
            })
        })
        .collect();
    let object = render::message_object(
        &first,
        posted.webhook.channel_id.as_str(),
        &posted.webhook.id,
        &posted.webhook.name,
        &posted.message,
        attachments,
        posted.ts,
    );
    Ok((StatusCode::OK, Json(object)).into_response())
}

/// A part of a `multipart/form-data` body.
struct Part<'a> {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| hay[i..].starts_with(needle))
}

/// A header parameter (`name="x"`) of a `Content-Disposition` or `Content-Type` value.
fn parameter(value: &str, key: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Splits a `multipart/form-data` body into its parts; `None` when it is malformed.
fn parts<'a>(content_type: &str, body: &'a [u8]) -> Option<Vec<Part<'a>>> {
    let boundary = parameter(content_type, "boundary")?;
    let delimiter = format!("--{boundary}");
    let next = format!("\r\n--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0)? + delimiter.len();
    let mut out = Vec::new();
    loop {
        if body.get(at..at + 2)? == b"--" {
            return Some(out);
        }
        at = at.checked_add(2)?; // the line break after the delimiter
        let headers_end = find(body, b"\r\n\r\n", at)?;
        let headers = std::str::from_utf8(body.get(at..headers_end)?).ok()?;
        let data_start = headers_end + 4;
        let data_end = find(body, next.as_bytes(), data_start)?;
        let (mut name, mut filename, mut content_type) = (None, None, None);
        for line in headers.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                name = parameter(v, "name");
                filename = parameter(v, "filename");
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_owned());
            }
        }
        out.push(Part {
            name: name?,
            filename,
            content_type,
            data: body.get(data_start..data_end)?,
        });
        at = data_end + next.len();
    }
}

/// Discord's multipart execution: `payload_json` (or plain `content`, `username`,
/// `avatar_url` fields) and up to ten files (any part with a file name, `files[n]` as
/// Discord names them).
pub(crate) fn multipart_body(
    content_type: &str,
    body: &[u8],
    max_file: usize,
) -> Result<(Value, Vec<Upload>), ExecuteError> {
    let bad = || {
        ExecuteError::InvalidForm(serde_json::json!({
            "_errors": [{ "code": "BASE_TYPE_BAD_MULTIPART", "message": "The multipart body cannot be read." }]
        }))
    };
    let list = parts(content_type, body).ok_or_else(bad)?;
    let mut payload = None;
    let mut fields = Map::new();
    let mut files = Vec::new();
    for p in list {
        if let Some(filename) = p.filename.filter(|f| !f.is_empty()) {
            if p.data.len() > max_file {
                return Err(ExecuteError::TooLarge);
            }
            files.push(Upload {
                filename,
                content_type: p
                    .content_type
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                bytes: p.data.to_vec(),
            });
        } else if p.name == "payload_json" {
            payload = Some(json_of(p.data)?);
        } else {
            let text = String::from_utf8(p.data.to_vec()).map_err(|_| bad())?;
            fields.insert(p.name, Value::String(text));
        }
    }
    if files.len() > MAX_FILES {
        return Err(ExecuteError::InvalidForm(serde_json::json!({
            "files": { "_errors": [{ "code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 10 or fewer in length." }] }
        })));
    }
    Ok((payload.unwrap_or(Value::Object(fields)), files))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The Webhook object of spec/webhooks.md §2 has exactly the fields this server answers
    /// (the spec's example is the golden file).
    #[test]
    fn the_webhook_object_is_the_specs() {
        let text = include_str!("../../../../spec/webhooks.md");
        let example = text
            .split("```json")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter_map(|j| serde_json::from_str::<Value>(j).ok())
            .find(|v| v["type"] == 1 && v.get("token").is_some())
            .unwrap();
        let webhook: paracord_service::guilds::webhooks::Webhook =
            serde_json::from_value(serde_json::json!({
                "id": example["id"],
                "guild_id": example["guild_id"],
                "channel_id": example["channel_id"],
                "user_id": example["user"]["id"],
                "name": example["name"],
                "avatar_url": example["avatar_url"],
                "creator": example["creator"],
                "created_at": example["created_at"],
                "token_sha256": "00",
            }))
            .unwrap();
        let token = example["token"].as_str().unwrap().to_owned();
        let ours = serde_json::to_value(WebhookObject::new(
            webhook,
            Some((token, "https://example.org")),
        ))
        .unwrap();
        fn keys(v: &Value) -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        }
        assert_eq!(keys(&ours), keys(&example));
        assert_eq!(keys(&ours["user"]), keys(&example["user"]));
        for k in [
            "id",
            "type",
            "guild_id",
            "channel_id",
            "name",
            "avatar_url",
            "user",
            "creator",
        ] {
            assert_eq!(ours[k], example[k], "{k}");
        }
    }

    #[test]
    fn multipart_parts_are_read() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{\"content\":\"hi\"}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n--XyZ--\r\n";
        let (payload, files) =
            multipart_body("multipart/form-data; boundary=XyZ", body, 1000).unwrap();
        assert_eq!(payload["content"], "hi");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename, "a.txt");
        assert_eq!(files[0].bytes, b"line1\r\nline2");
        assert!(multipart_body("multipart/form-data; boundary=Q", body, 1000).is_err());
    }
}
