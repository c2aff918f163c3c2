//! Entry points for the fuzz targets of `homeserver/fuzz` (issue 15). Each runs the code that
//! reads one kind of untrusted input — as the server runs it, up to where the database or the
//! network would be needed — and panics only where that code broke a promise of its own (a
//! PDU this server signs must verify, a token it hands out must parse back, …). A panic on
//! any other input is a bug of the server, not of the fuzz target.
//!
//! The seed corpus and every input a fuzz run crashed with go through these in `cargo test`
//! as well (the tests below), so they stay fixed.

use std::{collections::BTreeMap, io::Cursor, sync::OnceLock};

use paracord_core::Config;
use ruma::{
    serde::Base64,
    signatures::{hash_and_sign_event, verify_event, Ed25519KeyPair, PublicKeyMap, Verified},
    CanonicalJsonValue, ServerName,
};
use serde_json::Value;

use crate::{
    federation::{
        edus::user_of,
        pdus::{
            check_format, event_id_of, finish_pdu, room_of, sender_server, transaction_items,
            Formatted, Prepared,
        },
        request::signed_http_request,
    },
    media::{
        image_dimensions, inline_safe, multipart_boundary, parse_preview,
        thumbnail::{decode_limits, snap_thumbnail_size, thumbnail_of},
        FilePart, MultipartFile, ThumbnailMethod,
    },
    rooms::pdu::{ref_ids, to_canonical_object, Pdu},
    server_keys::{read_x_matrix, validate_key_response, verify_x_matrix},
    sync::{make_token, parse_sync_token, parse_token},
    tokens::parse_offset_token,
};

/// The server the fuzz inputs are addressed to, and the one they come from.
const LOCAL: &str = "local.test";
const REMOTE: &str = "remote.test";

/// A signing key for the whole run (the fuzz targets' signatures only need to be this
/// server's own, whatever the key).
fn keypair() -> &'static Ed25519KeyPair {
    static KEY: OnceLock<Ed25519KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "fuzz".to_owned())
            .unwrap_or_else(|e| unreachable!("a generated key reads: {e}"))
    })
}

fn public_key() -> String {
    use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
    STANDARD_NO_PAD.encode(keypair().public_key())
}

/// The first line of `data` (without its `\n`) and the rest.
fn first_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

// ----- PDUs -----

/// A PDU from another server: `<room version>\n<PDU JSON>`. Runs the checks of
/// `Pdus::check_pdu` (canonical JSON, size, format, event id, required signatures, then the
/// signatures and content hash against the signing key the PDU names), then signs it as this
/// server would and checks that the signature verifies.
pub fn canonical_json_pdu(data: &[u8]) {
    let (version, json) = first_line(data);
    let Ok(version) = std::str::from_utf8(version) else {
        return;
    };
    // As a transaction's PDUs reach the service: raw JSON, then a `Value`.
    let Ok(raw) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(json) else {
        return;
    };
    let Ok(value) = serde_json::from_str::<Value>(raw.get()) else {
        return;
    };
    pdu(version, &value, true);
}

/// The checks of one PDU of room `version`; `sign`: also sign it as this server and verify.
fn pdu(version: &str, value: &Value, sign: bool) {
    let _ = ref_ids(&value["prev_events"]);
    let _ = ref_ids(&value["auth_events"]);
    // The event id `Pdus::transaction` answers for the PDU under.
    let answered = to_canonical_object(value.clone())
        .ok()
        .and_then(|o| event_id_of(&o, version));
    let Ok(formatted) = check_format(version, value) else {
        return;
    };
    assert_eq!(
        answered.as_ref(),
        Some(&formatted.event_id),
        "a transaction answers for a PDU under the id it is checked under"
    );
    let canonical = serde_json::to_string(&formatted.obj)
        .unwrap_or_else(|e| unreachable!("canonical JSON serializes: {e}"));
    let again: Value = serde_json::from_str(&canonical)
        .unwrap_or_else(|e| unreachable!("canonical JSON is JSON: {e}"));
    assert_eq!(
        to_canonical_object(again).ok().as_ref(),
        Some(&formatted.obj),
        "canonical JSON reads back as itself"
    );
    // The signatures as given, against a key that is not the signer's: they must not verify,
    // but nothing may break on the way.
    let keys = signing_keys(&formatted, &named_key_ids(&formatted));
    let room_id = room_of(value);
    let outcome = finish_pdu(
        Prepared {
            obj: formatted.obj.clone(),
            event_id: formatted.event_id.clone(),
            keys,
            rules: formatted.rules.clone(),
        },
        room_id.as_deref(),
    );
    if let Ok(checked) = outcome {
        let _ = Pdu::from_json(checked.event_id, &checked.bytes);
    }
    if sign {
        sign_and_verify(version, formatted, room_id.as_deref());
    }
}

