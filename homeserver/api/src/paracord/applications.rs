//! Applications, their bots, slash commands and interactions (spec/applications.md).

use axum::{
    routing::{get, patch, post},
    Json, Router,
};
use paracord_core::Error;
use paracord_service::guilds::{
    applications::{
        commands::{read_command, CommandSpec},
        valid_endpoint, Application, ApplicationChanges, Command, CommandRef, Install, Invocation,
        Invoked, Namespaced, NewApplication,
    },
    permissions::Permissions,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{guild_id, wire::Empty, Caller, JsonBody, JsonList};
use crate::params::Params;
use crate::{ApiResult, AppState};

pub(super) fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route(
        "/_paracord/v1/applications",
        post(create_application_route).get(list_applications_route),
    )
    .route(
        "/_paracord/v1/applications/{app_id}",
        get(get_application_route)
            .patch(modify_application_route)
            .delete(delete_application_route),
    )
    .route(
        "/_paracord/v1/applications/{app_id}/bot/reset_token",
        post(reset_token_route),
    )
    .route(
        "/_paracord/v1/applications/{app_id}/guilds/{guild_id}/commands",
        get(list_commands_route)
            .post(create_command_route)
            .put(overwrite_commands_route),
    )
    .route(
        "/_paracord/v1/applications/{app_id}/guilds/{guild_id}/commands/{command_id}",
        get(get_command_route)
            .patch(modify_command_route)
            .delete(delete_command_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/applications",
        get(guild_applications_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/applications/{app_id}",
        post(authorize_route).delete(deauthorize_route),
    )
    .route(
        "/_paracord/v1/guilds/{guild_id}/commands",
        get(guild_commands_route),
    )
    .route("/_paracord/v1/interactions", post(invoke_route))
    .route(
        "/_paracord/v1/interactions/{id}/{token}/callback",
        post(callback_route),
    )
    .route(
        "/_paracord/v1/interactions/{id}/{token}/messages/@original",
        patch(edit_original_route),
    )
}

/// The Application object; `bot_token` only when it was just made.
#[derive(Debug, Serialize)]
pub(crate) struct ApplicationAnswer {
    #[serde(flatten)]
    pub app: Application,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<String>,
    /// A namespaced application's tokens, only when it was just made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs_token: Option<String>,
}

impl From<Application> for ApplicationAnswer {
    fn from(app: Application) -> Self {
        ApplicationAnswer {
            app,
            bot_token: None,
            as_token: None,
            hs_token: None,
        }
    }
}

// ----- reading bodies -----

type Obj = Map<String, Value>;

fn object(v: &Value) -> ApiResult<&Obj> {
    v.as_object()
        .ok_or_else(|| Error::bad_json("the body must be a JSON object").into())
}

/// A string field: `None` when absent, `Some(None)` when `null`.
fn field<'a>(o: &'a Obj, key: &str) -> ApiResult<Option<Option<&'a str>>> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s))),
        Some(_) => Err(Error::bad_json(format!("{key} must be a string")).into()),
    }
}

fn app_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if !(1..=32).contains(&name.chars().count()) {
        return Err(Error::invalid_param("name: 1 to 32 characters").into());
    }
    Ok(name.to_owned())
}

fn description(d: &str) -> ApiResult<String> {
    if d.chars().count() > 400 {
        return Err(Error::invalid_param("description: at most 400 characters").into());
    }
    Ok(d.to_owned())
}

fn avatar(a: &str) -> ApiResult<String> {
    if !a.starts_with("mxc://") || a.len() > 255 {
        return Err(Error::invalid_param("avatar_url: an mxc:// URI").into());
    }
    Ok(a.to_owned())
}

fn endpoint(u: &str) -> ApiResult<String> {
    if !valid_endpoint(u) {
        return Err(Error::invalid_param("interactions_endpoint_url: an http(s) URL").into());
    }
    Ok(u.to_owned())
}

fn new_application(body: &Value) -> ApiResult<NewApplication> {
    let o = object(body)?;
    let namespaced = match o.get("namespaced") {
        None | Some(Value::Null) => None,
        Some(Value::Object(ns)) => Some(Namespaced {
            url: field(ns, "url")?.flatten().map(endpoint).transpose()?,
        }),
        Some(_) => return Err(Error::bad_json("namespaced must be an object").into()),
    };
    let name = field(o, "name")?
        .flatten()
        .ok_or_else(|| Error::missing_param("name is required"))?;
    Ok(NewApplication {
        name: app_name(name)?,
        description: field(o, "description")?
            .flatten()
            .map(description)
            .transpose()?,
        avatar_url: field(o, "avatar_url")?.flatten().map(avatar).transpose()?,
        interactions_endpoint_url: field(o, "interactions_endpoint_url")?
            .flatten()
            .map(endpoint)
            .transpose()?,
        namespaced,
    })
}

