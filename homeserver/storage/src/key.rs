//! Typed keys: big-endian integers (byte order is numeric order) and UTF-8 ids separated by
//! `0xFF`, a byte that never occurs in UTF-8.

use crate::StorageError;

pub const SEP: u8 = 0xFF;

/// Builds a key from parts.
#[derive(Debug, Default, Clone)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        Self(Vec::with_capacity(64))
    }
    /// Appends a UTF-8 id followed by the separator.
    pub fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(SEP);
        self
    }
    /// Appends a UTF-8 id without a trailing separator (last part of a key).
    pub fn last_str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// Appends a big-endian u64.
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// Reads a key back into its parts; every read returns an error on malformed input.
#[derive(Debug)]
pub struct KeyReader<'a>(&'a [u8]);

impl<'a> KeyReader<'a> {
    pub fn new(key: &'a [u8]) -> Self {
        Self(key)
    }
    /// Reads a separator-terminated UTF-8 id.
    pub fn str(&mut self) -> Result<&'a str, StorageError> {
        let end = self
            .0
            .iter()
            .position(|b| *b == SEP)
            .ok_or_else(|| StorageError::Corrupt("key part without separator".into()))?;
        let (part, rest) = self.0.split_at(end);
        self.0 = rest.get(1..).unwrap_or_default();
        std::str::from_utf8(part).map_err(|e| StorageError::Corrupt(e.to_string()))
    }
    /// Reads the rest as UTF-8.
    pub fn last_str(&mut self) -> Result<&'a str, StorageError> {
        let part = std::mem::take(&mut self.0);
        std::str::from_utf8(part).map_err(|e| StorageError::Corrupt(e.to_string()))
    }
    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, StorageError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or_else(|| StorageError::Corrupt("short integer in key".into()))?;
        self.0 = rest;
        Ok(u64::from_be_bytes(*head))
    }
    /// Checks that the whole key has been read: a key with bytes left over is not of the
    /// expected shape.
    pub fn finish(self) -> Result<(), StorageError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StorageError::Corrupt(format!(
                "{} unexpected trailing bytes in key",
                self.0.len()
            )))
        }
    }
}

/// Declares the key of a table: a struct of its parts in key order, with `encode`, `decode`
/// (every part read, and nothing left after the last) and, on request, prefix constructors.
///
/// Each part is `name: kind`, the kind one of [`KeyBuf`]'s and [`KeyReader`]'s parts:
/// `str` (a UTF-8 id then the separator), `last_str` (a UTF-8 id to the end of the key, only
/// last) or `u64` (8 bytes big-endian). `name: kind => f` also declares `fn f` taking the
/// parts up to and including this one, which returns the bytes every key with those leading
/// parts starts with (a prefix ends before a `last_str`):
///
/// ```
/// paracord_storage::key! {
///     /// `room_id 0xFF stream_pos`.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub struct RoomPosKey<'a> {
///         room_id: str => prefix,
///         pos: u64,
///     }
/// }
/// let bytes = RoomPosKey { room_id: "!r:x", pos: 1 }.encode();
/// assert_eq!(bytes, b"!r:x\xFF\0\0\0\0\0\0\0\x01");
/// assert!(bytes.starts_with(&RoomPosKey::prefix("!r:x")));
/// assert_eq!(RoomPosKey::decode(&bytes).unwrap().pos, 1);
/// ```
///
/// The parts take the struct's visibility; the attributes before `struct` (docs, derives) are
/// the struct's. Methods a key needs beyond these (reading one part without the rest, a
/// prefix of another shape) go in an `impl` block of their own beside it.
#[macro_export]
macro_rules! key {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident<$lt:lifetime> {
            $($field:ident : $kind:ident $(=> $prefix:ident)?),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name<$lt> {
            $($vis $field: $crate::__key_part!($lt $kind),)+
        }

        impl<$lt> $name<$lt> {
            /// The key's bytes.
            #[allow(dead_code)]
            $vis fn encode(&self) -> ::std::vec::Vec<u8> {
                $crate::KeyBuf::new()$(.$kind(self.$field))+.into_vec()
            }

            /// Reads a key back: every part, and an error if anything is left after the last.
            #[allow(dead_code)]
            $vis fn decode(
                key: &$lt [u8],
            ) -> ::core::result::Result<Self, $crate::StorageError> {
                let mut reader = $crate::KeyReader::new(key);
                $(let $field = reader.$kind()?;)+
                reader.finish()?;
                ::core::result::Result::Ok(Self { $($field),+ })
            }

            $crate::__key_prefixes!(($vis) [] $($field : $kind $(=> $prefix)?,)+);
        }
    };
}

