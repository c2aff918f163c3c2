//! Questions this server asks other servers for its clients: an alias, a profile, a public
//! room directory, a space's rooms, device keys, a relayed guild request. Each is signed as
//! this server and goes through the federation client (and so the outbound guard); the
//! answer's failures become our errors here, not in the handlers.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use paracord_core::{Config, Error, ErrorKind, Result};
use ruma::{
    api::{
        federation::{
            directory::{get_public_rooms, get_public_rooms_filtered},
            keys::{claim_keys, get_keys},
            query::{get_profile_information, get_room_information},
            space::get_hierarchy,
        },
        path_builder::SinglePath,
        OutgoingRequest,
    },
    directory::Filter,
    http_headers::ContentDisposition,
    profile::ProfileFieldName,
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId, ServerName, UInt, UserId,
};
use serde_json::{json, Value};

use crate::{
    federation::{
        client::FederationClient,
        request::{
            remote_error, send_signed, send_typed, signed_json, signed_request, typed_answer,
            typed_http_request,
        },
    },
    keys::ServerKeys,
    media::{multipart_boundary, Media, MultipartFile},
};

/// Size of the pieces a fetched media body is written to disk in.
const FETCH_CHUNK: usize = 64 * 1024;

/// Time each server has to answer a device key query or claim.
const KEYS_TIMEOUT: Duration = Duration::from_secs(10);

/// One server's answer to [`Queries::ask_each`]: the server, the users asked of it, and its
/// answer or why there is none.
type EachAnswer<T> = (OwnedServerName, Vec<String>, std::result::Result<T, String>);

/// Signed requests to other servers on behalf of this server's users.
pub struct Queries {
    client: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    config: Arc<Config>,
    media: Arc<Media>,
}

impl Queries {
    pub fn new(
        client: Arc<FederationClient>,
        keys: Arc<ServerKeys>,
        config: Arc<Config>,
        media: Arc<Media>,
    ) -> Self {
        Self {
            client,
            keys,
            config,
            media,
        }
    }

    /// Sends the ruma `request` to `server` and returns its typed answer; its 404 is our 404,
    /// any other failure a 502 naming it.
    async fn ask_typed<R>(&self, server: &ServerName, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        send_typed(
            &self.client,
            &self.keys,
            &self.config.server_name,
            server,
            request,
        )
        .await
    }

