//! `rtc-token`: LiveKit tokens from the server's MatrixRTC focus (MSC4195, spec/voice.md
//! §2.2). C clients, each a user of its own joined to one room, call
//! `POST /_matrix/client/v1/rtc/livekit/get_token` one request after another with a fresh
//! `member.id` each time, R requests in all: tokens minted per second and the latency of each
//! call.
//!
//! A server that is not a focus answers 404 `M_UNRECOGNIZED` (Synapse, whose focus is the
//! separate lk-jwt-service; a Paracord without LiveKit configured): the first request, made
//! before the other users are registered, finds that out and the report says `unsupported`,
//! with the server's answer, instead of figures. Once a first token came back, any answer but
//! 200 with a `url` and a `jwt` is an error, and so is a token that names another LiveKit room
//! or URL than the first one, or an identity handed out already (each request's member id is
//! fresh, so each token's identity must be).

use std::{collections::HashSet, time::Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use futures::future::join_all as join_futures;
use serde_json::Value;

use crate::{
    client::{status_error, str_field, Deadline, Reply, Target, User},
    error::LoadError,
    report::Report,
    scenario::{bound, join_all, register::phase},
    stats::{Errors, Latencies},
};

const NAME: &str = "rtc-token";
/// The slot of a room's call (MSC4143).
const SLOT: &str = "m.call#ROOM";
const WHAT: &str = "get_token";

/// Parameters of `rtc-token`.
#[derive(Clone, Debug, clap::Args)]
pub struct RtcTokenParams {
    /// get_token requests in total (1..=100000).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Concurrent clients, each a user of its own sending its share of the requests one after
    /// another (1..=64).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
}

impl RtcTokenParams {
    fn validate(&self) -> Result<(), LoadError> {
        bound("requests", self.requests, 1, 100_000)?;
        bound("clients", self.clients, 1, 64)
    }
}

/// Runs the `rtc-token` scenario.
pub async fn rtc_token(target: &Target, p: &RtcTokenParams) -> Result<Report, LoadError> {
    p.validate()?;
    target.hard_limit(NAME, run(target, p)).await
}

/// A user and the device of its access token, which get_token must claim.
struct Client {
    user: User,
    device_id: String,
}

async fn with_device(target: &Target, user: User) -> Result<Client, LoadError> {
    let device_id = target.whoami_device(&user).await?;
    Ok(Client { user, device_id })
}

async fn run(target: &Target, p: &RtcTokenParams) -> Result<Report, LoadError> {
    let deadline = target.deadline();
    let mut report = Report::start(NAME, target);
    report.param("requests", p.requests);
    report.param("clients", p.clients);
    report.param("slot_id", SLOT);

    // One user, one room, one token: whether the server is a focus at all, before
    // registering anyone else.
    let owner = target
        .register_many(1, &deadline)
        .await?
        .pop()
        .ok_or_else(|| LoadError::Params("no user".into()))?;
    let room = target.create_room(&owner, "load rtc").await?;
    let owner = with_device(target, owner).await?;
    let probe = target
        .rtc_get_token(
            &owner.user,
            &owner.device_id,
            &room,
            SLOT,
            &format!("load-{}-probe", target.run_id()),
        )
        .await?;
    if let Some(why) = unsupported(&probe) {
        return Ok(report.unsupported(why));
    }
    let (url, first_jwt) = token(&probe)?;
    let first = claims(&first_jwt)
        .map_err(|e| LoadError::protocol(WHAT, format!("the first token: {e}")))?;

    let others = target.register_many(p.clients - 1, &deadline).await?;
    join_all(target, &others, std::slice::from_ref(&room), &deadline).await?;
    let others: Vec<Result<Client, LoadError>> = target
        .limited(others, |user| async move {
            deadline.check("asking for devices")?;
            with_device(target, user).await
        })
        .await;
    let mut clients = vec![owner];
    for c in others {
        clients.push(c?);
    }
    report.measuring();

    let (room, url) = (&room, &url);
    let start = Instant::now();
    let per_client = clients
        .iter()
        .enumerate()
        .map(|(c, client)| mint(target, p, c, client, room, url, deadline));
    let results = join_futures(per_client).await;
    let wall = start.elapsed();

    let mut lat = Latencies::default();
    let mut errors = Errors::default();
    let mut timed_out = false;
    let mut jwts = Vec::new();
    let mut failed = 0;
    for r in results {
        lat.extend(r.latencies);
        failed += r.errors.count;
        errors.merge(r.errors);
        timed_out |= r.timed_out;
        jwts.extend(r.jwts);
    }
    let identities = check_tokens(&first, jwts.iter().map(String::as_str), &mut errors);

    report.count(
        "requests",
        lat.len() + usize::try_from(failed).unwrap_or(usize::MAX),
    );
    report.count("tokens", lat.len());
    report.count("identities", identities);
    phase(&mut report, WHAT, "tokens_per_s", &lat, wall);
    report.metric("get_token_p95_ms", lat.percentile_ms(95.0));
    Ok(report.finish(errors, timed_out))
}

/// What one client did.
struct Minted {
    latencies: Latencies,
    jwts: Vec<String>,
    errors: Errors,
    timed_out: bool,
}

/// Client `c` asks for tokens `c, c + C, c + 2C, …`, each for a member id of its own.
async fn mint(
    target: &Target,
    p: &RtcTokenParams,
    c: usize,
    client: &Client,
    room: &str,
    url: &str,
    deadline: Deadline,
) -> Minted {
    let mut out = Minted {
        latencies: Latencies::default(),
        jwts: Vec::new(),
        errors: Errors::default(),
        timed_out: false,
    };
    for i in (c..p.requests).step_by(p.clients) {
        if deadline.expired() {
            out.timed_out = true;
            break;
        }
        let member = format!("load-{}-{i}", target.run_id());
        let t = Instant::now();
        let reply = target
            .rtc_get_token(&client.user, &client.device_id, room, SLOT, &member)
            .await;
        let elapsed = t.elapsed();
        match reply.and_then(|r| token(&r)) {
            Ok((got_url, jwt)) => {
                out.latencies.push(elapsed);
                if got_url != url {
                    out.errors.note(format!(
                        "{WHAT}: url {got_url:?} differs from the first token's {url:?}"
                    ));
                }
                out.jwts.push(jwt);
            }
            Err(e) => out.errors.record(&e),
        }
    }
    out
}

/// `Some(why)` when the server has no focus: 404 `M_UNRECOGNIZED`.
fn unsupported(reply: &Reply) -> Option<String> {
    if reply.status != 404 || reply.body["errcode"] != "M_UNRECOGNIZED" {
        return None;
    }
    let error = reply.body["error"].as_str().unwrap_or("no error text");
    Some(format!(
        "POST {} answered 404 M_UNRECOGNIZED ({error}): this server is not a MatrixRTC \
         LiveKit focus",
        crate::client::RTC_GET_TOKEN
    ))
}

/// The `url` and `jwt` of a 200 answer; any other status is an error.
fn token(reply: &Reply) -> Result<(String, String), LoadError> {
    if reply.status != 200 {
        return Err(status_error(WHAT, reply));
    }
    Ok((
        str_field(&reply.body, "url", WHAT)?,
        str_field(&reply.body, "jwt", WHAT)?,
    ))
}

/// The claims of a LiveKit access token this scenario checks.
#[derive(Debug, PartialEq, Eq)]
struct Claims {
    /// `sub`: the participant's identity.
    identity: String,
    /// `video.room`: the LiveKit room.
    room: String,
}

/// Reads the claims of a JWT's payload (the signature is the SFU's business: the tool does
/// not know the secret).
fn claims(jwt: &str) -> Result<Claims, String> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three dot-separated parts)".into());
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("payload is not base64url: {e}"))?;
    let payload: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("payload is not JSON: {e}"))?;
    let field = |v: &Value, name: &str| -> Result<String, String> {
        v.as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("no `{name}` claim"))
    };
    Ok(Claims {
        identity: field(&payload["sub"], "sub")?,
        room: field(&payload["video"]["room"], "video.room")?,
    })
}