/// The key ids each required server signed the PDU with, by server.
fn named_key_ids(f: &Formatted) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for server in &f.servers {
        let ids = match f.obj.get("signatures") {
            Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(by_key)) => by_key.keys().cloned().collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        out.insert(server.to_string(), ids);
    }
    out
}

/// The fuzz key as every listed key of every server.
fn signing_keys(f: &Formatted, ids: &BTreeMap<String, Vec<String>>) -> PublicKeyMap {
    let public = Base64::new(keypair().public_key().to_vec());
    let mut keys = PublicKeyMap::new();
    for server in &f.servers {
        let set = ids
            .get(server.as_str())
            .into_iter()
            .flatten()
            .map(|id| (id.clone(), public.clone()))
            .collect();
        keys.insert(server.to_string(), set);
    }
    keys
}

/// Hashes and signs the PDU as this server (as `Rooms` does for its own events) and as each
/// server that must sign it, and checks that the result verifies in full.
fn sign_and_verify(version: &str, f: Formatted, room_id: Option<&ruma::RoomId>) {
    let mut obj = f.obj;
    // The required servers may be none (an invite through a third-party id).
    let signers = std::iter::once(LOCAL).chain(f.servers.iter().map(|s| s.as_str()));
    for server in signers {
        if hash_and_sign_event(server, keypair(), &mut obj, &f.rules.redaction).is_err() {
            return;
        }
    }
    let Ok(value) = serde_json::to_value(&obj) else {
        return;
    };
    // Signing may take it over the size limit, say.
    let Ok(signed) = check_format(version, &value) else {
        return;
    };
    let ids = f
        .servers
        .iter()
        .map(|s| (s.to_string(), vec!["ed25519:fuzz".to_owned()]))
        .collect();
    let keys = signing_keys(&signed, &ids);
    let verified = verify_event(&keys, &signed.obj, &signed.rules);
    assert!(
        matches!(verified, Ok(Verified::All)),
        "a PDU signed here verifies with its hash: {verified:?}"
    );
    let event_id = signed.event_id.clone();
    if let Ok(checked) = finish_pdu(
        Prepared {
            obj: signed.obj,
            event_id: signed.event_id,
            keys,
            rules: signed.rules,
        },
        room_id,
    ) {
        assert_eq!(checked.event_id, event_id);
    }
}

// ----- transactions -----

/// The service's part of `PUT /send/{txnId}` for a transaction from `remote.test` (its
/// `pdus` and `edus` as ruma read them): taken apart as `Pdus::transaction` does before it
/// needs the room, each PDU checked as in the rooms of some room versions, and the senders
/// of the EDUs read as `Edus::handle` does.
pub fn transaction(
    pdus: &[Box<serde_json::value::RawValue>],
    edus: &[ruma::serde::Raw<ruma::api::federation::transactions::edu::Edu>],
) {
    let Ok((pdus, edus)) = transaction_items(pdus, edus) else {
        return;
    };
    let origin = <&ServerName>::try_from(REMOTE)
        .unwrap_or_else(|e| unreachable!("{REMOTE} is a server name: {e}"));
    for value in &pdus {
        let _ = room_of(value);
        let _ = sender_server(value);
        for version in ["1", "3", "10", "12"] {
            pdu(version, value, false);
        }
    }
    for edu in &edus {
        let content = &edu["content"];
        for key in ["user_id", "sender"] {
            let _ = user_of(origin, &content[key]);
        }
    }
}

