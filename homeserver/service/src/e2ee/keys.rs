//! The keys of the per-device key and message tables, one type per key layout. The byte
//! layouts are the on-disk format: changing one needs a migration, which the
//! `*_layout_is_stable` tests guard.

#[cfg(test)]
use paracord_storage::KeyBuf;
use paracord_storage::{key, KeyReader, StorageError};

key! {
    /// The key of `userdevice_devicekeys` (a device's identity keys): `user_id 0xFF device_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct DeviceKeysKey<'a> {
        user_id: str => user_prefix,
        device_id: last_str,
    }
}

key! {
    /// The key of `userdevicepos_todevice` (to-device messages awaiting delivery):
    /// `user_id 0xFF device_id 0xFF stream_pos seq`. A device's messages are contiguous and in
    /// stream order, then in the order they were queued at one position; `at_pos` is the
    /// first possible key of the device's messages at a position (an exclusive upper bound for
    /// the messages before it).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct ToDeviceKey<'a> {
        user_id: str,
        device_id: str => device_prefix,
        pos: u64 => at_pos,
        seq: u64,
    }
}

impl ToDeviceKey<'_> {
    /// The stream position of a key, without reading (or checking) the rest.
    pub(crate) fn decode_pos(key: &[u8]) -> Result<u64, StorageError> {
        let mut r = KeyReader::new(key);
        r.str()?;
        r.str()?;
        r.u64()
    }
}

key! {
    /// The key of `userdevicealgseq_onetimekey` (a device's one-time keys):
    /// `user_id 0xFF device_id 0xFF algorithm 0xFF upload seq`. The keys of one algorithm are
    /// contiguous and in upload order: the first is the one handed out next.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct OneTimeKeyKey<'a> {
        user_id: str,
        device_id: str => device_prefix,
        algorithm: str => algorithm_prefix,
        seq: u64,
    }
}

impl<'a> OneTimeKeyKey<'a> {
    /// The algorithm of a key, without reading (or checking) the rest.
    pub(crate) fn decode_algorithm(key: &'a [u8]) -> Result<&'a str, StorageError> {
        let mut r = KeyReader::new(key);
        r.str()?;
        r.str()?;
        r.str()
    }
}

key! {
    /// The key of `userdevicealg_fallbackkey` (a device's fallback key of an algorithm):
    /// `user_id 0xFF device_id 0xFF algorithm`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct FallbackKeyKey<'a> {
        user_id: str,
        device_id: str => device_prefix,
        algorithm: last_str,
    }
}

key! {
    /// The key of `positionuser_keychange` (whose device list or cross-signing keys changed
    /// when): `stream_pos user_id`. Changes are in stream order; `at_pos` is the first
    /// possible key at a position (a bound for the changes before or from it).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct KeyChangeKey<'a> {
        pos: u64 => at_pos,
        user_id: last_str,
    }
}

key! {
    /// The key of `targetsigner_signature` (signatures uploaded after the key they sign):
    /// `target user 0xFF target key id 0xFF signer user 0xFF signer key id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct SignatureKey<'a> {
        target_user: str,
        target_key: str => target_prefix,
        signer: str,
        signer_key: last_str,
    }
}

key! {
    /// The key of `userusage_crosssigningkey` (a user's cross-signing keys):
    /// `user_id 0xFF usage` (master, self_signing, user_signing).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct CrossSigningKeyKey<'a> {
        user_id: str,
        usage: last_str,
    }
}

key! {
    /// The key of `userdevicetxn_todevice` (to-device transactions already taken):
    /// `user_id 0xFF device_id 0xFF txn_id`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct ToDeviceTxnKey<'a> {
        user_id: str,
        device_id: str,
        txn_id: last_str,
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
