//! The server's ed25519 signing key: generated on first start, then loaded.

use std::path::Path;

use std::collections::BTreeMap;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use paracord_core::{config::OldVerifyKey, Error, Result};
use paracord_storage::{Batch, Db, Table};
use ruma::{
    signatures::{sign_json, Ed25519KeyPair},
    CanonicalJsonObject,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub struct ServerKeys {
    keypair: Ed25519KeyPair,
    /// Keys this server signed with before: key id → public key and when it stopped.
    old: BTreeMap<String, OldVerifyKey>,
}

/// What the database remembers of the server's keys, so a rotated key stays published.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyHistory {
    /// The key id and public key in use at the last start.
    current: Option<(String, String)>,
    old: BTreeMap<String, OldVerifyKey>,
}

const HISTORY_KEY: &[u8] = b"signing_key_history";

impl ServerKeys {
    /// Loads the key at `path`, writing a new one there first if there is none. The file holds
    /// `ed25519 <version> <base64 PKCS#8 document>`.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool)> {
        let mut created = false;
        if !path.exists() {
            let der = Ed25519KeyPair::generate();
            let version: String = crate::random::random_string(6);
            let line = format!(
                "ed25519 a_{version} {}\n",
                STANDARD_NO_PAD.encode(der.as_slice())
            );
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(Error::internal)?;
            }
            write_private(path, line.as_bytes())?;
            created = true;
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::internal(format!("cannot read signing key {}: {e}", path.display()))
        })?;
        let mut parts = text.split_whitespace();
        let (Some("ed25519"), Some(version), Some(b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::internal(format!(
                "signing key {} is malformed",
                path.display()
            )));
        };
        let der = STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|e| Error::internal(format!("signing key is not base64: {e}")))?;
        let keypair = Ed25519KeyPair::from_der(&der, version.to_owned())
            .map_err(|e| Error::internal(format!("signing key unreadable: {e}")))?;
        Ok((
            Self {
                keypair,
                old: BTreeMap::new(),
            },
            created,
        ))
    }

    pub fn keypair(&self) -> &Ed25519KeyPair {
        &self.keypair
    }

    /// `ed25519:<version>`
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.keypair.version())
    }

    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.keypair.public_key())
    }

    /// Records the key in use; a different key than at the last start makes the previous one
    /// an old verify key (expired now). Keys listed in the config are published too.
    pub fn track_rotation(
        &mut self,
        db: &Db,
        configured: &BTreeMap<String, OldVerifyKey>,
    ) -> Result<()> {
        let mut history: KeyHistory = match db.get(Table::GlobalValue, HISTORY_KEY)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => KeyHistory::default(),
        };
        let current = (self.key_id(), self.public_key_base64());
        if history.current.as_ref() != Some(&current) {
            if let Some((id, key)) = history.current.take() {
                if id != current.0 {
                    tracing::info!(old = %id, new = %current.0, "signing key rotated");
                    history.old.insert(
                        id,
                        OldVerifyKey {
                            key,
                            expired_ts: now_ms(),
                        },
                    );
                }
            }
            history.current = Some(current.clone());
            let mut batch = Batch::new();
            batch.put(
                Table::GlobalValue,
                HISTORY_KEY.to_vec(),
                serde_json::to_vec(&history)?,
            );
            db.write(batch)?;
        }
        self.old = history.old;
        for (id, k) in configured {
            if *id != current.0 {
                self.old.insert(id.clone(), k.clone());
            }
        }
        Ok(())
    }

    /// This server's keys as `/_matrix/key/v2/server` publishes them, signed.
    pub fn server_keys(&self, server_name: &str, valid_until_ts: u64) -> Result<Value> {
        let old: serde_json::Map<String, Value> = self
            .old
            .iter()
            .map(|(id, k)| {
                (
                    id.clone(),
                    json!({ "key": k.key, "expired_ts": k.expired_ts }),
                )
            })
            .collect();
        let body = json!({
            "server_name": server_name,
            "valid_until_ts": valid_until_ts,
            "verify_keys": { self.key_id(): { "key": self.public_key_base64() } },
            "old_verify_keys": old,
        });
        let mut obj: CanonicalJsonObject = serde_json::from_value(body)
            .map_err(|e| Error::internal(format!("server keys: {e}")))?;
        sign_json(server_name, &self.keypair, &mut obj)
            .map_err(|e| Error::internal(format!("signing server keys: {e}")))?;
        Ok(serde_json::to_value(obj)?)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::internal(format!("cannot write signing key {}: {e}", path.display()))
        })?;
    f.write_all(bytes).map_err(Error::internal)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_loads_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let (a, created) = ServerKeys::load_or_generate(&path).unwrap();
        assert!(created);
        let (b, created) = ServerKeys::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_key_base64(), b.public_key_base64());
        assert_eq!(a.key_id(), b.key_id());
    }
}