// ----- X-Matrix -----

/// An `X-Matrix` request: `<Authorization header>\n<method> <URI>\n<body>`. Reads and verifies
/// the authorization as `RemoteKeys::verify_request` does (with a key that did not sign it);
/// then signs the same request as this server signs its own and checks that it verifies; and
/// reads the body as a `/_matrix/key/v2/server` answer of `remote.test`.
pub fn x_matrix(data: &[u8]) {
    let (header, rest) = first_line(data);
    let (line, body) = first_line(rest);
    let line = String::from_utf8_lossy(line);
    let (method, uri) = line.split_once(' ').unwrap_or(("PUT", &line));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    if let Ok(response) = serde_json::from_slice::<Value>(body) {
        let _ = validate_key_response(REMOTE, &response, 1_700_000_000_000);
    }
    // The request as it came.
    if let Ok(request) = http::Request::builder()
        .method(method.clone())
        .uri(uri)
        .header(http::header::AUTHORIZATION, header)
        .body(body.to_vec())
    {
        if let Ok((x, destination)) = read_x_matrix(&request, LOCAL) {
            let _ = verify_x_matrix(&x, &request, &destination, &public_key());
        }
    }
    // The same request signed here.
    let destination = <&ServerName>::try_from(LOCAL)
        .unwrap_or_else(|e| unreachable!("{LOCAL} is a server name: {e}"));
    let Ok(signed) =
        signed_http_request(keypair(), REMOTE, destination, method, uri, body.to_vec())
    else {
        return;
    };
    let read = read_x_matrix(&signed, LOCAL);
    let Ok((x, destination)) = &read else {
        unreachable_failure("a request signed here reads as X-Matrix", &read.err());
    };
    assert_eq!(x.origin.as_str(), REMOTE);
    let verified = verify_x_matrix(x, &signed, destination, &public_key());
    assert!(
        verified.is_ok(),
        "a request signed here verifies: {verified:?}"
    );
}

#[allow(clippy::panic)]
fn unreachable_failure(what: &str, error: &dyn std::fmt::Debug) -> ! {
    panic!("{what}: {error:?}")
}

// ----- media -----

/// Media to thumbnail: two bytes for the size asked for (the first one's lowest bit chooses
/// crop or scale), then the file. Sniffs its format and dimensions as a URL preview does and
/// makes the thumbnail as `Media::thumbnail` does, under smaller decoding limits than the
/// defaults (the same checks, with less memory per run).
pub fn media_sniff_thumbnail(data: &[u8]) {
    let (Some(&w), Some(&h)) = (data.first(), data.get(1)) else {
        return;
    };
    let file = &data[2..];
    let method = if w & 1 == 0 {
        ThumbnailMethod::Scale
    } else {
        ThumbnailMethod::Crop
    };
    let source = image_dimensions(file);
    let (width, height) = snap_thumbnail_size(u32::from(w) * 4, u32::from(h) * 4);
    let config = Config {
        thumbnail_max_source_side: 2048,
        thumbnail_max_decode_bytes: 32 << 20,
        ..Config::default()
    };
    let Ok(png) = thumbnail_of(
        Cursor::new(file),
        width,
        height,
        method,
        decode_limits(&config),
    ) else {
        return;
    };
    let made = image_dimensions(&png);
    let Some((tw, th)) = made else {
        unreachable_failure("a thumbnail made here is an image", &made);
    };
    assert!(
        tw <= width && th <= height,
        "a {tw}×{th} thumbnail for {width}×{height}"
    );
    if let Some((sw, sh)) = source {
        assert!(
            tw <= sw && th <= sh,
            "a {tw}×{th} thumbnail of a {sw}×{sh} image"
        );
    }
}

