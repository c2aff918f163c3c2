//! Persistent data units: the signed events of a room's DAG.

use ruma::{
    canonical_json::CanonicalJsonObject,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    serde::Raw,
    CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    UInt, UserId,
};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use paracord_core::{Error, Result};

/// Spec limit for a PDU's canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A PDU as stored, parsed into the fields the auth rules and the client views need.
#[derive(Debug, Clone, Deserialize)]
pub struct Pdu {
    #[serde(skip, default = "placeholder_event_id")]
    pub event_id: OwnedEventId,
    /// `None` only for the `m.room.create` event of a v12 room, whose id derives from it.
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    #[serde(default)]
    pub state_key: Option<String>,
    pub content: Box<RawValue>,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(default, deserialize_with = "event_refs")]
    pub prev_events: Vec<OwnedEventId>,
    #[serde(default, deserialize_with = "event_refs")]
    pub auth_events: Vec<OwnedEventId>,
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
    #[serde(default)]
    pub depth: UInt,
    #[serde(skip)]
    pub rejected: bool,
}

/// `prev_events`/`auth_events`: event ids (room versions 3 and later) or, in versions 1 and 2,
/// `[event_id, {"sha256": …}]` pairs.
fn event_refs<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<OwnedEventId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ref {
        Id(OwnedEventId),
        Pair(OwnedEventId, serde::de::IgnoredAny),
    }
    Ok(Vec::<Ref>::deserialize(d)?
        .into_iter()
        .map(|r| match r {
            Ref::Id(id) | Ref::Pair(id, _) => id,
        })
        .collect())
}

/// The ids in a `prev_events`/`auth_events` JSON array of any room version (malformed entries
/// are left out).
pub fn ref_ids(refs: &serde_json::Value) -> Vec<OwnedEventId> {
    refs.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().or_else(|| r.get(0).and_then(|id| id.as_str())))
                .filter_map(|id| OwnedEventId::try_from(id).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The event id of a PDU: its `event_id` field in room versions 1 and 2 (`$opaque:server`),
/// otherwise `$` and its reference hash.
pub fn event_id_of(
    obj: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> std::result::Result<OwnedEventId, String> {
    if rules.event_id_format == EventIdFormatVersion::V1 {
        let Some(CanonicalJsonValue::String(id)) = obj.get("event_id") else {
            return Err("the PDU has no event_id".to_owned());
        };
        let id = OwnedEventId::try_from(id.as_str()).map_err(|e| format!("bad event_id: {e}"))?;
        if id.server_name().is_none() {
            return Err(format!("the event id {id} names no server"));
        }
        return Ok(id);
    }
    let hash = ruma::signatures::reference_hash(obj, rules).map_err(|e| e.to_string())?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| e.to_string())
}

/// One entry of `prev_events`/`auth_events` in a room version: the id, or (versions 1 and 2)
/// `[id, {"sha256": reference hash}]` with the referenced event's canonical JSON.
pub fn event_ref(
    id: &ruma::EventId,
    referenced: Option<&CanonicalJsonObject>,
    rules: &RoomVersionRules,
) -> CanonicalJsonValue {
    if rules.events_reference_format == ruma::room_version_rules::EventsReferenceFormatVersion::V1 {
        let mut hashes = CanonicalJsonObject::new();
        if let Some(hash) = referenced.and_then(|r| ruma::signatures::reference_hash(r, rules).ok())
        {
            hashes.insert("sha256".into(), CanonicalJsonValue::String(hash));
        }
        CanonicalJsonValue::Array(vec![
            CanonicalJsonValue::String(id.to_string()),
            CanonicalJsonValue::Object(hashes),
        ])
    } else {
        CanonicalJsonValue::String(id.to_string())
    }
}

fn placeholder_event_id() -> OwnedEventId {
    ruma::event_id!("$placeholder").to_owned()
}

impl Pdu {
    /// Parses a stored canonical JSON PDU.
    pub fn from_json(event_id: OwnedEventId, json: &[u8]) -> Result<Self> {
        let mut pdu: Pdu = serde_json::from_slice(json)
            .map_err(|e| Error::internal(format!("stored pdu {event_id} unreadable: {e}")))?;
        pdu.event_id = event_id;
        if pdu.redacts.is_none() && pdu.kind == TimelineEventType::RoomRedaction {
            // Since v11 `redacts` lives in content.
            #[derive(Deserialize)]
            struct C {
                redacts: Option<OwnedEventId>,
            }
            if let Ok(c) = serde_json::from_str::<C>(pdu.content.get()) {
                pdu.redacts = c.redacts;
            }
        }
        Ok(pdu)
    }

    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Keys of a PDU that clients do not see.
const FEDERATION_ONLY_KEYS: &[&str] = &[
    "auth_events",
    "prev_events",
    "depth",
    "hashes",
    "signatures",
    "origin",
];

/// The client-format JSON of a stored PDU (`room_id` filled in, federation fields removed,
/// `unsigned` added).
pub fn client_event(
    stored: &[u8],
    event_id: &str,
    room_id: &str,
    unsigned: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(stored)?;
    for k in FEDERATION_ONLY_KEYS {
        v.remove(*k);
    }
    // Since v11 `redacts` lives in content; clients still look for it at the top level too.
    if v.get("type").and_then(|t| t.as_str()) == Some("m.room.redaction")
        && !v.contains_key("redacts")
    {
        if let Some(r) = v.get("content").and_then(|c| c.get("redacts")).cloned() {
            v.insert("redacts".into(), r);
        }
    }
    v.insert("event_id".into(), event_id.into());
    v.insert("room_id".into(), room_id.into());
    if let Some(u) = unsigned {
        if u.as_object().is_some_and(|o| !o.is_empty()) {
            v.insert("unsigned".into(), u);
        }
    }
    Ok(serde_json::Value::Object(v))
}

/// A PDU without the keys only servers need (`auth_events`, `hashes`, …).
pub fn client_form(pdu: &serde_json::Value) -> serde_json::Value {
    let mut v = pdu.clone();
    if let Some(o) = v.as_object_mut() {
        for k in FEDERATION_ONLY_KEYS {
            o.remove(*k);
        }
        o.remove("unsigned");
    }
    v
}

/// Stripped state (for invites): type, state_key, sender, content.
pub fn stripped_event(stored: &[u8]) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(stored)?;
    Ok(serde_json::json!({
        "type": v["type"], "state_key": v["state_key"], "sender": v["sender"], "content": v["content"],
    }))
}

/// Wraps a JSON value as a ruma `Raw<T>`.
pub fn raw<T>(v: &serde_json::Value) -> Raw<T> {
    // Serializing a `Value` cannot fail.
    let raw = serde_json::value::to_raw_value(v).unwrap_or_else(|_| {
        RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable_raw())
    });
    Raw::from_json(raw)
}

#[allow(clippy::panic)]
fn unreachable_raw() -> Box<RawValue> {
    panic!("\"{{}}\" is valid JSON")
}

/// Converts client JSON into a canonical JSON object, rejecting floats and integers out of the
/// canonical range.
pub fn to_canonical_object(v: serde_json::Value) -> Result<CanonicalJsonObject> {
    match CanonicalJsonValue::try_from(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(Error::bad_json("content must be a JSON object")),
        Err(e) => Err(Error::bad_json(format!(
            "content is not canonical JSON: {e}"
        ))),
    }
}
