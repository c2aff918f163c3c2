//! Fake end-to-end encryption clients: ed25519 keys that sign JSON the way the
//! spec's "Signing JSON" appendix describes, devices that produce signed device
//! keys, one-time keys and fallback keys, and a user's three cross-signing keys.
//!
//! Nothing here encrypts anything: the server only stores and checks public keys
//! and signatures, so curve25519 public keys are random 32-byte strings.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::{
    alphabet,
    engine::{
        general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD},
        DecodePaddingMode,
    },
    Engine as _,
};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Map, Value};

/// The algorithm name of signed one-time and fallback keys.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";

/// The algorithms a fake device claims to support.
pub const DEVICE_ALGORITHMS: [&str; 2] = ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"];

/// Decodes base64 with or without padding (the spec asks decoders to take both) and with
/// non-zero trailing bits (the spec's own test seed has them).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes (un)padded standard base64; `None` when it is not base64.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text).ok()
}

/// Unpadded standard base64, the encoding of every key and signature here.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// A random 32-byte "curve25519 public key". The server cannot tell it from a real one.
pub fn random_curve25519() -> String {
    b64(&rand::random::<[u8; 32]>())
}

/// The spec's canonical JSON: no insignificant whitespace, object keys sorted
/// by code point (UTF-8 byte order is code point order), integers only.
/// Written out here rather than relying on `serde_json`'s map ordering, which a
/// `preserve_order` feature anywhere in the build would change.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => {
            assert!(
                n.is_i64() || n.is_u64(),
                "canonical JSON has integers only, got {n}"
            );
            out.push_str(&n.to_string());
        }
        // serde_json escapes exactly `"`, `\`, and the control characters
        // (short forms for \b \t \n \f \r, `\u00xx` otherwise), as the grammar asks.
        Value::String(_) | Value::Bool(_) | Value::Null => out.push_str(&value.to_string()),
    }
}

/// The bytes that get signed: the object without `signatures` and `unsigned`, canonicalised.
fn signing_bytes(object: &Value) -> Vec<u8> {
    let mut stripped = object.clone();
    if let Some(map) = stripped.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    canonical_json(&stripped).into_bytes()
}

/// An ed25519 key pair with the key id it signs under (`ed25519:DEVICEID` for
/// a device, `ed25519:<public key>` for a cross-signing key).
pub struct Ed25519Key {
    key: SigningKey,
    key_id: String,
}

impl Ed25519Key {
    /// A key pair from a 32-byte seed, signing as `ed25519:<version>`.
    pub fn from_seed(seed: &[u8; 32], version: &str) -> Ed25519Key {
        Ed25519Key {
            key: SigningKey::from_bytes(seed),
            key_id: format!("ed25519:{version}"),
        }
    }

    /// A fresh key pair for a device: key id `ed25519:<device_id>`.
    pub fn for_device(device_id: &str) -> Ed25519Key {
        Self::from_seed(&rand::random(), device_id)
    }

    /// A fresh cross-signing key pair: key id `ed25519:<public key>`.
    pub fn for_cross_signing() -> Ed25519Key {
        let key = SigningKey::from_bytes(&rand::random());
        let public = b64(key.verifying_key().as_bytes());
        Ed25519Key {
            key,
            key_id: format!("ed25519:{public}"),
        }
    }

    /// The public key, unpadded base64.
    pub fn public_key(&self) -> String {
        b64(self.key.verifying_key().as_bytes())
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The unpadded-base64 signature of `object` (its `signatures` and `unsigned` left out).
    pub fn signature(&self, object: &Value) -> String {
        b64(&self.key.sign(&signing_bytes(object)).to_bytes())
    }

    /// Adds this key's signature of `object` under `signatures.{signer}.{key_id}`,
    /// keeping any signatures already there.
    pub fn sign(&self, signer: &str, object: &mut Value) {
        let signature = self.signature(object);
        assert!(
            object.is_object(),
            "only JSON objects can be signed, got {object}"
        );
        let map = object.as_object_mut().unwrap_or_else(|| unreachable!());
        let signatures = map
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        signatures[signer][&self.key_id] = Value::String(signature);
    }

    /// `object` carrying only this key's signature: the shape `/keys/signatures/upload` takes.
    pub fn signed_copy(&self, signer: &str, object: &Value) -> Value {
        let mut copy = object.clone();
        if let Some(map) = copy.as_object_mut() {
            map.remove("signatures");
            map.remove("unsigned");
        }
        self.sign(signer, &mut copy);
        copy
    }
}

/// True when `object` carries a valid ed25519 signature by `public_key`
/// under `signatures.{signer}.{key_id}`.
pub fn verify_signature(object: &Value, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) = object["signatures"][signer][key_id].as_str() else {
        return false;
    };
    let Some(public) = b64_decode(public_key) else {
        return false;
    };
    let Ok(public) = <[u8; 32]>::try_from(public.as_slice()) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&public) else {
        return false;
    };
    let Some(signature) = b64_decode(signature) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&signature) else {
        return false;
    };
    key.verify(&signing_bytes(object), &signature).is_ok()
}

