//! The keys of the per-device key and message tables, one type per key layout. The byte
//! layouts are the on-disk format: changing one needs a migration, which the
//! `*_layout_is_stable` tests guard.

use paracord_storage::{KeyBuf, KeyReader, StorageError};

/// The key of `userdevice_devicekeys` (a device's identity keys): `user_id 0xFF device_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceKeysKey<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) device_id: &'a str,
}

impl<'a> DeviceKeysKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.user_id)
            .last_str(self.device_id)
            .into_vec()
    }

    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let user_id = r.str()?;
        let device_id = r.last_str()?;
        Ok(Self { user_id, device_id })
    }

    /// Every key of `user_id`'s devices starts with this.
    pub(crate) fn user_prefix(user_id: &str) -> Vec<u8> {
        KeyBuf::new().str(user_id).into_vec()
    }
}

/// The key of `userdevicepos_todevice` (to-device messages awaiting delivery):
/// `user_id 0xFF device_id 0xFF stream_pos seq`. A device's messages are contiguous and in
/// stream order, then in the order they were queued at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ToDeviceKey<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) pos: u64,
    pub(crate) seq: u64,
}

impl<'a> ToDeviceKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.user_id)
            .str(self.device_id)
            .u64(self.pos)
            .u64(self.seq)
            .into_vec()
    }

    #[cfg(test)]
    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let user_id = r.str()?;
        let device_id = r.str()?;
        let pos = r.u64()?;
        let seq = r.u64()?;
        r.finish()?;
        Ok(Self {
            user_id,
            device_id,
            pos,
            seq,
        })
    }

    /// The stream position of a key, without reading (or checking) the rest.
    pub(crate) fn decode_pos(key: &[u8]) -> Result<u64, StorageError> {
        let mut r = KeyReader::new(key);
        r.str()?;
        r.str()?;
        r.u64()
    }

    /// Every key of the device's messages starts with this.
    pub(crate) fn device_prefix(user_id: &str, device_id: &str) -> Vec<u8> {
        KeyBuf::new().str(user_id).str(device_id).into_vec()
    }

    /// The first possible key of the device's messages at `pos` (an exclusive upper bound for
    /// the messages before it).
    pub(crate) fn at_pos(user_id: &str, device_id: &str, pos: u64) -> Vec<u8> {
        KeyBuf::new()
            .str(user_id)
            .str(device_id)
            .u64(pos)
            .into_vec()
    }
}

/// The key of `userdevicealgseq_onetimekey` (a device's one-time keys):
/// `user_id 0xFF device_id 0xFF algorithm 0xFF upload seq`. The keys of one algorithm are
/// contiguous and in upload order: the first is the one handed out next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OneTimeKeyKey<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) algorithm: &'a str,
    pub(crate) seq: u64,
}

impl<'a> OneTimeKeyKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.user_id)
            .str(self.device_id)
            .str(self.algorithm)
            .u64(self.seq)
            .into_vec()
    }

    #[cfg(test)]
    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let user_id = r.str()?;
        let device_id = r.str()?;
        let algorithm = r.str()?;
        let seq = r.u64()?;
        r.finish()?;
        Ok(Self {
            user_id,
            device_id,
            algorithm,
            seq,
        })
    }

    /// The algorithm of a key, without reading (or checking) the rest.
    pub(crate) fn decode_algorithm(key: &'a [u8]) -> Result<&'a str, StorageError> {
        let mut r = KeyReader::new(key);
        r.str()?;
        r.str()?;
        r.str()
    }

    /// Every key of the device's one-time keys starts with this.
    pub(crate) fn device_prefix(user_id: &str, device_id: &str) -> Vec<u8> {
        KeyBuf::new().str(user_id).str(device_id).into_vec()
    }

    /// Every key of the device's one-time keys of `algorithm` starts with this.
    pub(crate) fn algorithm_prefix(user_id: &str, device_id: &str, algorithm: &str) -> Vec<u8> {
        KeyBuf::new()
            .str(user_id)
            .str(device_id)
            .str(algorithm)
            .into_vec()
    }
}