/// The type of a key part in the struct `key!` declares.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_part {
    ($lt:lifetime str) => { &$lt str };
    ($lt:lifetime last_str) => { &$lt str };
    ($lt:lifetime u64) => { u64 };
    ($lt:lifetime $other:ident) => {
        ::core::compile_error!(concat!(
            "unknown key part kind `", stringify!($other), "` (str, last_str, u64)"
        ))
    };
}

/// The type of a key part as an argument of a prefix constructor.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_arg {
    (str) => {
        &str
    };
    (u64) => {
        u64
    };
}

/// The prefix constructors `key!` declares: walks the parts, carrying those before.
#[doc(hidden)]
#[macro_export]
macro_rules! __key_prefixes {
    (($vis:vis) [$($done:ident : $dkind:ident),*]) => {};
    (($vis:vis) [$($done:ident : $dkind:ident),*] $field:ident : last_str => $prefix:ident, $($rest:tt)*) => {
        ::core::compile_error!("a key prefix ends before the `last_str` part");
    };
    (($vis:vis) [$($done:ident : $dkind:ident),*] $field:ident : $kind:ident => $prefix:ident, $($rest:tt)*) => {
        #[doc = concat!(
            "Every key whose leading parts are ",
            $("`", stringify!($done), "`, ",)*
            "`", stringify!($field), "` starts with this."
        )]
        #[allow(dead_code)]
        $vis fn $prefix(
            $($done: $crate::__key_arg!($dkind),)*
            $field: $crate::__key_arg!($kind),
        ) -> ::std::vec::Vec<u8> {
            $crate::KeyBuf::new()$(.$dkind($done))*.$kind($field).into_vec()
        }
        $crate::__key_prefixes!(($vis) [$($done : $dkind,)* $field : $kind] $($rest)*);
    };
    (($vis:vis) [$($done:ident : $dkind:ident),*] $field:ident : $kind:ident, $($rest:tt)*) => {
        $crate::__key_prefixes!(($vis) [$($done : $dkind,)* $field : $kind] $($rest)*);
    };
}

/// Decodes a big-endian u64 value.
pub fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("integer value of wrong size".into()))?;
    Ok(u64::from_be_bytes(arr))
}

