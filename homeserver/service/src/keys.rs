//! The server's ed25519 signing key: generated on first start, then loaded.

use std::path::Path;

use base64::{engine::general_purpose::STANDARD_NO_PAD, Engine};
use ruma::signatures::Ed25519KeyPair;

use paracord_core::{Error, Result};

pub struct ServerKeys {
    keypair: Ed25519KeyPair,
}

impl ServerKeys {
    /// Loads the key at `path`, writing a new one there first if there is none. The file holds
    /// `ed25519 <version> <base64 PKCS#8 document>`.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool)> {
        let mut created = false;
        if !path.exists() {
            let der = Ed25519KeyPair::generate();
            let version: String = {
                use rand::{distributions::Alphanumeric, Rng};
                rand::thread_rng()
                    .sample_iter(&Alphanumeric)
                    .take(6)
                    .map(char::from)
                    .collect()
            };
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
        Ok((Self { keypair }, created))
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