/// A device of `user_id` as a client would present it: an ed25519 signing key,
/// a curve25519 identity key, and a counter for one-time key ids.
pub struct FakeDevice {
    pub user_id: String,
    pub device_id: String,
    pub ed25519: Ed25519Key,
    pub curve25519: String,
    next_key: AtomicU64,
}

impl FakeDevice {
    pub fn new(user_id: &str, device_id: &str) -> FakeDevice {
        FakeDevice {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            ed25519: Ed25519Key::for_device(device_id),
            curve25519: random_curve25519(),
            next_key: AtomicU64::new(1),
        }
    }

    /// `ed25519:<device_id>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.device_id)
    }

    /// Signs `object` with the device key, as this device's user.
    pub fn sign(&self, object: &mut Value) {
        self.ed25519.sign(&self.user_id, object);
    }

    /// The `device_keys` object, self-signed, as `/keys/upload` takes it.
    pub fn device_keys(&self) -> Value {
        let mut keys = self.unsigned_device_keys();
        self.sign(&mut keys);
        keys
    }

    /// The `device_keys` object without any signature, for tests that sign it otherwise.
    pub fn unsigned_device_keys(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": DEVICE_ALGORITHMS,
            "keys": {
                format!("curve25519:{}", self.device_id): self.curve25519,
                format!("ed25519:{}", self.device_id): self.ed25519.public_key(),
            },
        })
    }

    /// A fresh key id, unique for this device (`AAAAAQ`-style, base64 of a counter).
    pub fn next_key_id(&self) -> String {
        let n = self.next_key.fetch_add(1, Ordering::Relaxed);
        b64(&n.to_be_bytes()[3..])
    }

    /// One signed `signed_curve25519` key object with a random public key.
    pub fn signed_key(&self, fallback: bool) -> Value {
        let mut key = json!({ "key": random_curve25519() });
        if fallback {
            key["fallback"] = json!(true);
        }
        self.sign(&mut key);
        key
    }

    /// `count` fresh signed one-time keys: `{"signed_curve25519:<id>": KeyObject}`.
    pub fn one_time_keys(&self, count: usize) -> Value {
        let mut keys = Map::new();
        for _ in 0..count {
            keys.insert(
                format!("{SIGNED_CURVE25519}:{}", self.next_key_id()),
                self.signed_key(false),
            );
        }
        Value::Object(keys)
    }

    /// A fresh signed fallback key: `{"signed_curve25519:<id>": KeyObject}` with `fallback: true`.
    pub fn fallback_keys(&self) -> Value {
        let mut keys = Map::new();
        keys.insert(
            format!("{SIGNED_CURVE25519}:{}", self.next_key_id()),
            self.signed_key(true),
        );
        Value::Object(keys)
    }
}

/// A user's master, self-signing and user-signing keys.
pub struct CrossSigning {
    pub user_id: String,
    pub master: Ed25519Key,
    pub self_signing: Ed25519Key,
    pub user_signing: Ed25519Key,
}

impl CrossSigning {
    pub fn new(user_id: &str) -> CrossSigning {
        CrossSigning {
            user_id: user_id.to_owned(),
            master: Ed25519Key::for_cross_signing(),
            self_signing: Ed25519Key::for_cross_signing(),
            user_signing: Ed25519Key::for_cross_signing(),
        }
    }

    fn key_object(&self, key: &Ed25519Key, usage: &str) -> Value {
        json!({
            "user_id": self.user_id,
            "usage": [usage],
            "keys": { key.key_id(): key.public_key() },
        })
    }

    /// The master key object (unsigned: its signatures are optional).
    pub fn master_key(&self) -> Value {
        self.key_object(&self.master, "master")
    }

    /// The self-signing key object, signed by the master key.
    pub fn self_signing_key(&self) -> Value {
        let mut key = self.key_object(&self.self_signing, "self_signing");
        self.master.sign(&self.user_id, &mut key);
        key
    }

    /// The user-signing key object, signed by the master key.
    pub fn user_signing_key(&self) -> Value {
        let mut key = self.key_object(&self.user_signing, "user_signing");
        self.master.sign(&self.user_id, &mut key);
        key
    }

