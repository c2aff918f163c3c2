//! Acting as one of the appservice's users over the client-server API.

use std::sync::Arc;

use reqwest::Method;
use ruma::{
    events::{
        reaction::ReactionEventContent,
        relation::Annotation,
        room::message::{ReplacementMetadata, RoomMessageEventContent},
    },
    OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{
    connection::Connection,
    error::{Error, Result},
    wire::{enc, txn_id, CLIENT_V3},
};

/// The body of `POST /createRoom`; fields are the spec's, anything else goes in `extra`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateRoom {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `topic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `room_alias_name`: the localpart of an alias to create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_alias_name: Option<String>,
    /// `invite`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub invite: Vec<OwnedUserId>,
    /// `preset`: `private_chat`, `public_chat` or `trusted_private_chat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// `is_direct`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_direct: bool,
    /// Any other field (`initial_state`, `power_level_content_override`, `visibility`…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One of the appservice's users (its bot or a ghost of its namespace), acting through the
/// `as_token` with `?user_id=`. Every call first makes sure the user exists.
#[derive(Debug, Clone)]
pub struct Intent {
    app: Arc<Connection>,
    user_id: OwnedUserId,
}

impl Intent {
    pub(crate) fn new(app: Arc<Connection>, user_id: OwnedUserId) -> Self {
        Self { app, user_id }
    }

    /// The user this intent acts as.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    fn is_bot(&self) -> bool {
        self.user_id.localpart() == self.app.registration.sender_localpart
            && self.user_id.server_name() == self.app.server_name
    }

    /// A request to `/_matrix{path}` as this user, without registering first.
    async fn raw_request(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> Result<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{}/_matrix{path}", self.app.homeserver);
        // The sender needs no assertion; naming it is allowed too, but not every server agrees.
        if !self.is_bot() {
            url.push(sep);
            url.push_str("user_id=");
            url.push_str(&enc(self.user_id.as_str()));
        }
        let mut req = self
            .app
            .http
            .request(method, url)
            .bearer_auth(&self.app.registration.as_token);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(Error::Matrix {
            status: status.as_u16(),
            errcode: value["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
            message: value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| status.to_string()),
        })
    }

    async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.ensure_registered().await?;
        let body = body.map(|b| reqwest::Body::from(b.to_string()));
        self.raw_request(method, path, body, "application/json")
            .await
    }

    /// Registers the user with `m.login.application_service` unless the store says it is;
    /// `M_USER_IN_USE` means it already exists, which is fine. For the appservice's own user
    /// (which the homeserver creates on first use) this is a `whoami`.
    pub async fn ensure_registered(&self) -> Result<()> {
        let store = self.app.store.as_ref();
        if store.user_registered(self.user_id.as_str())? {
            return Ok(());
        }
        if self.is_bot() {
            // The homeserver creates the appservice's own user on its first request.
            self.raw_request(
                Method::GET,
                &format!("{CLIENT_V3}/account/whoami"),
                None,
                "",
            )
            .await?;
            return store.mark_user_registered(self.user_id.as_str());
        }
        let body = json!({
            "type": "m.login.application_service",
            "username": self.user_id.localpart(),
            "inhibit_login": true,
        });
        let bytes = reqwest::Body::from(body.to_string());
        // Registration is made as the appservice itself (no `?user_id=`: the user does not
        // exist yet).
        let result = Intent::new(self.app.clone(), self.app.bot_user_id()?)
            .raw_request(
                Method::POST,
                &format!("{CLIENT_V3}/register"),
                Some(bytes),
                "application/json",
            )
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => {}
            Err(e) => return Err(e),
        }
        store.mark_user_registered(self.user_id.as_str())
    }

    /// Joins a room by id or alias; returns the room id.
    pub async fn join(&self, room_id_or_alias: &str) -> Result<OwnedRoomId> {
        let r = self
            .request(
                Method::POST,
                &format!("{CLIENT_V3}/join/{}", enc(room_id_or_alias)),
                Some(&json!({})),
            )
            .await?;
        field(&r, "room_id")
    }

    /// Leaves a room.
    pub async fn leave(&self, room_id: &RoomId) -> Result<()> {
        self.request(
            Method::POST,
            &format!("{CLIENT_V3}/rooms/{}/leave", enc(room_id.as_str())),
            Some(&json!({})),
        )
        .await?;
        Ok(())
    }

    /// Invites `user_id`.
    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.request(
            Method::POST,
            &format!("{CLIENT_V3}/rooms/{}/invite", enc(room_id.as_str())),
            Some(&json!({"user_id": user_id})),
        )
        .await?;
        Ok(())
    }

    /// Creates a room; returns its id.
    pub async fn create_room(&self, options: &CreateRoom) -> Result<OwnedRoomId> {
        let r = self
            .request(
                Method::POST,
                &format!("{CLIENT_V3}/createRoom"),
                Some(&serde_json::to_value(options)?),
            )
            .await?;
        field(&r, "room_id")
    }

    /// Sends a message-like event of any type; returns its event id. With the `e2ee`
    /// feature, when this user's device was given encryption
    /// ([`Appservice::enable_encryption`](crate::Appservice::enable_encryption)) and the
    /// room has `m.room.encryption`, the event is Megolm-encrypted and sent as
    /// `m.room.encrypted`.
    pub async fn send_event(
        &self,
        room_id: &RoomId,
        event_type: &str,
        content: &impl Serialize,
    ) -> Result<OwnedEventId> {
        #[cfg(feature = "e2ee")]
        if let Some(crypto) = self
            .app
            .crypto
            .get()
            .filter(|c| c.user_id() == self.user_id)
        {
            self.ensure_registered().await?;
            if crypto.is_encrypted(&self.app.link(), room_id).await? {
                let content = serde_json::to_value(content)?;
                return crypto
                    .send_encrypted(&self.app.link(), room_id, event_type, &content)
                    .await;
            }
        }
        let r = self
            .request(
                Method::PUT,
                &format!(
                    "{CLIENT_V3}/rooms/{}/send/{}/{}",
                    enc(room_id.as_str()),
                    enc(event_type),
                    enc(&txn_id())
                ),
                Some(&serde_json::to_value(content)?),
            )
            .await?;
        field(&r, "event_id")
    }

    /// Sets a state event; returns its event id.
    pub async fn send_state(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &impl Serialize,
    ) -> Result<OwnedEventId> {
        let r = self
            .request(
                Method::PUT,
                &format!(
                    "{CLIENT_V3}/rooms/{}/state/{}/{}",
                    enc(room_id.as_str()),
                    enc(event_type),
                    enc(state_key)
                ),
                Some(&serde_json::to_value(content)?),
            )
            .await?;
        field(&r, "event_id")
    }

    /// Sends an `m.room.message`.
    pub async fn send_message(
        &self,
        room_id: &RoomId,
        content: &RoomMessageEventContent,
    ) -> Result<OwnedEventId> {
        self.send_event(room_id, "m.room.message", content).await
    }

    /// Sends an `m.text` message.
    pub async fn send_text(&self, room_id: &RoomId, text: &str) -> Result<OwnedEventId> {
        self.send_message(room_id, &RoomMessageEventContent::text_plain(text))
            .await
    }

    /// Sends an `m.notice` (what bots send so that other bots do not answer).
    pub async fn send_notice(&self, room_id: &RoomId, text: &str) -> Result<OwnedEventId> {
        self.send_message(room_id, &RoomMessageEventContent::notice_plain(text))
            .await
    }

    /// Sends an `m.text` with an HTML body (`org.matrix.custom.html`) and its plain version.
    pub async fn send_html(
        &self,
        room_id: &RoomId,
        plain: &str,
        html: &str,
    ) -> Result<OwnedEventId> {
        self.send_message(room_id, &RoomMessageEventContent::text_html(plain, html))
            .await
    }

    /// Replaces the text of an earlier message (`m.replace`).
    pub async fn edit(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        new_text: &str,
    ) -> Result<OwnedEventId> {
        let content = RoomMessageEventContent::text_plain(new_text)
            .make_replacement(ReplacementMetadata::new(event_id.to_owned(), None));
        self.send_message(room_id, &content).await
    }

    /// Reacts to an event with `key` (an emoji or any text).
    pub async fn react(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        key: &str,
    ) -> Result<OwnedEventId> {
        let content =
            ReactionEventContent::new(Annotation::new(event_id.to_owned(), key.to_owned()));
        self.send_event(room_id, "m.reaction", &content).await
    }

    /// Redacts an event; returns the redaction's event id.
    pub async fn redact(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        let body = match reason {
            Some(reason) => json!({"reason": reason}),
            None => json!({}),
        };
        let r = self
            .request(
                Method::PUT,
                &format!(
                    "{CLIENT_V3}/rooms/{}/redact/{}/{}",
                    enc(room_id.as_str()),
                    enc(event_id.as_str()),
                    enc(&txn_id())
                ),
                Some(&body),
            )
            .await?;
        field(&r, "event_id")
    }

    /// Sets the user's display name.
    pub async fn set_display_name(&self, name: &str) -> Result<()> {
        self.request(
            Method::PUT,
            &format!(
                "{CLIENT_V3}/profile/{}/displayname",
                enc(self.user_id.as_str())
            ),
            Some(&json!({"displayname": name})),
        )
        .await?;
        Ok(())
    }

    /// Sets the user's avatar (an `mxc://` URI, e.g. from [`Intent::upload`]).
    pub async fn set_avatar_url(&self, mxc: &str) -> Result<()> {
        self.request(
            Method::PUT,
            &format!(
                "{CLIENT_V3}/profile/{}/avatar_url",
                enc(self.user_id.as_str())
            ),
            Some(&json!({"avatar_url": mxc})),
        )
        .await?;
        Ok(())
    }

    /// Uploads media; returns its `mxc://` URI.
    pub async fn upload(&self, bytes: Vec<u8>, content_type: &str) -> Result<OwnedMxcUri> {
        self.ensure_registered().await?;
        let r = self
            .raw_request(
                Method::POST,
                "/media/v3/upload",
                Some(reqwest::Body::from(bytes)),
                content_type,
            )
            .await?;
        let uri: String = field(&r, "content_uri")?;
        Ok(uri.into())
    }

    /// Starts (for 30 seconds) or stops typing in a room.
    pub async fn typing(&self, room_id: &RoomId, typing: bool) -> Result<()> {
        let body = if typing {
            json!({"typing": true, "timeout": 30_000})
        } else {
            json!({"typing": false})
        };
        self.request(
            Method::PUT,
            &format!(
                "{CLIENT_V3}/rooms/{}/typing/{}",
                enc(room_id.as_str()),
                enc(self.user_id.as_str())
            ),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// Any other client-server request as this user: `path` after `/_matrix`
    /// (e.g. `/client/v3/rooms/…/state`).
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.request(method, path, body).await
    }
}

/// A field of an answer, parsed.
fn field<T: for<'de> Deserialize<'de>>(v: &Value, name: &str) -> Result<T> {
    let raw = v
        .get(name)
        .ok_or_else(|| Error::invalid(format!("the answer has no `{name}`")))?;
    Ok(T::deserialize(raw)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_ids_for_paths() {
        assert_eq!(enc("!a:b.c"), "%21a%3Ab.c");
        assert_eq!(enc("#x y"), "%23x%20y");
        assert_eq!(enc("$Ab-_.~"), "%24Ab-_.~");
    }

    #[test]
    fn txn_ids_are_unique() {
        assert_ne!(txn_id(), txn_id());
    }

    #[test]
    fn create_room_body_has_only_what_was_set() {
        let mut c = CreateRoom {
            name: Some("n".into()),
            ..CreateRoom::default()
        };
        c.extra.insert("visibility".into(), json!("private"));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"name": "n", "visibility": "private"})
        );
    }
}