/// The smallest key greater than every key starting with `prefix` (the exclusive upper bound of
/// a prefix scan). `None` when the prefix is all `0xFF` (no upper bound needed).
pub fn next_key(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut key = prefix.to_vec();
    while let Some(last) = key.pop() {
        if last < 0xFF {
            key.push(last + 1);
            return Some(key);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let key = KeyBuf::new()
            .str("!room:x")
            .u64(42)
            .last_str("@u:x")
            .into_vec();
        let mut r = KeyReader::new(&key);
        assert_eq!(r.str().unwrap(), "!room:x");
        assert_eq!(r.u64().unwrap(), 42);
        assert_eq!(r.last_str().unwrap(), "@u:x");
    }

    #[test]
    fn integers_sort_numerically() {
        let a = KeyBuf::new().str("r").u64(255).into_vec();
        let b = KeyBuf::new().str("r").u64(256).into_vec();
        let c = KeyBuf::new().str("r").u64(1 << 40).into_vec();
        assert!(a < b && b < c);
    }

    #[test]
    fn separator_keeps_prefixes_apart() {
        // "!a" and "!ab" must not share the prefix "!a" + SEP.
        let a = KeyBuf::new().str("!a").u64(1).into_vec();
        let ab = KeyBuf::new().str("!ab").u64(1).into_vec();
        let prefix = KeyBuf::new().str("!a").into_vec();
        assert!(a.starts_with(&prefix));
        assert!(!ab.starts_with(&prefix));
    }

    #[test]
    fn malformed_keys_error() {
        assert!(KeyReader::new(b"abc").str().is_err());
        assert!(KeyReader::new(&[1, 2, 3]).u64().is_err());
        assert!(KeyReader::new(&[0xC3, 0x28]).last_str().is_err());
        assert!(decode_u64(&[1]).is_err());
        let mut r = KeyReader::new(&[0, 0, 0, 0, 0, 0, 0, 1, 9]);
        assert_eq!(r.u64().unwrap(), 1);
        assert!(r.finish().is_err());
        let mut r = KeyReader::new(&[0, 0, 0, 0, 0, 0, 0, 1]);
        r.u64().unwrap();
        assert!(r.finish().is_ok());
    }

    crate::key! {
        /// A key of every kind of part, with a prefix after each part a prefix can end at.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        struct TestKey<'a> {
            user: str => user_prefix,
            pos: u64 => at_pos,
            room: str => room_prefix,
            rest: last_str,
        }
    }

    crate::key! {
        /// A key that ends with a fixed-width part.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        struct PosKey<'a> {
            user: str => prefix,
            pos: u64,
        }
    }

    #[test]
    fn declared_key_round_trips_in_its_layout() {
        let key = TestKey {
            user: "@u:x",
            pos: 0x0102,
            room: "!r:x",
            rest: "tail",
        };
        let bytes = key.encode();
        assert_eq!(
            bytes,
            KeyBuf::new()
                .str("@u:x")
                .u64(0x0102)
                .str("!r:x")
                .last_str("tail")
                .into_vec()
        );
        assert_eq!(bytes, b"@u:x\xFF\0\0\0\0\0\0\x01\x02!r:x\xFFtail");
        assert_eq!(TestKey::decode(&bytes).unwrap(), key);
        let empty = TestKey { rest: "", ..key };
        assert_eq!(TestKey::decode(&empty.encode()).unwrap(), empty);

        let pos = PosKey {
            user: "@u:x",
            pos: u64::MAX,
        };
        assert_eq!(PosKey::decode(&pos.encode()).unwrap(), pos);
    }

    #[test]
    fn declared_key_prefixes_are_its_leading_parts() {
        let bytes = TestKey {
            user: "@u:x",
            pos: 7,
            room: "!r:x",
            rest: "tail",
        }
        .encode();
        assert_eq!(TestKey::user_prefix("@u:x"), b"@u:x\xFF");
        assert_eq!(
            TestKey::at_pos("@u:x", 7),
            KeyBuf::new().str("@u:x").u64(7).into_vec()
        );
        assert_eq!(
            TestKey::room_prefix("@u:x", 7, "!r:x"),
            KeyBuf::new().str("@u:x").u64(7).str("!r:x").into_vec()
        );
        assert!(bytes.starts_with(&TestKey::user_prefix("@u:x")));
        assert!(bytes.starts_with(&TestKey::at_pos("@u:x", 7)));
        assert!(bytes.starts_with(&TestKey::room_prefix("@u:x", 7, "!r:x")));
        assert!(!bytes.starts_with(&TestKey::user_prefix("@u:")));
        assert!(!bytes.starts_with(&TestKey::room_prefix("@u:x", 7, "!r:")));
        assert_eq!(PosKey::prefix("@u:x"), b"@u:x\xFF");
    }

    #[test]
    fn declared_key_rejects_truncated_and_trailing_bytes() {
        let bytes = PosKey {
            user: "@u:x",
            pos: 1,
        }
        .encode();
        // Truncated: in the integer, at the separator, before it.
        for len in 0..bytes.len() {
            assert!(PosKey::decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        // Trailing bytes after a fixed-width last part.
        let mut long = bytes.clone();
        long.push(0);
        assert!(PosKey::decode(&long).is_err());

        let bytes = TestKey {
            user: "@u:x",
            pos: 1,
            room: "!r:x",
            rest: "t",
        }
        .encode();
        // Cut before the last `str` part's separator or within the integer.
        assert!(TestKey::decode(&bytes[..4]).is_err());
        assert!(TestKey::decode(&bytes[..9]).is_err());
        assert!(TestKey::decode(&bytes[..16]).is_err());
        // Not UTF-8 in a part.
        assert!(TestKey::decode(b"\xC3\x28\xFF\0\0\0\0\0\0\0\x01r\xFFt").is_err());
        assert!(TestKey::decode(b"u\xFF\0\0\0\0\0\0\0\x01r\xFF\xC3\x28").is_err());
    }

    #[test]
    fn next_key_bounds_prefix() {
        assert_eq!(next_key(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(next_key(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(next_key(&[0xFF, 0xFF]), None);
    }
}