    /// The self-signing key object signed by some other key: a forgery.
    pub fn self_signing_key_signed_by(&self, signer: &Ed25519Key) -> Value {
        let mut key = self.key_object(&self.self_signing, "self_signing");
        signer.sign(&self.user_id, &mut key);
        key
    }

    /// The body of `/keys/device_signing/upload` with all three keys.
    pub fn upload_body(&self) -> Value {
        json!({
            "master_key": self.master_key(),
            "self_signing_key": self.self_signing_key(),
            "user_signing_key": self.user_signing_key(),
        })
    }

    /// `device_keys` carrying only the self-signing key's signature.
    pub fn sign_device(&self, device_keys: &Value) -> Value {
        self.self_signing.signed_copy(&self.user_id, device_keys)
    }

    /// Another user's master key object carrying only our user-signing key's signature.
    pub fn sign_user(&self, their_master_key: &Value) -> Value {
        self.user_signing
            .signed_copy(&self.user_id, their_master_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_key() -> Ed25519Key {
        let seed = b64_decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .unwrap_or_else(|| panic!("the spec's seed is base64"));
        let seed: [u8; 32] = seed
            .try_into()
            .unwrap_or_else(|_| panic!("the spec's seed is 32 bytes"));
        Ed25519Key::from_seed(&seed, "1")
    }

    #[test]
    fn signing_matches_the_spec_test_vectors() {
        let key = spec_key();
        let mut empty = json!({});
        key.sign("domain", &mut empty);
        assert_eq!(
            empty["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        let mut data = json!({ "two": "Two", "one": 1 });
        key.sign("domain", &mut data);
        assert_eq!(
            data["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        // `unsigned` and existing signatures are not covered.
        data["unsigned"] = json!({ "age_ts": 922834800000_u64 });
        assert!(verify_signature(
            &data,
            "domain",
            "ed25519:1",
            &key.public_key()
        ));
        data["one"] = json!(2);
        assert!(!verify_signature(
            &data,
            "domain",
            "ed25519:1",
            &key.public_key()
        ));
    }

    #[test]
    fn canonical_json_matches_the_spec_examples() {
        let cases = [
            (json!({}), "{}"),
            (
                json!({ "one": 1, "two": "Two" }),
                r#"{"one":1,"two":"Two"}"#,
            ),
            (json!({ "b": "2", "a": "1" }), r#"{"a":"1","b":"2"}"#),
            (
                json!({ "auth": { "success": true, "mxid": "@john.doe:example.com", "profile": {
                    "display_name": "John Doe",
                    "three_pids": [
                        { "medium": "email", "address": "john.doe@example.org" },
                        { "medium": "msisdn", "address": "123456789" },
                    ],
                } } }),
                r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
            ),
            (json!({ "a": "日本語" }), r#"{"a":"日本語"}"#),
            (json!({ "本": 2, "日": 1 }), r#"{"日":1,"本":2}"#),
            (json!({ "a": "\u{65e5}" }), r#"{"a":"日"}"#),
            (json!({ "a": null }), r#"{"a":null}"#),
            (json!({ "a": -1 }), r#"{"a":-1}"#),
            (
                json!({ "a": "\u{0} \u{1f} \" \\ \n" }),
                r#"{"a":"\u0000 \u001f \" \\ \n"}"#,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                canonical_json(&value),
                expected,
                "canonical form of {value}"
            );
        }
    }

    #[test]
    fn devices_and_cross_signing_keys_sign_what_they_produce() {
        let device = FakeDevice::new("@alice:example.org", "DEV");
        let keys = device.device_keys();
        assert!(verify_signature(
            &keys,
            "@alice:example.org",
            "ed25519:DEV",
            &device.ed25519.public_key()
        ));
        let otks = device.one_time_keys(3);
        let otks = otks.as_object().map(|m| m.len());
        assert_eq!(otks, Some(3));

        let cross = CrossSigning::new("@alice:example.org");
        let ssk = cross.self_signing_key();
        assert!(verify_signature(
            &ssk,
            "@alice:example.org",
            cross.master.key_id(),
            &cross.master.public_key()
        ));
        let signed = cross.sign_device(&keys);
        assert!(verify_signature(
            &signed,
            "@alice:example.org",
            cross.self_signing.key_id(),
            &cross.self_signing.public_key()
        ));
        assert!(
            signed["signatures"]["@alice:example.org"]
                .get("ed25519:DEV")
                .is_none(),
            "a signature upload carries only the new signature: {signed}"
        );
    }
}