/// What other servers and web pages send: `<Content-Type>\n<body>`. Reads the body as the
/// `multipart/mixed` answer of a federation media download (whole, then in chunks: the file
/// and its headers must not depend on how the body arrived), its content types as the
/// download answer does, and the body as an HTML page to preview.
pub fn media_remote(data: &[u8]) {
    let (content_type, body) = first_line(data);
    let content_type = String::from_utf8_lossy(content_type);
    let _ = inline_safe(&content_type);
    let boundary = multipart_boundary(&content_type).unwrap_or_else(|| "XyZ".to_owned());
    let whole = multipart(&boundary, body, body.len().max(1));
    let chunked = multipart(&boundary, body, 1 + body.len() % 13);
    if let (Some((file, part)), Some(chunked)) = (&whole, &chunked) {
        assert_eq!(
            (file, part),
            (&chunked.0, &chunked.1),
            "chunking changed the file"
        );
        if let Some(ct) = &part.content_type {
            let _ = inline_safe(ct);
        }
    }
    let _ = parse_preview(&String::from_utf8_lossy(body));
}

fn multipart(boundary: &str, body: &[u8], chunk: usize) -> Option<(Vec<u8>, FilePart)> {
    let mut parser = MultipartFile::new(boundary);
    let mut file = Vec::new();
    for c in body.chunks(chunk) {
        parser.feed_vec(c, &mut file).ok()?;
    }
    Some((file, parser.finish().ok()?))
}

// ----- tokens -----

/// A pagination or sync token as a client sends it back: it must parse as the server reads
/// it, and a token the server makes of what it read must read back the same.
pub fn tokens(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((pos, ack)) = parse_sync_token(token) {
        assert!(
            ack <= pos,
            "{token}: to-device acknowledged past the position"
        );
        assert_eq!(parse_token(token).ok(), Some(pos));
        assert_eq!(parse_sync_token(&make_token(pos)).ok(), Some((pos, pos)));
        // As `/sync` writes a token with a to-device acknowledgement.
        let with_ack = format!("{}_{ack}", make_token(pos));
        assert_eq!(parse_sync_token(&with_ack).ok(), Some((pos, ack)));
    }
    for prefix in ['o', 'p', 'h', 'n'] {
        if let Some(n) = parse_offset_token::<usize>(prefix, token) {
            assert_eq!(
                parse_offset_token::<usize>(prefix, &format!("{prefix}{n}")),
                Some(n)
            );
        }
        if let Some(n) = parse_offset_token::<u64>(prefix, token) {
            assert_eq!(
                parse_offset_token::<u64>(prefix, &format!("{prefix}{n}")),
                Some(n)
            );
        }
    }
}

// ----- Paracord bodies -----

/// `homeserver/fuzz`.
fn fuzz_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs every seed and regression input of `target` (`homeserver/fuzz/{corpus,regressions}`)
/// through `run`: none may panic. The unit tests of this crate and of the API run them so.
pub fn run_saved_inputs(target: &str, run: fn(&[u8])) {
    let root = fuzz_dir();
    let mut seeds = 0;
    let mut failed = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let data =
                std::fs::read(&path).unwrap_or_else(|e| unreachable!("{}: {e}", path.display()));
            if kind == "corpus" {
                seeds += 1;
            }
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(seeds > 0, "no seed corpus for {target}");
    assert!(failed.is_empty(), "{target} panicked on {failed:?}");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn fuzz_canonical_json_pdu_inputs() {
        run_saved_inputs("canonical_json_pdu", canonical_json_pdu);
    }

    #[test]
    fn fuzz_x_matrix_inputs() {
        run_saved_inputs("x_matrix", x_matrix);
    }

    #[test]
    fn fuzz_media_sniff_thumbnail_inputs() {
        run_saved_inputs("media_sniff_thumbnail", media_sniff_thumbnail);
    }

    #[test]
    fn fuzz_media_remote_inputs() {
        run_saved_inputs("media_remote", media_remote);
    }

    #[test]
    fn fuzz_tokens_inputs() {
        run_saved_inputs("tokens", tokens);
    }

    #[test]
    fn fuzz_helpers_read_what_they_are_given() {
        assert_eq!(first_line(b"a\nb\nc"), (&b"a"[..], &b"b\nc"[..]));
        assert_eq!(first_line(b"a"), (&b"a"[..], &b""[..]));
    }
}