fn application_changes(body: &Value) -> ApiResult<ApplicationChanges> {
    let o = object(body)?;
    let name = match field(o, "name")? {
        None => None,
        Some(None) => return Err(Error::invalid_param("name: 1 to 32 characters").into()),
        Some(Some(n)) => Some(app_name(n)?),
    };
    let opt =
        |key: &str, check: fn(&str) -> ApiResult<String>| -> ApiResult<Option<Option<String>>> {
            Ok(match field(o, key)? {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) => Some(Some(check(v)?)),
            })
        };
    Ok(ApplicationChanges {
        name,
        description: opt("description", description)?,
        avatar_url: opt("avatar_url", avatar)?,
        interactions_endpoint_url: opt("interactions_endpoint_url", endpoint)?,
    })
}

fn command(v: &Value) -> ApiResult<CommandSpec> {
    Ok(read_command(v)?)
}

// ----- applications -----

/// `POST /_paracord/v1/applications`
pub(crate) async fn create_application_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<ApplicationAnswer>> {
    local_user(&state, &user)?;
    let new = new_application(&body)?;
    let created = state.applications.create(&user, new).await?;
    Ok(Json(ApplicationAnswer {
        app: created.app,
        bot_token: Some(created.bot_token),
        as_token: created.as_token,
        hs_token: created.hs_token,
    }))
}

/// Applications are made by users of this server.
fn local_user(state: &AppState, user: &ruma::UserId) -> ApiResult<()> {
    if !state.accounts.is_local(user) {
        return Err(Error::forbidden("applications are made by users of this server").into());
    }
    Ok(())
}

/// `GET /_paracord/v1/applications`
pub(crate) async fn list_applications_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
) -> ApiResult<Json<Vec<ApplicationAnswer>>> {
    let list = state.applications.list(&user)?;
    Ok(Json(
        list.into_iter().map(ApplicationAnswer::from).collect(),
    ))
}

/// `GET /_paracord/v1/applications/{appId}`
pub(crate) async fn get_application_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<ApplicationAnswer>> {
    Ok(Json(state.applications.owned(&user, &id)?.into()))
}

/// `PATCH /_paracord/v1/applications/{appId}`
pub(crate) async fn modify_application_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<ApplicationAnswer>> {
    let changes = application_changes(&body)?;
    Ok(Json(
        state.applications.update(&user, &id, changes).await?.into(),
    ))
}

/// `DELETE /_paracord/v1/applications/{appId}`
pub(crate) async fn delete_application_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Empty>> {
    state.applications.delete(&user, &id).await?;
    Ok(Json(Empty {}))
}

/// `POST /_paracord/v1/applications/{appId}/bot/reset_token`
pub(crate) async fn reset_token_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params(id): Params<String>,
) -> ApiResult<Json<Value>> {
    let token = state.applications.reset_token(&user, &id)?;
    Ok(Json(serde_json::json!({ "token": token })))
}

// ----- guilds -----

/// `GET /_paracord/v1/guilds/{guildId}/applications`
pub(crate) async fn guild_applications_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params(guild): Params<String>,
) -> ApiResult<Json<Vec<Install>>> {
    let guild = super::member_guild(&state, &user, &guild)?;
    Ok(Json(state.applications.installs(&guild)?))
}

/// `POST /_paracord/v1/guilds/{guildId}/applications/{appId}`
pub(crate) async fn authorize_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((guild, app)): Params<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Install>> {
    let guild = guild_id(&guild)?;
    let o = object(&body)?;
    let permissions = match field(o, "permissions")? {
        None | Some(None) => Permissions::NONE,
        Some(Some(p)) => Permissions::parse(p)
            .ok_or_else(|| Error::invalid_param("permissions: a u64 as a decimal string"))?,
    };
    Ok(Json(
        state
            .applications
            .authorize(&user, &guild, &app, permissions)
            .await?,
    ))
}

/// `DELETE /_paracord/v1/guilds/{guildId}/applications/{appId}`
pub(crate) async fn deauthorize_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((guild, app)): Params<(String, String)>,
) -> ApiResult<Json<Empty>> {
    let guild = guild_id(&guild)?;
    state.applications.deauthorize(&user, &guild, &app).await?;
    Ok(Json(Empty {}))
}

/// `GET /_paracord/v1/guilds/{guildId}/commands`
pub(crate) async fn guild_commands_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params(guild): Params<String>,
) -> ApiResult<Json<Vec<Command>>> {
    let guild = guild_id(&guild)?;
    Ok(Json(state.applications.guild_commands(&user, &guild)?))
}

// ----- commands -----