/// Checks `jwts` against the first token: each must read, name `first`'s LiveKit room (same
/// Matrix room and slot) and an identity no other token has (every member id was fresh).
/// Each problem is noted in `errors`; returns how many distinct identities the tokens, the
/// first one included, carried.
fn check_tokens<'a>(
    first: &Claims,
    jwts: impl IntoIterator<Item = &'a str>,
    errors: &mut Errors,
) -> usize {
    let mut identities = HashSet::from([first.identity.clone()]);
    for jwt in jwts {
        match claims(jwt) {
            Ok(c) => {
                if c.room != first.room {
                    errors.note(format!(
                        "{WHAT}: a token for LiveKit room {:?}, the first was for {:?}",
                        c.room, first.room
                    ));
                }
                if !identities.insert(c.identity.clone()) {
                    errors.note(format!(
                        "{WHAT}: identity {:?} handed out twice for distinct member ids",
                        c.identity
                    ));
                }
            }
            Err(e) => errors.note(format!("{WHAT}: {e}")),
        }
    }
    identities.len()
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    use serde_json::{json, Value};

    use super::{check_tokens, claims, token, unsupported, Claims, RtcTokenParams};
    use crate::{client::Reply, error::LoadError, stats::Errors};

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            bytes: body.to_string().len(),
            body,
        }
    }

    /// A JWT with `payload` (header and signature are not read).
    fn jwt(payload: &Value) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        )
    }

    fn livekit(identity: &str, room: &str) -> String {
        jwt(&json!({
            "sub": identity,
            "iss": "bench",
            "video": { "room": room, "roomJoin": true, "canSubscribe": true },
        }))
    }

    #[test]
    fn only_404_unrecognized_means_unsupported() {
        let why = unsupported(&reply(
            404,
            json!({ "errcode": "M_UNRECOGNIZED", "error": "Unrecognized request" }),
        ))
        .unwrap_or_default();
        assert!(
            why.contains("404 M_UNRECOGNIZED (Unrecognized request)"),
            "{why}"
        );
        assert!(why.contains("not a MatrixRTC LiveKit focus"), "{why}");
        // A missing room, a refused device or a server error is the server's answer to a
        // supported request: an error, not a skip.
        for (status, errcode) in [
            (404, "M_NOT_FOUND"),
            (401, "M_UNAUTHORIZED"),
            (403, "M_FORBIDDEN"),
            (500, "M_UNKNOWN"),
            (405, "M_UNRECOGNIZED"),
        ] {
            let r = reply(status, json!({ "errcode": errcode, "error": "x" }));
            assert_eq!(unsupported(&r), None, "{status} {errcode}");
        }
        assert_eq!(unsupported(&reply(404, Value::Null)), None);
    }

    #[test]
    fn a_token_is_a_200_with_url_and_jwt() {
        let ok = reply(200, json!({ "url": "ws://sfu", "jwt": "a.b.c" }));
        let (url, jwt) = token(&ok).unwrap_or_default();
        assert_eq!((url.as_str(), jwt.as_str()), ("ws://sfu", "a.b.c"));
        // Any other status counts, 2xx included.
        for status in [201, 401, 403, 404, 429, 500] {
            let r = reply(status, json!({ "url": "ws://sfu", "jwt": "a.b.c" }));
            assert!(
                matches!(token(&r), Err(LoadError::Status { status: s, .. }) if s == status),
                "{status}"
            );
        }
        for body in [
            json!({ "url": "ws://sfu" }),
            json!({ "jwt": "a.b.c" }),
            Value::Null,
        ] {
            assert!(
                matches!(
                    token(&reply(200, body.clone())),
                    Err(LoadError::Protocol { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn reads_identity_and_room_from_the_payload() {
        assert_eq!(
            claims(&livekit("id-1", "room-a")),
            Ok(Claims {
                identity: "id-1".into(),
                room: "room-a".into(),
            })
        );
        // Padding some encoders leave on is tolerated.
        let padded = format!(
            "h.{}=.s",
            URL_SAFE_NO_PAD.encode(json!({ "sub": "i", "video": { "room": "r" } }).to_string())
        );
        assert!(claims(&padded).is_ok(), "{padded}");
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "h.!!!.s",
            &format!("h.{}.s", URL_SAFE_NO_PAD.encode("not json")),
            &jwt(&json!({ "video": { "room": "r" } })),
            &jwt(&json!({ "sub": "", "video": { "room": "r" } })),
            &jwt(&json!({ "sub": "i" })),
            &jwt(&json!({ "sub": "i", "video": { "room": 7 } })),
        ] {
            assert!(claims(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_token_names_the_first_room_and_a_fresh_identity() {
        let first = Claims {
            identity: "id-0".into(),
            room: "room-a".into(),
        };
        let good: Vec<String> = (1..=5)
            .map(|i| livekit(&format!("id-{i}"), "room-a"))
            .collect();
        let mut errors = Errors::default();
        let n = check_tokens(&first, good.iter().map(String::as_str), &mut errors);
        assert_eq!((n, errors.count), (6, 0));

        let bad = [
            livekit("id-1", "room-a"),
            livekit("id-1", "room-a"), // identity again
            livekit("id-0", "room-a"), // the first token's identity
            livekit("id-2", "room-b"), // another LiveKit room
            "not-a-jwt".to_owned(),
        ];
        let mut errors = Errors::default();
        let n = check_tokens(&first, bad.iter().map(String::as_str), &mut errors);
        assert_eq!((n, errors.count), (3, 4));
        assert!(
            errors
                .first
                .as_deref()
                .unwrap_or_default()
                .contains("\"id-1\" handed out twice"),
            "{:?}",
            errors.first
        );
    }

    #[test]
    fn bounds() {
        let ok = RtcTokenParams {
            requests: 1,
            clients: 64,
        };
        assert!(ok.validate().is_ok());
        for (requests, clients) in [(0, 1), (100_001, 1), (10, 0), (10, 65)] {
            let p = RtcTokenParams { requests, clients };
            assert!(p.validate().is_err(), "{requests} {clients}");
        }
    }
}
