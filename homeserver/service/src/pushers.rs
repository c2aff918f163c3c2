//! Pushers and the push-gateway sender: each notification of a user with HTTP pushers is
//! POSTed to their gateway (push gateway API `/_matrix/push/v1/notify`), with retries.

use std::{sync::Arc, time::Duration};

use paracord_core::{time::now_ms, Error, Result};
use paracord_storage::{Batch, Db, KeyBuf, Table};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::{ephemeral::Ephemeral, rooms::Rooms};

/// One notification to deliver.
#[derive(Debug, Clone)]
pub struct PushJob {
    pub user: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub actions: Value,
}

pub struct Pushers {
    db: Arc<Db>,
}

const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Where a stored pusher records the device that set it (not shown to clients).
const DEVICE_FIELD: &str = "paracord.device_id";
const ATTEMPTS: u32 = 4;

fn key(user: &UserId, app_id: &str, pushkey: &str) -> Vec<u8> {
    KeyBuf::new()
        .str(user.as_str())
        .str(app_id)
        .last_str(pushkey)
        .into_vec()
}

impl Pushers {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The user's pushers as the client set them (plus `pushkey_ts`).
    pub fn list(&self, user: &UserId) -> Result<Vec<Value>> {
        Ok(self
            .stored(user)?
            .into_iter()
            .map(|(_, mut p)| {
                if let Some(o) = p.as_object_mut() {
                    o.remove(DEVICE_FIELD);
                }
                p
            })
            .collect())
    }

    /// The stored pushers of a user (with the device that set them) and their keys.
    fn stored(&self, user: &UserId) -> Result<Vec<(Vec<u8>, Value)>> {
        let prefix = KeyBuf::new().str(user.as_str()).into_vec();
        self.db
            .scan_prefix(Table::UserapppushkeyPusher, &prefix)
            .map_err(Error::internal)?
            .into_iter()
            .map(|(k, v)| Ok((k.to_vec(), serde_json::from_slice(&v)?)))
            .collect()
    }

    /// Deletes the pushers set by devices that were deleted (every pusher of a deactivated
    /// account): a pusher belongs to the session that set it, as in other servers, so a
    /// password change that logs out the other devices stops their notifications too.
    pub fn devices_removed(&self, user: &UserId, devices: &[String], all: bool) -> Result<()> {
        let mut batch = Batch::new();
        for (k, p) in self.stored(user)? {
            let by = p.get(DEVICE_FIELD).and_then(Value::as_str);
            if all || by.is_some_and(|d| devices.iter().any(|x| x == d)) {
                batch.delete(Table::UserapppushkeyPusher, k);
            }
        }
        self.db.write(batch).map_err(Error::internal)
    }

    /// `/pushers/set` from `device`: adds or replaces a pusher, or deletes it when `kind` is
    /// null.
    pub fn set(&self, user: &UserId, device: &str, body: &Value) -> Result<()> {
        let app_id = body["app_id"]
            .as_str()
            .filter(|a| !a.is_empty() && a.len() <= 64)
            .ok_or_else(|| Error::invalid_param("app_id must be 1 to 64 characters"))?;
        let pushkey = body["pushkey"]
            .as_str()
            .filter(|p| !p.is_empty() && p.len() <= 512)
            .ok_or_else(|| Error::invalid_param("pushkey must be 1 to 512 bytes"))?;
        let mut batch = Batch::new();
        if body["kind"].is_null() {
            batch.delete(Table::UserapppushkeyPusher, key(user, app_id, pushkey));
            return self.db.write(batch).map_err(Error::internal);
        }
        match body["kind"].as_str() {
            Some("http") => {
                let url = body["data"]["url"]
                    .as_str()
                    .ok_or_else(|| Error::missing_param("an http pusher needs data.url"))?;
                let ok_scheme = url.starts_with("http://") || url.starts_with("https://");
                if !ok_scheme || !url.ends_with(NOTIFY_PATH) {
                    return Err(Error::invalid_param(format!(
                        "data.url must be an http(s) URL ending in {NOTIFY_PATH}"
                    )));
                }
            }
            Some("email") => return Err(Error::invalid_param("email pushers are not supported")),
            _ => return Err(Error::invalid_param("kind must be http or null")),
        }
        if !body["append"].as_bool().unwrap_or(false) {
            // Without append, this pushkey belongs to this app only: drop it from other apps.
            let prefix = KeyBuf::new().str(user.as_str()).into_vec();
            for (k, v) in self
                .db
                .scan_prefix(Table::UserapppushkeyPusher, &prefix)
                .map_err(Error::internal)?
            {
                let p: Value = serde_json::from_slice(&v)?;
                if p["pushkey"] == pushkey && p["app_id"] != app_id {
                    batch.delete(Table::UserapppushkeyPusher, k.to_vec());
                }
            }
        }
        let mut pusher = body.clone();
        if let Some(o) = pusher.as_object_mut() {
            o.remove("append");
            o.insert("pushkey_ts".into(), json!(now_ms() / 1000));
            o.insert(DEVICE_FIELD.into(), json!(device));
        }
        batch.put(
            Table::UserapppushkeyPusher,
            key(user, app_id, pushkey),
            serde_json::to_vec(&pusher)?,
        );
        self.db.write(batch).map_err(Error::internal)
    }

