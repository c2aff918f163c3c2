//! Events forged as another server's user: what a server that does not check the guild's
//! rules would send, signed with that server's own key (read from its data directory) and
//! sent over `/send` as that server. Used where the fine layer must soft-fail what the
//! Matrix rules let through.

use paracord_complement::{
    e2ee::b64_decode,
    enc,
    federation::{server_signing_key, x_matrix_with_content},
    Client, TestServer, User,
};
use ruma::{
    canonical_json::CanonicalJsonObject,
    room_version_rules::RoomVersionRules,
    signatures::{hash_and_sign_event, reference_hash, Ed25519KeyPair},
    RoomVersionId,
};
use serde_json::{json, Value};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The server's signing key as ruma's key pair (`ed25519 <version> <PKCS#8>` in its file).
pub fn server_key_pair(server: &TestServer) -> Ed25519KeyPair {
    let text = std::fs::read_to_string(server.data_dir().join("signing.key"))
        .unwrap_or_else(|e| panic!("expected the signing key file: {e}"));
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, version, der] = parts[..] else {
        panic!("unexpected signing key file: {text}");
    };
    let der = b64_decode(der).unwrap_or_else(|| panic!("expected base64 PKCS#8, got {der}"));
    Ed25519KeyPair::from_der(&der, version.to_owned())
        .unwrap_or_else(|e| panic!("expected an Ed25519 PKCS#8 key: {e}"))
}

pub fn canonical(value: Value) -> CanonicalJsonObject {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("expected canonical JSON: {e}"))
}

/// Server B forging events of `sender` (its user, joined) in a room of server A.
pub struct Forger<'a> {
    a: &'a TestServer,
    a_name: &'a str,
    b: &'a TestServer,
    b_name: &'a str,
    room: String,
    sender: String,
    rules: RoomVersionRules,
    auth_events: Vec<String>,
    key: Ed25519KeyPair,
    /// The event the forged ones build on, and its depth.
    pub prev: String,
    pub depth: u64,
}

impl<'a> Forger<'a> {
    /// Reads the room's version and the sender's auth events as `reader` (a member on A)
    /// sees them, after `reader` sends one last honest event to build on.
    pub async fn new(
        (a, a_name): (&'a TestServer, &'a str),
        (b, b_name): (&'a TestServer, &'a str),
        reader: &User,
        room: &str,
        sender: &str,
    ) -> Forger<'a> {
        let prev = reader.send_text(room, "the last honest event").await;
        let state = reader.full_state(room).await;
        let id_of = |kind: &str, key: &str| {
            state
                .iter()
                .find(|e| e["type"] == kind && e["state_key"] == key)
                .and_then(|e| e["event_id"].as_str().map(str::to_owned))
                .unwrap_or_else(|| panic!("expected {kind}/{key} in the room's state"))
        };
        let create = reader.state_content(room, "m.room.create", "").await;
        let version = create["room_version"].as_str().unwrap_or("1").to_owned();
        let rules = RoomVersionId::try_from(version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .unwrap_or_else(|| panic!("expected rules for room version {version}"));
        let mut auth_events = vec![
            id_of("m.room.power_levels", ""),
            id_of("m.room.member", sender),
        ];
        if !rules.authorization.room_create_event_id_as_room_id {
            auth_events.push(id_of("m.room.create", ""));
        }
        let mut forger = Forger {
            a,
            a_name,
            b,
            b_name,
            room: room.to_owned(),
            sender: sender.to_owned(),
            rules,
            auth_events,
            key: server_key_pair(b),
            prev: prev.clone(),
            depth: 0,
        };
        let got = forger
            .signed(
                "GET",
                &format!("/_matrix/federation/v1/event/{}", enc(&prev)),
                None,
            )
            .await
            .1;
        forger.depth = got["pdus"][0]["depth"]
            .as_u64()
            .unwrap_or_else(|| panic!("expected the depth of {prev}: {got}"));
        forger
    }

    /// A signed event of the sender on `prev` at `depth`: its event ID and the PDU.
    pub fn event(
        &self,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &str,
        depth: u64,
    ) -> (String, Value) {
        let mut event = json!({
            "room_id": self.room,
            "sender": self.sender,
            "type": kind,
            "content": content,
            "origin_server_ts": now_ms(),
            "depth": depth,
            "prev_events": [prev],
            "auth_events": self.auth_events,
        });
        if let Some(k) = state_key {
            event["state_key"] = json!(k);
        }
        let mut obj = canonical(event);
        hash_and_sign_event(self.b_name, &self.key, &mut obj, &self.rules.redaction)
            .unwrap_or_else(|e| panic!("expected to sign the event: {e}"));
        let pdu = serde_json::to_value(&obj).unwrap_or_else(|e| panic!("{e}"));
        let hash = reference_hash(&canonical(pdu.clone()), &self.rules)
            .unwrap_or_else(|e| panic!("expected a reference hash: {e}"));
        (format!("${hash}"), pdu)
    }

    /// `PUT /send` of `pdus` from B to A; A must answer 200 and take each (the Matrix rules
    /// allow them). The answer's JSON.
    pub async fn send(&self, pdus: Vec<(String, Value)>) -> Value {
        let body = json!({
            "origin": self.b_name,
            "origin_server_ts": now_ms(),
            "pdus": pdus.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
            "edus": [],
        });
        let uri = format!("/_matrix/federation/v1/send/{}", Client::txn_id());
        let (status, answer) = self.signed("PUT", &uri, Some(&body)).await;
        assert_eq!(status, 200, "PUT /send as B: {answer}");
        for (id, _) in &pdus {
            assert!(
                answer["pdus"][id.as_str()].get("error").is_none(),
                "A takes {id} (the Matrix rules allow it): {answer}"
            );
        }
        answer
    }

    /// A request to A signed as B: status and JSON answer.
    pub async fn signed(&self, method: &str, uri: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = x_matrix_with_content(
            &server_signing_key(self.b),
            self.b_name,
            self.a_name,
            method,
            uri,
            body,
        );
        let url = format!("{}{uri}", self.a.base_url());
        let mut request = reqwest::Client::new()
            .request(method.parse().unwrap_or(reqwest::Method::GET), url)
            .header("Authorization", auth);
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {uri} as B: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