/// The key of `userdevicealg_fallbackkey` (a device's fallback key of an algorithm):
/// `user_id 0xFF device_id 0xFF algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FallbackKeyKey<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) algorithm: &'a str,
}

impl<'a> FallbackKeyKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.user_id)
            .str(self.device_id)
            .last_str(self.algorithm)
            .into_vec()
    }

    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let user_id = r.str()?;
        let device_id = r.str()?;
        let algorithm = r.last_str()?;
        Ok(Self {
            user_id,
            device_id,
            algorithm,
        })
    }

    /// Every key of the device's fallback keys starts with this.
    pub(crate) fn device_prefix(user_id: &str, device_id: &str) -> Vec<u8> {
        KeyBuf::new().str(user_id).str(device_id).into_vec()
    }
}

/// The key of `positionuser_keychange` (whose device list or cross-signing keys changed
/// when): `stream_pos user_id`. Changes are in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyChangeKey<'a> {
    pub(crate) pos: u64,
    pub(crate) user_id: &'a str,
}

impl<'a> KeyChangeKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .u64(self.pos)
            .last_str(self.user_id)
            .into_vec()
    }

    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let pos = r.u64()?;
        let user_id = r.last_str()?;
        Ok(Self { pos, user_id })
    }

    /// The first possible key at `pos` (a bound for the changes before or from it).
    pub(crate) fn at_pos(pos: u64) -> Vec<u8> {
        KeyBuf::new().u64(pos).into_vec()
    }
}

/// The key of `targetsigner_signature` (signatures uploaded after the key they sign):
/// `target user 0xFF target key id 0xFF signer user 0xFF signer key id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignatureKey<'a> {
    pub(crate) target_user: &'a str,
    pub(crate) target_key: &'a str,
    pub(crate) signer: &'a str,
    pub(crate) signer_key: &'a str,
}

impl<'a> SignatureKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.target_user)
            .str(self.target_key)
            .str(self.signer)
            .last_str(self.signer_key)
            .into_vec()
    }

    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let target_user = r.str()?;
        let target_key = r.str()?;
        let signer = r.str()?;
        let signer_key = r.last_str()?;
        Ok(Self {
            target_user,
            target_key,
            signer,
            signer_key,
        })
    }

    /// Every key of the signatures of `target_user`'s key `target_key` starts with this.
    pub(crate) fn target_prefix(target_user: &str, target_key: &str) -> Vec<u8> {
        KeyBuf::new().str(target_user).str(target_key).into_vec()
    }
}

/// The key of `userusage_crosssigningkey` (a user's cross-signing keys):
/// `user_id 0xFF usage` (master, self_signing, user_signing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrossSigningKeyKey<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) usage: &'a str,
}

impl<'a> CrossSigningKeyKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.user_id)
            .last_str(self.usage)
            .into_vec()
    }

    #[cfg(test)]
    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let user_id = r.str()?;
        let usage = r.last_str()?;
        Ok(Self { user_id, usage })
    }
}

/// The key of `userdevicetxn_todevice` (to-device transactions already taken):
/// `user_id 0xFF device_id 0xFF txn_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ToDeviceTxnKey<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) txn_id: &'a str,
}