    fn remove(&self, user: &UserId, app_id: &str, pushkey: &str) {
        let mut batch = Batch::new();
        batch.delete(Table::UserapppushkeyPusher, key(user, app_id, pushkey));
        let _ = self.db.write(batch);
    }

    /// Starts the sender: jobs from the event pipeline are delivered in the background.
    pub fn start(
        self: &Arc<Self>,
        rooms: Arc<Rooms>,
        ephemeral: Arc<Ephemeral>,
    ) -> Option<mpsc::UnboundedSender<PushJob>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, mut rx) = mpsc::unbounded_channel::<PushJob>();
        let this = self.clone();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        handle.spawn(async move {
            while let Some(job) = rx.recv().await {
                if let Err(e) = this.deliver(&client, &rooms, &ephemeral, &job).await {
                    tracing::warn!(user = %job.user, "push delivery failed: {e}");
                }
            }
        });
        Some(tx)
    }

    async fn deliver(
        &self,
        client: &reqwest::Client,
        rooms: &Rooms,
        ephemeral: &Ephemeral,
        job: &PushJob,
    ) -> Result<()> {
        let pushers: Vec<Value> = self
            .list(&job.user)?
            .into_iter()
            .filter(|p| p["kind"] == "http")
            .collect();
        if pushers.is_empty() {
            return Ok(());
        }
        let reader = crate::rooms::timeline::Reader {
            user: &job.user,
            device: None,
        };
        let Ok((_, _, event)) = rooms.visible_event(reader, Some(&job.room_id), &job.event_id)
        else {
            return Ok(());
        };
        let read_pos = crate::sync::read_pos(rooms, ephemeral, &job.room_id, &job.user)?;
        let (unread, _) = rooms.unread_counts(&job.user, &job.room_id, read_pos)?;
        let state = rooms.current_state(&job.room_id)?;
        let room_name = rooms
            .state_content(&state, "m.room.name", "")?
            .and_then(|c| c["name"].as_str().map(str::to_owned));
        let sender = event["sender"].as_str().unwrap_or_default().to_owned();
        let sender_name = rooms
            .state_content(&state, "m.room.member", &sender)?
            .and_then(|c| c["displayname"].as_str().map(str::to_owned));
        let tweaks: serde_json::Map<String, Value> = job
            .actions
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                a.get("set_tweak")
                    .and_then(|t| t.as_str())
                    .map(|t| (t.to_owned(), a.get("value").cloned().unwrap_or(json!(true))))
            })
            .collect();
        for pusher in pushers {
            let Some(url) = pusher["data"]["url"].as_str() else {
                continue;
            };
            let mut data = pusher["data"].clone();
            if let Some(o) = data.as_object_mut() {
                o.remove("url");
            }
            let event_only = pusher["data"]["format"] == "event_id_only";
            let mut notification = json!({
                "event_id": job.event_id, "room_id": job.room_id,
                "prio": if tweaks.contains_key("highlight") || tweaks.contains_key("sound") { "high" } else { "low" },
                "counts": { "unread": unread },
                "devices": [{
                    "app_id": pusher["app_id"], "pushkey": pusher["pushkey"], "pushkey_ts": pusher["pushkey_ts"],
                    "data": data, "tweaks": tweaks,
                }],
            });
            if !event_only {
                notification["type"] = event["type"].clone();
                notification["sender"] = json!(sender);
                notification["content"] = event["content"].clone();
                if let Some(n) = &sender_name {
                    notification["sender_display_name"] = json!(n);
                }
                if let Some(n) = &room_name {
                    notification["room_name"] = json!(n);
                }
            }
            let body = json!({ "notification": notification });
            let mut delay = Duration::from_millis(250);
            for attempt in 1..=ATTEMPTS {
                match client.post(url).json(&body).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let answer: Value = resp.json().await.unwrap_or(Value::Null);
                        let rejected = answer["rejected"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|k| k == &pusher["pushkey"]));
                        if rejected {
                            self.remove(
                                &job.user,
                                pusher["app_id"].as_str().unwrap_or_default(),
                                pusher["pushkey"].as_str().unwrap_or_default(),
                            );
                        }
                        break;
                    }
                    // A 4xx other than rate limiting will not get better by retrying.
                    Ok(resp)
                        if resp.status().is_client_error() && resp.status().as_u16() != 429 =>
                    {
                        break
                    }
                    _ if attempt == ATTEMPTS => {
                        tracing::warn!(%url, "push gateway unreachable after {ATTEMPTS} attempts")
                    }
                    _ => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
        Ok(())
    }
}
