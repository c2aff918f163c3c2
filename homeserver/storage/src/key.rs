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

    #[test]
    fn next_key_bounds_prefix() {
        assert_eq!(next_key(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(next_key(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(next_key(&[0xFF, 0xFF]), None);
    }
}
