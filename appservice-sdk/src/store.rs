//! What an appservice remembers: transaction ids already processed, users already
//! registered, and its own key/value data.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    io::Write,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// How many processed transaction ids a store keeps (the oldest are forgotten first).
/// A homeserver retries the transaction it is sending, not old ones, so a window is enough.
pub const REMEMBERED_TXNS: usize = 1024;

/// Where an appservice keeps its state. Methods are synchronous and meant to be quick
/// (the provided stores hold everything in memory; the file store rewrites a small file).
pub trait StateStore: Send + Sync {
    /// Whether transaction `txn_id` was already processed.
    fn txn_processed(&self, txn_id: &str) -> Result<bool>;
    /// Records that transaction `txn_id` was processed.
    fn mark_txn_processed(&self, txn_id: &str) -> Result<()>;
    /// Whether `user_id` was registered (so `ensure_registered` needs no request).
    fn user_registered(&self, user_id: &str) -> Result<bool>;
    /// Records that `user_id` is registered.
    fn mark_user_registered(&self, user_id: &str) -> Result<()>;
    /// The value stored under `key`.
    fn get(&self, key: &str) -> Result<Option<Value>>;
    /// Stores `value` under `key`.
    fn set(&self, key: &str, value: Value) -> Result<()>;
    /// Removes `key`.
    fn remove(&self, key: &str) -> Result<()>;
}

/// Everything a store holds, as written to the JSON file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Data {
    #[serde(default)]
    txns: VecDeque<String>,
    #[serde(default)]
    users: BTreeSet<String>,
    #[serde(default)]
    values: BTreeMap<String, Value>,
}

impl Data {
    fn mark_txn(&mut self, txn_id: &str) -> bool {
        if self.txns.iter().any(|t| t == txn_id) {
            return false;
        }
        self.txns.push_back(txn_id.to_owned());
        while self.txns.len() > REMEMBERED_TXNS {
            self.txns.pop_front();
        }
        true
    }
}

fn lock(m: &Mutex<Data>) -> MutexGuard<'_, Data> {
    // A panic while holding the lock cannot leave `Data` half-changed in a way that matters
    // more than losing the store, so keep going with what is there.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A store in memory: forgotten when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryStore {
    fn txn_processed(&self, txn_id: &str) -> Result<bool> {
        Ok(lock(&self.data).txns.iter().any(|t| t == txn_id))
    }

    fn mark_txn_processed(&self, txn_id: &str) -> Result<()> {
        lock(&self.data).mark_txn(txn_id);
        Ok(())
    }

    fn user_registered(&self, user_id: &str) -> Result<bool> {
        Ok(lock(&self.data).users.contains(user_id))
    }

    fn mark_user_registered(&self, user_id: &str) -> Result<()> {
        lock(&self.data).users.insert(user_id.to_owned());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Value>> {
        Ok(lock(&self.data).values.get(key).cloned())
    }

    fn set(&self, key: &str, value: Value) -> Result<()> {
        lock(&self.data).values.insert(key.to_owned(), value);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        lock(&self.data).values.remove(key);
        Ok(())
    }
}

/// A store in one JSON file, rewritten on every change: written to a temporary file in the
/// same directory, flushed to disk, then renamed over the old one, so a crash leaves either
/// the old or the new file, never half of one.
#[derive(Debug)]
pub struct JsonFileStore {
    path: PathBuf,
    data: Mutex<Data>,
}

impl JsonFileStore {
    /// Opens the store at `path`, or starts an empty one if the file does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let data = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            path,
            data: Mutex::new(data),
        })
    }

    /// Applies `change` and writes the file if it says something changed.
    fn change(&self, change: impl FnOnce(&mut Data) -> bool) -> Result<()> {
        let mut data = lock(&self.data);
        let mut next = data.clone();
        if !change(&mut next) {
            return Ok(());
        }
        write_atomically(&self.path, &serde_json::to_vec_pretty(&next)?)?;
        *data = next;
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("store path {} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced (not possible on every OS).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl StateStore for JsonFileStore {
    fn txn_processed(&self, txn_id: &str) -> Result<bool> {
        Ok(lock(&self.data).txns.iter().any(|t| t == txn_id))
    }

    fn mark_txn_processed(&self, txn_id: &str) -> Result<()> {
        self.change(|d| d.mark_txn(txn_id))
    }

    fn user_registered(&self, user_id: &str) -> Result<bool> {
        Ok(lock(&self.data).users.contains(user_id))
    }

    fn mark_user_registered(&self, user_id: &str) -> Result<()> {
        self.change(|d| d.users.insert(user_id.to_owned()))
    }

    fn get(&self, key: &str) -> Result<Option<Value>> {
        Ok(lock(&self.data).values.get(key).cloned())
    }

    fn set(&self, key: &str, value: Value) -> Result<()> {
        self.change(|d| d.values.insert(key.to_owned(), value.clone()) != Some(value))
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.change(|d| d.values.remove(key).is_some())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn exercise(store: &dyn StateStore) {
        assert!(!store.txn_processed("t1").unwrap());
        store.mark_txn_processed("t1").unwrap();
        store.mark_txn_processed("t1").unwrap();
        assert!(store.txn_processed("t1").unwrap());
        assert!(!store.user_registered("@a:x").unwrap());
        store.mark_user_registered("@a:x").unwrap();
        assert!(store.user_registered("@a:x").unwrap());
        assert_eq!(store.get("k").unwrap(), None);
        store.set("k", json!({"n": 1})).unwrap();
        assert_eq!(store.get("k").unwrap(), Some(json!({"n": 1})));
        store.set("gone", json!(true)).unwrap();
        store.remove("gone").unwrap();
        assert_eq!(store.get("gone").unwrap(), None);
    }

    #[test]
    fn memory_store_keeps_what_it_is_told() {
        exercise(&MemoryStore::new());
    }

    #[test]
    fn file_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        exercise(&JsonFileStore::open(&path).unwrap());
        let again = JsonFileStore::open(&path).unwrap();
        assert!(again.txn_processed("t1").unwrap());
        assert!(again.user_registered("@a:x").unwrap());
        assert_eq!(again.get("k").unwrap(), Some(json!({"n": 1})));
        assert_eq!(again.get("gone").unwrap(), None);
        // No temporary file left next to it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn file_store_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(JsonFileStore::open(&path), Err(Error::Json(_))));
    }

    #[test]
    fn remembered_txns_are_bounded_oldest_first() {
        let store = MemoryStore::new();
        for i in 0..=REMEMBERED_TXNS {
            store.mark_txn_processed(&i.to_string()).unwrap();
        }
        assert!(!store.txn_processed("0").unwrap());
        assert!(store.txn_processed("1").unwrap());
        assert!(store.txn_processed(&REMEMBERED_TXNS.to_string()).unwrap());
    }
}
