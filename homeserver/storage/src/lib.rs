//! Paracord storage: RocksDB with one column family per table, typed big-endian keys and one
//! atomic [`Batch`] per logical change.

pub mod db;
pub mod key;
pub mod table;

pub use db::{Batch, Db, StorageError};
pub use key::{next_key, KeyBuf, KeyReader};
pub use table::Table;
