//! Events as the homeserver pushes them to the appservice.

use ruma::{
    events::{
        room::{member::MembershipState, message::MessageType},
        AnyMessageLikeEvent, AnyStateEvent, AnyTimelineEvent, MessageLikeEvent, StateEvent,
    },
    serde::Raw,
    OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId,
};

/// One event of a transaction: ruma's typed [`AnyTimelineEvent`] when it parses, and always
/// the raw JSON (events of unknown types parse as ruma's custom variant; malformed ones only
/// have the raw JSON).
#[derive(Debug, Clone)]
pub struct Event {
    raw: Raw<AnyTimelineEvent>,
    parsed: Option<AnyTimelineEvent>,
    encryption: Option<Encryption>,
}

/// How an event that arrived as `m.room.encrypted` was handled (feature `e2ee`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encryption {
    /// It was decrypted: the [`Event`] is the plaintext event (type, content) with the
    /// encrypted event's id, sender, room and timestamp.
    Decrypted {
        /// The device that encrypted it, as its Megolm session says.
        sender_device: Option<OwnedDeviceId>,
        /// Whether that device is verified (cross-signed by its owner, whom the bot trusts).
        verified: bool,
    },
    /// It could not be decrypted (yet): the [`Event`] is the `m.room.encrypted` event. When
    /// its room key arrives later, the event is delivered again, decrypted.
    Undecryptable {
        /// Why, as the crypto machine says (e.g. the room key is missing).
        reason: String,
    },
}

/// A `m.room.message` in a form a bot uses most: who said what where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event.
    pub event_id: OwnedEventId,
    /// The author.
    pub sender: OwnedUserId,
    /// `msgtype` (`m.text`, `m.notice`, `m.emote`, `m.image`…).
    pub msgtype: String,
    /// The plain-text body.
    pub body: String,
    /// Whether it edits another message (`m.replace`).
    pub is_edit: bool,
}

impl Event {
    /// Wraps the raw JSON, parsing it.
    pub fn new(raw: Raw<AnyTimelineEvent>) -> Self {
        let parsed = raw.deserialize().ok();
        Self {
            raw,
            parsed,
            encryption: None,
        }
    }

    #[cfg(feature = "e2ee")]
    pub(crate) fn with_encryption(raw: Raw<AnyTimelineEvent>, encryption: Encryption) -> Self {
        Self {
            encryption: Some(encryption),
            ..Self::new(raw)
        }
    }

    /// How the event was encrypted, if it arrived as `m.room.encrypted`.
    pub fn encryption(&self) -> Option<&Encryption> {
        self.encryption.as_ref()
    }

    /// Whether it arrived encrypted and was decrypted (the event is the plaintext).
    pub fn was_encrypted(&self) -> bool {
        matches!(self.encryption, Some(Encryption::Decrypted { .. }))
    }

    /// Whether it arrived encrypted and could not be decrypted (the event is the ciphertext).
    pub fn is_undecryptable(&self) -> bool {
        matches!(self.encryption, Some(Encryption::Undecryptable { .. }))
    }

    /// The raw JSON.
    pub fn raw(&self) -> &Raw<AnyTimelineEvent> {
        &self.raw
    }

    /// The typed event, if it parsed.
    pub fn parsed(&self) -> Option<&AnyTimelineEvent> {
        self.parsed.as_ref()
    }

    /// `type`.
    pub fn event_type(&self) -> Option<String> {
        self.raw.get_field("type").ok().flatten()
    }

    /// `room_id`.
    pub fn room_id(&self) -> Option<OwnedRoomId> {
        self.raw.get_field("room_id").ok().flatten()
    }

    /// `sender`.
    pub fn sender(&self) -> Option<OwnedUserId> {
        self.raw.get_field("sender").ok().flatten()
    }

    /// `event_id`.
    pub fn event_id(&self) -> Option<OwnedEventId> {
        self.raw.get_field("event_id").ok().flatten()
    }

    /// The message, if this is an (unredacted) `m.room.message`.
    pub fn message(&self) -> Option<Message> {
        let AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomMessage(
            MessageLikeEvent::Original(ev),
        )) = self.parsed.as_ref()?
        else {
            return None;
        };
        let is_edit = matches!(
            ev.content.relates_to,
            Some(ruma::events::room::message::Relation::Replacement(_))
        );
        let (msgtype, body) = match &ev.content.msgtype {
            MessageType::Text(t) => ("m.text".to_owned(), t.body.clone()),
            MessageType::Notice(n) => ("m.notice".to_owned(), n.body.clone()),
            MessageType::Emote(e) => ("m.emote".to_owned(), e.body.clone()),
            other => (other.msgtype().to_owned(), other.body().to_owned()),
        };
        Some(Message {
            room_id: ev.room_id.clone(),
            event_id: ev.event_id.clone(),
            sender: ev.sender.clone(),
            msgtype,
            body,
            is_edit,
        })
    }

    /// The invited user, if this is an `m.room.member` invite.
    pub fn invited_user(&self) -> Option<OwnedUserId> {
        let AnyTimelineEvent::State(AnyStateEvent::RoomMember(StateEvent::Original(ev))) =
            self.parsed.as_ref()?
        else {
            return None;
        };
        (ev.content.membership == MembershipState::Invite).then(|| ev.state_key.clone())
    }

    /// The annotated event and the key, if this is an `m.reaction`.
    pub fn reaction(&self) -> Option<(OwnedEventId, String)> {
        let AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::Reaction(
            MessageLikeEvent::Original(ev),
        )) = self.parsed.as_ref()?
        else {
            return None;
        };
        Some((
            ev.content.relates_to.event_id.clone(),
            ev.content.relates_to.key.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(v: serde_json::Value) -> Event {
        Event::new(Raw::new(&v).unwrap().cast_unchecked())
    }

    fn base(ty: &str, content: serde_json::Value) -> serde_json::Value {
        json!({
            "type": ty, "content": content, "event_id": "$e1", "room_id": "!r:x",
            "sender": "@a:x", "origin_server_ts": 1,
        })
    }

    #[test]
    fn messages_reactions_invites_and_unknown_types() {
        let m = event(base(
            "m.room.message",
            json!({"msgtype": "m.text", "body": "!echo hi"}),
        ));
        let msg = m.message().unwrap();
        assert_eq!(
            (msg.body.as_str(), msg.msgtype.as_str(), msg.is_edit),
            ("!echo hi", "m.text", false)
        );
        assert_eq!(msg.sender, "@a:x");

        let r = event(base(
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$p", "key": "👍"}}),
        ));
        assert_eq!(
            r.reaction().unwrap(),
            ("$p".try_into().unwrap(), "👍".to_owned())
        );
        assert!(r.message().is_none());

        let mut i = base("m.room.member", json!({"membership": "invite"}));
        i["state_key"] = json!("@bot:x");
        assert_eq!(event(i).invited_user().unwrap(), "@bot:x");

        let c = event(base("org.example.custom", json!({"x": 1})));
        assert!(c.parsed().is_some());
        assert_eq!(c.event_type().as_deref(), Some("org.example.custom"));

        // Not an event ruma can parse: only the raw JSON, the fields still readable.
        let bad = event(json!({"type": "m.room.message", "room_id": "!r:x", "content": 5}));
        assert!(bad.parsed().is_none());
        assert!(bad.message().is_none());
        assert_eq!(bad.room_id().unwrap(), "!r:x");
    }
}