    /// Sends the ruma `request` to `server` and returns its JSON object answer, for the answers
    /// read leniently (a bad entry left out, not the whole answer refused); its 404 is our
    /// 404, any other failure a 502 naming it.
    async fn ask_typed_json<R>(&self, server: &ServerName, request: R) -> Result<Value>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let origin = &self.config.server_name;
        let request = typed_http_request(self.keys.keypair(), origin, server, request)?;
        let response = send_signed(&self.client, server, request).await?;
        let answer = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        object_answer(server, response.status, answer)
    }

    /// The room another server's `alias` names and the servers it says are in it.
    pub async fn room_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let server = alias.server_name();
        let request = get_room_information::v1::Request::new(alias.to_owned());
        let answer = self.ask_typed(server, request).await?;
        Ok((answer.room_id, answer.servers))
    }

    /// Another server's user's profile (`field` limits it to one key), as that server gave it.
    pub async fn profile(
        &self,
        user: &UserId,
        field: Option<&str>,
    ) -> Result<get_profile_information::v1::Response> {
        let mut request = get_profile_information::v1::Request::new(user.to_owned());
        request.field = field.map(ProfileFieldName::from);
        self.ask_typed(user.server_name(), request).await
    }

    /// A page of `server`'s public room directory, as it gave it. (Read as JSON: a room of
    /// the page that does not read is left out by the caller, not the whole page refused.)
    pub async fn public_rooms(
        &self,
        server: &ServerName,
        limit: Option<UInt>,
        since: Option<&str>,
    ) -> Result<Value> {
        let mut request = get_public_rooms::v1::Request::new();
        request.limit = limit;
        request.since = since.map(str::to_owned);
        self.ask_typed_json(server, request).await
    }

    /// A page of `server`'s public room directory under `filter`, as it gave it.
    pub async fn public_rooms_filtered(
        &self,
        server: &ServerName,
        filter: Filter,
        limit: Option<UInt>,
        since: Option<&str>,
    ) -> Result<Value> {
        let mut request = get_public_rooms_filtered::v1::Request::new();
        request.filter = filter;
        request.limit = limit;
        request.since = since.map(str::to_owned);
        self.ask_typed_json(server, request).await
    }

    /// The summary of `room` (a room this server is not in) from the first of `via` that gives
    /// one; `None` when none does.
    pub async fn hierarchy_room(
        &self,
        room: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
    ) -> Option<Value> {
        for server in via {
            if server.as_str() == self.config.server_name {
                continue;
            }
            let mut request = get_hierarchy::v1::Request::new(room.to_owned());
            request.suggested_only = suggested_only;
            match self.ask_typed(server, request).await {
                Ok(answer) => match serde_json::to_value(&answer.room) {
                    Ok(summary) => return Some(summary),
                    Err(e) => tracing::debug!(%room, %server, "hierarchy over federation: {e}"),
                },
                Err(e) => tracing::debug!(%room, %server, "hierarchy over federation: {}", e),
            }
        }
        None
    }

    /// Fetches `media_id` from `server` and caches it. The file part of the federation answer
    /// is read chunk by chunk into a capped temporary file; the federation client itself hands
    /// the body over whole (at most its response cap), as it does for every federation answer.
    pub async fn fetch_media(&self, server: &ServerName, media_id: &str) -> Result<()> {
        let path = format!(
            "/_matrix/federation/v1/media/download/{}",
            crate::percent_encode(media_id)
        );
        let response = signed_request(
            &self.client,
            &self.keys,
            &self.config.server_name,
            server,
            http::Method::GET,
            &path,
            None,
        )
        .await?;
        let mut file = self.media.cache_file().await?;
        let (content_type, filename) = if response.status.is_success() {
            let boundary = response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(multipart_boundary)
                .ok_or_else(|| {
                    Error::new(
                        http::StatusCode::BAD_GATEWAY,
                        ErrorKind::Unknown,
                        format!("{server} sent media that is not a multipart answer"),
                    )
                })?;
            let mut parser = MultipartFile::new(&boundary);
            for chunk in response.body.chunks(FETCH_CHUNK) {
                parser.feed(chunk, &mut file).await?;
            }
            let part = parser.finish()?;
            (part.content_type, part.filename)
        } else {
            // Servers from before authenticated media (Matrix 1.11) serve it only on the
            // legacy client path, unauthenticated.
            match self.legacy_download(server, media_id).await? {
                Some((body, content_type, filename)) => {
                    for chunk in body.chunks(FETCH_CHUNK) {
                        file.write(chunk).await?;
                    }
                    (content_type, filename)
                }
                None => {
                    let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
                    return Err(remote_error(server, response.status, &body));
                }
            }
        };
        self.media
            .commit_remote(server.as_str(), media_id, file, content_type, filename)
            .await?;
        Ok(())
    }

    /// Remote media from the legacy `/_matrix/media/v3/download/{serverName}/{mediaId}` of its
    /// server: `(bytes, content type, file name)`, or `None` when that fails too.
    async fn legacy_download(
        &self,
        server: &ServerName,
        media_id: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>, Option<String>)>> {
        use http::header;
        let path = format!(
            "/_matrix/media/v3/download/{}/{}?allow_remote=false",
            crate::percent_encode(server.as_str()),
            crate::percent_encode(media_id)
        );
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .body(Vec::new())
            .map_err(|e| Error::internal(format!("media request: {e}")))?;
        let Ok(response) = self.client.send(server, request).await else {
            return Ok(None);
        };
        if !response.status.is_success() {
            return Ok(None);
        }
        let header_str = |name: header::HeaderName| {
            response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let filename = header_str(header::CONTENT_DISPOSITION)
            .and_then(|d| ContentDisposition::try_from(d.as_bytes()).ok())
            .and_then(|d| d.filename);
        Ok(Some((
            response.body,
            header_str(header::CONTENT_TYPE),
            filename,
        )))
    }

    /// Sends a Paracord request (`relayed`, in the wire form of the relay) to the guild host
    /// `host` as `PUT /_paracord/federation/v1/relay/{txnId}` and returns the status and body
    /// the host answered it with.
    pub async fn relay(
        &self,
        host: &ServerName,
        relayed: &Value,
    ) -> Result<(http::StatusCode, Value)> {
        let txn_id: String = {
            use rand::{distributions::Alphanumeric, Rng};
            rand::thread_rng()
                .sample_iter(&Alphanumeric)
                .take(20)
                .map(char::from)
                .collect()
        };
        let (status, answer) = signed_json(
            &self.client,
            &self.keys,
            &self.config.server_name,
            host,
            http::Method::PUT,
            &format!("/_paracord/federation/v1/relay/{txn_id}"),
            Some(relayed),
        )
        .await?;
        if !status.is_success() {
            return Err(remote_error(host, status, &answer));
        }
        let relayed_status = answer["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| http::StatusCode::from_u16(s).ok())
            .ok_or_else(|| {
                Error::new(
                    http::StatusCode::BAD_GATEWAY,
                    ErrorKind::Unknown,
                    format!("{host} answered the relay without a status"),
                )
            })?;
        Ok((
            relayed_status,
            answer.get("body").cloned().unwrap_or_else(|| json!({})),
        ))
    }

    /// Other servers' users' device and cross-signing keys, merged into `out` (sections
    /// `device_keys`, `master_keys`, `self_signing_keys`); a server that does not answer is
    /// named under `failures`.
    pub async fn remote_device_keys<'a>(
        &self,
        out: &mut Value,
        wanted: impl Iterator<Item = (&'a OwnedUserId, Value)>,
    ) {
        let per_server = self.by_remote_server(wanted);
        let answers = self
            .ask_each(per_server, |users| {
                Ok(get_keys::v1::Request::new(from_users(users)?))
            })
            .await;
        for (server, asked, answer) in answers {
            match answer {
                Ok(body) => {
                    let sections = [
                        ("device_keys", serde_json::to_value(&body.device_keys)),
                        ("master_keys", serde_json::to_value(&body.master_keys)),
                        (
                            "self_signing_keys",
                            serde_json::to_value(&body.self_signing_keys),
                        ),
                    ];
                    for (section, keys) in sections {
                        let keys = keys.unwrap_or(Value::Null);
                        merge_users(&mut out[section], &keys, &server, &asked);
                    }
                }
                Err(message) => {
                    out["failures"][server.as_str()] = json!({ "status": 503, "message": message });
                }
            }
        }
    }

    /// Other servers' users' one-time keys, claimed and merged into `out["one_time_keys"]`; a
    /// server that does not answer is named under `failures`.
    pub async fn claim_remote_keys<'a>(
        &self,
        out: &mut Value,
        wanted: impl Iterator<Item = (&'a OwnedUserId, Value)>,
    ) {
        let per_server = self.by_remote_server(wanted);
        let answers = self
            .ask_each(per_server, |users| {
                Ok(claim_keys::v1::Request::new(from_users(users)?))
            })
            .await;
        for (server, asked, answer) in answers {
            match answer {
                Ok(body) => merge_users(
                    &mut out["one_time_keys"],
                    &serde_json::to_value(&body.one_time_keys).unwrap_or(Value::Null),
                    &server,
                    &asked,
                ),
                Err(message) => {
                    out["failures"][server.as_str()] = json!({ "status": 503, "message": message });
                }
            }
        }
    }

    /// The wanted users of other servers, by server.
    fn by_remote_server<'a>(
        &self,
        wanted: impl Iterator<Item = (&'a OwnedUserId, Value)>,
    ) -> BTreeMap<OwnedServerName, serde_json::Map<String, Value>> {
        let mut out: BTreeMap<OwnedServerName, serde_json::Map<String, Value>> = BTreeMap::new();
        for (user, what) in wanted {
            if user.server_name() != self.config.server_name.as_str() {
                out.entry(user.server_name().to_owned())
                    .or_default()
                    .insert(user.to_string(), what);
            }
        }
        out
    }

    /// Sends the request `make` builds of each server's users to it (signed, 10 s each, in
    /// parallel); returns each server's typed answer or why there is none, with the users
    /// asked.
    async fn ask_each<R, F>(
        &self,
        per_server: BTreeMap<OwnedServerName, serde_json::Map<String, Value>>,
        make: F,
    ) -> Vec<EachAnswer<R::IncomingResponse>>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
        F: Fn(serde_json::Map<String, Value>) -> std::result::Result<R, String>,
    {
        let make = &make;
        let asks = per_server.into_iter().map(|(server, users)| async move {
            let asked: Vec<String> = users.keys().cloned().collect();
            let answer = match make(users) {
                Ok(request) => self.ask_one(&server, request).await,
                Err(e) => Err(e),
            };
            (server, asked, answer)
        });
        futures::future::join_all(asks).await
    }

    /// One server's part of [`Queries::ask_each`].
    async fn ask_one<R>(
        &self,
        server: &ServerName,
        request: R,
    ) -> std::result::Result<R::IncomingResponse, String>
    where
        R: OutgoingRequest<PathBuilder = SinglePath>,
    {
        let origin = &self.config.server_name;
        let request = typed_http_request(self.keys.keypair(), origin, server, request)
            .map_err(|e| e.to_string())?;
        let response =
            match tokio::time::timeout(KEYS_TIMEOUT, send_signed(&self.client, server, request))
                .await
            {
                Err(_) => return Err("timed out".to_owned()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(response)) => response,
            };
        if !response.status.is_success() {
            return Err(format!("answered {}", response.status));
        }
        typed_answer(server, response).map_err(|e| e.to_string())
    }
}

/// `answer` when `status` is a success and it is a JSON object; else the error naming `server`.
fn object_answer(server: &ServerName, status: http::StatusCode, answer: Value) -> Result<Value> {
    if !status.is_success() {
        return Err(remote_error(server, status, &answer));
    }
    if !answer.is_object() {
        return Err(remote_error(
            server,
            http::StatusCode::BAD_GATEWAY,
            &json!({ "error": "the answer is not a JSON object" }),
        ));
    }
    Ok(answer)
}

/// The users asked of one server (`{user: what}` as the client asked it) as the typed map of
/// a request.
fn from_users<T: serde::de::DeserializeOwned>(
    users: serde_json::Map<String, Value>,
) -> std::result::Result<T, String> {
    serde_json::from_value(Value::Object(users)).map_err(|e| format!("bad request: {e}"))
}

/// Copies `from[user]` into `into[user]` for the users that were asked of `server` (a server
/// answers for its own users only).
fn merge_users(into: &mut Value, from: &Value, server: &ServerName, asked: &[String]) {
    let Some(from) = from.as_object() else {
        return;
    };
    if !into.is_object() {
        *into = json!({});
    }
    for (user, v) in from {
        let ours = UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == server);
        if ours && asked.contains(user) {
            into[user.as_str()] = v.clone();
        }
    }
}