impl<'a> ToDeviceTxnKey<'a> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        KeyBuf::new()
            .str(self.user_id)
            .str(self.device_id)
            .last_str(self.txn_id)
            .into_vec()
    }

    #[cfg(test)]
    pub(crate) fn decode(key: &'a [u8]) -> Result<Self, StorageError> {
        let mut r = KeyReader::new(key);
        let user_id = r.str()?;
        let device_id = r.str()?;
        let txn_id = r.last_str()?;
        Ok(Self {
            user_id,
            device_id,
            txn_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_device_round_trips_and_layout_is_stable() {
        let key = ToDeviceKey {
            user_id: "@u:x",
            device_id: "D",
            pos: 0x0102,
            seq: 3,
        };
        let bytes = key.encode();
        assert_eq!(
            bytes,
            b"@u:x\xFFD\xFF\0\0\0\0\0\0\x01\x02\0\0\0\0\0\0\0\x03".as_slice()
        );
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@u:x")
                .str("D")
                .u64(0x0102)
                .u64(3)
                .into_vec()
        );
        assert_eq!(ToDeviceKey::decode(&bytes).unwrap(), key);
        assert_eq!(ToDeviceKey::decode_pos(&bytes).unwrap(), 0x0102);
        assert!(bytes.starts_with(&ToDeviceKey::device_prefix("@u:x", "D")));
        assert!(bytes.starts_with(&ToDeviceKey::at_pos("@u:x", "D", 0x0102)));
        assert!(!bytes.starts_with(&ToDeviceKey::device_prefix("@u:x", "DD")));
        let mut long = bytes.clone();
        long.push(0);
        assert!(ToDeviceKey::decode(&long).is_err());
        assert!(ToDeviceKey::decode_pos(b"@u:x\xFFD\xFF\x01").is_err());
    }

    #[test]
    fn to_device_sorts_by_position_then_seq() {
        let key = |pos, seq| {
            ToDeviceKey {
                user_id: "@u:x",
                device_id: "D",
                pos,
                seq,
            }
            .encode()
        };
        let mut keys = [key(256, 0), key(255, 7), key(1 << 40, 0), key(256, 1)];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                let k = ToDeviceKey::decode(k).unwrap();
                (k.pos, k.seq)
            })
            .collect();
        assert_eq!(decoded, [(255, 7), (256, 0), (256, 1), (1 << 40, 0)]);
        // Everything before a position sorts below its first key.
        let bound = ToDeviceKey::at_pos("@u:x", "D", 256);
        assert!(key(255, u64::MAX) < bound && bound <= key(256, 0));
    }

    #[test]
    fn one_time_key_round_trips_and_layout_is_stable() {
        let key = OneTimeKeyKey {
            user_id: "@u:x",
            device_id: "D",
            algorithm: "signed_curve25519",
            seq: 9,
        };
        let bytes = key.encode();
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@u:x")
                .str("D")
                .str("signed_curve25519")
                .u64(9)
                .into_vec()
        );
        assert_eq!(&bytes[..7], b"@u:x\xFFD\xFF");
        assert_eq!(OneTimeKeyKey::decode(&bytes).unwrap(), key);
        assert_eq!(
            OneTimeKeyKey::decode_algorithm(&bytes).unwrap(),
            "signed_curve25519"
        );
        assert!(bytes.starts_with(&OneTimeKeyKey::device_prefix("@u:x", "D")));
        assert!(bytes.starts_with(&OneTimeKeyKey::algorithm_prefix(
            "@u:x",
            "D",
            "signed_curve25519"
        )));
        assert!(!bytes.starts_with(&OneTimeKeyKey::algorithm_prefix(
            "@u:x",
            "D",
            "signed_curve"
        )));
    }

    #[test]
    fn one_time_keys_sort_in_upload_order_within_an_algorithm() {
        let key = |algorithm, seq| {
            OneTimeKeyKey {
                user_id: "@u:x",
                device_id: "D",
                algorithm,
                seq,
            }
            .encode()
        };
        let mut keys = [key("b", 1), key("a", 256), key("a", 255), key("a", 1 << 40)];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| {
                let k = OneTimeKeyKey::decode(k).unwrap();
                (k.algorithm, k.seq)
            })
            .collect();
        assert_eq!(decoded, [("a", 255), ("a", 256), ("a", 1 << 40), ("b", 1)]);
    }

    #[test]
    fn fallback_key_round_trips_and_layout_is_stable() {
        let key = FallbackKeyKey {
            user_id: "@u:x",
            device_id: "D",
            algorithm: "signed_curve25519",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFFD\xFFsigned_curve25519");
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@u:x")
                .str("D")
                .last_str("signed_curve25519")
                .into_vec()
        );
        assert_eq!(FallbackKeyKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&FallbackKeyKey::device_prefix("@u:x", "D")));
        assert!(FallbackKeyKey::decode(b"@u:x\xFFD").is_err());
    }

    #[test]
    fn key_change_round_trips_and_layout_is_stable() {
        let key = KeyChangeKey {
            pos: 0x0102,
            user_id: "@u:x",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"\0\0\0\0\0\0\x01\x02@u:x");
        assert_eq!(bytes, KeyBuf::new().u64(0x0102).last_str("@u:x").into_vec());
        assert_eq!(KeyChangeKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&KeyChangeKey::at_pos(0x0102)));
        assert!(KeyChangeKey::decode(&[0, 1]).is_err());
    }

    #[test]
    fn key_changes_sort_by_position() {
        let key = |pos, user_id| KeyChangeKey { pos, user_id }.encode();
        let mut keys = [key(256, "@a:x"), key(1 << 40, "@a:x"), key(255, "@z:x")];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| KeyChangeKey::decode(k).unwrap().pos)
            .collect();
        assert_eq!(decoded, [255, 256, 1 << 40]);
        // The changes from a position on are at or above its bound, those before below it.
        let bound = KeyChangeKey::at_pos(256);
        assert!(key(255, "@zzz:x") < bound && bound <= key(256, ""));
    }

    #[test]
    fn signature_round_trips_and_layout_is_stable() {
        let key = SignatureKey {
            target_user: "@t:x",
            target_key: "DEV",
            signer: "@s:x",
            signer_key: "ed25519:K",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@t:x\xFFDEV\xFF@s:x\xFFed25519:K");
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@t:x")
                .str("DEV")
                .str("@s:x")
                .last_str("ed25519:K")
                .into_vec()
        );
        assert_eq!(SignatureKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&SignatureKey::target_prefix("@t:x", "DEV")));
        assert!(!bytes.starts_with(&SignatureKey::target_prefix("@t:x", "DE")));
        assert!(SignatureKey::decode(b"@t:x\xFFDEV").is_err());
    }

    #[test]
    fn cross_signing_key_round_trips_and_layout_is_stable() {
        let key = CrossSigningKeyKey {
            user_id: "@u:x",
            usage: "master",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFFmaster");
        assert_eq!(
            bytes,
            KeyBuf::new().str("@u:x").last_str("master").into_vec()
        );
        assert_eq!(CrossSigningKeyKey::decode(&bytes).unwrap(), key);
    }

    #[test]
    fn to_device_txn_round_trips_and_layout_is_stable() {
        let key = ToDeviceTxnKey {
            user_id: "@u:x",
            device_id: "D",
            txn_id: "t1",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFFD\xFFt1");
        assert_eq!(
            bytes,
            KeyBuf::new().str("@u:x").str("D").last_str("t1").into_vec()
        );
        assert_eq!(ToDeviceTxnKey::decode(&bytes).unwrap(), key);
    }

    #[test]
    fn device_keys_round_trips_and_layout_is_stable() {
        let key = DeviceKeysKey {
            user_id: "@u:x",
            device_id: "D",
        };
        let bytes = key.encode();
        assert_eq!(bytes, b"@u:x\xFFD");
        assert_eq!(bytes, KeyBuf::new().str("@u:x").last_str("D").into_vec());
        assert_eq!(DeviceKeysKey::decode(&bytes).unwrap(), key);
        assert!(bytes.starts_with(&DeviceKeysKey::user_prefix("@u:x")));
        assert!(DeviceKeysKey::decode(b"no separator").is_err());
    }
}