/// `GET /_paracord/v1/applications/{appId}/guilds/{guildId}/commands`
pub(crate) async fn list_commands_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((app, guild)): Params<(String, String)>,
) -> ApiResult<Json<Vec<Command>>> {
    let guild = guild_id(&guild)?;
    Ok(Json(state.applications.commands(&user, &app, &guild)?))
}

/// `POST /_paracord/v1/applications/{appId}/guilds/{guildId}/commands`
pub(crate) async fn create_command_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((app, guild)): Params<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Command>> {
    let guild = guild_id(&guild)?;
    let spec = command(&body)?;
    Ok(Json(
        state
            .applications
            .upsert_command(&user, &app, &guild, spec)
            .await?,
    ))
}

/// `PUT /_paracord/v1/applications/{appId}/guilds/{guildId}/commands`
pub(crate) async fn overwrite_commands_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((app, guild)): Params<(String, String)>,
    JsonList(items): JsonList<Value>,
) -> ApiResult<Json<Vec<Command>>> {
    let guild = guild_id(&guild)?;
    let specs = items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            read_command(v).map_err(|e| {
                // The error names the command by its place in the list.
                let body = e.classify().1;
                let msg = body["error"].as_str().unwrap_or_default();
                match body["errcode"].as_str().unwrap_or_default() {
                    "M_BAD_JSON" => Error::bad_json(format!("[{i}].{msg}")),
                    "M_MISSING_PARAM" => Error::missing_param(format!("[{i}].{msg}")),
                    _ => Error::invalid_param(format!("[{i}].{msg}")),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(
        state
            .applications
            .overwrite_commands(&user, &app, &guild, specs)
            .await?,
    ))
}

/// `GET /_paracord/v1/applications/{appId}/guilds/{guildId}/commands/{commandId}`
pub(crate) async fn get_command_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((app, guild, cmd)): Params<(String, String, String)>,
) -> ApiResult<Json<Command>> {
    let guild = guild_id(&guild)?;
    Ok(Json(state.applications.command(&user, &app, &guild, &cmd)?))
}

/// `PATCH /_paracord/v1/applications/{appId}/guilds/{guildId}/commands/{commandId}`: the
/// fields given replace the command's, and the result is checked as a whole.
pub(crate) async fn modify_command_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((app, guild, cmd)): Params<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Command>> {
    let guild = guild_id(&guild)?;
    let changes = object(&body)?.clone();
    let command = state
        .applications
        .replace_command(&user, &app, &guild, &cmd, move |old| {
            let mut merged = serde_json::to_value(old)?;
            for (k, v) in changes {
                merged[k] = v;
            }
            read_command(&merged)
        })
        .await?;
    Ok(Json(command))
}

/// `DELETE /_paracord/v1/applications/{appId}/guilds/{guildId}/commands/{commandId}`
pub(crate) async fn delete_command_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    Params((app, guild, cmd)): Params<(String, String, String)>,
) -> ApiResult<Json<Empty>> {
    let guild = guild_id(&guild)?;
    state
        .applications
        .delete_command(&user, &app, &guild, &cmd)
        .await?;
    Ok(Json(Empty {}))
}

// ----- interactions -----

fn room(o: &Obj, key: &str) -> ApiResult<ruma::OwnedRoomId> {
    let s = field(o, key)?
        .flatten()
        .ok_or_else(|| Error::missing_param(format!("{key} is required")))?;
    ruma::OwnedRoomId::try_from(s)
        .map_err(|_| Error::invalid_param(format!("{key}: not a room id")).into())
}

/// `POST /_paracord/v1/interactions`
pub(crate) async fn invoke_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(user): Caller,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Invoked>> {
    let o = object(&body)?;
    let command = match (
        field(o, "command_id")?.flatten(),
        field(o, "name")?.flatten(),
    ) {
        (Some(id), _) => CommandRef::Id(id.to_owned()),
        (None, Some(name)) => CommandRef::Name(name.to_owned()),
        (None, None) => return Err(Error::missing_param("command_id or name is required").into()),
    };
    let invocation = Invocation {
        guild_id: room(o, "guild_id")?,
        channel_id: room(o, "channel_id")?,
        application_id: field(o, "application_id")?.flatten().map(str::to_owned),
        command,
        options: o.get("options").cloned().unwrap_or(Value::Null),
    };
    Ok(Json(state.applications.invoke(&user, invocation).await?))
}

/// `POST /_paracord/v1/interactions/{id}/{token}/callback`: the token is the authentication.
pub(crate) async fn callback_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Params((id, token)): Params<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    Ok(Json(state.applications.callback(&id, &token, &body).await?))
}

/// `PATCH /_paracord/v1/interactions/{id}/{token}/messages/@original`
pub(crate) async fn edit_original_route(
    axum::extract::State(state): axum::extract::State<AppState>,
    Params((id, token)): Params<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        state.applications.edit_original(&id, &token, &body).await?,
    ))
}
